"""Bring-your-own arrays: ``x_train``, ``y_train``, ``x_test``, ``y_test``, optionally ``x_aux``
and any number of ``x_ood_<name>``, as one ``.npz`` file (read into memory) or as a folder of
``.npy`` files of those names (inputs stay on disk and are read a batch at a time: data larger
than memory; see :mod:`endd.data.ondisk`)."""

from __future__ import annotations

import lzma
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from endd.data.bundle import DataBundle, standardised_bundle
from endd.data.ondisk import READ_ERRORS
from endd.errors import DataError, did_you_mean

#: What zipfile raises on a damaged archive besides OSError/ValueError: a bad directory, a
#: damaged deflate/LZMA stream, flags it does not support (encrypted, patched), bad fields.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    OverflowError,
)
REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
_MAX_CLASSES = 2**31  # labels at or above this are not class indices (and overflow int64 casts)


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
    if len(y) and y.max() >= _MAX_CLASSES:
        raise DataError(
            f"'{name}' holds label {y.max()}; labels must be class indices 0..K-1 "
            f"(K < {_MAX_CLASSES})"
        )
    return y.astype(np.int64)


def _inputs(name: str, x: np.ndarray) -> np.ndarray:
    if x.ndim < 2:
        raise DataError(f"'{name}' must be [N, features...], got shape {x.shape}")
    if x.dtype.kind not in "biuf":  # complex numbers would lose their imaginary part
        raise DataError(f"'{name}' must hold real numbers (int or float), got dtype {x.dtype}")
    if len(x) == 0:
        raise DataError(f"'{name}' holds no inputs (shape {x.shape}); leave it out or fill it")
    with np.errstate(over="ignore", invalid="ignore"):  # too large for float32: inf, refused
        x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(
            f"'{name}' contains NaN or infinite values (or values too large for float32)"
        )
    return x


def load_npz(data: dict, seed: int) -> DataBundle:
    """Read and validate the arrays, standardise features with training statistics."""
    del seed  # the user's arrays are fixed
    if not data.get("path"):
        raise DataError("data.name is 'npz' but data.path is not set (use --set data.path=FILE)")
    path = Path(data["path"])
    if path.is_dir():
        return load_npy_folder(data, path)
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    arrays = _read_npz(path)
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise DataError(f"{path} lacks the array(s) {', '.join(missing)}")
    _refuse_unexpected(path, arrays, "")
    x_train = _inputs("x_train", arrays["x_train"])
    x_test = _inputs("x_test", arrays["x_test"])
    y_train = _labels("y_train", arrays["y_train"], len(x_train))
    y_test = _labels("y_test", arrays["y_test"], len(x_test))
    num_classes = _num_classes(y_train, y_test)
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
        stack = x_train if x_aux is None else np.concatenate([x_train, x_aux])
        grid, grid_shape = _grid(stack.min(axis=0), stack.max(axis=0), data["grid_resolution"])

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


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``, or a one-line DataError naming it."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as err:
        raise DataError(f"cannot read {path}: {_why(err)}") from None
    if magic[:2] != b"PK":
        what = "a .npy file" if magic == b"\x93NUM" else "not a zip archive"
        raise DataError(
            f"cannot read {path} as an .npz file ({what}); save the arrays with "
            "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    try:  # our own handle: numpy leaks the one it opens when the zip directory is damaged
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (*READ_ERRORS, *ZIP_ERRORS) as err:
        raise DataError(f"cannot read {path} as an .npz file ({_why(err)})") from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):  # numpy hands back members it cannot parse as bytes
            raise DataError(
                f"cannot read {path} as an .npz file: its member '{key}' is not a .npy array; "
                "save the arrays with numpy.savez"
            )
    return arrays


def _why(error: BaseException) -> str:
    """An exception as one short line, without what cannot help the user."""
    text = " ".join(str(error).split()) or type(error).__name__
    if "allow_pickle" in text or "Object arrays" in text:
        return "it holds Python objects; pickled data is never loaded"
    return text[:300]


def _refuse_unexpected(where: Path, keys, suffix: str) -> None:
    """Only the documented array names: a typo (``x_tset``) is an error, not a silent skip."""
    allowed = (*REQUIRED_KEYS, "x_aux")
    unknown = [k for k in keys if k not in allowed and not k.startswith("x_ood_")]
    if unknown:
        hint = did_you_mean(unknown[0], allowed)
        raise DataError(
            f"{where} holds unexpected array(s) {', '.join(k + suffix for k in unknown)}{hint}; "
            "allowed: x_train, y_train, x_test, y_test, x_aux, x_ood_<name>"
        )


def _num_classes(y_train: np.ndarray, y_test: np.ndarray) -> int:
    """K from the training labels, which must use every label 0..K-1 (K ≥ 2)."""
    num_classes = int(y_train.max()) + 1 if len(y_train) else 0
    present = np.unique(y_train)
    if num_classes < 2 or len(present) != num_classes:
        used, absent = set(present.tolist()), []
        for label in range(num_classes):  # stops after ≤ len(present) + 10 labels
            if label not in used:
                absent.append(label)
                if len(absent) == 10:
                    break
        listed = ", ".join(map(str, absent)) + (", ..." if len(absent) == 10 else "")
        raise DataError(
            f"y_train must use every label 0..K-1 with K ≥ 2; labels [{listed}] never occur"
            if absent
            else "y_train must contain at least two classes"
        )
    if len(y_test) and y_test.max() >= num_classes:
        raise DataError(f"y_test holds label {int(y_test.max())} that y_train never uses")
    return num_classes


def _grid(low: np.ndarray, high: np.ndarray, res: int) -> tuple[np.ndarray, tuple[int, int]]:
    """2-D data: a grid over [low, high] with a 15 % margin, for uncertainty maps."""
    margin = 0.15 * (high - low)
    gx, gy = np.meshgrid(
        np.linspace(low[0] - margin[0], high[0] + margin[0], res, dtype=np.float32),
        np.linspace(low[1] - margin[1], high[1] + margin[1], res, dtype=np.float32),
    )
    return np.stack([gx.ravel(), gy.ravel()], axis=1), (res, res)


def load_npy_folder(data: dict, folder: Path) -> DataBundle:
    """The folder form: ``x_*.npy`` stay on disk (read a batch at a time, standardised per
    batch), labels are read into memory. Statistics and checks go over the inputs in chunks, so
    memory does not grow with N."""
    from endd.data.ondisk import NpyRows, StandardisedRows, iter_chunks

    files = {p.stem: p for p in folder.glob("*.npy")}
    _refuse_unexpected(folder, files, ".npy")
    missing = [key for key in REQUIRED_KEYS if key not in files]
    if missing:
        raise DataError(
            f"{folder} lacks {', '.join(f'{key}.npy' for key in missing)}; the folder form holds "
            "x_train.npy, y_train.npy, x_test.npy, y_test.npy (+ x_aux.npy, x_ood_<name>.npy)"
        )
    inputs = {key: NpyRows(path) for key, path in files.items() if key.startswith("x_")}
    if data.get("aux", "x_aux") is None:
        inputs.pop("x_aux", None)
    train = inputs["x_train"]
    for key, rows in inputs.items():
        if len(rows.shape) < 2:
            raise DataError(f"'{key}' must be [N, features...], got shape {rows.shape}")
        if rows.dtype.kind not in "biuf":
            raise DataError(f"'{key}' must be numeric, got dtype {rows.dtype}")
        if rows.shape[1:] != train.shape[1:]:
            raise DataError(
                f"'{key}' has feature shape {rows.shape[1:]}, x_train has {train.shape[1:]}"
            )
        if len(rows) == 0:
            raise DataError(
                f"'{key}' ({rows.path}) holds no inputs (shape {rows.shape}); leave it out or "
                "fill it"
            )
    labels = {}
    for key, x_key in (("y_train", "x_train"), ("y_test", "x_test")):
        try:
            y = np.load(files[key], allow_pickle=False)
        except READ_ERRORS as err:
            raise DataError(f"cannot read {files[key]} as a .npy array ({_why(err)})") from None
        if not isinstance(y, np.ndarray):  # a zip: np.load opened it as an .npz archive
            y.close()
            raise DataError(
                f"{files[key]} is not a .npy array (a zip archive); save it with numpy.save"
            )
        labels[key] = _labels(key, y, len(inputs[x_key]))
    num_classes = _num_classes(labels["y_train"], labels["y_test"])

    # one pass over x_train: finiteness, per-feature (or per-channel) mean and std, range
    per_channel = len(train.shape) > 2
    axes = (0, *range(2, len(train.shape))) if per_channel else (0,)
    count, total, squares = 0, 0.0, 0.0
    low = high = None
    for key, rows in inputs.items():
        for start, chunk in iter_chunks(rows):
            with np.errstate(over="ignore", invalid="ignore"):  # as the batches will be read
                finite = np.isfinite(chunk.astype(np.float32))
            if not np.all(finite):
                raise DataError(
                    f"'{key}' contains NaN or infinite values, or values too large for float32 "
                    f"(first in rows {start}..{start + len(chunk) - 1})"
                )
            chunk = chunk.astype(np.float64)
            if key == "x_train":
                count += int(np.prod([chunk.shape[a] for a in axes]))
                total = total + chunk.sum(axis=axes)
                squares = squares + (chunk**2).sum(axis=axes)
            if key in ("x_train", "x_aux") and len(train.shape) == 2:
                low = chunk.min(axis=0) if low is None else np.minimum(low, chunk.min(axis=0))
                high = chunk.max(axis=0) if high is None else np.maximum(high, chunk.max(axis=0))
    mean64 = total / count
    std64 = np.sqrt(np.maximum(squares / count - mean64**2, 0.0) * count / max(count - 1, 1))
    mean = torch.from_numpy(mean64.astype(np.float32))
    std = torch.from_numpy(np.where(std64 > 0, std64, 1.0).astype(np.float32))
    if per_channel:
        shape = (-1, *([1] * (len(train.shape) - 2)))
        mean, std = mean.view(shape), std.view(shape)

    lazy = {key: StandardisedRows(rows, mean, std) for key, rows in inputs.items()}
    grid, grid_shape = None, None
    if len(train.shape) == 2 and train.shape[1] == 2:
        raw_grid, grid_shape = _grid(low, high, data["grid_resolution"])
        grid = (torch.from_numpy(raw_grid) - mean) / std
    split_of = {"x_train": "train", "x_test": "test", "x_aux": "aux"}
    raw = {split_of.get(k, k.removeprefix("x_")): v.raw() for k, v in lazy.items()}
    if grid is not None:
        raw["grid"] = torch.from_numpy(raw_grid)
    return DataBundle(
        name="npz",
        num_classes=num_classes,
        x_train=lazy["x_train"],
        y_train=torch.from_numpy(labels["y_train"]),
        x_test=lazy["x_test"],
        y_test=torch.from_numpy(labels["y_test"]),
        x_aux=lazy.get("x_aux"),
        ood={k.removeprefix("x_ood_"): v for k, v in lazy.items() if k.startswith("x_ood_")},
        grid=grid,
        grid_shape=grid_shape,
        mean=mean,
        std=std,
        raw=raw,
    )
