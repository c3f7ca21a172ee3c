"""IDX files (MNIST, Fashion-MNIST, KMNIST), plain or gzip-compressed.

The format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the
number of dimensions D, then D big-endian uint32 sizes, then the values in row-major order.

:func:`open_idx_dataset` reads a split without loading it: an uncompressed image file is read in
place (its rows start at a fixed offset), a gzip-compressed one is decompressed once, a chunk at
a time, into the image cache (:mod:`endd.data.images.cache`).
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from endd.data.images.cache import SetCache, stamp_of
from endd.data.images.common import (
    CorruptDatasetError,
    DatasetNotFoundError,
    ImageArrays,
    check_split,
    not_found,
)
from endd.data.images.sets import ImageSet
from endd.data.ondisk import RecordRows

T = TypeVar("T")

#: IDX type code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_SPLITS = ("train", "test")
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

#: Folder each dataset is downloaded into, relative to the data root.
MNIST_FOLDER = "mnist"
FASHION_MNIST_FOLDER = "fashion-mnist"  # the Debian package's name, so /usr/share/datasets works
KMNIST_FOLDER = "kmnist"
#: Where the Debian package ``dataset-fashion-mnist`` installs the four .gz files.
DEBIAN_DATASETS_ROOT = Path("/usr/share/datasets")


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as file:
        head = file.read(2)
    if head == b"\x1f\x8b":  # gzip magic: decide by content, not by the file name
        try:
            with gzip.open(path, "rb") as file:
                return file.read()
        except (OSError, EOFError, zlib.error) as err:
            raise CorruptDatasetError(f"{path} is a damaged gzip file: {err}") from None
    return path.read_bytes()


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.idx``, ``-ubyte``, or either gzip-compressed).

    Args:
        path: the file.

    Returns:
        An array with the file's D dimensions in native byte order (uint8 for images and labels).

    Raises:
        DatasetNotFoundError: the file does not exist.
        CorruptDatasetError: bad magic number, unknown type code, or a size that disagrees with
            the header.
    """
    path = Path(path)
    if not path.is_file():
        raise not_found("IDX file", None, path.parent, path.name, [path.name])
    raw = _read_bytes(path)
    dtype, shape, header_size = _header(path, raw, len(raw))
    stored = dtype.newbyteorder(">")  # IDX values are big-endian
    return np.frombuffer(raw, dtype=stored, offset=header_size).reshape(shape).astype(dtype)


def _find(directory: Path, stem: str) -> Path | None:
    # Standard name, its gzip, and the dotted variant some mirrors use (train-images.idx3-ubyte).
    dotted = stem.replace("-idx", ".idx", 1)
    for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_idx_files(
    root: str | Path,
    split: str,
    *,
    title: str = "IDX dataset",
    folder: str = "",
    download_name: str | None = None,
) -> tuple[Path, Path]:
    """The image and label files of one split (see :func:`load_idx_dataset` for where it looks).

    Raises:
        DatasetNotFoundError: the files are missing.
    """
    check_split(split, IDX_SPLITS)
    root = Path(root).expanduser()
    prefix = _SPLIT_PREFIX[split]
    image_stem, label_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    for directory in (root / folder, root):
        image_path, label_path = _find(directory, image_stem), _find(directory, label_stem)
        if image_path is not None and label_path is not None:
            return image_path, label_path
    raise not_found(
        title, download_name, root, folder or ".", [f"{image_stem}[.gz]", f"{label_stem}[.gz]"]
    )


def _check_pair(image_path: Path, label_path: Path, images: tuple, labels: np.ndarray) -> None:
    """``images``: (dtype, shape) of the image file; ``labels``: the label file's values."""
    dtype, shape = images
    if len(shape) != 3 or dtype != np.uint8:
        raise CorruptDatasetError(
            f"{image_path} must hold uint8 images [N, H, W], got {dtype} {shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise CorruptDatasetError(
            f"{label_path} must hold uint8 labels [N], got {labels.dtype} {labels.shape}"
        )
    if shape[0] != len(labels):
        raise CorruptDatasetError(
            f"{image_path} holds {shape[0]} images but {label_path} {len(labels)} labels"
        )


def load_idx_dataset(
    root: str | Path,
    split: str = "train",
    *,
    title: str = "IDX dataset",
    folder: str = "",
    download_name: str | None = None,
) -> ImageArrays:
    """Read one split of an MNIST-style dataset from its four standard IDX files.

    Looks in ``root/folder`` and then in ``root`` for ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each
    possibly with ``.gz``.

    Args:
        root: data root (or the folder holding the files).
        split: "train" or "test".
        title, folder, download_name: used to locate the files and in the error message.

    Returns:
        ImageArrays with images uint8 [N, 1, H, W] and labels int64 [N].

    Raises:
        DatasetNotFoundError: the files are missing.
        CorruptDatasetError: a file is damaged, or images and labels disagree in count.
    """
    image_path, label_path = find_idx_files(
        root, split, title=title, folder=folder, download_name=download_name
    )
    images, labels = read_idx(image_path), read_idx(label_path)
    _check_pair(image_path, label_path, (images.dtype, images.shape), labels)
    return ImageArrays(images[:, None], labels.astype(np.int64))


def _header(path: Path, head: bytes, size: int | None) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header bytes) from the first bytes of an IDX file's contents; ``size``:
    the contents' length where known (a plain file), checked against the shape."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES:
        raise CorruptDatasetError(
            f"{path} is not an IDX file (magic bytes {head[:4].hex() or 'missing'}; expected "
            "00 00 <type code> <dimensions>)"
        )
    dtype, ndim = IDX_DTYPES[head[2]], head[3]
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(head) < header_size:
        raise CorruptDatasetError(f"{path} has a truncated IDX header ({ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    if size is not None and size - header_size != expected:
        raise CorruptDatasetError(
            f"{path} holds {size - header_size} data bytes but its header {shape} promises "
            f"{expected} (truncated or damaged download?)"
        )
    return dtype.newbyteorder("="), shape, header_size


def _gzipped(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(2) == b"\x1f\x8b"
    except OSError as err:
        raise CorruptDatasetError(f"cannot read {path}: {err.strerror or err}") from None


def idx_layout(path: str | Path) -> tuple[np.dtype, tuple[int, ...], int, bool]:
    """(dtype, shape, header bytes, gzip-compressed) of an IDX file, from its header alone
    (a gzip file: its first bytes decompressed; the rest is checked as it is read).

    Raises:
        CorruptDatasetError: bad magic number, unknown type code, a truncated header, or (plain
            files) a size that disagrees with the header.
    """
    path = Path(path)
    if _gzipped(path):
        try:
            with gzip.open(path, "rb") as file:
                head = file.read(4)
                head += file.read(4 * head[3]) if len(head) == 4 else b""
            dtype, shape, header_size = _header(path, head, None)
            promised = header_size + math.prod(shape) * dtype.itemsize
            # the gzip trailer holds the contents' length modulo 2**32: a header that disagrees
            # with it is checked against the real length (one pass) before anything is sized
            # by it; a stream shorter than it promises is caught as it is read
            if promised % 2**32 != _trailer_size(path):
                _header(path, head, _decompressed_size(path))
        except (OSError, EOFError, zlib.error) as err:
            raise CorruptDatasetError(f"{path} is a damaged gzip file: {err}") from None
        return dtype, shape, header_size, True
    try:
        with open(path, "rb") as file:
            head = file.read(4)
            head += file.read(4 * head[3]) if len(head) == 4 else b""
        size = path.stat().st_size
    except OSError as err:
        raise CorruptDatasetError(f"cannot read {path}: {err.strerror or err}") from None
    return (*_header(path, head, size), False)


def _trailer_size(path: Path) -> int:
    """The last 4 bytes of a gzip file: the uncompressed length modulo 2**32 (ISIZE)."""
    with open(path, "rb") as file:
        file.seek(max(0, path.stat().st_size - 4))
        return int.from_bytes(file.read(4).ljust(4, b"\0"), "little")


def _decompressed_size(path: Path) -> int:
    total = 0
    with gzip.open(path, "rb") as file:
        while chunk := file.read(8 << 20):
            total += len(chunk)
    return total


def _gzip_rows(path: Path, shape: tuple[int, ...], header_size: int, step: int = 8192):
    """The images [n, 1, H, W] of a gzip-compressed IDX file, decompressed a chunk at a time."""
    row = math.prod(shape[1:])
    expected = shape[0] * row
    try:
        with gzip.open(path, "rb") as file:
            file.read(header_size)
            for start in range(0, shape[0], step):
                count = min(step, shape[0] - start)
                data = file.read(count * row)
                if len(data) < count * row:
                    got = start * row + len(data)
                    raise CorruptDatasetError(
                        f"{path} holds {got} data bytes but its header {shape} promises "
                        f"{expected} (truncated or damaged download?)"
                    )
                yield np.frombuffer(data, dtype=np.uint8).reshape(count, 1, *shape[1:])
            extra = 0
            while chunk := file.read(1 << 20):
                extra += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptDatasetError(f"{path} is a damaged gzip file: {err}") from None
    if extra:
        raise CorruptDatasetError(
            f"{path} holds {expected + extra} data bytes but its header {shape} promises "
            f"{expected} (truncated or damaged download?)"
        )


def open_idx_dataset(
    root: str | Path,
    split: str = "train",
    *,
    cache: SetCache,
    title: str = "IDX dataset",
    folder: str = "",
    download_name: str | None = None,
) -> ImageSet:
    """One split of an MNIST-style dataset (located as :func:`load_idx_dataset` does) without
    reading its images: a plain image file is read in place, a ``.gz`` one is decompressed once
    into ``cache``. The labels are read into memory.

    Raises:
        DatasetNotFoundError: the files are missing.
        CorruptDatasetError: as :func:`load_idx_dataset` (a damaged ``.gz`` image file: when it
            is decompressed).
    """
    image_path, label_path = find_idx_files(
        root, split, title=title, folder=folder, download_name=download_name
    )
    dtype, shape, header_size, compressed = idx_layout(image_path)
    labels = read_idx(label_path)
    _check_pair(image_path, label_path, (dtype, shape), labels)
    stamp = stamp_of([image_path, label_path])
    definition = {"format": "idx", "images": str(image_path.resolve())}
    if compressed:

        def chunks():
            return _gzip_rows(image_path, shape, header_size)

        def build():
            return {"images": ((shape[0], 1, *shape[1:]), np.dtype(np.uint8), chunks)}

        label = f"{folder or 'idx'}-{split}"
        rows = cache.prepare(label, definition, stamp, build)["images"]
    else:
        rows = RecordRows(
            image_path, offset=header_size, count=shape[0], row_shape=(1, *shape[1:]), dtype=dtype
        )
    return ImageSet(rows, labels.astype(np.int64), None, definition, stamp, channel_stride=0)


def load_mnist(root: str | Path, split: str = "train") -> ImageArrays:
    """MNIST (LeCun et al., 1998): 28×28 grey digits, 60 000 train / 10 000 test, K = 10."""
    return load_idx_dataset(root, split, title="MNIST", folder=MNIST_FOLDER, download_name="mnist")


def load_fashion_mnist(root: str | Path | None = None, split: str = "train") -> ImageArrays:
    """Fashion-MNIST (Xiao et al., 2017): 28×28 grey clothing, 60 000 / 10 000, K = 10.

    Args:
        root: data root; None reads the Debian package ``dataset-fashion-mnist``
            (/usr/share/datasets/fashion-mnist, ``apt-get install dataset-fashion-mnist``).
        split: "train" or "test".
    """
    return _with_debian_hint(
        root,
        lambda folder: load_idx_dataset(
            folder,
            split,
            title="Fashion-MNIST",
            folder=FASHION_MNIST_FOLDER,
            download_name="fashion_mnist",
        ),
    )


def _with_debian_hint(root: str | Path | None, read: Callable[[str | Path], T]) -> T:
    """``read`` Fashion-MNIST from ``root``, or from the Debian package's folder when ``root``
    is None; not found there, the error says which package provides it."""
    try:
        return read(DEBIAN_DATASETS_ROOT if root is None else root)
    except DatasetNotFoundError as err:
        if root is not None:
            raise
        raise DatasetNotFoundError(
            f"{err}; on Debian/Ubuntu `apt-get install dataset-fashion-mnist` provides it"
        ) from None


def load_kmnist(root: str | Path, split: str = "train") -> ImageArrays:
    """Kuzushiji-MNIST (Clanuwat et al., 2018): 28×28 grey cursive Japanese, K = 10."""
    return load_idx_dataset(
        root, split, title="KMNIST", folder=KMNIST_FOLDER, download_name="kmnist"
    )


def open_mnist(root: str | Path, split: str, *, cache: SetCache) -> ImageSet:
    """:func:`load_mnist`'s split, left on disk (see :func:`open_idx_dataset`)."""
    return open_idx_dataset(
        root, split, cache=cache, title="MNIST", folder=MNIST_FOLDER, download_name="mnist"
    )


def open_fashion_mnist(root: str | Path | None, split: str, *, cache: SetCache) -> ImageSet:
    """:func:`load_fashion_mnist`'s split, left on disk (see :func:`open_idx_dataset`)."""
    return _with_debian_hint(
        root,
        lambda folder: open_idx_dataset(
            folder,
            split,
            cache=cache,
            title="Fashion-MNIST",
            folder=FASHION_MNIST_FOLDER,
            download_name="fashion_mnist",
        ),
    )


def open_kmnist(root: str | Path, split: str, *, cache: SetCache) -> ImageSet:
    """:func:`load_kmnist`'s split, left on disk (see :func:`open_idx_dataset`)."""
    return open_idx_dataset(
        root, split, cache=cache, title="KMNIST", folder=KMNIST_FOLDER, download_name="kmnist"
    )
