"""Wide residual network (WRN-depth-width) for 32×32 images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from endd.models.cnn import ToChannelsLast, image_shape

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3×3-(dropout)-BN-ReLU-conv3×3 plus shortcut.

    Shapes:
        ``[B, C_in, H, W]`` -> ``[B, C_out, H / stride, W / stride]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        # Projection shortcuts read the activated input (Zagoruyko & Komodakis' reference code).
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``width``; the defaults give WRN-28-10 (36.5 M parameters).

    Args:
        input_shape: ``(C, H, W)``; 32×32 as in CIFAR (28×28 and 64×64 work too).
        num_classes: K.
        depth: Total depth, ``6·n + 4`` for n blocks per stage (28 → 4 blocks).
        width: Widening factor k; stages have 16k, 32k and 64k channels.
        dropout: Dropout probability inside each block (0 = none; the WRN paper used 0.3).
        channels_last: Run the convolutions in NHWC layout (faster on CPU).

    Shapes:
        ``[B, C, H, W]`` -> ``[B, K]``.

    References:
        Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 28,
        width: int = 10,
        dropout: float = 0.0,
        channels_last: bool = True,
    ):
        super().__init__()
        in_channels, _, _ = image_shape(input_shape, "wrn28_10")
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6·n + 4 with n >= 1 (10, 16, 22, 28, …), got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        blocks_per_stage = (depth - 4) // 6
        self.stem = nn.Sequential(
            ToChannelsLast(channels_last),
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            ToChannelsLast(channels_last),
        )
        stages: list[nn.Module] = []
        previous = 16
        for index, base in enumerate((16, 32, 64)):
            channels = base * width
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(WideBasicBlock(previous, channels, stride, dropout))
                previous = channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.BatchNorm2d(previous), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )
        self.fc = nn.Linear(previous, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.head(self.stages(self.stem(x))), 1))
