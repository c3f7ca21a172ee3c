"""Bring-your-own arrays: an ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test``,
optionally ``x_aux`` and any number of ``x_ood_<name>``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from endd.data.bundle import DataBundle, standardised_bundle
from endd.errors import DataError

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _labels(name: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise DataError(
            f"'{name}' must be a 1-D array with one label per input ({n}), got {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)):
            raise DataError(f"'{name}' must hold integer class labels 0..K-1, got dtype {y.dtype}")
        if not np.all(y == np.round(y)):
            raise DataError(
                f"'{name}' must hold integer class labels 0..K-1, got fractional values"
            )
    if len(y) and y.min() < 0:
        raise DataError(f"'{name}' holds negative labels; labels must be 0..K-1")
    return y.astype(np.int64)


def _inputs(name: str, x: np.ndarray) -> np.ndarray:
    if x.ndim < 2:
        raise DataError(f"'{name}' must be [N, features...], got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"'{name}' must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"'{name}' contains NaN or infinite values")
    return x


def load_npz(data: dict, seed: int) -> DataBundle:
    """Read and validate the arrays, standardise features with training statistics."""
    del seed  # the user's arrays are fixed
    if not data.get("path"):
        raise DataError("data.name is 'npz' but data.path is not set (use --set data.path=FILE)")
    path = Path(data["path"])
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path} as an .npz file: {err}") from None
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise DataError(f"{path} lacks the array(s) {', '.join(missing)}")
    unknown = [
        k for k in arrays if k not in (*REQUIRED_KEYS, "x_aux") and not k.startswith("x_ood_")
    ]
    if unknown:
        raise DataError(
            f"{path} holds unexpected array(s) {', '.join(unknown)}; allowed: "
            "x_train, y_train, x_test, y_test, x_aux, x_ood_<name>"
        )
    x_train = _inputs("x_train", arrays["x_train"])
    x_test = _inputs("x_test", arrays["x_test"])
    y_train = _labels("y_train", arrays["y_train"], len(x_train))
    y_test = _labels("y_test", arrays["y_test"], len(x_test))
    num_classes = int(y_train.max()) + 1 if len(y_train) else 0
    present = np.unique(y_train)
    if num_classes < 2 or len(present) != num_classes:
        absent = sorted(set(range(num_classes)) - set(present.tolist()))
        raise DataError(
            f"y_train must use every label 0..K-1 with K ≥ 2; labels {absent} never occur"
            if absent
            else "y_train must contain at least two classes"
        )
    if len(y_test) and y_test.max() >= num_classes:
        raise DataError(f"y_test holds label {int(y_test.max())} that y_train never uses")
    shapes = {key: arrays[key].shape[1:] for key in arrays if key.startswith("x_")}
    for key, shape in shapes.items():
        if shape != x_train.shape[1:]:
            raise DataError(f"'{key}' has feature shape {shape}, x_train has {x_train.shape[1:]}")
    # data.aux: "x_aux" (default) uses the file's auxiliary inputs, null leaves them out
    use_aux = data.get("aux", "x_aux") is not None and "x_aux" in arrays
    x_aux = _inputs("x_aux", arrays["x_aux"]) if use_aux else None
    ood = {k[len("x_ood_") :]: _inputs(k, v) for k, v in arrays.items() if k.startswith("x_ood_")}

    grid, grid_shape = None, None
    if x_train.ndim == 2 and x_train.shape[1] == 2:
        # 2-D data: a grid over the data (and aux) with a 15 % margin, for uncertainty maps.
        stack = x_train if x_aux is None else np.concatenate([x_train, x_aux])
        low, high = stack.min(axis=0), stack.max(axis=0)
        margin = 0.15 * (high - low)
        res = data["grid_resolution"]
        gx, gy = np.meshgrid(
            np.linspace(low[0] - margin[0], high[0] + margin[0], res, dtype=np.float32),
            np.linspace(low[1] - margin[1], high[1] + margin[1], res, dtype=np.float32),
        )
        grid, grid_shape = np.stack([gx.ravel(), gy.ravel()], axis=1), (res, res)

    return standardised_bundle(
        "npz",
        num_classes,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        x_aux=x_aux,
        ood=ood,
        grid=grid,
        grid_shape=grid_shape,
        per_channel=x_train.ndim > 2,
    )
