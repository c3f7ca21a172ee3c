"""Saved models: safetensors weights (with the input standardisation) and a JSON sidecar.

Nothing loaded here can execute code: the sidecar names a registered backbone and a model kind,
and the weights are plain tensors.

The sidecar (``model.json``) holds the model's spec and, under ``"files"``, the size and SHA-256
of ``model.safetensors`` (:func:`endd.store.integrity.file_record`). :func:`load_model` checks
them before reading the weights: a missing, truncated, changed or foreign weights file is a
one-line :class:`~endd.errors.DamagedArtifactError` that names the file and the command that
rebuilds it. Models saved before the records existed have no ``"files"`` key and still load.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from endd.errors import DamagedArtifactError, RunDirError
from endd.models.kinds import get_kind
from endd.models.prior import Predictor, PriorNetwork
from endd.store import artifacts
from endd.store.integrity import check_file, file_record

__all__ = [
    "build_with_weights",
    "check_model",
    "load_model",
    "rebuild_hint",
    "save_model",
    "stage_command",
]

log = logging.getLogger("endd")

WEIGHTS = "model.safetensors"
SIDECAR = "model.json"
#: The sidecar key that holds ``{file name: file_record(...)}`` of the model's files.
FILES_KEY = "files"


def save_model(folder: Path, predictor: Predictor, spec: dict[str, Any]) -> None:
    """Weights (with the standardisation) as safetensors, then the sidecar with the spec and the
    weights' size and checksum: the sidecar is written last, so its presence means the model is
    complete."""
    weights = folder / WEIGHTS
    artifacts.write_weights(weights, predictor)
    spec = {k: v for k, v in spec.items() if k != FILES_KEY}
    artifacts.write_json(folder / SIDECAR, {**spec, FILES_KEY: {WEIGHTS: file_record(weights)}})


def stage_command(folder: Path) -> str | None:
    """The ``endd`` command that trains the model in ``folder`` when it is a run directory's
    ``ensemble/`` or ``students/<method>/`` (``endd ensemble RUN``, ``endd distill RUN``), else
    None."""
    folder = Path(folder)
    if folder.name == "ensemble" and (folder.parent / "config.yaml").is_file():
        return f"endd ensemble {folder.parent}"
    run = folder.parent.parent
    if folder.parent.name == "students" and (run / "config.yaml").is_file():
        return f"endd distill {run}"
    return None


def rebuild_hint(folder: Path) -> str:
    """What rebuilds the saved model in ``folder``: delete it and run its stage's command
    (:func:`stage_command`); outside a run directory, its stage."""
    command = stage_command(folder)
    if command is None:
        return f"delete {folder} and rerun its stage"
    return f"delete {folder} and run `{command}`"


def _read_sidecar(folder: Path, rebuild: str) -> dict[str, Any]:
    sidecar = folder / SIDECAR
    if not sidecar.is_file():
        raise RunDirError(f"no finished model in {folder} ({SIDECAR} missing)")
    try:
        spec = artifacts.read_json(sidecar)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DamagedArtifactError(sidecar, "not valid JSON", rebuild) from None
    if not isinstance(spec, dict):
        raise DamagedArtifactError(sidecar, "not a JSON object", rebuild)
    return spec


def _check_files(folder: Path, spec: dict[str, Any], rebuild: str) -> None:
    records = spec.get(FILES_KEY)
    if records is None:  # saved before sidecars held records: nothing to compare with
        log.debug("%s has no file records (saved by an older endd): not checked", folder / SIDECAR)
        return
    sidecar = folder / SIDECAR
    if not isinstance(records, dict) or not isinstance(records.get(WEIGHTS), dict):
        raise DamagedArtifactError(sidecar, f"no valid record of {WEIGHTS}", rebuild)
    check_file(folder / WEIGHTS, records[WEIGHTS], rebuild=rebuild, sidecar=sidecar)


def check_model(folder: Path, *, rebuild: str | None = None) -> None:
    """Check a saved model's files against its sidecar without loading them: raises
    :class:`~endd.errors.DamagedArtifactError` (or ``RunDirError`` when the model is not
    finished). A stage calls this before it writes anything, so a damaged model changes
    nothing. ``rebuild``: the instruction in the message (default :func:`rebuild_hint`)."""
    folder = Path(folder)
    rebuild = rebuild or rebuild_hint(folder)
    _check_files(folder, _read_sidecar(folder, rebuild), rebuild)


def load_model(folder: Path, *, rebuild: str | None = None) -> Predictor:
    """Rebuild a saved model from its sidecar and weights (nothing executable is loaded).

    The weights are first checked against the size and checksum in the sidecar (models saved
    before the sidecar held them are loaded unchecked). ``rebuild``: the instruction that ends
    the message of a damaged model (default :func:`rebuild_hint`).
    """
    from endd.models import build_model

    folder = Path(folder)
    rebuild = rebuild or rebuild_hint(folder)
    sidecar = folder / SIDECAR
    spec = _read_sidecar(folder, rebuild)
    _check_files(folder, spec, rebuild)
    spec = {k: v for k, v in spec.items() if k != FILES_KEY}
    weights_path = folder / WEIGHTS
    try:
        state = load_file(str(weights_path))
    except (OSError, SafetensorError) as error:
        detail = " ".join(str(error).split())
        raise DamagedArtifactError(weights_path, f"cannot be read ({detail})", rebuild) from None
    mean, std = state.pop("mean", None), state.pop("std", None)
    weights = {k.removeprefix("network."): v for k, v in state.items()}

    def build() -> torch.nn.Module:
        return build_model(
            spec["backbone"],
            num_classes=spec["num_classes"],
            input_shape=tuple(spec["input_shape"]),
            members=spec["members"],
            **spec["backbone_kwargs"],
        )

    try:
        network = build_with_weights(build, weights)
    except RuntimeError as error:
        details = " ".join(str(error).split())
        raise DamagedArtifactError(
            weights_path, f"does not fit the model described in {sidecar} ({details})", rebuild
        ) from None
    if get_kind(spec["kind"]).prior_network:
        predictor = PriorNetwork(network, kind=spec["kind"], mean=mean, std=std, spec=spec)
    else:
        predictor = Predictor(network, kind=spec["kind"], mean=mean, std=std, spec=spec)
    return predictor.eval()


def build_with_weights(
    build: Callable[[], torch.nn.Module], weights: dict[str, torch.Tensor]
) -> torch.nn.Module:
    """``build()`` with ``weights`` loaded, skipping the random initialisation where it can.

    The network is built on the meta device (no memory, no init: 10 WRN-28-10 members take 1.3 s
    instead of 10.6 s) and the loaded tensors are assigned to it. A network whose construction
    does not work on the meta device, or that keeps a tensor outside its state dict (e.g. a
    non-persistent buffer of a user's own module), is built the ordinary way instead.
    """
    try:
        with torch.device("meta"):
            network = build()
        network.load_state_dict(weights, assign=True)
        if not any(tensor.is_meta for tensor in [*network.parameters(), *network.buffers()]):
            return network
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        pass
    network = build()
    network.load_state_dict(weights)
    return network
