"""The run directory: it owns every path a stage reads or writes, and every "done" marker.

```
RUN/
  config.yaml              resolved config, every default written out
  ensemble/                model.safetensors + model.json (architecture, classes, seed, timing)
  teacher/<split>.npy      member logits [N, M, K] per split; done.json when complete
  students/<method>/       model.safetensors + model.json (+ checkpoints/ while training)
  predictions/<model>/     <split>.npy student logits per evaluated split
  evaluation/              report inputs: measures/<model>/<split>.npz, roc/<ood>.npz, data.npz
  logs/<model>/            training curves when trainer.logger is csv or tensorboard
  metrics.json             the machine-readable result
  report.md, figures/      for people
```

A stage is done when its marker exists (:meth:`RunDir.marker`); every marker is written last,
after the files it vouches for, so its presence means the stage finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endd.errors import RunDirError
from endd.store import artifacts
from endd.store.integrity import DamagedArtifactError, check_file
from endd.store.teacher_cache import TeacherRows

#: A student's stage is ``student:<method>``; its marker is ``students/<method>/model.json``.
STUDENT_PREFIX = "student:"
#: Each other stage's marker, relative to the run directory: the file written last.
MARKERS: dict[str, str] = {
    "ensemble": "ensemble/model.json",
    "teacher": "teacher/done.json",
    "evaluate": "metrics.json",
    "report": "report.md",
}


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ---- paths -------------------------------------------------------------------------------
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
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def logs(self) -> Path:
        """Training curves of ``trainer.logger`` (csv / tensorboard), one folder per model."""
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    # ---- markers -----------------------------------------------------------------------------
    def marker(self, stage: str) -> Path:
        """The file whose presence means ``stage`` is done."""
        if stage.startswith(STUDENT_PREFIX):
            return self.student(stage.removeprefix(STUDENT_PREFIX)) / "model.json"
        if stage not in MARKERS:
            raise ValueError(f"unknown stage '{stage}'; known: {', '.join(MARKERS)}")
        return self.root / MARKERS[stage]

    def is_done(self, stage: str) -> bool:
        return self.marker(stage).is_file()

    def finished_students(self) -> list[str]:
        """Methods whose student finished training, in name order."""
        folder = self.root / "students"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "model.json").is_file())

    # ---- config ------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        from endd.config import load_yaml, resolve_config

        if not self.config_path.is_file():
            raise RunDirError(
                f"{self.root} is not a run directory (no config.yaml); start one with "
                "`endd run CONFIG --out DIR` or `endd demo`"
            )
        return resolve_config(load_yaml(self.config_path), from_run_dir=True)

    def check_config(self, config: dict[str, Any]) -> None:
        """Refuse ``config`` if this directory already holds a run with another config."""
        if not self.config_path.is_file():
            return
        existing = self.read_config()
        if existing != config:
            changed = _changed_keys(existing, config)
            raise RunDirError(
                f"{self.root} already holds a run with a different config "
                f"({', '.join(changed[:3])} differ); use another --out or delete it"
            )

    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config.yaml``; an existing run directory must hold the same config."""
        from endd.config import dump_config

        self.check_config(config)
        if not self.config_path.is_file():
            artifacts.write_text(self.config_path, dump_config(config))

    # ---- artifacts read by several stages ------------------------------------------------------
    def teacher_logits(self, split: str) -> torch.Tensor:
        """The cached member logits of ``split`` [N, M, K], whole, as stored (float32 or
        float16), after checking the file against ``done.json``."""
        path = self._teacher_file(split)
        return torch.from_numpy(np.array(artifacts.read_array(path)))

    def teacher_rows(self, *splits: str) -> TeacherRows:
        """The cached member logits of ``splits`` (their rows in order), read a batch of rows
        at a time as float32 (:class:`~endd.store.teacher_cache.TeacherRows`), after checking
        each file against ``done.json``."""
        return TeacherRows([self._teacher_file(split) for split in splits])

    def teacher_statistics(self, *splits: str) -> dict[float, TeacherRows]:
        """The reduced teacher cache (``students.teacher: reduced``): {T: the statistic of
        ``splits``' rows at T [N, K]}, read a batch of rows at a time."""
        done = self._teacher_done()
        if "statistic" not in done:
            raise RunDirError(
                f"{self.teacher} holds no reduced teacher statistic (done.json has none); delete "
                f"{self.teacher} and run `endd ensemble {self.root}`"
            )
        return {
            float(level): TeacherRows(
                [self._teacher_file(statistic_file(s, level), name=True) for s in splits]
            )
            for level in done["statistic"]["temperatures"]
        }

    def check_teacher(self) -> None:
        """Every file ``done.json`` records (the cache, the reduced statistic) matches its size
        and checksum, or a one-line :class:`~endd.errors.DamagedArtifactError` names it."""
        for name in self._teacher_done().get("files", {}):
            self._teacher_file(name, name=True)

    def _teacher_file(self, split: str, *, name: bool = False) -> Path:
        """``teacher/<split>.npy`` (``name``: ``teacher/<split>``), present and, when
        ``done.json`` records its size and checksum (runs written before that have no record),
        matching them."""
        path = self.teacher / (split if name else f"{split}.npy")
        rebuild = f"delete {self.teacher} and run `endd ensemble {self.root}`"
        if not path.is_file():
            raise RunDirError(f"cached teacher logits missing: {path}; {rebuild}")
        marker = self.marker("teacher")
        if marker.is_file():
            relative = str(path.relative_to(self.teacher))
            record = self._teacher_done().get("files", {}).get(relative)
            if record is not None:
                check_file(path, record, rebuild=rebuild, sidecar=marker)
        return path

    def _teacher_done(self) -> dict[str, Any]:
        """``teacher/done.json``, or a one-line error naming it when it is not JSON."""
        marker = self.marker("teacher")
        try:
            done = artifacts.read_json(marker)
        except (ValueError, UnicodeDecodeError):
            done = None
        if not isinstance(done, dict):
            raise DamagedArtifactError(
                marker,
                "not a JSON object",
                f"delete {self.teacher} and run `endd ensemble {self.root}`",
            )
        return done

    def model_spec(self, folder: Path) -> dict[str, Any]:
        """A saved model's sidecar (``model.json``)."""
        sidecar = folder / "model.json"
        if not sidecar.is_file():
            raise RunDirError(f"no finished model in {folder} (model.json missing)")
        return artifacts.read_json(sidecar)


def statistic_file(split: str, temperature: float) -> str:
    """The reduced teacher statistic of ``split`` at ``temperature``, relative to
    ``teacher/``."""
    return f"statistic/{split}.T{float(temperature)!r}.npy"


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys: list[str] = []
        for key in a.keys() | b.keys():
            keys += _changed_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return keys
    return [] if a == b else [prefix.rstrip(".")]
