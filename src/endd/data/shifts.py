"""Synthetic out-of-distribution and auxiliary sets, shaped and scaled like the in-domain images.

Each shift takes reference images float [N, C, H, W] in [0, 1] (or uint8, scaled by 1/255) and
returns ``n`` images float32 [n, C, H, W] in [0, 1], so the in-domain normalisation applies to
them unchanged. All randomness comes from one seeded ``numpy.random.Generator``.

How far out of distribution each one is depends on the data: a horizontal flip of a natural image
(CIFAR) is in distribution — training augments with it — while a vertical flip or an inversion is
not; for Fashion-MNIST, inverted images (white background) are a strong shift.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _as_unit_float(images: np.ndarray) -> np.ndarray:
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"reference_images must be non-empty [N, C, H, W], got {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"reference_images must be uint8 or float, got {images.dtype}")
    return images.astype(np.float32, copy=False)


def _sample(reference: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    # Without replacement while the reference set is large enough, so images do not repeat.
    index = rng.choice(len(reference), size=n, replace=n > len(reference))
    return reference[index]


def gaussian_noise(reference: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """I.i.d. pixels ~ N(channel mean, channel std) of the reference, clipped to [0, 1]."""
    mean = reference.mean(axis=(0, 2, 3), dtype=np.float64).reshape(1, -1, 1, 1)
    std = reference.std(axis=(0, 2, 3), dtype=np.float64).reshape(1, -1, 1, 1)
    noise = rng.standard_normal((n, *reference.shape[1:]), dtype=np.float32)
    return np.clip(mean + std * noise, 0.0, 1.0).astype(np.float32)


def uniform_noise(reference: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """I.i.d. pixels ~ U[0, 1]."""
    return rng.random((n, *reference.shape[1:]), dtype=np.float32)


def constant_images(reference: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Each image one colour: a U[0, 1] value per channel, the same at every pixel."""
    colours = rng.random((n, reference.shape[1], 1, 1), dtype=np.float32)
    return np.broadcast_to(colours, (n, *reference.shape[1:])).copy()


def horizontal_flips(reference: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Reference images mirrored left-right."""
    return np.ascontiguousarray(_sample(reference, n, rng)[..., ::-1])


def vertical_flips(reference: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Reference images upside down."""
    return np.ascontiguousarray(_sample(reference, n, rng)[..., ::-1, :])


def inverted_images(reference: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Reference images with every pixel x replaced by 1 − x."""
    return 1.0 - _sample(reference, n, rng)


SHIFTS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "uniform_noise": uniform_noise,
    "constant": constant_images,
    "hflip": horizontal_flips,
    "vflip": vertical_flips,
    "inverted": inverted_images,
}


def make_shift(name: str, reference_images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A synthetic set by name (a key of :data:`SHIFTS`).

    Args:
        name: "gaussian_noise", "uniform_noise", "constant", "hflip", "vflip" or "inverted".
        reference_images: in-domain images [N, C, H, W], uint8 or float in [0, 1]; they fix the
            shape (and, for noise, the channel statistics; for flips and inversion, the content).
        n: number of images to make.
        seed: the same seed gives the same images.

    Returns:
        float32 [n, C, H, W] in [0, 1].
    """
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    reference = _as_unit_float(np.asarray(reference_images))
    return SHIFTS[name](reference, int(n), np.random.default_rng(seed))
