"""IDX files (MNIST, Fashion-MNIST, KMNIST), plain or gzip-compressed.

The format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the
number of dimensions D, then D big-endian uint32 sizes, then the values in row-major order.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from endd.data.images.common import (
    CorruptDatasetError,
    DatasetNotFoundError,
    ImageArrays,
    check_split,
    not_found,
)

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
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise CorruptDatasetError(
            f"{path} is not an IDX file (magic bytes {raw[:4].hex() or 'missing'}; expected "
            "00 00 <type code> <dimensions>)"
        )
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_size:
        raise CorruptDatasetError(f"{path} has a truncated IDX header ({ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if len(raw) - header_size != expected:
        raise CorruptDatasetError(
            f"{path} holds {len(raw) - header_size} data bytes but its header {shape} promises "
            f"{expected} (truncated or damaged download?)"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path | None:
    # Standard name, its gzip, and the dotted variant some mirrors use (train-images.idx3-ubyte).
    dotted = stem.replace("-idx", ".idx", 1)
    for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


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
    check_split(split, IDX_SPLITS)
    root = Path(root).expanduser()
    prefix = _SPLIT_PREFIX[split]
    image_stem, label_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    for directory in (root / folder, root):
        image_path, label_path = _find(directory, image_stem), _find(directory, label_stem)
        if image_path is not None and label_path is not None:
            break
    else:
        raise not_found(
            title, download_name, root, folder or ".", [f"{image_stem}[.gz]", f"{label_stem}[.gz]"]
        )
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise CorruptDatasetError(
            f"{image_path} must hold uint8 images [N, H, W], got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise CorruptDatasetError(
            f"{label_path} must hold uint8 labels [N], got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise CorruptDatasetError(
            f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels"
        )
    return ImageArrays(images[:, None], labels.astype(np.int64))


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
    try:
        return load_idx_dataset(
            DEBIAN_DATASETS_ROOT if root is None else root,
            split,
            title="Fashion-MNIST",
            folder=FASHION_MNIST_FOLDER,
            download_name="fashion_mnist",
        )
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
