"""Readers for standard image datasets, without torchvision.

Every reader returns :class:`ImageArrays`: uint8 ``images`` [N, C, H, W] and int64 ``labels`` [N]
(None for unlabelled sets). :func:`load_image_dataset` reads any of them by the name a config uses.
:func:`open_image_set` opens the same split without reading its images into memory: an
:class:`ImageSet` whose rows are read from disk a batch at a time (in place for uncompressed IDX
and CIFAR binaries, from a one-time conversion in the image cache otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from endd.data.images.cache import SetCache
from endd.data.images.cifar import (
    load_cifar10,
    load_cifar100,
    open_cifar10,
    open_cifar100,
    read_cifar_binary,
)
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
    open_ood_folder,
    open_tinyimagenet,
    read_image,
)
from endd.data.images.idx import (
    load_fashion_mnist,
    load_idx_dataset,
    load_kmnist,
    load_mnist,
    open_fashion_mnist,
    open_kmnist,
    open_mnist,
    read_idx,
)
from endd.data.images.sets import ImageSet, conformed, in_memory_set, subset
from endd.data.images.svhn import load_svhn, open_svhn
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
    "ImageSet",
    "SetCache",
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
    "open_image_set",
    "read_cifar_binary",
    "read_idx",
    "read_image",
    "resize_images",
    "subset",
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


#: Readers that leave the images on disk (see :func:`open_image_set`); a dataset with only a
#: reader in ``_READERS`` is read whole into memory.
_OPENERS: dict[str, Callable[[Path | None, str, SetCache], ImageSet]] = {
    "mnist": lambda root, split, cache: open_mnist(root, split, cache=cache),
    "fashion_mnist": lambda root, split, cache: open_fashion_mnist(root, split, cache=cache),
    "kmnist": lambda root, split, cache: open_kmnist(root, split, cache=cache),
    "cifar10": lambda root, split, cache: open_cifar10(root, split),
    "cifar100": lambda root, split, cache: open_cifar100(root, split),
    "svhn": lambda root, split, cache: open_svhn(root, split, cache=cache),
}


def open_image_set(
    name: str,
    root: str | Path | None = None,
    split: str | None = None,
    *,
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    cache: SetCache | None = None,
) -> ImageSet:
    """:func:`load_image_dataset`'s split, its images left on disk and read a batch at a time.

    Uncompressed IDX files and CIFAR binaries are read in place; gzip-compressed IDX files, SVHN
    ``.mat`` files, folders of image files and any conversion to ``channels`` / ``size`` are
    prepared once, a chunk at a time, into ``cache`` (see :mod:`endd.data.images.cache`; None:
    in memory). The pixels are bit for bit those :func:`load_image_dataset` returns.

    Args:
        name, root, split, channels, size: as in :func:`load_image_dataset`.
        cache: where prepared sets are kept.

    Returns:
        ImageSet with rows uint8 [N, C, H, W] and labels int64 [N] (None for unlabelled sets).
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
    cache = cache or SetCache(None)
    if name in OOD_FOLDERS:  # crops and resizes come in mixed sizes: always read at one size
        images = open_ood_folder(
            name,
            root_path,
            cache=cache,
            size=size or info.size,
            channels=channels or info.channels,
        )
    elif name == "tinyimagenet":
        images = open_tinyimagenet(
            root_path, split, cache=cache, size=size, channels=channels or info.channels
        )
    elif name in _OPENERS:
        images = _OPENERS[name](root_path, split, cache)
    else:
        arrays = _READERS[name](root_path, split)
        root_text = None if root_path is None else str(root_path.resolve())
        images = in_memory_set(arrays, {"dataset": name, "split": split, "root": root_text})
    if channels is not None or size is not None:
        images = conformed(images, channels, size, cache, f"{name}-{split}")
    return images


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
    return open_image_set(name, root, split, channels=channels, size=size).arrays()
