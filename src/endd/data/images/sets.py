"""One split of an image dataset as rows on disk: :class:`ImageSet`, and the sets made from one
(a subset, a conversion to another channel count or size), all read a batch at a time."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from endd.data.images.cache import SetCache
from endd.data.images.common import ImageArrays
from endd.data.images.transforms import conform_images
from endd.data.ondisk import ArrayRows, IndexedRows, Rows

__all__ = ["CONFORM_CHUNK", "ImageSet", "conformed", "in_memory_set", "subset"]

#: Images per conversion step: the chunks :func:`endd.data.images.resize_images` uses on a whole
#: split, so a split converted chunk by chunk is bit for bit the split converted whole.
CONFORM_CHUNK = 4096


@dataclass(frozen=True)
class ImageSet:
    """One split of an image dataset, its pixels left on disk (or, when small, in memory).

    Attributes:
        rows: uint8 pixels [N, C, H, W] as a row source of :mod:`endd.data.ondisk`.
        labels: int64 class indices [N] (in memory), or None for an unlabelled set.
        class_names: names of the K classes, where the format stores them.
        definition: JSON-able description of what the set is (files, split, conversions):
            the key of anything prepared from it in the cache.
        stamp: a digest of its source files' paths, sizes and modification times.
        channel_stride: for single-channel images, the stride (in values) of the channel axis
            the split had as a whole array in memory, where it was not the contiguous one: 0
            for IDX splits (an [N, H, W] array viewed as [N, 1, H, W]), 1 for a subset of one;
            batches keep that layout (see :class:`~endd.data.ondisk.StandardisedRows`).
    """

    rows: Rows
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None
    definition: dict[str, Any]
    stamp: str
    channel_stride: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def arrays(self) -> ImageArrays:
        """The whole set in memory."""
        return ImageArrays(self.rows.read(0, len(self.rows)), self.labels, self.class_names)


def in_memory_set(arrays: ImageArrays, definition: dict[str, Any]) -> ImageSet:
    """An :class:`ImageSet` over arrays a reader returned whole; its stamp hashes the contents."""
    digest = hashlib.sha256(np.ascontiguousarray(arrays.images).data)
    if arrays.labels is not None:
        digest.update(np.ascontiguousarray(arrays.labels).data)
    images = arrays.images
    stride = images.strides[1] // images.itemsize if images.shape[1] == 1 else None
    contiguous = images.shape[2] * images.shape[3]
    rows = ArrayRows(images, definition.get("dataset", "memory"))
    return ImageSet(
        rows,
        arrays.labels,
        arrays.class_names,
        definition,
        digest.hexdigest(),
        channel_stride=None if stride == contiguous else stride,
    )


def subset(images: ImageSet, index: np.ndarray | None) -> ImageSet:
    """Rows ``index`` of ``images`` (None: all of them), without a copy."""
    if index is None:
        return images
    labels = None if images.labels is None else images.labels[index]
    digest = hashlib.sha256(np.asarray(index, dtype=np.int64).data).hexdigest()[:20]
    definition = {"rows": digest, "of": images.definition}
    rows = IndexedRows(images.rows, index)
    stride = None if images.channel_stride is None else 1  # numpy's rows[index] of such a view
    return ImageSet(rows, labels, images.class_names, definition, images.stamp, stride)


def conformed(
    images: ImageSet,
    channels: int | None,
    size: int | tuple[int, int] | None,
    cache: SetCache,
    label: str,
) -> ImageSet:
    """``images`` with ``channels`` channels and ``size`` pixels (None: as they are), converted
    as :func:`endd.data.images.conform_images` converts a whole split, a chunk at a time, and
    prepared once in ``cache``."""
    native_channels, height, width = images.rows.shape[1:]
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
    target = (channels or native_channels, int(height), int(width))
    if tuple(images.rows.shape[1:]) == target:
        return images
    definition = {"conform": list(target), "of": images.definition}

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(images.rows), CONFORM_CHUNK):
            pixels = images.rows.read(start, start + CONFORM_CHUNK)
            yield conform_images(pixels, target[0], target[1:])

    def build():
        return {"images": ((len(images.rows), *target), np.dtype(np.uint8), chunks)}

    name = f"{label}-{'x'.join(map(str, target))}"
    rows = cache.prepare(name, definition, images.stamp, build)["images"]
    return ImageSet(rows, images.labels, images.class_names, definition, images.stamp)
