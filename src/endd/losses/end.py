"""EnD: knowledge distillation of an ensemble into one classifier through the ensemble mean.

The student matches the mean of the (heated) member predictions, as in Hinton et al.'s knowledge
distillation; it keeps the ensemble's accuracy but not the members' disagreement.

References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015,
    arXiv:1503.02531.
    Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020,
    arXiv:1905.00076 (EnD as the baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from endd.losses._ops import (
    autocast_disabled,
    compute_dtype,
    log_softmax,
    reduce_teacher_in_chunks,
    softmax,
)
from endd.losses._validation import check_logit_shapes, check_temperature

__all__ = ["end_loss"]


def end_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """EnD loss: T² · mean over the batch of KL(π̄ ‖ softmax(z / T)).

    π̄ = mean_m softmax(teacher_logits_m / T) is the *average* over members (not their sum).
    Computed in float32 (float64 if an input is float64) with autocast switched off.

    Args:
        student_logits: Student logits z, shape [B, K].
        teacher_logits: Ensemble member logits (or log-probabilities), shape [B, M, K].
        temperature: T > 0.

    Returns:
        Scalar loss (the mean over the batch). It is 0 exactly when softmax(z / T) = π̄.

    Raises:
        ValueError: On wrong ranks, mismatched B or K, K < 2, an empty batch or a non-positive
            temperature.

    References:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    check_logit_shapes(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    dtype = compute_dtype(student_logits, teacher_logits)
    with autocast_disabled(student_logits.device.type):
        student = student_logits.to(dtype)
        if temperature != 1.0:
            student = student / temperature
        student_log_probs = log_softmax(student)
        mean_teacher_probs = reduce_teacher_in_chunks(
            lambda chunk: softmax(_heated(chunk.to(dtype), temperature)).mean(dim=1),
            teacher_logits,
        )
        # kl_div treats 0 · ln 0 as 0 and "batchmean" divides the summed KL by B.
        kl = F.kl_div(student_log_probs, mean_teacher_probs, reduction="batchmean")
        return kl * (temperature * temperature)


def _heated(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature if temperature != 1.0 else logits
