"""Image datasets as a :class:`DataBundle`: the in-domain splits, the OOD sets and the auxiliary set
that the ``data`` config section names, converted to float, standardised per channel with the
training statistics, and shaped alike.

Names in ``data.ood`` and ``data.aux`` are either another dataset (read from ``data.path`` and
converted to the in-domain channel count and size, e.g. ``digits`` for Fashion-MNIST, ``svhn``,
``lsun_crop``, ``tim_crop`` for CIFAR) or a synthetic shift of the in-domain images (see
:data:`endd.data.shifts.SHIFTS`: ``gaussian_noise``, ``uniform_noise``, ``constant``, ``hflip``,
``vflip``, ``inverted``).

Which images each set comes from, and why:

- training set: the dataset's train split, optionally a random ``data.train_size`` subset drawn with
  the run's seed (each seed sees its own subset, like its own initialisation);
- test set and OOD sets: the test split (TinyImageNet: val) and each OOD dataset's test split, a
  ``data.test_size`` / ``data.ood_size`` subset drawn with a *fixed* seed, so runs with different
  seeds are scored on the same images; shifts of the in-domain data transform test images;
- auxiliary set: training data for the +AUX students, so it comes from train splits only (an aux
  shift transforms training images; an aux dataset is read from its train split), drawn with the
  run's seed.

The auxiliary set must not share a source with any OOD set (``lsun_crop`` and ``lsun_resize`` are
both LSUN; ``tim_crop``, ``tim_resize`` and ``tinyimagenet`` are all TinyImageNet) nor with the
in-domain data: OOD detection scored on images drawn from the distillation data would be optimistic.

No set is read whole into memory: each split is an :class:`~endd.data.images.ImageSet` whose
images stay on disk (read in place, or prepared once into the image cache ``data.cache``, see
:mod:`endd.data.images.cache`), subsets are index lists over it, the training statistics are
accumulated a chunk at a time, and every split of the bundle is a
:class:`~endd.data.ondisk.StandardisedRows` that converts, scales and standardises each batch as
it is read, with the same float32 operations in the same order as a whole split would be.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from endd.data.augment import random_crop_flip
from endd.data.bundle import DataBundle
from endd.data.images import (
    IMAGE_DATASETS,
    ImageSet,
    SetCache,
    channel_mean_std,
    open_image_set,
    subset,
)
from endd.data.images.cache import default_cache_folder
from endd.data.ondisk import Rows, StandardisedRows
from endd.data.shifts import SHIFTS, shift_chunks
from endd.errors import ConfigError, DataError

__all__ = [
    "IN_DOMAIN_DATASETS",
    "BatchSeededCropFlip",
    "check_image_data",
    "image_cache",
    "image_set_source",
    "load_image_bundle",
    "required_datasets",
    "training_augmentation",
]

log = logging.getLogger("endd")

#: Labelled datasets a run can train on (``data.name``).
IN_DOMAIN_DATASETS = (
    "fashion_mnist",
    "mnist",
    "kmnist",
    "cifar10",
    "cifar100",
    "svhn",
    "tinyimagenet",
    "digits",
)
#: Sets that share their images: the ODIN crops/resizes are cut from LSUN and TinyImageNet.
_SOURCES = {
    "lsun_crop": "LSUN",
    "lsun_resize": "LSUN",
    "tim_crop": "TinyImageNet",
    "tim_resize": "TinyImageNet",
    "tinyimagenet": "TinyImageNet",
}
#: Digits and characters are not mirror-symmetric: no horizontal flips when augmenting them.
_NO_FLIP = ("mnist", "kmnist", "svhn", "digits")
#: scikit-learn's digits have one split; this fraction (a fixed draw) is held out as the test set.
DIGITS_TEST_FRACTION = 0.3
_EVALUATION_SEED = 0  # test and OOD subsets: the same images for every run seed
_MERSENNE = 2**31 - 1


def image_set_source(name: str) -> str:
    """What a set named in ``data.ood`` / ``data.aux`` is drawn from: a dataset's title, or
    ``"shift:NAME"`` for a synthetic shift of the in-domain images.

    Raises:
        ConfigError: ``name`` is neither an image dataset nor a shift.
    """
    if name in SHIFTS:
        return f"shift:{name}"
    if name in IMAGE_DATASETS:
        return _SOURCES.get(name, IMAGE_DATASETS[name].title)
    raise ConfigError(
        f"unknown image set '{name}'; use a dataset ({', '.join(IMAGE_DATASETS)}) or a "
        f"synthetic shift ({', '.join(SHIFTS)})"
    )


def check_image_data(data: dict[str, Any]) -> None:
    """Validate the ``data`` section of an image run before anything is read.

    Raises:
        ConfigError: unknown names, an OOD set drawn from the in-domain data, or an auxiliary set
            that shares its source with the in-domain data or with an OOD set.
    """
    name = data["name"]
    if name not in IN_DOMAIN_DATASETS:
        raise ConfigError(
            f"'{name}' is not a labelled image dataset; choose from {', '.join(IN_DOMAIN_DATASETS)}"
        )
    home = image_set_source(name)
    ood_sources = {}
    for ood in data["ood"]:
        source = image_set_source(ood)
        if source == home:
            raise ConfigError(
                f"OOD set '{ood}' is drawn from the in-domain data ({home}): it is not out of "
                "distribution"
            )
        ood_sources[ood] = source
    aux = data["aux"]
    if aux is None:
        return
    source = image_set_source(aux)
    if source == home:
        raise ConfigError(
            f"auxiliary set '{aux}' is the in-domain dataset ({home}); use a shift or another "
            "dataset on which the ensemble disagrees"
        )
    for ood, ood_source in ood_sources.items():
        if ood_source == source:
            raise ConfigError(
                f"auxiliary set '{aux}' and OOD set '{ood}' are both drawn from {source}: "
                "evaluating OOD detection on the distillation data's source would be optimistic"
            )


def required_datasets(data: dict[str, Any]) -> list[str]:
    """Datasets the run reads from ``data.path`` (names for ``endd data download``), in order.

    Shifts are made from the in-domain images; ``digits`` ships with scikit-learn, and
    Fashion-MNIST without ``data.path`` is the Debian package.
    """
    names = [data["name"], *data["ood"], *([data["aux"]] if data["aux"] else [])]
    packaged = {"digits"} | ({"fashion_mnist"} if data.get("path") is None else set())
    needed = [n for n in names if n in IMAGE_DATASETS and n not in packaged]
    return list(dict.fromkeys(needed))


def _key(text: str) -> int:
    return zlib.crc32(text.encode())


def _subset(n_available: int, wanted: int | None, *key: int) -> np.ndarray | None:
    """Sorted indices of a random subset of size ``wanted`` (None: keep everything)."""
    if wanted is None or wanted >= n_available:
        return None
    rng = np.random.default_rng(list(key))
    return np.sort(rng.choice(n_available, size=wanted, replace=False))


def image_cache(data: dict[str, Any]) -> SetCache:
    """The image cache ``data.cache`` names (null: ``$XDG_CACHE_HOME/endd``)."""
    folder = data.get("cache")
    return SetCache(Path(folder).expanduser() if folder else default_cache_folder())


def _root(data: dict[str, Any], name: str) -> Path | None:
    info = IMAGE_DATASETS[name]
    if data.get("path") is None and info.needs_root:
        raise DataError(
            f"{info.title} needs a data root: set data.path=DIR (`endd data download {name} "
            "--root DIR` puts it there)"
        )
    return None if data.get("path") is None else Path(data["path"]).expanduser()


def _read(
    name: str,
    data: dict[str, Any],
    split: str,
    *,
    channels: int | None,
    size: Any,
    cache: SetCache,
) -> ImageSet:
    try:
        return open_image_set(
            name, _root(data, name), split, channels=channels, size=size, cache=cache
        )
    except ValueError as err:  # DataError is a ValueError too; keep the readers' own messages
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot read {IMAGE_DATASETS[name].title}: {err}") from None


def _in_domain(data: dict[str, Any], cache: SetCache) -> tuple[ImageSet, ImageSet, int]:
    """Full train and test splits (converted to ``data.channels`` / ``data.size``) and K."""
    name = data["name"]
    info = IMAGE_DATASETS[name]
    convert = {"channels": data.get("channels"), "size": data.get("size"), "cache": cache}
    if name == "digits":  # one split: hold out a fixed part as the test set
        everything = _read(name, data, "all", **convert)
        order = np.random.default_rng(_EVALUATION_SEED).permutation(len(everything))
        n_test = round(DIGITS_TEST_FRACTION * len(everything))
        train = subset(everything, np.sort(order[n_test:]))
        test = subset(everything, np.sort(order[:n_test]))
    else:
        train = _read(name, data, "train", **convert)
        test = _read(name, data, "val" if name == "tinyimagenet" else "test", **convert)
    num_classes = info.num_classes
    if name == "tinyimagenet" and train.class_names:
        num_classes = len(train.class_names)  # the wnids the folder lists
    for split, images in (("train", train), ("test", test)):
        if images.labels is None or len(images) == 0:
            raise DataError(f"{info.title} {split} split holds no labelled images")
        if images.labels.min() < 0 or images.labels.max() >= num_classes:
            raise DataError(
                f"{info.title} {split} labels must lie in 0..{num_classes - 1}, got "
                f"{images.labels.min()}..{images.labels.max()}"
            )
    return train, test, num_classes


def _image_set(
    name: str,
    data: dict[str, Any],
    *,
    role: str,
    size: int,
    reference: ImageSet,
    seed: int,
    cache: SetCache,
) -> tuple[Rows, int | None]:
    """``size`` images (uint8, or float32 in [0, 1] for shifts) shaped like ``reference``, and
    their channel stride (see :class:`~endd.data.images.ImageSet`).

    Args:
        role: "ood" (evaluation: test splits) or "aux" (training: train splits).
        reference: the in-domain images a shift transforms, uint8 [N, C, H, W].
    """
    key = _key(f"{role}:{name}")
    if name in SHIFTS:
        state = int(np.random.SeedSequence([seed, key]).generate_state(1)[0])
        shape = (size, *reference.rows.shape[1:])
        definition = {"shift": name, "n": size, "seed": state, "of": reference.definition}

        def chunks():
            return shift_chunks(name, reference.rows, size, state)

        def build():
            return {"images": (shape, np.dtype(np.float32), chunks)}

        return cache.prepare(f"{role}-{name}", definition, reference.stamp, build)["images"], None
    info = IMAGE_DATASETS[name]
    splits = info.splits
    split = "train" if role == "aux" and "train" in splits else None  # None: the test split
    channels, height, width = reference.rows.shape[1:]
    images = _read(name, data, split, channels=channels, size=(height, width), cache=cache)
    if len(images) < size:
        log.info("%s has %d images, fewer than data.%s_size=%d", name, len(images), role, size)
    drawn = subset(images, _subset(len(images), size, seed, key))
    return drawn.rows, drawn.channel_stride


def load_image_bundle(data: dict[str, Any], seed: int) -> DataBundle:
    """Read the image dataset, OOD sets and auxiliary set that ``data`` names.

    Args:
        data: the config's ``data`` section: ``name``, ``path`` (data root; None = the default
            location, which only ``fashion_mnist`` (Debian package) and ``digits`` (scikit-learn)
            have), ``channels`` / ``size`` (convert the in-domain images; None = native),
            ``train_size`` / ``test_size`` (None = the whole split), ``ood`` and ``ood_size``,
            ``aux`` and ``aux_size``, ``cache`` (where sets are prepared; None = the default).
        seed: draws the training subset and the auxiliary set; test and OOD sets do not depend
            on it.

    Returns:
        DataBundle whose splits are :class:`~endd.data.ondisk.StandardisedRows` over images on
        disk: float32 [N, C, H, W] standardised per channel with the training subset's
        statistics, a batch at a time; ``mean``/``std`` [C, 1, 1] on the [0, 1] scale; ``grid``
        None; ``raw`` the same rows unstandardised (uint8 / 255, or the shifts' floats).

    Raises:
        ConfigError: invalid set names (see :func:`check_image_data`).
        DataError: missing or corrupt files (the message says what to download and where), or
            an image cache that cannot be written.
    """
    check_image_data(data)
    name = data["name"]
    cache = image_cache(data)
    train_full, test_full, num_classes = _in_domain(data, cache)
    train = subset(
        train_full, _subset(len(train_full), data.get("train_size"), seed, _key("train"))
    )
    test = subset(
        test_full, _subset(len(test_full), data.get("test_size"), _EVALUATION_SEED, _key("test"))
    )
    present = np.unique(train.labels)
    if len(present) < 2:
        raise DataError(f"the training subset of {name} holds only {len(present)} class(es)")

    mean_np, std_np = channel_mean_std(train.rows)
    mean = torch.from_numpy(mean_np).view(-1, 1, 1)
    std = torch.from_numpy(np.where(std_np > 0, std_np, np.float32(1.0))).view(-1, 1, 1)

    # the images as read (uint8, or float in [0, 1] for shifts): a user's own models' inputs
    sets: dict[str, tuple[Rows, int | None]] = {
        "train": (train.rows, train.channel_stride),
        "test": (test.rows, test.channel_stride),
    }
    for ood_name in data["ood"]:
        sets[f"ood_{ood_name}"] = _image_set(
            ood_name,
            data,
            role="ood",
            size=data["ood_size"],
            reference=test_full,
            seed=_EVALUATION_SEED,
            cache=cache,
        )
    if data["aux"] is not None:
        sets["aux"] = _image_set(
            data["aux"],
            data,
            role="aux",
            size=data["aux_size"],
            reference=train_full,
            seed=seed,
            cache=cache,
        )
    lazy = {
        split: StandardisedRows(
            rows,
            mean,
            std,
            divide=255.0 if rows.dtype == np.uint8 else None,
            channel_stride=channel_stride,
        )
        for split, (rows, channel_stride) in sets.items()
    }
    return DataBundle(
        name=name,
        num_classes=num_classes,
        x_train=lazy["train"],
        y_train=torch.from_numpy(train.labels),
        x_test=lazy["test"],
        y_test=torch.from_numpy(test.labels),
        x_aux=lazy.get("aux"),
        ood={ood_name: lazy[f"ood_{ood_name}"] for ood_name in data["ood"]},
        grid=None,
        mean=mean,
        std=std,
        raw={split: rows.raw() for split, rows in lazy.items()},
    )


class BatchSeededCropFlip:
    """Random crop with zero padding and horizontal flip, seeded by the batch itself.

    Each batch's crops and flips are drawn from a generator seeded with a hash of the batch's
    pixels and ``seed``. The training batches are a pure function of (seed, epoch, batch index)
    (:class:`endd.engine.batches.EpochSeededBatchSampler`), so the augmentation is too: a run
    killed and resumed from a checkpoint draws exactly what an uninterrupted run draws. A stateful
    generator (or torch's global one, which Lightning seeds once at the start) would not: the
    checkpoints do not hold its state, so a resumed run would restart the sequence.

    The hash is computed on the integer bit patterns of the pixels (exact and order-independent
    on any device); its cost is one pass over the batch. Stateless, so it pickles into worker
    processes.

    Args:
        seed: mixed into every batch's seed (different runs augment differently).
        flip: mirror each image left-right with probability 1/2 (off for digits and characters).
        padding: zero border before cropping; None uses height // 8 (3 for 28×28, 4 for 32×32,
            the CIFAR recipe, 8 for 64×64).

    Shapes:
        ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, seed: int, *, flip: bool = True, padding: int | None = None) -> None:
        if padding is not None and padding < 0:
            raise ValueError(f"padding must be ≥ 0, got {padding}")
        self.seed, self.flip, self.padding = int(seed), bool(flip), padding

    def batch_seed(self, images: Tensor) -> int:
        """The generator seed for ``images`` [B, C, H, W]: a hash of their bits and ``seed``."""
        batch = len(images)
        bits = images.detach().float().reshape(batch, -1).contiguous().view(torch.int32)
        # Exact int64 sums (|bits| < 2^31, ≤ 2^18 pixels per image), reduced mod 2^31 − 1 and
        # weighted by position so that reordered batches hash differently.
        per_image = bits.to(torch.int64).sum(dim=1) % _MERSENNE
        position = torch.arange(1, batch + 1, device=images.device, dtype=torch.int64)
        weights = (position * 2654435761) % _MERSENNE
        digest = int(((per_image * weights) % _MERSENNE).sum()) % _MERSENNE
        return (self.seed % _MERSENNE) * _MERSENNE + digest

    def __call__(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError(
                f"images must be a tensor [B, C, H, W], got {getattr(images, 'shape', images)}"
            )
        padding = self.padding if self.padding is not None else max(1, images.shape[-2] // 8)
        generator = torch.Generator(device=images.device)
        generator.manual_seed(self.batch_seed(images))
        return random_crop_flip(images, padding=padding, flip=self.flip, generator=generator)

    def __repr__(self) -> str:
        return f"BatchSeededCropFlip(seed={self.seed}, flip={self.flip}, padding={self.padding})"


def training_augmentation(data: dict[str, Any], seed: int) -> BatchSeededCropFlip | None:
    """The augmentation ``data.augment`` asks for, or None: crop + flip for natural images,
    crop only for digits and characters."""
    if not data.get("augment"):
        return None
    if data["name"] not in IN_DOMAIN_DATASETS:
        raise ConfigError("data.augment applies to image datasets only")
    return BatchSeededCropFlip(seed, flip=data["name"] not in _NO_FLIP)
