"""ResNet-18 for 32×32 images (CIFAR-style stem: one 3×3 convolution, no max-pool)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from endd.models.cnn import ToChannelsLast, image_shape

__all__ = ["BasicBlock", "ResNet18"]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 projection) shortcut.

    Shapes:
        ``[B, C_in, H, W]`` -> ``[B, C_out, H / stride, W / stride]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with a CIFAR stem (3×3 conv, stride 1, no max-pool) and global average pooling.

    Args:
        input_shape: ``(C, H, W)``; 32×32 as in CIFAR (28×28 and 64×64 work too).
        num_classes: K.
        width: Channels of the first stage (64 in ResNet-18); stages have width·(1, 2, 4, 8).
        dropout: Dropout probability before the classifier (0 = none).
        channels_last: Run the convolutions in NHWC layout (faster on CPU).

    Shapes:
        ``[B, C, H, W]`` -> ``[B, K]``.

    References:
        He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 64,
        dropout: float = 0.0,
        channels_last: bool = True,
    ):
        super().__init__()
        in_channels, _, _ = image_shape(input_shape, "resnet18")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.stem = nn.Sequential(
            ToChannelsLast(channels_last),
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            ToChannelsLast(channels_last),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        previous = width
        for index, multiplier in enumerate((1, 2, 4, 8)):
            channels = width * multiplier
            stride = 1 if index == 0 else 2
            blocks = (BasicBlock(previous, channels, stride), BasicBlock(channels, channels))
            stages.append(nn.Sequential(*blocks))
            previous = channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(previous, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.stages(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(features, 1)))
