"""VGG-16 with batch norm for small images: the paper's CIFAR-10/100 and TinyImageNet backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from endd.models.cnn import ToChannelsLast, image_shape

__all__ = ["VGG16"]

# Configuration "D" of Simonyan & Zisserman: output channels per 3×3 conv, "M" = 2×2 max-pool.
_VGG16_LAYERS = (
    *(64, 64, "M"),
    *(128, 128, "M"),
    *(256, 256, 256, "M"),
    *(512, 512, 512, "M"),
    *(512, 512, 512, "M"),
)


class VGG16(nn.Module):
    """VGG-16-BN for 32×32 images (CIFAR variant: 13 conv-BN-ReLU layers and one linear layer).

    Pooling uses ``ceil_mode`` and a global average pool precedes the classifier, so 28×28, 32×32
    and 64×64 inputs all work (on 32×32 the feature map is 1×1, as in the usual CIFAR VGG).

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: K.
        width: Channels of the first block (64 in VGG-16); every block scales with it, so tests can
            build a narrow copy (e.g. 8).
        dropout: Dropout probability before the classifier (0 = none).
        channels_last: Run the convolutions in NHWC layout (faster on CPU).

    Shapes:
        ``[B, C, H, W]`` -> ``[B, K]``.

    References:
        Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
        ICLR 2015. Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020.
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
        in_channels, _, _ = image_shape(input_shape, "vgg16")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [ToChannelsLast(channels_last)]
        previous = in_channels
        for entry in _VGG16_LAYERS:
            if entry == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            out_channels = entry * width // 64
            layers.append(nn.Conv2d(previous, out_channels, 3, padding=1, bias=False))
            if len(layers) == 2:  # after the first convolution
                layers.append(ToChannelsLast(channels_last))
            layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            previous = out_channels
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        classifier: list[nn.Module] = [nn.Dropout(dropout)] if dropout else []
        classifier.append(nn.Linear(previous, num_classes))
        self.classifier = nn.Sequential(*classifier)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
