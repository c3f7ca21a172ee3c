"""Argument checks shared by the metrics: every problem is a one-line ValueError."""

from __future__ import annotations

import torch
from torch import Tensor

# How far a row of probabilities may sum from 1, per dtype: half-precision predictions cached
# to disk cannot meet float32's tolerance (bf16 has ~3 significant digits).
_ROW_SUM_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
_DEFAULT_ROW_SUM_TOLERANCE = 1e-3


def check_probs_and_labels(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Check `probs` [N, K] and `labels` [N]; return probs as float64 and labels as int64."""
    if not isinstance(probs, Tensor) or not isinstance(labels, Tensor):
        raise ValueError("probs and labels must be torch Tensors")
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probs must have shape [N, K] with N, K >= 1, got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating-point tensor, got {probs.dtype}")
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"labels must have shape [N] = [{probs.shape[0]}], got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    tolerance = _ROW_SUM_TOLERANCE.get(probs.dtype, _DEFAULT_ROW_SUM_TOLERANCE)
    probs64 = probs.detach().to(torch.float64)
    if not torch.isfinite(probs64).all():
        raise ValueError("probs contain NaN or infinite values")
    if (probs64 < 0).any():
        raise ValueError("probs contain negative values")
    worst_row_sum_error = (probs64.sum(dim=1) - 1).abs().max().item()
    if worst_row_sum_error > tolerance:
        raise ValueError(
            f"probs rows must sum to 1 (within {tolerance:g}), worst is off by "
            f"{worst_row_sum_error:.3g}"
        )
    labels64 = labels.detach().to(torch.int64)
    num_classes = probs.shape[1]
    if (labels64 < 0).any() or (labels64 >= num_classes).any():
        raise ValueError(f"labels must lie in [0, {num_classes}), got values outside it")
    return probs64, labels64


def check_scores(name: str, scores: Tensor) -> Tensor:
    """Check a 1-D, non-empty, NaN-free score tensor [N]; return it as float64.

    Infinite values are allowed: they still order correctly (e.g. an overflowed precision).
    """
    if not isinstance(scores, Tensor):
        raise ValueError(f"{name} must be a torch Tensor, got {type(scores).__name__}")
    if scores.ndim != 1 or scores.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N] with N >= 1, got {tuple(scores.shape)}")
    if scores.is_complex():
        raise ValueError(f"{name} must be real, got {scores.dtype}")
    scores64 = scores.detach().to(torch.float64)
    if torch.isnan(scores64).any():
        raise ValueError(f"{name} contains NaN")
    return scores64


def check_errors(errors: Tensor, num_items: int) -> Tensor:
    """Check a misclassification indicator [N] (bool, or integers in {0, 1}); return it as bool."""
    if not isinstance(errors, Tensor):
        raise ValueError(f"errors must be a torch Tensor, got {type(errors).__name__}")
    if errors.ndim != 1 or errors.shape[0] != num_items:
        raise ValueError(
            f"errors must have shape [N] = [{num_items}] like the uncertainty, "
            f"got {tuple(errors.shape)}"
        )
    if errors.dtype == torch.bool:
        return errors.detach()
    if errors.is_floating_point() or errors.is_complex():
        raise ValueError(f"errors must be bool (or integer 0/1), got {errors.dtype}")
    if ((errors != 0) & (errors != 1)).any():
        raise ValueError("errors must contain only 0 and 1")
    return errors.detach() != 0
