"""Argument checks shared by the distillation losses (private)."""

from __future__ import annotations

import math
from numbers import Real

import torch


def check_logit_shapes(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> tuple[int, int, int]:
    """Check a student [B, K] / teacher [B, M, K] pair and return (B, M, K).

    Raises:
        ValueError: On non-tensors, non-floating dtypes, wrong ranks, an empty batch, no members,
            fewer than 2 classes, or batch/class sizes that disagree.
    """
    for name, tensor in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if student_logits.ndim != 2:
        raise ValueError(
            f"student_logits must have shape [B, K], got shape {tuple(student_logits.shape)}"
        )
    if teacher_logits.ndim != 3:
        raise ValueError(
            f"teacher_logits must have shape [B, M, K], got shape {tuple(teacher_logits.shape)}"
        )
    batch_size, num_classes = student_logits.shape
    teacher_batch, num_members, teacher_classes = teacher_logits.shape
    if teacher_batch != batch_size:
        raise ValueError(
            f"batch size mismatch: student_logits has B={batch_size}, "
            f"teacher_logits has B={teacher_batch}"
        )
    if teacher_classes != num_classes:
        raise ValueError(
            f"number of classes mismatch: student_logits has K={num_classes}, "
            f"teacher_logits has K={teacher_classes}"
        )
    if batch_size == 0:
        raise ValueError("empty batch: B must be at least 1")
    if num_members == 0:
        raise ValueError("teacher_logits has no members: M must be at least 1")
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got K={num_classes}")
    return batch_size, num_members, num_classes


def check_temperature(temperature: float) -> float:
    """Return the temperature as a float; it must be finite and > 0."""
    value = _as_float("temperature", temperature)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return value


def check_smoothing(smoothing: float) -> float:
    """Return the teacher smoothing ε as a float; it must lie in [0, 1)."""
    value = _as_float("smoothing", smoothing)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    return value


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float; it must be finite and > 0."""
    number = _as_float(name, value)
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return number


def _as_float(name: str, value: float) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)
