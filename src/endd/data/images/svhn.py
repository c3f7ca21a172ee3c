"""SVHN cropped digits, ``.mat`` format (Netzer et al., 2011; http://ufldl.stanford.edu/housenumbers/).

``{split}_32x32.mat`` holds ``X`` uint8 [32, 32, 3, N] and ``y`` [N, 1] with labels 1..10, where
10 stands for the digit 0.

scipy reads a ``.mat`` variable whole (SVHN's are zlib-compressed MATLAB 5 variables, which it
decompresses in one piece), so :func:`open_svhn` converts a split once, in memory, into the image
cache (:mod:`endd.data.images.cache`); every later run reads the cached ``.npy`` a batch at a
time. That one conversion holds the split in memory twice (the ``.mat`` layout and the [N, C, H,
W] copy): 450 MB for train, 3.3 GB for extra.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.io

from endd.data.images.cache import SetCache, stamp_of
from endd.data.images.common import (
    CorruptDatasetError,
    ImageArrays,
    check_split,
    locate,
    not_found,
)
from endd.data.images.sets import ImageSet

SVHN_SPLITS = ("train", "test", "extra")
SVHN_FOLDER = "svhn"
SVHN_CLASSES = tuple(str(d) for d in range(10))


_MI_MATRIX, _MI_COMPRESSED, _MI_UINT32 = 14, 15, 6
_COMPLEX_FLAG = 0x0800


def _check_mat_structure(path: Path) -> None:
    """Walk the top-level variables of a MATLAB 5 file before scipy reads it.

    scipy's reader trusts a variable's header: a real array flagged complex (one flipped bit)
    makes it read past its buffer and crash the process (scipy 1.17, segmentation fault). SVHN's
    ``X`` and ``y`` are real, so any complex flag, and any variable running past the end of the
    file, is refused here. Other layouts (v4, v7.3) are left to scipy.

    Raises:
        CorruptDatasetError: the file is damaged in one of those ways.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header = handle.read(128)
            if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
                return  # not MATLAB 5: scipy refuses it with an exception, not a crash
            endian = "<" if header[126:128] == b"IM" else ">"
            position = 128
            while position + 8 <= size:
                handle.seek(position)
                kind, length = struct.unpack(f"{endian}II", handle.read(8))
                if kind >> 16:  # a small data element: 4 bytes of data in the tag itself
                    position += 8
                    continue
                if position + 8 + length > size:
                    raise CorruptDatasetError(
                        f"{path}: the variable at byte {position} claims {length} bytes, past "
                        f"the end of the file ({size} bytes; truncated download?)"
                    )
                head = handle.read(min(length, 256))
                if kind == _MI_COMPRESSED:
                    head = zlib.decompressobj().decompress(head, 64)
                    kind, head = (struct.unpack(f"{endian}I", head[:4])[0], head[8:])
                if kind == _MI_MATRIX and len(head) >= 12:
                    flag_kind, flag_length = struct.unpack(f"{endian}II", head[:8])
                    flags = struct.unpack(f"{endian}I", head[8:12])[0]
                    if flag_kind != _MI_UINT32 or flag_length != 8 or flags & _COMPLEX_FLAG:
                        raise CorruptDatasetError(
                            f"{path}: the variable at byte {position} has a damaged header "
                            "(array flags); SVHN's X and y are real arrays"
                        )
                position += 8 + (length if kind == _MI_COMPRESSED else -(-length // 8) * 8)
    except (OSError, struct.error, zlib.error) as err:
        raise CorruptDatasetError(f"{path} is not a readable .mat file: {err}") from None


def load_svhn(root: str | Path, split: str = "train") -> ImageArrays:
    """SVHN: 32×32 RGB house-number digits, 73 257 train / 26 032 test / 531 131 extra, K = 10.

    Args:
        root: data root holding ``svhn/{split}_32x32.mat`` (or the .mat files directly).
        split: "train", "test" or "extra".

    Returns:
        ImageArrays with images uint8 [N, 3, 32, 32] and labels int64 [N] with digit d as label d
        (the file's label 10 becomes 0).

    Raises:
        DatasetNotFoundError: the .mat file is missing.
        CorruptDatasetError: it cannot be parsed or lacks ``X``/``y`` of the documented shapes.
    """
    path = _svhn_file(root, split)
    _check_mat_structure(path)
    try:
        contents = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... on damaged files
        raise CorruptDatasetError(f"{path} is not a readable .mat file: {err}") from None
    if "X" not in contents or "y" not in contents:
        raise CorruptDatasetError(f"{path} lacks the variables X and y of the SVHN format")
    pixels, labels = contents["X"], contents["y"]
    if pixels.ndim != 4 or pixels.shape[:3] != (32, 32, 3) or pixels.dtype != np.uint8:
        raise CorruptDatasetError(
            f"{path}: X must be uint8 [32, 32, 3, N], got {pixels.dtype} {pixels.shape}"
        )
    labels = labels.reshape(-1).astype(np.int64)
    if len(labels) != pixels.shape[3]:
        raise CorruptDatasetError(f"{path}: X has {pixels.shape[3]} images, y {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 10):
        raise CorruptDatasetError(
            f"{path}: labels must be 1..10, got {labels.min()}..{labels.max()}"
        )
    images = np.ascontiguousarray(pixels.transpose(3, 2, 0, 1))  # [H, W, C, N] -> [N, C, H, W]
    return ImageArrays(images, labels % 10, SVHN_CLASSES)


def _svhn_file(root: str | Path, split: str) -> Path:
    check_split(split, SVHN_SPLITS)
    name = f"{split}_32x32.mat"
    directory = locate(root, SVHN_FOLDER, name)
    if directory is None:
        raise not_found("SVHN", "svhn", Path(root), SVHN_FOLDER, [name])
    return directory / name


def open_svhn(root: str | Path, split: str = "train", *, cache: SetCache) -> ImageSet:
    """:func:`load_svhn`'s split, converted once into ``cache`` (images and labels) and read
    from there a batch at a time."""
    path = _svhn_file(root, split)
    definition = {"format": "svhn", "file": str(path.resolve())}

    def build():
        arrays = load_svhn(root, split)
        images, labels = arrays.images, arrays.labels

        def chunks():
            return (images[i : i + 8192] for i in range(0, len(images), 8192))

        return {
            "images": (images.shape, np.dtype(np.uint8), chunks),
            "labels": (labels.shape, np.dtype(np.int64), lambda: [labels]),
        }

    stamp = stamp_of([path])
    parts = cache.prepare(f"svhn-{split}", definition, stamp, build)
    labels = parts["labels"].read(0, len(parts["labels"]))
    return ImageSet(parts["images"], labels, SVHN_CLASSES, definition, stamp)
