"""Proxy-Dirichlet distillation: fit the student's Dirichlet to a Dirichlet summary of the ensemble.

With many classes the EnD² likelihood is dominated by the tail classes and training stalls.
Ryabinin et al. replace the members' predictions by a *proxy* Dirichlet target with the ensemble's
mean p̄ = mean_m π_m and a precision matched to its spread,

    β̂ = (K − 1) / (2 Σ_c p̄_c (ln p̄_c − mean_m ln π_mc)),   β_c = p̄_c · β̂ + 1,

and train the student (α = exp(z) + 1) to minimise KL(Dir(α) ‖ Dir(β)) (reverse KL, their
default) or KL(Dir(β) ‖ Dir(α)) (forward KL).

References:
    Ryabinin, Malinin & Gales, "Scaling Ensemble Distribution Distillation to Many Classes with
    Proxy Targets", NeurIPS 2021, arXiv:2105.06987.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from endd.losses._ops import (
    autocast_disabled,
    class_part,
    compute_dtype,
    concentration_buffer,
    constant,
    digamma,
    exp_concentrations,
    reduce_teacher_in_chunks,
    teacher_statistics,
    total_part,
    trigamma,
)
from endd.losses._validation import (
    check_logit_shapes,
    check_positive,
    check_smoothing,
    check_temperature,
)

__all__ = ["DEFAULT_MAX_PRECISION", "dirichlet_kl", "proxy_dirichlet_target", "proxy_loss"]

# β̂ → ∞ when all members agree (the denominator is 0), so it is capped. The cap is a judgement
# call: at β₀ = 1e5 a class with p̄ = 0.5 varies by only ±0.0016 (one standard deviation) under
# the target, and lnΓ(β₀) ≈ 1e6 is still resolved to ~0.1 in float32. Lower it (max_precision)
# to stop very confident inputs from dominating the loss.
DEFAULT_MAX_PRECISION = 1e5

# The student's log-concentrations ln(α − 1) = z / T are capped here so exp never overflows.
_MAX_LOG_ALPHA = {torch.float32: 60.0, torch.float64: 300.0}


def proxy_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    reverse: bool = True,
    smoothing: float = 0.0,
    max_precision: float = DEFAULT_MAX_PRECISION,
) -> torch.Tensor:
    """Proxy-Dirichlet loss: T² · mean over the batch of KL between Dir(α) and the proxy Dir(β).

    Student: α = exp(z / T) + 1. Target: β = proxy_dirichlet_target(teacher_logits, ...),
    computed without gradient (the teacher is a constant here).

    Temperature: applied as in ``endd_loss`` (members heated by softmax(t / T), student
    α = exp(z / T) + 1, loss × T²) so that one annealing schedule can drive every loss. Ryabinin
    et al. train without it, which is the default T = 1.

    Args:
        student_logits: Student logits z, shape [B, K].
        teacher_logits: Ensemble member logits (or log-probabilities), shape [B, M, K].
        temperature: T > 0.
        reverse: True (default): minimise the reverse KL(Dir(α) ‖ Dir(β)), as the paper does;
            False: the forward KL(Dir(β) ‖ Dir(α)).
        smoothing: Central smoothing ε ∈ [0, 1) of the member probabilities before the target
            is fitted (0 by default; > 0 guards against members that give probability 0).
        max_precision: Upper bound on the target precision β̂ (see DEFAULT_MAX_PRECISION).

    Returns:
        Scalar loss (the mean over the batch). It is 0 when α = β.

    Raises:
        ValueError: On wrong ranks, mismatched B or K, K < 2, an empty batch, a non-positive
            temperature or max_precision, or a smoothing outside [0, 1).

    References:
        Ryabinin, Malinin & Gales, NeurIPS 2021, arXiv:2105.06987.
    """
    check_logit_shapes(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    smoothing = check_smoothing(smoothing)
    max_precision = check_positive("max_precision", max_precision)
    dtype = compute_dtype(student_logits, teacher_logits)
    target = _proxy_target(teacher_logits, temperature, smoothing, max_precision, dtype)
    if student_logits.dtype != dtype:
        student_logits = student_logits.to(dtype)
    with autocast_disabled(student_logits.device.type):
        return _ProxyDirichletKL.apply(student_logits, target, temperature, reverse)


def proxy_dirichlet_target(
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    smoothing: float = 0.0,
    max_precision: float = DEFAULT_MAX_PRECISION,
) -> torch.Tensor:
    """The proxy Dirichlet β of an ensemble: β_c = p̄_c · β̂ + 1.

    p̄ = mean_m π_m, β̂ = (K − 1) / (2 Σ_c p̄_c (ln p̄_c − mean_m ln π_mc)), clamped to
    ``max_precision`` (the denominator is 0 when all members agree). Every β_c ≥ 1.

    Args:
        teacher_logits: Ensemble member logits (or log-probabilities), shape [B, M, K].
        temperature: T > 0; members are heated as softmax(t / T).
        smoothing: ε ∈ [0, 1), π ← (1 − ε)π + ε/K before fitting.
        max_precision: Upper bound on β̂.

    Returns:
        Target concentrations β, shape [B, K], float32 (float64 for float64 input), detached.

    Raises:
        ValueError: If ``teacher_logits`` is not a floating-point [B, M, K] tensor with M ≥ 1
            and K ≥ 2, or on a bad temperature, smoothing or max_precision.

    References:
        Ryabinin, Malinin & Gales, NeurIPS 2021, arXiv:2105.06987.
    """
    if not isinstance(teacher_logits, torch.Tensor) or not teacher_logits.is_floating_point():
        raise ValueError("teacher_logits must be a floating-point torch.Tensor")
    if teacher_logits.ndim != 3 or teacher_logits.shape[1] == 0 or teacher_logits.shape[2] < 2:
        raise ValueError(
            f"teacher_logits must have shape [B, M, K] with M >= 1 and K >= 2, "
            f"got shape {tuple(teacher_logits.shape)}"
        )
    temperature = check_temperature(temperature)
    smoothing = check_smoothing(smoothing)
    max_precision = check_positive("max_precision", max_precision)
    return _proxy_target(
        teacher_logits, temperature, smoothing, max_precision, compute_dtype(teacher_logits)
    )


def dirichlet_kl(alphas: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """KL(Dir(α) ‖ Dir(β)) over the last axis.

    KL = lnΓ(α₀) − Σ lnΓ(α_c) − lnΓ(β₀) + Σ lnΓ(β_c) + Σ (α_c − β_c)(ψ(α_c) − ψ(α₀)).

    Args:
        alphas: Concentrations of the first Dirichlet, shape [..., K], > 0.
        betas: Concentrations of the second, broadcastable to ``alphas``, > 0.

    Returns:
        KL divergences, shape [...] (broadcast). Not clamped: rounding can make a KL of two
        (nearly) equal Dirichlets a tiny negative number.
    """
    alpha_precision = alphas.sum(dim=-1)
    beta_precision = betas.sum(dim=-1)
    log_normaliser_gap = (
        torch.lgamma(alpha_precision)
        - torch.lgamma(alphas).sum(dim=-1)
        - torch.lgamma(beta_precision)
        + torch.lgamma(betas).sum(dim=-1)
    )
    expected_log_gap = (
        (alphas - betas) * (torch.digamma(alphas) - torch.digamma(alpha_precision).unsqueeze(-1))
    ).sum(dim=-1)
    return log_normaliser_gap + expected_log_gap


@torch.no_grad()
def _proxy_target(
    teacher_logits: torch.Tensor,
    temperature: float,
    smoothing: float,
    max_precision: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    num_classes = teacher_logits.shape[-1]
    mean_log_probs, mean_probs = reduce_teacher_in_chunks(
        lambda chunk: teacher_statistics(
            chunk, temperature, smoothing, dtype, with_mean_probs=True
        ),
        teacher_logits.detach(),
    )  # [B, K] each
    with autocast_disabled(teacher_logits.device.type):
        # Σ_c p̄_c (ln p̄_c − mean_m ln π_mc): every term is ≥ 0 (Jensen), 0 · anything = 0.
        # Rounding can leave identical members a gap of −1e-8, clamped to the 0 it is.
        gap_terms = torch.log(mean_probs).sub_(mean_log_probs).mul_(mean_probs)
        gap = torch.where(mean_probs > 0, gap_terms, torch.zeros((), dtype=dtype)).sum(dim=-1)
        gap.clamp_(min=0.0)
        # gap = 0 (members agree) gives β̂ = inf, capped; gap = inf gives β̂ = 0 (flat target).
        precision = ((num_classes - 1) / (2.0 * gap)).clamp_(max=max_precision)
        return mean_probs.mul(precision.unsqueeze(-1)).add_(1.0)


class _ProxyDirichletKL(torch.autograd.Function):
    """T² · mean_b KL between Dir(α) and the proxy Dir(β), with a hand-written gradient.

    α = exp(min(z / T, cap)) + 1 (the cap is straight-through: the gradient ignores it); β is a
    constant. With D_c = α_c − β_c and D₀ = α₀ − β₀:

    - reverse, KL(Dir(α) ‖ Dir(β)) = lnΓ(α₀) − Σ lnΓ(α_c) − lnΓ(β₀) + Σ lnΓ(β_c)
      + Σ_c D_c ψ(α_c) − D₀ ψ(α₀), and ∂KL/∂α_c = D_c ψ'(α_c) − D₀ ψ'(α₀);
    - forward, KL(Dir(β) ‖ Dir(α)) = −[the lnΓ terms above] − Σ_c D_c ψ(β_c) + D₀ ψ(β₀), and
      ∂KL/∂α_c = ψ(α_c) − ψ(α₀) − ψ(β_c) + ψ(β₀);

    and ∂/∂z_c = (T / B)(α_c − 1) ∂KL/∂α_c. Concentrations and their sums share one flat buffer
    (``_ops.concentration_buffer``), so lgamma, digamma and trigamma run once per Dirichlet, and
    the sums over classes are one ``vdot`` with the signs folded into D. Autograd through
    ``dirichlet_kl`` calls torch's digamma (a scalar loop on CPU) four times, and for the reverse
    KL trigamma twice; this calls digamma once (the fast CPU series), and trigamma once.
    """

    @staticmethod
    def forward(
        ctx,
        student_logits: torch.Tensor,
        betas: torch.Tensor,
        temperature: float,
        reverse: bool,
    ) -> torch.Tensor:
        batch_size, num_classes = student_logits.shape
        dtype = student_logits.dtype
        alpha_buffer = exp_concentrations(
            student_logits, temperature, None, _MAX_LOG_ALPHA[dtype], offset=1.0
        )
        beta_buffer = concentration_buffer(batch_size, num_classes, student_logits)
        class_part(beta_buffer, batch_size, num_classes).copy_(betas)
        torch.sum(betas, dim=-1, out=total_part(beta_buffer, batch_size, num_classes))
        # Signed so that a sum over the buffer is Σ_c (·)_c − (·)₀.
        differences = torch.sub(alpha_buffer, beta_buffer)
        total_part(differences, batch_size, num_classes).neg_()
        log_gamma_gaps = torch.lgamma(alpha_buffer).sub_(torch.lgamma(beta_buffer))
        total_part(log_gamma_gaps, batch_size, num_classes).neg_()
        if reverse:
            kl_sum = torch.vdot(differences, digamma(alpha_buffer)).sub_(log_gamma_gaps.sum())
            ctx.save_for_backward(alpha_buffer, differences)
        else:
            beta_digammas = digamma(beta_buffer)
            kl_sum = log_gamma_gaps.sum().sub_(torch.vdot(differences, beta_digammas))
            ctx.save_for_backward(alpha_buffer, beta_digammas)
        ctx.temperature = temperature
        ctx.reverse = reverse
        ctx.shape = (batch_size, num_classes)
        return kl_sum.mul_(constant(temperature * temperature / batch_size, dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        alpha_buffer, saved = ctx.saved_tensors
        batch_size, num_classes = ctx.shape
        dtype = alpha_buffer.dtype
        if ctx.reverse:  # D_c ψ'(α_c) − D₀ ψ'(α₀), from the signed D
            terms = trigamma(alpha_buffer).mul_(saved)
            grad_alphas = class_part(terms, batch_size, num_classes).add_(
                total_part(terms, batch_size, num_classes).unsqueeze(1)
            )
        else:  # ψ(α_c) − ψ(β_c) − [ψ(α₀) − ψ(β₀)]
            terms = digamma(alpha_buffer).sub_(saved)
            grad_alphas = class_part(terms, batch_size, num_classes).sub_(
                total_part(terms, batch_size, num_classes).unsqueeze(1)
            )
        alphas = class_part(alpha_buffer, batch_size, num_classes)
        grad_logits = grad_alphas.mul_(torch.sub(alphas, constant(1.0, dtype))).mul_(
            grad_output * constant(ctx.temperature / batch_size, dtype)
        )
        return grad_logits, None, None, None
