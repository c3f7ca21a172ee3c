"""CIFAR-10 and CIFAR-100, binary versions (Krizhevsky, 2009; https://www.cs.toronto.edu/~kriz/cifar.html).

Each record is the label byte(s) followed by 3072 pixel bytes: 1024 red, 1024 green, 1024 blue,
each 32×32 row-major. CIFAR-10 records carry one label byte; CIFAR-100 records carry the coarse
(20 superclasses) and then the fine (100 classes) label.

:func:`open_cifar10` and :func:`open_cifar100` read a split in place: image ``i`` is the 3072
bytes after the label byte(s) of record ``i``, read when a batch asks for it; only the labels are
read into memory (one pass over the files, a chunk of records at a time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from endd.data.images.cache import stamp_of
from endd.data.images.common import (
    CorruptDatasetError,
    ImageArrays,
    check_split,
    locate,
    not_found,
    read_text,
)
from endd.data.images.sets import ImageSet
from endd.data.ondisk import ConcatRows, RecordRows

CIFAR_SPLITS = ("train", "test")
PIXELS_PER_IMAGE = 3 * 32 * 32
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch.bin",)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_FOLDER = "cifar-100-binary"
CIFAR100_LABEL_KINDS = ("fine", "coarse")


def read_cifar_binary(
    path: str | Path, *, label_bytes: int, label_index: int, num_classes: int
) -> ImageArrays:
    """Read one CIFAR binary file.

    Args:
        path: a ``.bin`` file of records ``label_bytes`` + 3072 bytes long.
        label_bytes: 1 for CIFAR-10, 2 for CIFAR-100.
        label_index: which label byte to return (CIFAR-100: 0 coarse, 1 fine).
        num_classes: labels must lie in 0..num_classes-1.

    Returns:
        ImageArrays with images uint8 [N, 3, 32, 32] and labels int64 [N].

    Raises:
        CorruptDatasetError: the size is not a whole number of records, or a label is out of range.
    """
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise CorruptDatasetError(f"cannot read {path}: {err.strerror or err}") from None
    record = label_bytes + PIXELS_PER_IMAGE
    if raw.size == 0 or raw.size % record:
        raise CorruptDatasetError(
            f"{path} is {raw.size} bytes, not a whole number of {record}-byte CIFAR records "
            "(truncated download, or the python/matlab version instead of the binary one?)"
        )
    records = raw.reshape(-1, record)
    labels = records[:, label_index].astype(np.int64)
    if labels.max() >= num_classes:
        raise CorruptDatasetError(
            f"{path} holds label {labels.max()} but the dataset has {num_classes} classes"
        )
    images = np.ascontiguousarray(records[:, label_bytes:]).reshape(-1, 3, 32, 32)
    return ImageArrays(images, labels)


_LABEL_CHUNK = 4096  # records per read while collecting the labels (12.6 MB)


def open_cifar_binary(
    path: str | Path, *, label_bytes: int, label_index: int, num_classes: int
) -> tuple[RecordRows, np.ndarray]:
    """One CIFAR binary file read in place: its images as rows [N, 3, 32, 32] (read on demand)
    and its labels (int64 [N], read now), checked as :func:`read_cifar_binary` checks them.

    Raises:
        CorruptDatasetError: unreadable, not a whole number of records, or a label out of range.
    """
    path = Path(path)
    try:
        with open(path, "rb"):
            pass
        size = path.stat().st_size
    except OSError as err:
        raise CorruptDatasetError(f"cannot read {path}: {err.strerror or err}") from None
    record = label_bytes + PIXELS_PER_IMAGE
    if size == 0 or size % record:
        raise CorruptDatasetError(
            f"{path} is {size} bytes, not a whole number of {record}-byte CIFAR records "
            "(truncated download, or the python/matlab version instead of the binary one?)"
        )
    count = size // record
    layout = {"offset": 0, "count": count, "dtype": np.uint8, "record_bytes": record}
    images = RecordRows(path, row_shape=(3, 32, 32), skip=label_bytes, **layout)
    label_rows = RecordRows(path, row_shape=(), skip=label_index, **layout)
    labels = np.empty(count, dtype=np.int64)
    for start in range(0, count, _LABEL_CHUNK):
        labels[start : start + _LABEL_CHUNK] = label_rows.read(start, start + _LABEL_CHUNK)
    if labels.max() >= num_classes:
        raise CorruptDatasetError(
            f"{path} holds label {labels.max()} but the dataset has {num_classes} classes"
        )
    return images, labels


def _open_files(
    directory: Path, names: tuple[str, ...], **record_format: int
) -> tuple[RecordRows | ConcatRows, np.ndarray, list[Path]]:
    paths = [directory / name for name in names]
    parts = [open_cifar_binary(path, **record_format) for path in paths]
    rows = parts[0][0] if len(parts) == 1 else ConcatRows([images for images, _ in parts])
    return rows, np.concatenate([labels for _, labels in parts]), paths


def _read_files(directory: Path, names: tuple[str, ...], **record_format: int) -> ImageArrays:
    parts = [read_cifar_binary(directory / name, **record_format) for name in names]
    return ImageArrays(
        np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])
    )


def load_cifar10(root: str | Path, split: str = "train") -> ImageArrays:
    """CIFAR-10: 32×32 RGB, 50 000 train (5 batches) / 10 000 test, K = 10.

    Args:
        root: data root holding ``cifar-10-batches-bin/`` (or that folder itself).
        split: "train" or "test".

    Returns:
        ImageArrays with images uint8 [N, 3, 32, 32], labels int64 [N], the 10 class names.
    """
    directory, names = _cifar10_files(root, split)
    arrays = _read_files(directory, names, label_bytes=1, label_index=0, num_classes=10)
    return ImageArrays(arrays.images, arrays.labels, CIFAR10_CLASSES)


def _cifar10_files(root: str | Path, split: str) -> tuple[Path, tuple[str, ...]]:
    check_split(split, CIFAR_SPLITS)
    names = CIFAR10_TRAIN_FILES if split == "train" else CIFAR10_TEST_FILES
    directory = locate(root, CIFAR10_FOLDER, names[0])
    if directory is None or not all((directory / name).is_file() for name in names):
        raise not_found("CIFAR-10", "cifar10", Path(root), CIFAR10_FOLDER, names)
    return directory, names


def open_cifar10(root: str | Path, split: str = "train") -> ImageSet:
    """:func:`load_cifar10`'s split, read in place (see :func:`open_cifar_binary`)."""
    directory, names = _cifar10_files(root, split)
    rows, labels, paths = _open_files(
        directory, names, label_bytes=1, label_index=0, num_classes=10
    )
    definition = {"format": "cifar", "files": [str(p.resolve()) for p in paths]}
    return ImageSet(rows, labels, CIFAR10_CLASSES, definition, stamp_of(paths))


def load_cifar100(root: str | Path, split: str = "train", *, labels: str = "fine") -> ImageArrays:
    """CIFAR-100: 32×32 RGB, 50 000 / 10 000, 100 fine classes in 20 coarse superclasses.

    Args:
        root: data root holding ``cifar-100-binary/`` (or that folder itself).
        split: "train" or "test".
        labels: "fine" (K = 100, the usual benchmark) or "coarse" (K = 20).

    Returns:
        ImageArrays with images uint8 [N, 3, 32, 32], labels int64 [N], and the class names when
        ``fine_label_names.txt`` / ``coarse_label_names.txt`` are present.
    """
    directory, fine = _cifar100_file(root, split, labels)
    arrays = read_cifar_binary(
        directory / f"{split}.bin",
        label_bytes=2,
        label_index=int(fine),
        num_classes=100 if fine else 20,
    )
    return ImageArrays(arrays.images, arrays.labels, _class_names(directory, labels))


def _cifar100_file(root: str | Path, split: str, labels: str) -> tuple[Path, bool]:
    check_split(split, CIFAR_SPLITS)
    if labels not in CIFAR100_LABEL_KINDS:
        raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
    name = f"{split}.bin"
    directory = locate(root, CIFAR100_FOLDER, name)
    if directory is None:
        raise not_found("CIFAR-100", "cifar100", Path(root), CIFAR100_FOLDER, [name])
    return directory, labels == "fine"


def _class_names(directory: Path, labels: str) -> tuple[str, ...] | None:
    names_file = directory / f"{labels}_label_names.txt"
    if not names_file.is_file():
        return None
    class_names = tuple(line.strip() for line in read_text(names_file).splitlines())
    return tuple(n for n in class_names if n) or None


def open_cifar100(root: str | Path, split: str = "train", *, labels: str = "fine") -> ImageSet:
    """:func:`load_cifar100`'s split, read in place (see :func:`open_cifar_binary`)."""
    directory, fine = _cifar100_file(root, split, labels)
    path = directory / f"{split}.bin"
    rows, label_array = open_cifar_binary(
        path, label_bytes=2, label_index=int(fine), num_classes=100 if fine else 20
    )
    definition = {"format": "cifar", "files": [str(path.resolve())], "labels": labels}
    class_names = _class_names(directory, labels)
    return ImageSet(rows, label_array, class_names, definition, stamp_of([path]))
