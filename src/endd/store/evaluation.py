"""The ``evaluation/`` folder of a run: what the report draws, saved by the evaluate stage.

The evaluate stage (:func:`endd.pipeline.evaluate.evaluate`, which documents the layout) writes
these files; the report reads them and nothing else of the dataset or the models' predictions.
Both sides go through the paths and readers here, so the layout is defined once. Every file is a
``.npz`` written atomically and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from endd.errors import RunDirError
from endd.models.kinds import get_kind
from endd.store.artifacts import atomic_path, read_json, write_json
from endd.store.integrity import DamagedArtifactError, check_file, file_record
from endd.store.run_dir import RunDir

__all__ = [
    "check_evaluation",
    "data_path",
    "manifest_path",
    "measures_path",
    "read_arrays",
    "roc_key",
    "roc_measures",
    "roc_path",
    "write_arrays",
    "write_manifest",
]


def measures_path(run: RunDir, model: str, split: str) -> Path:
    """Per-input measures of ``model`` (``ensemble`` or a student method) on ``split``."""
    return run.evaluation / "measures" / model / f"{split}.npz"


def roc_path(run: RunDir, ood: str) -> Path:
    """The ROC curves drawn for the OOD set ``ood``."""
    return run.evaluation / "roc" / f"{ood}.npz"


def data_path(run: RunDir) -> Path:
    """The 2-D data in raw coordinates (only for 2-D inputs)."""
    return run.evaluation / "data.npz"


def manifest_path(run: RunDir) -> Path:
    """Size and checksum of every file the evaluate stage wrote (``evaluation/``,
    ``predictions/`` and ``metrics.json``), relative to the run directory."""
    return run.evaluation / "files.json"


def write_manifest(run: RunDir, files: list[Path], metrics_text: str) -> None:
    """Record ``files`` and the ``metrics.json`` about to be written with ``metrics_text``."""
    records = {str(path.relative_to(run.root)): file_record(path) for path in files}
    encoded = metrics_text.encode("utf-8")
    records["metrics.json"] = {"bytes": len(encoded), "sha256": hashlib.sha256(encoded).hexdigest()}
    write_json(manifest_path(run), records)


def check_evaluation(run: RunDir) -> None:
    """Every file :func:`write_manifest` recorded still matches its size and checksum, or a
    one-line :class:`~endd.errors.DamagedArtifactError` names it (runs evaluated before the
    manifest existed have none: nothing to check)."""
    manifest = manifest_path(run)
    if not manifest.is_file():
        return
    rebuild = f"run `endd evaluate {run.root} --force`"
    try:
        records = read_json(manifest)
    except (ValueError, UnicodeDecodeError):
        raise DamagedArtifactError(manifest, "not readable as JSON", rebuild) from None
    for relative, record in records.items():
        check_file(run.root / relative, record, rebuild=rebuild, sidecar=manifest)


def roc_key(model: str, measure: str) -> str:
    """The key of one ROC curve in a :func:`roc_path` file: ``<model>/<measure>``."""
    return f"{model}/{measure}"


def roc_measures(model: str, kind: str) -> list[str]:
    """The detection scores whose ROC curves the report draws for ``model``: total and knowledge
    uncertainty for the ensemble, each student's :attr:`~endd.models.kinds.ModelKind.
    detection_measure`."""
    if model == "ensemble":
        return ["total", "knowledge"]
    return [get_kind(kind).detection_measure]


def write_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **{key: np.asarray(value) for key, value in arrays.items()})


def read_arrays(run: RunDir, path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path`` of ``run``, in the order they were written.

    Raises:
        RunDirError: the file is missing (a damaged run, or one evaluated by an older endd).
    """
    if not path.is_file():
        raise RunDirError(f"{path} is missing; run `endd evaluate {run.root} --force`")
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}
