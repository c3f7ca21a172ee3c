"""Fully connected classifier: the backbone of the paper's artificial-data experiment."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "MLP"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class MLP(nn.Module):
    """Multi-layer perceptron ``D → hidden[0] → … → K`` on flattened inputs.

    Args:
        input_shape: Shape of one input; images are flattened to ``D = prod(input_shape)``.
        num_classes: K.
        hidden: Widths of the hidden layers (the paper's spiral experiment: two of 100).
        activation: One of :data:`ACTIVATIONS`.
        dropout: Dropout probability after each hidden activation (0 = none).

    Shapes:
        ``[B, *input_shape]`` -> ``[B, K]``.

    References:
        Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020, §4.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (100, 100),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        shape = tuple(input_shape)
        if not shape or not all(isinstance(n, int) and n > 0 for n in shape):
            raise ValueError(f"input_shape must be positive ints, got {shape}")
        hidden = tuple(hidden)
        if any(not isinstance(width, int) or width < 1 for width in hidden):
            raise ValueError(f"hidden widths must be positive ints, got {hidden}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        previous = math.prod(shape)
        for width in hidden:
            layers += [nn.Linear(previous, width), ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            previous = width
        layers.append(nn.Linear(previous, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.flatten(x, 1))
