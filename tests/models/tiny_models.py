"""Tiny configurations of every built-in backbone, shared by the model tests."""

from __future__ import annotations

#: id -> (name, input_shape, options): small enough that a forward pass takes milliseconds.
TINY_BACKBONES = {
    "mlp": ("mlp", (2,), {"hidden": (8, 8)}),
    "mlp_image": ("mlp", (1, 6, 6), {"hidden": (8,)}),
    "small_cnn": ("small_cnn", (1, 28, 28), {"channels": (4, 8), "hidden": 16}),
    "small_cnn_rgb": ("small_cnn", (3, 32, 32), {"channels": (4, 8), "hidden": 16}),
    "vgg16": ("vgg16", (3, 32, 32), {"width": 4}),
    "vgg16_28": ("vgg16", (1, 28, 28), {"width": 4}),
    "resnet18": ("resnet18", (3, 32, 32), {"width": 4}),
    "wrn": ("wrn28_10", (3, 32, 32), {"depth": 10, "width": 1}),
}
