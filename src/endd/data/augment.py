"""Batch augmentation on tensors: random crop with zero padding and horizontal flip.

Vectorised: the batch is padded once and every sample's crop (and flip) is one gather with
per-sample row and column indices, so a batch costs a few tensor ops whatever its size. Seeded
through a ``torch.Generator`` on the batch's device, so a run repeats exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_batch(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(
            f"images must be a tensor [B, C, H, W], got {getattr(images, 'shape', images)}"
        )


def sample_crop_flip(
    batch_size: int,
    *,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw each sample's crop offset and flip.

    Returns:
        offset_y [B], offset_x [B] (int64 in 0..2·padding; ``padding`` means no shift) and
        flipped [B] (bool; all False when ``flip`` is False).
    """
    if padding < 0:
        raise ValueError(f"padding must be ≥ 0, got {padding}")
    if generator is not None:
        device = generator.device
    shape = (batch_size,)
    offset_y = torch.randint(0, 2 * padding + 1, shape, generator=generator, device=device)
    offset_x = torch.randint(0, 2 * padding + 1, shape, generator=generator, device=device)
    if flip:
        flipped = torch.rand(shape, generator=generator, device=device) < 0.5
    else:
        flipped = torch.zeros(shape, dtype=torch.bool, device=device)
    return offset_y, offset_x, flipped


def apply_crop_flip(
    images: Tensor, offset_y: Tensor, offset_x: Tensor, flipped: Tensor, *, padding: int = 4
) -> Tensor:
    """Crop every image at its own offset from the zero-padded batch, then mirror the flipped ones.

    Output pixel (i, j) of sample b is padded[b, :, offset_y[b] + i, offset_x[b] + j'] with
    j' = W − 1 − j when flipped[b], else j — i.e. the image shifted by
    (offset_y − padding, offset_x − padding) with zeros shifted in.

    Args:
        images: [B, C, H, W].
        offset_y, offset_x: [B] int64 in 0..2·padding.
        flipped: [B] bool.
        padding: zero border added on every side before cropping.

    Returns:
        [B, C, H, W], same dtype and device.
    """
    _check_batch(images)
    batch = len(images)
    for name, values in (("offset_y", offset_y), ("offset_x", offset_x), ("flipped", flipped)):
        if values.shape != (batch,):
            raise ValueError(f"{name} must be [{batch}], got {tuple(values.shape)}")
    if batch:
        low, high = torch.cat([offset_y, offset_x]).aminmax()
        if int(low) < 0 or int(high) > 2 * padding:
            raise ValueError(f"offsets must lie in 0..{2 * padding}, got {int(low)}..{int(high)}")
    return _crop_flip(images, offset_y, offset_x, flipped, padding)


def _crop_flip(
    images: Tensor, offset_y: Tensor, offset_x: Tensor, flipped: Tensor, padding: int
) -> Tensor:
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    device = images.device
    rows = offset_y.to(device)[:, None] + torch.arange(height, device=device)  # [B, H]
    columns = torch.arange(width, device=device).expand(batch, width)
    columns = torch.where(flipped.to(device)[:, None], columns.flip(1), columns)
    columns = offset_x.to(device)[:, None] + columns  # [B, W]
    # One gather over the flattened padded planes: 4-5× faster than advanced indexing on CPU,
    # and the result is contiguous.
    flat_index = rows[:, :, None] * (width + 2 * padding) + columns[:, None, :]  # [B, H, W]
    flat_index = flat_index.view(batch, 1, height * width).expand(batch, channels, -1)
    return padded.flatten(2).gather(2, flat_index).view(batch, channels, height, width)


def random_crop_flip(
    images: Tensor,
    *,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random crop with zero padding and random horizontal flip, one draw per sample.

    Args:
        images: [B, C, H, W] on any device.
        padding: zero border before cropping (4 for 32×32 CIFAR, the standard recipe).
        flip: mirror each sample left-right with probability 1/2.
        generator: on the batch's device; None uses torch's global generator.

    Returns:
        [B, C, H, W], a new tensor.
    """
    _check_batch(images)
    if generator is not None and generator.device.type != images.device.type:
        raise ValueError(f"generator is on {generator.device} but images are on {images.device}")
    params = sample_crop_flip(
        len(images), padding=padding, flip=flip, generator=generator, device=images.device
    )
    return _crop_flip(images, *params, padding)  # offsets valid by construction
