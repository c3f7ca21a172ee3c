"""Inputs for ``endd predict``: a ``.npy`` file, an ``.npz`` file (array ``x``) or a folder of
images, checked against the model's input shape and read in batches.

Memory stays bounded whatever N is: ``.npy`` files are memory-mapped, the ``x`` member of an
``.npz`` is streamed out of the zip archive a batch at a time (compressed or not), and image
files are decoded a batch at a time. Every problem is a one-line :class:`~endd.errors.DataError`
raised before any output is written.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from endd.data.arrays import ZIP_ERRORS
from endd.data.ondisk import READ_ERRORS
from endd.errors import DataError

__all__ = ["InputSource", "open_input"]

#: The array ``endd predict`` reads from an ``.npz`` file.
NPZ_KEY = "x"


@dataclass
class InputSource:
    """Raw inputs of one file or folder, readable a batch at a time.

    Attributes:
        path: what was opened.
        count: N, the number of inputs.
        files: for an image folder, each input's path relative to it (row order); else None.
    """

    path: Path
    count: int
    files: list[str] | None = None
    _read: object = field(default=None, repr=False)

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 inputs [b, *input_shape]) for consecutive batches of ≤ batch_size.

        Raises:
            DataError: a batch holds NaN or infinite values (naming the first such row).
        """
        for start, batch in self._read(batch_size):  # type: ignore[operator]
            batch = np.array(batch, dtype=np.float32)  # a writable copy of one batch
            finite = np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)
            if not finite.all():
                row = start + int(np.argmin(finite))
                raise DataError(
                    f"{self.path}: input {row} has NaN or infinite values (after conversion to "
                    "float32); nothing was written"
                )
            yield start, batch


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(["N", *map(str, shape)]) + "]"


def _check_array(path: Path, shape: tuple[int, ...], dtype: np.dtype, expected: tuple[int, ...]):
    if dtype.kind not in "iuf":
        raise DataError(f"{path}: inputs must be numbers (int or float), got dtype {dtype}")
    if shape[1:] != expected or len(shape) != len(expected) + 1:
        raise DataError(
            f"{path} holds an array of shape {list(shape)}, but the model takes "
            f"{_shape_text(expected)}"
        )
    if shape[0] == 0:
        raise DataError(f"{path} holds no inputs (shape {list(shape)})")


def _pixel_scale(dtype: np.dtype, expected: tuple[int, ...]) -> float:
    """uint8 arrays for a model of images are pixels: scaled to [0, 1] like the run's data."""
    return 1.0 / 255.0 if dtype == np.uint8 and len(expected) == 3 else 1.0


def _array_reader(array: np.ndarray, scale: float):
    def read(batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(array), batch_size):
            with np.errstate(over="ignore"):  # too large for float32: inf, refused in batches()
                batch = np.asarray(array[start : start + batch_size], dtype=np.float32)
            yield start, batch * np.float32(scale) if scale != 1.0 else batch

    return read


def _open_npy(path: Path, expected: tuple[int, ...]) -> InputSource:
    try:
        with open(path, "rb") as handle:
            if handle.read(6) != b"\x93NUMPY":
                raise DataError(f"cannot read {path}: not a .npy file")
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except READ_ERRORS as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"cannot read {path} as a .npy array ({_why(error)})") from None
    _check_array(path, array.shape, array.dtype, expected)
    reader = _array_reader(array, _pixel_scale(array.dtype, expected))
    return InputSource(path, len(array), _read=reader)


def _open_npz(path: Path, expected: tuple[int, ...]) -> InputSource:
    member = f"{NPZ_KEY}.npy"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if member in names:
                with archive.open(member) as stream:
                    shape, fortran, dtype = _read_npy_header(stream)
    except (*READ_ERRORS, *ZIP_ERRORS) as error:
        raise DataError(f"cannot read {path} as an .npz archive ({_why(error)})") from None
    if member not in names:
        keys = sorted(n.removesuffix(".npy") for n in names)
        raise DataError(
            f"{path} has no array '{NPZ_KEY}' (it has: {', '.join(keys) or 'nothing'}); "
            f"save the inputs with np.savez(file, {NPZ_KEY}=inputs)"
        )
    _check_array(path, shape, dtype, expected)
    scale = _pixel_scale(dtype, expected)
    if fortran:  # rows are not contiguous in the file: read the array whole
        with np.load(path, allow_pickle=False) as archive:
            return InputSource(path, shape[0], _read=_array_reader(archive[NPZ_KEY], scale))

    row_items = int(np.prod(shape[1:], dtype=np.int64))

    def read(batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            _read_npy_header(stream)
            for start in range(0, shape[0], batch_size):
                rows = min(batch_size, shape[0] - start)
                data = stream.read(rows * row_items * dtype.itemsize)
                if len(data) != rows * row_items * dtype.itemsize:
                    raise DataError(f"{path}: array '{NPZ_KEY}' is truncated at input {start}")
                batch = np.frombuffer(data, dtype=dtype).reshape(rows, *shape[1:])
                with np.errstate(over="ignore"):
                    batch = batch.astype(np.float32)
                yield start, batch * np.float32(scale) if scale != 1.0 else batch

    return InputSource(path, shape[0], _read=read)


def _read_npy_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:  # pragma: no cover - numpy writes only these
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(shape), bool(fortran), np.dtype(dtype)


def _open_folder(path: Path, expected: tuple[int, ...]) -> InputSource:
    from endd.data.images.folder import IMAGE_EXTENSIONS, _image_files, read_images

    if len(expected) != 3 or expected[0] not in (1, 3):
        raise DataError(
            f"{path} is a folder of images, but the model takes {_shape_text(expected)} inputs, "
            "not images; give a .npy or .npz file"
        )
    files = _image_files(path, recursive=True)
    if not files:
        raise DataError(f"no image files ({'/'.join(IMAGE_EXTENSIONS)}) under {path}")
    channels, height, width = expected

    def read(batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(files), batch_size):
            pixels = read_images(
                files[start : start + batch_size], size=(height, width), channels=channels
            )
            yield start, pixels.astype(np.float32) / np.float32(255.0)

    relative = [file.relative_to(path).as_posix() for file in files]
    return InputSource(path, len(files), files=relative, _read=read)


def _why(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if "pickle" in text or "Python objects" in text:
        return "it holds Python objects; pickled data is never loaded"
    return text


def open_input(path: str | Path, input_shape: Sequence[int]) -> InputSource:
    """Open the inputs of ``endd predict`` for a model taking ``input_shape``.

    Args:
        path: a ``.npy`` file (memory-mapped, no pickles), an ``.npz`` file with the array
            ``x``, or a folder of images (searched recursively, sorted by path; decoded to the
            model's channels and size like the run's image data, uint8 / 255 → float in [0, 1]).
            A uint8 array for a model of images is taken as pixels and scaled by 1/255 too.
        input_shape: the model's input shape (without the batch axis).

    Raises:
        DataError: missing or unreadable input, no array ``x``, a shape other than
            [N, *input_shape], non-numeric values.
    """
    path = Path(path).expanduser()
    expected = tuple(int(n) for n in input_shape)
    if path.is_dir():
        return _open_folder(path, expected)
    if not path.exists():
        raise DataError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _open_npy(path, expected)
    if suffix == ".npz":
        return _open_npz(path, expected)
    raise DataError(
        f"cannot read {path}: give a .npy file, an .npz file with an array '{NPZ_KEY}', or a "
        "folder of images"
    )
