"""Write images in the datasets' own on-disk formats: tiny stand-ins for tests and examples.

:func:`write_fake_dataset` lays out random images exactly where ``endd data download`` would put
the real dataset, so every reader, config and pipeline can run end to end without the download.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import scipy.io

from endd.data.images.cifar import (
    CIFAR10_FOLDER,
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
    CIFAR100_FOLDER,
)
from endd.data.images.folder import OOD_FOLDERS, TINYIMAGENET_FOLDER
from endd.data.images.idx import (
    FASHION_MNIST_FOLDER,
    IDX_DTYPES,
    KMNIST_FOLDER,
    MNIST_FOLDER,
)
from endd.data.images.svhn import SVHN_FOLDER

_IDX_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
_IDX_FOLDERS = {
    "mnist": MNIST_FOLDER,
    "fashion_mnist": FASHION_MNIST_FOLDER,
    "kmnist": KMNIST_FOLDER,
}
FAKE_DATASETS = (*_IDX_FOLDERS, "cifar10", "cifar100", "svhn", "tinyimagenet", *OOD_FOLDERS)


def write_idx(path: str | Path, values: np.ndarray) -> Path:
    """Write an array as an IDX file (gzip-compressed when ``path`` ends in .gz)."""
    values = np.asarray(values)
    code = _IDX_CODES.get(values.dtype.newbyteorder("="))
    if code is None or values.ndim == 0:
        raise ValueError(
            f"IDX stores 1+-D uint8/int8/int16/int32/float32/float64, got {values.dtype}"
        )
    header = bytes([0, 0, code, values.ndim]) + np.asarray(values.shape, dtype=">u4").tobytes()
    payload = header + values.astype(IDX_DTYPES[code], copy=False).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as file:
            file.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_cifar_binary(path: str | Path, images: np.ndarray, *labels: np.ndarray) -> Path:
    """Write CIFAR binary records: the label byte(s) (CIFAR-100: coarse, fine), then 3072 pixels.

    Args:
        images: uint8 [N, 3, 32, 32].
        labels: one [N] array per label byte, each in 0..255.
    """
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (3, 32, 32):
        raise ValueError(f"images must be [N, 3, 32, 32], got {images.shape}")
    columns = [np.asarray(lab, dtype=np.uint8).reshape(-1, 1) for lab in labels]
    records = np.concatenate([*columns, images.reshape(len(images), -1)], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records.tofile(path)
    return path


def write_svhn_mat(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write an SVHN ``.mat``: ``X`` [32, 32, 3, N] and ``y`` [N, 1] with digit 0 stored as 10."""
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    stored = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": stored})
    return path


def write_image_file(path: str | Path, pixels: np.ndarray) -> Path:
    """Write uint8 [C, H, W] (C = 1 or 3) as PNG or JPEG, chosen by the file's suffix."""
    from PIL import Image

    pixels = np.asarray(pixels, dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    image.save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else image.save(path)
    return path


def write_fake_dataset(
    name: str,
    root: str | Path,
    *,
    num_images: int = 20,
    num_classes: int | None = None,
    seed: int = 0,
) -> Path:
    """Random images in ``name``'s real format and layout under ``root`` (the download layout).

    Args:
        name: one of :data:`FAKE_DATASETS`.
        root: the data root.
        num_images: images per file (CIFAR-10 train has 5 files) or per split folder.
        num_classes: classes to use (default: the dataset's K; TinyImageNet: 3 wnids).
        seed: fixes pixels and labels.

    Returns:
        The dataset folder that was written.
    """
    if name not in FAKE_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; fakes exist for {', '.join(FAKE_DATASETS)}")
    if num_images < 1:
        raise ValueError(f"num_images must be ≥ 1, got {num_images}")
    rng = np.random.default_rng(seed)
    root = Path(root).expanduser()

    def pixels(*shape: int) -> np.ndarray:
        return rng.integers(0, 256, size=(num_images, *shape), dtype=np.uint8)

    def labels(classes: int) -> np.ndarray:
        return rng.integers(0, classes, size=num_images)

    if name in _IDX_FOLDERS:
        folder = root / _IDX_FOLDERS[name]
        for prefix in ("train", "t10k"):
            write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", pixels(28, 28))
            write_idx(
                folder / f"{prefix}-labels-idx1-ubyte.gz",
                labels(num_classes or 10).astype(np.uint8),
            )
        return folder
    if name == "cifar10":
        folder = root / CIFAR10_FOLDER
        for file in (*CIFAR10_TRAIN_FILES, *CIFAR10_TEST_FILES):
            write_cifar_binary(folder / file, pixels(3, 32, 32), labels(num_classes or 10))
        return folder
    if name == "cifar100":
        folder = root / CIFAR100_FOLDER
        for split in ("train", "test"):
            fine = labels(num_classes or 100)
            write_cifar_binary(folder / f"{split}.bin", pixels(3, 32, 32), fine // 5, fine)
        return folder
    if name == "svhn":
        folder = root / SVHN_FOLDER
        for split in ("train", "test"):
            write_svhn_mat(
                folder / f"{split}_32x32.mat", pixels(3, 32, 32), labels(num_classes or 10)
            )
        return folder
    if name == "tinyimagenet":
        folder = root / TINYIMAGENET_FOLDER
        wnids = [f"n{index:08d}" for index in range(num_classes or 3)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
        train_labels, val_labels, lines = labels(len(wnids)), labels(len(wnids)), []
        for i, (image, label) in enumerate(zip(pixels(3, 64, 64), train_labels, strict=True)):
            write_image_file(
                folder / "train" / wnids[label] / "images" / f"{wnids[label]}_{i}.JPEG", image
            )
        for i, (image, label) in enumerate(zip(pixels(3, 64, 64), val_labels, strict=True)):
            write_image_file(folder / "val" / "images" / f"val_{i}.JPEG", image)
            lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
        (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
        for i, image in enumerate(pixels(3, 64, 64)):
            write_image_file(folder / "test" / "images" / f"test_{i}.JPEG", image)
        return folder
    folder = root / OOD_FOLDERS[name]
    for i, image in enumerate(pixels(3, 32, 32)):
        write_image_file(folder / "test" / f"{i}.png", image)
    return folder
