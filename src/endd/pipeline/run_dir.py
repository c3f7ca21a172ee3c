"""The run directory: where each stage reads its inputs and writes its outputs.

```
RUN/
  config.yaml              resolved config, every default written out
  ensemble/                model.safetensors + model.json (architecture, classes, seed, timing)
  teacher/<split>.npy      cached member logits [N, M, K] per split; done.json when complete
  students/<method>/       model.safetensors + model.json + checkpoints while training
  predictions/<model>/     <split>.npy logits per evaluated split
  metrics.json             the machine-readable result
  report.md, figures/      for people
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from endd.errors import RunDirError
from endd.models.prior import Predictor, PriorNetwork
from endd.pipeline import artifacts
from endd.pipeline.config import dump_config, load_yaml, resolve_config


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def ensemble(self) -> Path:
        return self.root / "ensemble"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    def student(self, method: str) -> Path:
        return self.root / "students" / method

    def predictions(self, model: str) -> Path:
        return self.root / "predictions" / model

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise RunDirError(
                f"{self.root} is not a run directory (no config.yaml); start one with "
                "`endd run CONFIG --out DIR` or `endd demo`"
            )
        return resolve_config(load_yaml(self.config_path))

    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config.yaml``; an existing run directory must hold the same config."""
        if self.config_path.is_file():
            existing = resolve_config(load_yaml(self.config_path))
            if existing != config:
                changed = _changed_keys(existing, config)
                raise RunDirError(
                    f"{self.root} already holds a run with a different config "
                    f"({', '.join(changed[:3])} differ); use another --out or delete it"
                )
            return
        artifacts.write_text(self.config_path, dump_config(config))


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys: list[str] = []
        for key in a.keys() | b.keys():
            keys += _changed_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return keys
    return [] if a == b else [prefix.rstrip(".")]


def save_model(folder: Path, predictor: Predictor, spec: dict[str, Any]) -> None:
    """Weights (with the standardisation) as safetensors, then the sidecar: the sidecar is written
    last, so its presence means the model is complete."""
    artifacts.write_weights(folder / "model.safetensors", predictor)
    artifacts.write_json(folder / "model.json", spec)


def load_model(folder: Path) -> Predictor:
    """Rebuild a saved model from its sidecar and weights (nothing executable is loaded)."""
    from endd.models import build_model

    sidecar = folder / "model.json"
    if not sidecar.is_file():
        raise RunDirError(f"no finished model in {folder} (model.json missing)")
    spec = artifacts.read_json(sidecar)
    weights_path = folder / "model.safetensors"
    try:
        state = load_file(str(weights_path))
    except (OSError, SafetensorError) as error:
        raise RunDirError(
            f"cannot read {weights_path} ({error}); delete {folder} and rerun its stage"
        ) from None
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
        network = _build_with_weights(build, weights)
    except RuntimeError as error:
        details = " ".join(str(error).split())
        raise RunDirError(
            f"{weights_path} does not fit the model described in {sidecar} ({details}); "
            f"delete {folder} and rerun its stage"
        ) from None
    if spec["kind"] in ("dirichlet", "proxy_dirichlet"):
        proxy = spec["kind"] == "proxy_dirichlet"
        predictor = PriorNetwork(network, proxy=proxy, mean=mean, std=std, spec=spec)
    else:
        predictor = Predictor(network, kind=spec["kind"], mean=mean, std=std, spec=spec)
    return predictor.eval()


def _build_with_weights(
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


def torch_threads(config: dict[str, Any]) -> None:
    if config["trainer"]["num_threads"]:
        torch.set_num_threads(int(config["trainer"]["num_threads"]))
