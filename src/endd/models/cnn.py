"""A small convolutional network: the CPU default for 28×28 and 32×32 images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SmallCNN", "ToChannelsLast", "image_shape"]


def image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """Validate an image input shape ``(C, H, W)`` for ``model`` and return it as a tuple."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(f"{model} needs input_shape (channels, height, width), got {shape}")
    return shape


class ToChannelsLast(nn.Module):
    """Store activations channels-last (NHWC), which the CPU kernels run about twice as fast.

    The backbones place one before and one after their first convolution: a convolution keeps
    the layout of its input, except that a one-channel input is ambiguous and gives NCHW. A no-op
    when ``enabled`` is false, so that the state-dict keys do not depend on the choice. Parameter-
    free and channel-order preserving, so it batches like any activation; the parameters stay
    contiguous (savable with safetensors).

    Args:
        enabled: Whether to convert (otherwise the input is returned as is).
    """

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.enabled else x

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}"


class SmallCNN(nn.Module):
    """Two 3×3 conv blocks (conv-BN-ReLU-maxpool) and a two-layer classifier.

    ``conv(C→c1) → pool → conv(c1→c2) → pool → flatten → fc(hidden) → fc(K)``; with the defaults
    (32, 64, 128) it has 420 k parameters on 28×28 inputs and trains at a few thousand images/s on
    two CPU cores.

    Args:
        input_shape: ``(C, H, W)`` with H, W >= 4.
        num_classes: K.
        channels: Output channels of the two conv blocks.
        hidden: Width of the hidden fully connected layer.
        batch_norm: Batch norm after each convolution.
        dropout: Dropout probability before each fully connected layer (0 = none).
        channels_last: Run the convolutional part in NHWC layout (faster on CPU).

    Shapes:
        ``[B, C, H, W]`` -> ``[B, K]``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        batch_norm: bool = True,
        dropout: float = 0.0,
        channels_last: bool = True,
    ):
        super().__init__()
        in_channels, height, width = image_shape(input_shape, "small_cnn")
        channels = tuple(channels)
        if len(channels) != 2 or min(channels) < 1:
            raise ValueError(f"channels must be two positive ints, got {channels}")
        if height < 4 or width < 4:
            raise ValueError(f"small_cnn needs images of at least 4×4, got {height}×{width}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [ToChannelsLast(channels_last)]
        previous = in_channels
        for index, out_channels in enumerate(channels):
            layers.append(nn.Conv2d(previous, out_channels, 3, padding=1, bias=not batch_norm))
            if index == 0:
                layers.append(ToChannelsLast(channels_last))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous = out_channels
        self.features = nn.Sequential(*layers)
        flat = previous * (height // 4) * (width // 4)
        classifier: list[nn.Module] = []
        if dropout:
            classifier.append(nn.Dropout(dropout))
        classifier += [nn.Linear(flat, hidden), nn.ReLU(inplace=True)]
        if dropout:
            classifier.append(nn.Dropout(dropout))
        classifier.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
