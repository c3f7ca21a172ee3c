"""Figures for the report (matplotlib, PNG). Each function takes arrays and a path; nothing here
trains or predicts.

Figures are built with matplotlib's object API (``Figure``, not ``pyplot``): no backend is
selected and no global figure registry is touched, so drawing a report from a notebook leaves
the notebook's matplotlib set-up as it was."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from endd.report.tables import MEASURE_TITLES, title
from endd.store.artifacts import atomic_path

CLASS_COLOURS = matplotlib.colormaps["tab10"]


def _subplots(*args, figsize: tuple[float, float], **kwargs):
    """``pyplot.subplots`` without pyplot: a standalone Figure and its axes."""
    layout = "constrained" if kwargs.pop("constrained_layout", False) else None
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(*args, **kwargs)


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        fig.savefig(temporary, format="png", dpi=110, bbox_inches="tight")


def data_figure(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_aux: np.ndarray | None,
    ood: dict[str, np.ndarray],
    path: Path,
) -> None:
    """2-D data: training points by class, the auxiliary set and each OOD set."""
    fig, ax = _subplots(figsize=(6.4, 6.0))
    for k in np.unique(y_train):
        pts = x_train[y_train == k]
        ax.scatter(pts[:, 0], pts[:, 1], s=3, color=CLASS_COLOURS(int(k)), label=f"class {k}")
    if x_aux is not None:
        ax.scatter(x_aux[:, 0], x_aux[:, 1], s=2, color="0.45", label="auxiliary (EnD²+AUX)")
    markers = iter(["x", "+", "1", "2", "3"])
    for name, pts in ood.items():
        ax.scatter(
            pts[:, 0], pts[:, 1], s=6, marker=next(markers, "."), alpha=0.35, label=f"OOD: {name}"
        )
    ax.set_aspect("equal")
    ax.set_title("Training data, auxiliary data and OOD evaluation sets")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=3, frameon=False)
    _save(fig, path)


def uncertainty_maps(
    grid: np.ndarray,
    grid_shape: tuple[int, int],
    maps: dict[str, dict[str, np.ndarray]],
    x_train: np.ndarray,
    path: Path,
    measures: tuple[str, ...] = ("total", "data", "knowledge"),
) -> None:
    """Paper Fig. 3: one row per model, one column per measure; each column shares its colour
    scale so models compare directly. The training data is outlined in white."""
    models = list(maps)
    fig, axes = _subplots(
        len(models),
        len(measures),
        figsize=(3.3 * len(measures) + 0.8, 3.0 * len(models)),
        squeeze=False,
        constrained_layout=True,
    )
    xs = grid[:, 0].reshape(grid_shape)
    ys = grid[:, 1].reshape(grid_shape)
    for col, measure in enumerate(measures):
        values = [maps[m][measure] for m in models if measure in maps[m]]
        vmax = max(float(np.nanmax(v)) for v in values) if values else 1.0
        for row, model in enumerate(models):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if measure not in maps[model]:
                ax.set_axis_off()
                continue
            mesh = ax.pcolormesh(
                xs,
                ys,
                maps[model][measure].reshape(grid_shape),
                cmap="viridis",
                vmin=0.0,
                vmax=vmax,
                shading="auto",
                rasterized=True,
            )
            ax.scatter(x_train[:, 0], x_train[:, 1], s=0.2, color="white", alpha=0.25)
            ax.set_aspect("equal")
            if row == 0:
                ax.set_title(f"{MEASURE_TITLES[measure]} ({measure})")
            if col == 0:
                ax.set_ylabel(title(model), fontsize=12)
        fig.colorbar(
            mesh, ax=axes[:, col], orientation="horizontal", shrink=0.85, aspect=30, label="nats"
        )
    _save(fig, path)


def roc_figure(
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]], path: Path
) -> None:
    """One panel per OOD set: ROC curves (OOD = positive) of each model's detection score."""
    sets = list(curves)
    fig, axes = _subplots(1, len(sets), figsize=(4.6 * len(sets), 4.4), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        for label, (fpr, tpr, auroc) in curves[name].items():
            ax.plot(fpr, tpr, label=f"{label} ({100 * auroc:.1f})", lw=1.4)
        ax.plot([0, 1], [0, 1], color="0.7", ls=":", lw=1)
        ax.set_title(f"OOD set '{name}'")
        ax.set_xlabel("false positive rate (in-domain flagged)")
        ax.set_ylabel("true positive rate (OOD flagged)")
        ax.legend(fontsize=7, loc="lower right", title="score (AUROC %)", title_fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def training_figure(
    curves: dict[str, list[float]], temperatures: dict[str, list[float]], path: Path
) -> None:
    """Small multiples: each model's per-epoch training loss, with its temperature (dashed)."""
    names = list(curves)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = _subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        epochs = np.arange(1, len(curves[name]) + 1)
        ax.plot(epochs, curves[name], color="C0")
        ax.set_title(title(name))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss", color="C0")
        if temperatures.get(name) and len(set(temperatures[name])) > 1:
            twin = ax.twinx()
            twin.plot(epochs, temperatures[name], color="C3", ls="--")
            twin.set_ylabel("T", color="C3")
    for ax in axes.ravel()[len(names) :]:
        ax.set_axis_off()
    fig.suptitle("Training loss per epoch (dashed: annealed temperature)")
    fig.tight_layout()
    _save(fig, path)
