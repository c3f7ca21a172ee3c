"""The ``evaluation/`` folder of a run: what the report draws, saved by the evaluate stage.

The evaluate stage (:func:`endd.pipeline.evaluate.evaluate`, which documents the layout) writes
these files; the report reads them and nothing else of the dataset or the models' predictions.
Both sides go through the paths and readers here, so the layout is defined once. Every file is a
``.npz`` written atomically and read with ``allow_pickle=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from endd.errors import RunDirError
from endd.models.kinds import get_kind
from endd.store.artifacts import atomic_path
from endd.store.run_dir import RunDir

__all__ = [
    "data_path",
    "measures_path",
    "read_arrays",
    "roc_key",
    "roc_measures",
    "roc_path",
    "write_arrays",
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
