"""Pixel conversions shared by the readers and the pipeline: to float, per-channel statistics,
normalisation, resizing and channel conversion, so OOD sets match the in-domain data."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from endd.data.sums import LEAF_VALUES, pairwise_sum

#: ITU-R BT.601 luma weights, the same grey conversion as PIL's ``convert("L")``.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_CHUNK = 4096  # images per step, so statistics and resizing never hold a float copy of the set


def _check_images(images: np.ndarray | torch.Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")


def to_float(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """uint8 pixels [N, C, H, W] -> float32 in [0, 1] (same container type as the input)."""
    _check_images(images)
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        return images.to(torch.float32) / 255.0
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    return images.astype(np.float32) / np.float32(255.0)


def channel_mean_std(images: np.ndarray | Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of a training set, on the [0, 1] scale.

    Accumulates in float64 over chunks of 4 096 images, each chunk's sums in numpy's order on
    the whole chunk (see :mod:`endd.data.sums`), but computed from pieces of a few MB: 50 000
    CIFAR images need no 600 MB float copy, and a chunk no 100 MB one.

    Args:
        images: uint8 [N, C, H, W] (scaled by 1/255) or float [N, C, H, W] (taken as is): an
            array, or rows on disk (:mod:`endd.data.ondisk`), read a piece at a time.

    Returns:
        mean [C] and std [C] (population std), float32.
    """
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {shape}")
    if shape[0] == 0:
        raise ValueError("images is empty; statistics need at least one image")
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    read = images.read if hasattr(images, "read") else lambda a, b: images[a:b]
    channels, plane = shape[1], shape[2] * shape[3]
    total, total_sq = np.zeros(channels), np.zeros(channels)
    for start in range(0, shape[0], _CHUNK):
        stop = min(shape[0], start + _CHUNK)
        chunk_sum, chunk_sq = _chunk_sums(read, start, stop, scale, channels, plane)
        total += chunk_sum
        total_sq += chunk_sq
    count = shape[0] * shape[2] * shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def _chunk_sums(
    read: Any, start: int, stop: int, scale: float, channels: int, plane: int
) -> tuple[np.ndarray, np.ndarray]:
    """``x.sum(axis=(0, 2, 3))`` and ``np.square(x).sum(axis=(0, 2, 3))`` of the float64 chunk
    ``x = images[start:stop] * scale``, equal bit for bit, from pieces of :data:`LEAF_VALUES`.

    numpy sums one channel's chunk as one contiguous run (pairwise), and several channels as
    each image's plane (pairwise) added in image order."""
    per_image = channels * plane
    if channels == 1:

        def values(first: int, last: int, square: bool) -> np.ndarray:
            low, high = first // per_image, -(-last // per_image)
            flat = np.asarray(read(start + low, start + high), dtype=np.float64).reshape(-1)
            flat = flat[first - low * per_image : last - low * per_image] * scale
            return np.square(flat) if square else flat

        count = (stop - start) * per_image
        total = pairwise_sum(lambda a, b: values(a, b, False), 0, count, LEAF_VALUES)
        squares = pairwise_sum(lambda a, b: values(a, b, True), 0, count, LEAF_VALUES)
        return np.array([total]), np.array([squares])
    step = max(1, LEAF_VALUES // per_image)
    total, squares = np.zeros(channels), np.zeros(channels)
    for first in range(start, stop, step):
        x = np.asarray(read(first, min(stop, first + step)), dtype=np.float64) * scale
        x = x.reshape(len(x), channels, plane)
        for row in np.add.reduce(x, axis=2):
            total = total + row
        for row in np.add.reduce(np.square(x), axis=2):
            squares = squares + row
    return total, squares


def normalise(
    images: np.ndarray | torch.Tensor, mean: np.ndarray, std: np.ndarray
) -> np.ndarray | torch.Tensor:
    """(x − mean) / std per channel; ``images`` float [N, C, H, W], ``mean`` and ``std`` [C].

    A channel with zero std is left unscaled (only centred) instead of dividing by zero.
    """
    _check_images(images)
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if mean.shape != (images.shape[1],) or std.shape != (images.shape[1],):
        raise ValueError(
            f"mean and std must have one entry per channel ({images.shape[1]}), "
            f"got {mean.shape} and {std.shape}"
        )
    std = np.where(std > 0, std, np.float32(1.0))
    if isinstance(images, torch.Tensor):
        mean_t = torch.as_tensor(mean, device=images.device).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, device=images.device).view(1, -1, 1, 1)
        return (images - mean_t) / std_t
    return (images - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)


def resize_images(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a whole set (antialiased when shrinking), keeping the dtype.

    Args:
        images: uint8 or float [N, C, H, W].
        size: target side, or (height, width).

    Returns:
        [N, C, height, width] with the input's dtype (uint8 results are rounded and clipped).
    """
    _check_images(images)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if images.shape[2:] == (height, width):
        return images
    shrinking = height < images.shape[2] or width < images.shape[3]
    out = np.empty((*images.shape[:2], height, width), dtype=images.dtype)
    for start in range(0, len(images), _CHUNK):
        chunk = torch.from_numpy(np.asarray(images[start : start + _CHUNK], dtype=np.float32))
        resized = F.interpolate(
            chunk, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking
        ).numpy()
        if images.dtype == np.uint8:
            resized = np.clip(np.rint(resized), 0, 255)
        out[start : start + _CHUNK] = resized
    return out


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Grey <-> RGB: 1 -> 3 repeats the grey plane, 3 -> 1 takes the BT.601 luma.

    Args:
        images: uint8 or float [N, C, H, W] with C in {1, 3}.
        channels: 1 or 3.

    Returns:
        [N, channels, H, W], same dtype.
    """
    _check_images(images)
    if channels not in (1, 3) or images.shape[1] not in (1, 3):
        raise ValueError(
            f"can convert only between 1 and 3 channels, got {images.shape[1]} -> {channels}"
        )
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=1)
    weights = np.asarray(LUMA_WEIGHTS, dtype=np.float32).reshape(1, 3, 1, 1)
    grey = (images.astype(np.float32) * weights).sum(axis=1, keepdims=True)
    if images.dtype == np.uint8:
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return grey.astype(images.dtype)


def conform_images(images: np.ndarray, channels: int, size: int | tuple[int, int]) -> np.ndarray:
    """Make a set look like the in-domain data: same channel count, then same height and width.

    Args:
        images: uint8 or float [N, C, H, W].
        channels: the in-domain C.
        size: the in-domain (H, W) or side.

    Returns:
        [N, channels, H', W'] with the input's dtype.
    """
    return resize_images(convert_channels(images, channels), size)
