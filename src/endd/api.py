"""The Python API for notebooks: load a finished run, or train from arrays without writing YAML.

Example:
    >>> import endd
    >>> run = endd.distill_arrays(x_train, y_train, x_test=x_test, y_test=y_test,
    ...                           out="runs/mine", overrides={"students.epochs": 100})
    >>> out = run.students["endd"].predict(x_new)
    >>> out["probs"], out["knowledge"]          # [N, K] and [N]
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endd.config import resolve_config
from endd.errors import DataError, RunDirError
from endd.models.prior import Predictor
from endd.pipeline.run import run_stages
from endd.store import RunDir, artifacts
from endd.store.models import load_model


class Run:
    """A run directory opened for use: config, metrics and the trained models.

    Attributes:
        root: the run directory.
        config: the resolved config (``config.yaml``).
    """

    def __init__(self, root: str | Path) -> None:
        self._dir = RunDir(Path(root))
        self.root = self._dir.root
        self.config = self._dir.read_config()

    @property
    def metrics(self) -> dict[str, Any]:
        """The contents of ``metrics.json``."""
        if not self._dir.metrics.is_file():
            raise RunDirError(
                f"{self.root} has no metrics.json yet; run `endd evaluate {self.root}`"
            )
        return artifacts.read_json(self._dir.metrics)

    @cached_property
    def ensemble(self) -> Predictor:
        """The trained ensemble: ``predict(x)`` gives member probabilities and every measure."""
        source = self.config["teacher"]["source"]
        if source != "train":
            raise RunDirError(
                f"{self.root} distilled a teacher from outside (teacher.source: {source}): it "
                "has no ensemble model; its members' logits are in teacher/"
            )
        return load_model(self._dir.ensemble)

    @cached_property
    def students(self) -> dict[str, Predictor]:
        """Every finished student by method name (Prior Networks for the EnD² methods)."""
        return {
            method: load_model(self._dir.student(method))
            for method in self._dir.finished_students()
        }

    def model(self, name: str) -> Predictor:
        """``"ensemble"`` or a student method name."""
        if name == "ensemble":
            return self.ensemble
        if name not in self.students:
            raise RunDirError(
                f"no finished model '{name}' in {self.root}; have {sorted(self.students)}"
            )
        return self.students[name]

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r}, models={['ensemble', *self.students]})"


def load_run(root: str | Path) -> Run:
    """Open a run directory made by ``endd run``/``endd demo`` or :func:`distill_arrays`."""
    return Run(root)


def distill_arrays(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    x_aux: np.ndarray | None = None,
    x_ood: Mapping[str, np.ndarray] | None = None,
    out: str | Path | None = None,
    methods: Sequence[str] = ("end", "endd", "proxy"),
    overrides: Mapping[str, Any] | None = None,
    quiet: bool = True,
    teacher_logits: Mapping[str, Any] | None = None,
    teacher_members: Sequence[torch.nn.Module] | None = None,
) -> Run:
    """Distill an ensemble on arrays and evaluate everything; no YAML needed.

    The teacher is, by default, an ensemble endd trains on ``x_train``; or the ensemble you
    already have: its members' logits (``teacher_logits``) or the members themselves
    (``teacher_members``, run once over every split).

    Args:
        x_train, y_train: features [N, ...] and labels 0..K-1 [N].
        x_test, y_test: held-out data; if omitted, 20 % of the training data (seeded) is held out.
        x_aux: unlabelled auxiliary inputs (enables the ``end_aux``/``endd_aux`` methods).
        x_ood: OOD evaluation sets by name.
        out: run directory (a new temporary directory if None).
        methods: student methods to train.
        overrides: dotted config keys, e.g. ``{"ensemble.members": 5, "students.epochs": 100}``,
            checked exactly as the CLI's ``--set`` (a wrong key or value raises ConfigError).
        quiet: no progress output.
        teacher_logits: the members' logits [N, M, K] per split: ``"train"``, ``"test"``
            (derived from ``"train"`` when ``x_test`` is omitted), ``"aux"`` with ``x_aux``,
            ``"ood_<name>"`` per OOD set and, for 2-D inputs, optionally ``"grid"``.
        teacher_members: the member networks, each mapping raw inputs [B, ...] to logits
            [B, K]; run in this process on every split's raw inputs.

    Returns:
        The finished :class:`Run`.
    """
    if (x_test is None) != (y_test is None):
        raise DataError("give both x_test and y_test, or neither")
    if teacher_logits is not None and teacher_members is not None:
        raise DataError("give teacher_logits or teacher_members, not both")
    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    logits = {k: np.asarray(v) for k, v in (teacher_logits or {}).items()}
    if x_test is None and "test" in logits:
        raise DataError(
            "teacher_logits['test'] needs x_test and y_test (else the test set is "
            "held out of x_train, and its logits are taken from teacher_logits['train'])"
        )
    if x_test is None:
        if len(x_train) != len(y_train):
            raise DataError("x_train and y_train must have the same length")
        order = np.random.default_rng(0).permutation(len(x_train))
        held = order[: max(1, len(order) // 5)]
        kept = order[len(held) :]
        x_train, y_train, x_test, y_test = (
            x_train[kept],
            y_train[kept],
            x_train[held],
            y_train[held],
        )
        if "train" in logits:
            if len(logits["train"]) != len(order):
                raise DataError(
                    f"teacher_logits['train'] has {len(logits['train'])} rows, x_train "
                    f"{len(order)}; give the members' logits on x_train, in its order"
                )
            logits["test"], logits["train"] = logits["train"][held], logits["train"][kept]
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="endd-run-"))
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    if x_aux is not None:
        arrays["x_aux"] = np.asarray(x_aux)
    for name, x in (x_ood or {}).items():
        arrays[f"x_ood_{name}"] = np.asarray(x)
    data_file = out.resolve() / "data.npz"
    user: dict[str, Any] = {
        "name": out.name,
        "data": {"name": "npz", "path": str(data_file)},
        "students": {"methods": list(methods)},
    }
    teacher_folder = out.resolve() / "teacher_input"
    if teacher_logits is not None or teacher_members is not None:
        user["teacher"] = {"source": "logits", "path": str(teacher_folder)}
    config = resolve_config(user, overrides or {})  # a bad override fails before any write
    out.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_path(data_file) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
    if teacher_logits is not None:
        for split, array in logits.items():
            artifacts.write_array(teacher_folder / f"{split}.npy", array)
    if teacher_members is not None:
        from endd.data import load_data
        from endd.pipeline.teacher import write_member_logits

        data = load_data(config["data"], config["seed"])
        batch_size = config["trainer"]["eval_batch_size"]
        write_member_logits(teacher_folder, teacher_members, data, batch_size)
    run_stages(out, config=config, progress=False if quiet else None)
    return Run(out)
