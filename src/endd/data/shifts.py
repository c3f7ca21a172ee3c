"""Synthetic out-of-distribution and auxiliary sets, shaped and scaled like the in-domain images.

Each shift takes reference images float [N, C, H, W] in [0, 1] (or uint8, scaled by 1/255) and
returns ``n`` images float32 [n, C, H, W] in [0, 1], so the in-domain normalisation applies to
them unchanged. All randomness comes from one seeded ``numpy.random.Generator``.

:func:`shift_chunks` makes the same images a chunk at a time from reference images that stay on
disk (any row source of :mod:`endd.data.ondisk`), so a shift of a large dataset never holds the
reference, or the set it makes, in memory: it draws the same numbers in the same order, and
computes the noise's channel statistics in the same float64 summation order as numpy does on the
whole array (:func:`reference_statistics`), so its chunks are bit for bit those of
:func:`make_shift`.

How far out of distribution each one is depends on the data: a horizontal flip of a natural image
(CIFAR) is in distribution — training augments with it — while a vertical flip or an inversion is
not; for Fashion-MNIST, inverted images (white background) are a strong shift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from endd.data.sums import pairwise_sum


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


# ---- the same shifts a chunk at a time, from reference rows on disk ----------------------------
_CHUNK_VALUES = 1 << 20  # float32 values per chunk made (4 MiB)


def _unit_rows(reference: Any, start: int, stop: int) -> np.ndarray:
    return _as_unit_float(reference.read(start, stop))


def _flat_blocks(reference: Any, block: int) -> Iterator[np.ndarray]:
    """The reference as one flat float32 array (unit scale), in consecutive pieces of ``block``
    values (the last may be shorter)."""
    per_row = int(np.prod(reference.shape[1:]))
    step = max(1, _CHUNK_VALUES // per_row)
    carry = np.empty(0, dtype=np.float32)
    for start in range(0, len(reference), step):
        flat = np.concatenate([carry, _unit_rows(reference, start, start + step).reshape(-1)])
        whole = len(flat) // block * block
        for i in range(0, whole, block):
            yield flat[i : i + block]
        carry = flat[whole:]
    if len(carry):
        yield carry


def _flat_segment(reference: Any, first: int, stop: int, mean: float) -> np.ndarray:
    """Squared deviations from ``mean`` (float64) of flat values ``first:stop``."""
    per_row = int(np.prod(reference.shape[1:]))
    row_start, row_stop = first // per_row, -(-stop // per_row)
    flat = _unit_rows(reference, row_start, row_stop).reshape(-1)
    values = flat[first - row_start * per_row : stop - row_start * per_row]
    return np.square(values.astype(np.float64) - mean)


def reference_statistics(reference: Any) -> tuple[np.ndarray, np.ndarray]:
    """``reference.mean(axis=(0, 2, 3), dtype=float64)`` and the same ``std`` of the reference
    images on the [0, 1] scale, read in chunks, equal bit for bit to numpy's on the whole array.

    numpy sums a float32 array in float64 in buffers of ``numpy.getbufsize()`` values (the cast
    needs them) and adds each buffer's pairwise sum to the total in order; the squared
    deviations, float64 already, it sums pairwise over each contiguous run: with one channel the
    whole array, with several each image's plane, added in order. The same order here gives the
    same float64 numbers, and ``tests/data/test_streamed_images.py`` checks it against numpy.

    Args:
        reference: rows [N, C, H, W] (uint8, scaled by 1/255, or float in [0, 1]).

    Returns:
        mean [C] and std [C] (population std), float64.
    """
    count, channels, height, width = reference.shape
    plane = height * width
    total = count * plane
    block = np.getbufsize()
    if channels == 1:
        acc = 0.0
        for values in _flat_blocks(reference, block):
            acc += float(np.add.reduce(values.astype(np.float64)))
        mean = acc / total
        squares = pairwise_sum(
            lambda a, b: _flat_segment(reference, a, b, mean), 0, count * plane, _CHUNK_VALUES
        )
        return np.array([mean]), np.sqrt(np.array([squares]) / total)
    step = max(1, _CHUNK_VALUES // (channels * plane))
    sums = np.zeros(channels)
    for start in range(0, count, step):
        planes = _unit_rows(reference, start, start + step).reshape(-1, channels, plane)
        blocks = [  # [rows, blocks of a plane, C]: each plane is summed buffer by buffer
            np.add.reduce(planes[:, :, first : first + block].astype(np.float64), axis=2)
            for first in range(0, plane, block)
        ]
        for row in np.stack(blocks, axis=1).reshape(-1, channels):
            sums = sums + row
    mean = sums / total
    squares = np.zeros(channels)
    for start in range(0, count, step):
        planes = _unit_rows(reference, start, start + step).reshape(-1, channels, plane)
        deviations = np.square(planes.astype(np.float64) - mean[None, :, None])
        for row in np.add.reduce(deviations, axis=2):
            squares = squares + row
    return mean, np.sqrt(squares / total)


def shift_chunks(name: str, reference: Any, n: int, seed: int) -> Iterator[np.ndarray]:
    """:func:`make_shift`'s images, a chunk at a time, equal bit for bit to its result.

    Args:
        name: a key of :data:`SHIFTS`.
        reference: rows [N, C, H, W] (a row source of :mod:`endd.data.ondisk`: ``shape``,
            ``read``, ``take``), uint8 or float in [0, 1]; read a chunk at a time.
        n, seed: as in :func:`make_shift`.

    Yields:
        float32 chunks [k, C, H, W] in [0, 1]; together the ``n`` images of
        ``make_shift(name, reference[:], n, seed)``.
    """
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if len(reference.shape) != 4 or reference.shape[0] == 0:
        raise ValueError(f"reference_images must be non-empty [N, C, H, W], got {reference.shape}")
    n, shape = int(n), tuple(reference.shape[1:])
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_VALUES // int(np.prod(shape)))
    if name == "gaussian_noise":
        mean, std = (s.reshape(1, -1, 1, 1) for s in reference_statistics(reference))
    if name in ("hflip", "vflip", "inverted"):
        index = rng.choice(len(reference), size=n, replace=n > len(reference))
    for start in range(0, n, step):
        count = min(step, n - start)
        if name == "gaussian_noise":
            noise = rng.standard_normal((count, *shape), dtype=np.float32)
            yield np.clip(mean + std * noise, 0.0, 1.0).astype(np.float32)
        elif name == "uniform_noise":
            yield rng.random((count, *shape), dtype=np.float32)
        elif name == "constant":
            colours = rng.random((count, shape[0], 1, 1), dtype=np.float32)
            yield np.broadcast_to(colours, (count, *shape)).copy()
        else:
            images = _as_unit_float(reference.take(index[start : start + count]))
            if name == "hflip":
                yield np.ascontiguousarray(images[..., ::-1])
            elif name == "vflip":
                yield np.ascontiguousarray(images[..., ::-1, :])
            else:
                yield 1.0 - images
