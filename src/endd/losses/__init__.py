"""Distillation losses: EnD (to the ensemble mean), EnD² (Dirichlet NLL), Proxy-Dirichlet.

Every loss takes ``student_logits`` [B, K] and ``teacher_logits`` [B, M, K] (member logits or
log-probabilities) and returns a scalar, the mean over the batch. ``get_loss(name)`` maps the
config names "end", "endd" and "proxy" to them. EnD² also takes the teacher as its statistic
mean_m ln π_mc (``endd_loss_from_mean_log_probs``); ``teacher_statistic_table`` computes that for
a whole dataset once per temperature, ``statistic_at`` looks rows up (see ``losses.statistic``).

References:
    Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020.
    Ryabinin, Malinin & Gales, "Scaling Ensemble Distribution Distillation to Many Classes with
    Proxy Targets", NeurIPS 2021.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from endd.losses.end import end_loss
from endd.losses.endd import endd_loss, endd_loss_from_mean_log_probs, mean_teacher_log_probs
from endd.losses.proxy import (
    DEFAULT_MAX_PRECISION,
    dirichlet_kl,
    proxy_dirichlet_target,
    proxy_loss,
)
from endd.losses.statistic import (
    statistic_at,
    statistic_rows,
    table_is_exact_for,
    teacher_statistic_table,
)

__all__ = [
    "DEFAULT_MAX_PRECISION",
    "LOSSES",
    "dirichlet_kl",
    "end_loss",
    "endd_loss",
    "endd_loss_from_mean_log_probs",
    "get_loss",
    "mean_teacher_log_probs",
    "proxy_dirichlet_target",
    "proxy_loss",
    "statistic_at",
    "statistic_rows",
    "table_is_exact_for",
    "teacher_statistic_table",
]

LossFunction = Callable[..., torch.Tensor]

LOSSES: dict[str, LossFunction] = {"end": end_loss, "endd": endd_loss, "proxy": proxy_loss}


def get_loss(name: str) -> LossFunction:
    """The loss function for a config name: "end", "endd" or "proxy".

    Args:
        name: Loss name (case-insensitive).

    Returns:
        ``end_loss``, ``endd_loss`` or ``proxy_loss``; each is called as
        ``loss(student_logits, teacher_logits, temperature=T, ...)``.

    Raises:
        ValueError: For an unknown name.
    """
    if not isinstance(name, str) or name.lower() not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name.lower()]
