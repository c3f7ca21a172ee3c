"""CIFAR-10 and CIFAR-100, binary versions (Krizhevsky, 2009; https://www.cs.toronto.edu/~kriz/cifar.html).

Each record is the label byte(s) followed by 3072 pixel bytes: 1024 red, 1024 green, 1024 blue,
each 32×32 row-major. CIFAR-10 records carry one label byte; CIFAR-100 records carry the coarse
(20 superclasses) and then the fine (100 classes) label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from endd.data.images.common import (
    CorruptDatasetError,
    ImageArrays,
    check_split,
    locate,
    not_found,
    read_text,
)

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
    check_split(split, CIFAR_SPLITS)
    names = CIFAR10_TRAIN_FILES if split == "train" else CIFAR10_TEST_FILES
    directory = locate(root, CIFAR10_FOLDER, names[0])
    if directory is None or not all((directory / name).is_file() for name in names):
        raise not_found("CIFAR-10", "cifar10", Path(root), CIFAR10_FOLDER, names)
    arrays = _read_files(directory, names, label_bytes=1, label_index=0, num_classes=10)
    return ImageArrays(arrays.images, arrays.labels, CIFAR10_CLASSES)


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
    check_split(split, CIFAR_SPLITS)
    if labels not in CIFAR100_LABEL_KINDS:
        raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
    name = f"{split}.bin"
    directory = locate(root, CIFAR100_FOLDER, name)
    if directory is None:
        raise not_found("CIFAR-100", "cifar100", Path(root), CIFAR100_FOLDER, [name])
    fine = labels == "fine"
    arrays = read_cifar_binary(
        directory / name, label_bytes=2, label_index=int(fine), num_classes=100 if fine else 20
    )
    names_file = directory / f"{labels}_label_names.txt"
    class_names = None
    if names_file.is_file():
        class_names = tuple(line.strip() for line in read_text(names_file).splitlines())
        class_names = tuple(n for n in class_names if n) or None
    return ImageArrays(arrays.images, arrays.labels, class_names)
