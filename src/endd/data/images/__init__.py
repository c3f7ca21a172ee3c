"""Readers for standard image datasets, without torchvision.

Every reader returns :class:`ImageArrays`: uint8 ``images`` [N, C, H, W] and int64 ``labels`` [N]
(None for unlabelled sets). :func:`load_image_dataset` reads any of them by the name a config uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from endd.data.images.cifar import load_cifar10, load_cifar100, read_cifar_binary
from endd.data.images.common import (
    CorruptDatasetError,
    DatasetNotFoundError,
    ImageArrays,
    check_split,
)
from endd.data.images.digits import load_sklearn_digits
from endd.data.images.folder import (
    OOD_FOLDERS,
    load_image_folder,
    load_ood_folder,
    load_tinyimagenet,
    load_unlabelled_folder,
    read_image,
)
from endd.data.images.idx import (
    load_fashion_mnist,
    load_idx_dataset,
    load_kmnist,
    load_mnist,
    read_idx,
)
from endd.data.images.svhn import load_svhn
from endd.data.images.transforms import (
    channel_mean_std,
    conform_images,
    convert_channels,
    normalise,
    resize_images,
    to_float,
)
from endd.data.images.writers import (
    FAKE_DATASETS,
    write_cifar_binary,
    write_fake_dataset,
    write_idx,
    write_image_file,
    write_svhn_mat,
)

__all__ = [
    "FAKE_DATASETS",
    "IMAGE_DATASETS",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "ImageArrays",
    "ImageDatasetInfo",
    "channel_mean_std",
    "conform_images",
    "convert_channels",
    "load_cifar10",
    "load_cifar100",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_image_dataset",
    "load_image_folder",
    "load_kmnist",
    "load_mnist",
    "load_ood_folder",
    "load_sklearn_digits",
    "load_svhn",
    "load_tinyimagenet",
    "load_unlabelled_folder",
    "normalise",
    "read_cifar_binary",
    "read_idx",
    "read_image",
    "resize_images",
    "to_float",
    "write_cifar_binary",
    "write_fake_dataset",
    "write_idx",
    "write_image_file",
    "write_svhn_mat",
]


@dataclass(frozen=True)
class ImageDatasetInfo:
    """What a config needs to know about a named image dataset before reading it.

    Attributes:
        name: the config name (also the ``endd data download`` name where downloadable).
        title: the name people write.
        splits: the splits it has; single-split sets (OOD sources) have only "all".
        num_classes: K, or None for unlabelled sets.
        channels, size: native C and (H, W).
        needs_root: False where the data ships with a package (digits, Debian Fashion-MNIST).
    """

    name: str
    title: str
    splits: tuple[str, ...]
    num_classes: int | None
    channels: int
    size: tuple[int, int]
    needs_root: bool = True


IMAGE_DATASETS: dict[str, ImageDatasetInfo] = {
    info.name: info
    for info in (
        ImageDatasetInfo("mnist", "MNIST", ("train", "test"), 10, 1, (28, 28)),
        ImageDatasetInfo(
            "fashion_mnist", "Fashion-MNIST", ("train", "test"), 10, 1, (28, 28), needs_root=False
        ),
        ImageDatasetInfo("kmnist", "KMNIST", ("train", "test"), 10, 1, (28, 28)),
        ImageDatasetInfo("cifar10", "CIFAR-10", ("train", "test"), 10, 3, (32, 32)),
        ImageDatasetInfo("cifar100", "CIFAR-100", ("train", "test"), 100, 3, (32, 32)),
        ImageDatasetInfo("svhn", "SVHN", ("train", "test", "extra"), 10, 3, (32, 32)),
        ImageDatasetInfo("tinyimagenet", "TinyImageNet", ("train", "val"), 200, 3, (64, 64)),
        ImageDatasetInfo("digits", "sklearn digits", ("all",), 10, 1, (8, 8), needs_root=False),
        ImageDatasetInfo("lsun_crop", "LSUN (crop)", ("all",), None, 3, (32, 32)),
        ImageDatasetInfo("lsun_resize", "LSUN (resize)", ("all",), None, 3, (32, 32)),
        ImageDatasetInfo("tim_crop", "TinyImageNet (crop)", ("all",), None, 3, (32, 32)),
        ImageDatasetInfo("tim_resize", "TinyImageNet (resize)", ("all",), None, 3, (32, 32)),
    )
}

_READERS: dict[str, Callable[[Path | None, str], ImageArrays]] = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "kmnist": load_kmnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "digits": lambda root, split: load_sklearn_digits(),
}


def load_image_dataset(
    name: str,
    root: str | Path | None = None,
    split: str | None = None,
    *,
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
) -> ImageArrays:
    """Read a dataset by its config name, optionally made to look like another (for OOD sets).

    Args:
        name: a key of :data:`IMAGE_DATASETS`.
        root: the data root that ``endd data download NAME --root ROOT`` fills; None is allowed
            only for "digits" (scikit-learn's copy) and "fashion_mnist" (the Debian package).
        split: one of the dataset's splits; None means "test" ("val" for TinyImageNet, "all"
            for single-split sets).
        channels: convert to this many channels (1 or 3); None keeps the native count.
        size: resize to this side or (height, width); None keeps the native size (32×32 for
            the LSUN/TIM folders, whose files vary).

    Returns:
        ImageArrays with images uint8 [N, C, H, W].
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; known: {', '.join(IMAGE_DATASETS)}")
    info = IMAGE_DATASETS[name]
    if split is None:
        split = "val" if name == "tinyimagenet" else "test" if "test" in info.splits else "all"
    check_split(split, info.splits)
    if root is None and info.needs_root:
        raise ValueError(f"{info.title} needs a data root (where `endd data download` put it)")
    root_path = None if root is None else Path(root).expanduser()
    if name in OOD_FOLDERS:  # crops and resizes come in mixed sizes: always read at one size
        arrays = load_ood_folder(
            name, root_path, size=size or info.size, channels=channels or info.channels
        )
    elif name == "tinyimagenet":
        arrays = load_tinyimagenet(root_path, split, size=size, channels=channels or info.channels)
    else:
        arrays = _READERS[name](root_path, split)
    if channels is not None or size is not None:
        images = conform_images(
            arrays.images, channels or arrays.images.shape[1], size or arrays.images.shape[2:]
        )
        arrays = ImageArrays(images, arrays.labels, arrays.class_names)
    return arrays
