"""EnD²: the Dirichlet negative log-likelihood of the ensemble members' predictions.

The student is a Prior Network with concentrations α = exp(z / T). For every input the loss is the
Dirichlet NLL of each (heated, smoothed) member prediction π_m, averaged over the members:

    NLL = Σ_c lnΓ(α_c) − lnΓ(α₀) − Σ_c (α_c − 1) · mean_m ln π_mc,

multiplied by T² and averaged over the batch. Only the mean log-probability over members enters
(a sufficient statistic), so it is computed once per input — never M copies of lgamma.

References:
    Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020,
    arXiv:1905.00076.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from endd.losses._ops import (
    autocast_disabled,
    class_part,
    compute_dtype,
    constant,
    digamma,
    exp_concentrations,
    reduce_teacher_in_chunks,
    teacher_statistics,
    total_part,
)
from endd.losses._validation import check_logit_shapes, check_smoothing, check_temperature

__all__ = ["endd_loss", "endd_loss_from_mean_log_probs", "mean_teacher_log_probs"]

# Log-concentrations are clamped to these ranges so that exp, lgamma and digamma stay finite
# (α₀ · ln α₀ must not overflow even for K ≈ 10⁵ classes). Far outside the range training ever
# visits; the gradient passes the clamp unchanged (see _DirichletNLL).
_LOG_ALPHA_RANGE = {torch.float32: (-80.0, 60.0), torch.float64: (-700.0, 300.0)}


def endd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """EnD² loss: Dirichlet NLL of the ensemble's predictions under the student's Prior Network.

    α = exp(student_logits / T); π_m = softmax(teacher_logits_m / T), smoothed towards uniform as
    π ← (1 − ε)π + ε/K; loss = T² · mean over the batch of
    [Σ_c lnΓ(α_c) − lnΓ(α₀) − Σ_c (α_c − 1) · mean_m ln π_mc].

    Computed in float32 (float64 if an input is float64) with autocast switched off, so it is
    safe under ``torch.autocast`` with bf16/fp16; the result has that dtype.

    Args:
        student_logits: Student logits z, shape [B, K].
        teacher_logits: Ensemble member logits, shape [B, M, K]. Member log-probabilities are
            valid logits (softmax leaves them unchanged at T = 1).
        temperature: T > 0. The authors anneal it from T₀ (e.g. 10) down to 1.
        smoothing: Central smoothing ε ∈ [0, 1) of the teacher probabilities (authors: 1e-3 or
            1e-4). With ε > 0 the loss and its gradient are finite for any finite teacher
            logits; with ε = 0 a member probability that underflows to 0 makes them infinite.

    Returns:
        Scalar loss (the mean over the batch).

    Raises:
        ValueError: On wrong ranks, mismatched B or K, K < 2, an empty batch, a non-positive
            temperature or a smoothing outside [0, 1).

    Note:
        Student log-concentrations z / T are clamped to [−80, 60] in float32 ([−700, 300] in
        float64) so that nothing overflows; the gradient passes the clamp unchanged. The
        backward pass is hand-written (one digamma per concentration) and supports first-order
        gradients only.

    References:
        Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020.
    """
    check_logit_shapes(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    smoothing = check_smoothing(smoothing)
    mean_log_probs = _mean_teacher_log_probs(
        teacher_logits, temperature, smoothing, compute_dtype(student_logits, teacher_logits)
    )
    return _endd_from_statistic(student_logits, mean_log_probs, temperature)


def endd_loss_from_mean_log_probs(
    student_logits: torch.Tensor,
    mean_log_probs: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """EnD² loss from the precomputed teacher statistic mean_m ln π_mc.

    ``endd_loss(z, t, temperature=T, smoothing=ε)`` equals
    ``endd_loss_from_mean_log_probs(z, mean_teacher_log_probs(t, temperature=T, smoothing=ε),
    temperature=T)``. Use this when the statistic is cached: it is M times smaller than the
    teacher logits and does not change while the temperature is held.

    Args:
        student_logits: Student logits z, shape [B, K].
        mean_log_probs: mean_m ln π_mc of the heated, smoothed teacher, shape [B, K].
        temperature: T > 0, the same temperature the statistic was computed with.

    Returns:
        Scalar loss (the mean over the batch).

    Raises:
        ValueError: On wrong ranks or shapes, K < 2, an empty batch or a non-positive temperature.
    """
    for name, tensor in (("student_logits", student_logits), ("mean_log_probs", mean_log_probs)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point torch.Tensor")
    if student_logits.ndim != 2:
        raise ValueError(
            f"student_logits must have shape [B, K], got shape {tuple(student_logits.shape)}"
        )
    if mean_log_probs.shape != student_logits.shape:
        raise ValueError(
            f"mean_log_probs must have the student's shape {tuple(student_logits.shape)}, "
            f"got {tuple(mean_log_probs.shape)}"
        )
    if student_logits.shape[0] == 0:
        raise ValueError("empty batch: B must be at least 1")
    if student_logits.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got K={student_logits.shape[1]}")
    temperature = check_temperature(temperature)
    return _endd_from_statistic(student_logits, mean_log_probs, temperature)


def mean_teacher_log_probs(
    teacher_logits: torch.Tensor, *, temperature: float = 1.0, smoothing: float = 0.0
) -> torch.Tensor:
    """The EnD² sufficient statistic mean_m ln π_mc of the heated, smoothed ensemble.

    π_m = softmax(teacher_logits_m / T), then π ← (1 − ε)π + ε/K.

    Args:
        teacher_logits: Ensemble member logits (or log-probabilities), shape [B, M, K].
        temperature: T > 0.
        smoothing: ε ∈ [0, 1).

    Returns:
        Tensor [B, K] in float32 (float64 for float64 input). Differentiable with respect to
        ``teacher_logits`` if that requires grad.

    Raises:
        ValueError: If ``teacher_logits`` is not a floating-point [B, M, K] tensor with M ≥ 1,
            or on a bad temperature or smoothing.
    """
    if not isinstance(teacher_logits, torch.Tensor) or not teacher_logits.is_floating_point():
        raise ValueError("teacher_logits must be a floating-point torch.Tensor")
    if teacher_logits.ndim != 3 or teacher_logits.shape[1] == 0:
        raise ValueError(
            f"teacher_logits must have shape [B, M, K] with M >= 1, "
            f"got shape {tuple(teacher_logits.shape)}"
        )
    temperature = check_temperature(temperature)
    smoothing = check_smoothing(smoothing)
    statistic = _mean_teacher_log_probs(
        teacher_logits, temperature, smoothing, compute_dtype(teacher_logits)
    )
    return statistic.contiguous()  # the CPU path for short class axes returns a transposed view


def _mean_teacher_log_probs(
    teacher_logits: torch.Tensor, temperature: float, smoothing: float, dtype: torch.dtype
) -> torch.Tensor:
    return reduce_teacher_in_chunks(
        lambda chunk: teacher_statistics(chunk, temperature, smoothing, dtype)[0], teacher_logits
    )


def _endd_from_statistic(
    student_logits: torch.Tensor, mean_log_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    dtype = compute_dtype(student_logits, mean_log_probs)
    if student_logits.dtype != dtype:
        student_logits = student_logits.to(dtype)
    if mean_log_probs.dtype != dtype:
        mean_log_probs = mean_log_probs.to(dtype)
    with autocast_disabled(student_logits.device.type):
        return _DirichletNLL.apply(student_logits, mean_log_probs, temperature)


class _DirichletNLL(torch.autograd.Function):
    """T² · mean_b [Σ lnΓ(α) − lnΓ(α₀) − Σ (α − 1) m] with α = exp(z / T), and its gradient.

    Hand-written backward: ∂/∂z_c = (T / B) · α_c (ψ(α_c) − ψ(α₀) − m_c) and
    ∂/∂m_c = −(T² / B)(α_c − 1). Autograd through the forward would record a dozen graph nodes
    and replay them. α and α₀ share one flat buffer, so lgamma and digamma run once each over
    both; on CPU in float32 digamma is the fast series of ``_ops`` (torch's is a scalar
    loop there).
    """

    @staticmethod
    def forward(
        ctx, student_logits: torch.Tensor, mean_log_probs: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        batch_size, num_classes = student_logits.shape
        dtype = student_logits.dtype
        low, high = _LOG_ALPHA_RANGE[dtype]
        concentrations = exp_concentrations(student_logits, temperature, low, high)  # [α | α₀]
        alphas = class_part(concentrations, batch_size, num_classes)
        # Σ_c [lnΓ(α_c) + (1 − α_c) m_c] − lnΓ(α₀), summed over the batch.
        log_gammas = torch.lgamma(concentrations)
        total_part(log_gammas, batch_size, num_classes).neg_()
        class_part(log_gammas, batch_size, num_classes).add_(mean_log_probs).addcmul_(
            alphas, mean_log_probs, value=-1.0
        )
        ctx.save_for_backward(concentrations, mean_log_probs)
        ctx.temperature = temperature
        return log_gammas.sum().mul_(constant(temperature * temperature / batch_size, dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        concentrations, mean_log_probs = ctx.saved_tensors
        temperature = ctx.temperature
        batch_size, num_classes = mean_log_probs.shape
        dtype = concentrations.dtype
        alphas = class_part(concentrations, batch_size, num_classes)
        grad_logits = grad_mean_log_probs = None
        if ctx.needs_input_grad[0]:
            # In place in ψ's buffer: its α and α₀ parts do not overlap.
            digammas = digamma(concentrations)
            grad_logits = (
                class_part(digammas, batch_size, num_classes)
                .sub_(total_part(digammas, batch_size, num_classes).unsqueeze(1))
                .sub_(mean_log_probs)
                .mul_(alphas)
                .mul_(grad_output * constant(temperature / batch_size, dtype))
            )
        if ctx.needs_input_grad[1]:
            grad_mean_log_probs = torch.sub(constant(1.0, dtype), alphas).mul_(
                grad_output * constant(temperature * temperature / batch_size, dtype)
            )
        return grad_logits, grad_mean_log_probs, None
