"""The paper's artificial dataset: three interleaved spirals, a ring of auxiliary data, OOD sets.

References:
    Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020, Figs. 2-3.
"""

from __future__ import annotations

import math

import numpy as np

from endd.data.bundle import DataBundle, standardised_bundle
from endd.errors import ConfigError

NUM_CLASSES = 3
#: The spirals reach radius (6π)² ≈ 355; the auxiliary ring lies just outside.
SPIRAL_RADIUS = (6 * math.pi) ** 2
AUX_RADIUS = 410.0
OOD_SETS = ("far", "uniform")


def make_spirals(
    points_per_class: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' generator: for class k, t = √u·6π, offset = 2πk/3,
    x = −cos(t+offset)·t² + n₁·noise·t^1.5, y = sin(t+offset)·t² + n₂·noise·t^1.5.

    Noise grows along the arm, so the classes overlap more far out (data uncertainty).

    Returns:
        points [3·points_per_class, 2] (float32) and labels [3·points_per_class] (int64).
    """
    points, labels = [], []
    for k in range(NUM_CLASSES):
        t = np.sqrt(rng.uniform(size=points_per_class)) * 6 * math.pi
        offset = 2 * math.pi * k / NUM_CLASSES
        n1, n2 = rng.standard_normal((2, points_per_class))
        x = -np.cos(t + offset) * t**2 + n1 * noise * t**1.5
        y = np.sin(t + offset) * t**2 + n2 * noise * t**1.5
        points.append(np.stack([x, y], axis=1))
        labels.append(np.full(points_per_class, k))
    return np.concatenate(points).astype(np.float32), np.concatenate(labels).astype(np.int64)


def make_ring(n: int, radius: float, width: float, rng: np.random.Generator) -> np.ndarray:
    """A noisy ring: angle uniform, radius ~ N(radius, width²). Returns [n, 2] float32."""
    angle = rng.uniform(0, 2 * math.pi, size=n)
    r = radius + width * rng.standard_normal(n)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1).astype(np.float32)


def make_annulus(n: int, inner: float, outer: float, rng: np.random.Generator) -> np.ndarray:
    """Points uniform over the area of an annulus. Returns [n, 2] float32."""
    angle = rng.uniform(0, 2 * math.pi, size=n)
    r = np.sqrt(rng.uniform(inner**2, outer**2, size=n))
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1).astype(np.float32)


def make_ood(name: str, n: int, train: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """OOD evaluation sets, never the auxiliary ring:

    - ``far``: uniform over the annulus of radius 500-800, well outside the data and the ring;
    - ``uniform``: uniform over the bounding box of the training data (labelled by nothing, it
      overlaps the spirals, so even a perfect detector cannot separate it fully).
    """
    if name == "far":
        return make_annulus(n, 500.0, 800.0, rng)
    if name == "uniform":
        low, high = train.min(axis=0), train.max(axis=0)
        return rng.uniform(low, high, size=(n, 2)).astype(np.float32)
    raise ConfigError(f"unknown OOD set '{name}' for the spiral data; choose from {OOD_SETS}")


def load_spiral(data: dict, seed: int) -> DataBundle:
    """Build train/test spirals, the aux ring, OOD sets and a grid, standardised by train stats."""
    rng = np.random.default_rng(seed)
    n = data["points_per_class"]
    x_train, y_train = make_spirals(n, data["noise"], rng)
    x_test, y_test = make_spirals(n, data["noise"], rng)  # a fresh draw
    aux = data["aux"]
    if aux not in (None, "ring"):
        raise ConfigError(f"unknown auxiliary set '{aux}' for the spiral data; use 'ring' or null")
    x_aux = make_ring(data["aux_size"], AUX_RADIUS, 10.0, rng) if aux == "ring" else None
    ood = {name: make_ood(name, data["ood_size"], x_train, rng) for name in data["ood"]}
    # The grid covers the data, the aux ring and a margin, for maps of uncertainty (Fig. 3).
    extent = 1.15 * AUX_RADIUS
    axis = np.linspace(-extent, extent, data["grid_resolution"], dtype=np.float32)
    gx, gy = np.meshgrid(axis, axis)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)

    return standardised_bundle(
        "spiral",
        NUM_CLASSES,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        x_aux=x_aux,
        ood=ood,
        grid=grid,
        grid_shape=(len(axis), len(axis)),
    )
