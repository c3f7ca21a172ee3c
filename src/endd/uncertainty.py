"""Uncertainty measures of an ensemble and of a Dirichlet (Prior Network), in closed form.

Both functions return the same decomposition, so an ensemble and the Prior Network distilled from
it can be compared measure by measure:

- ``total``: entropy of the expected predictive distribution, H[E[π]].
- ``data``: expected entropy E[H[π]] (data, or aleatoric, uncertainty).
- ``knowledge``: mutual information total − data (knowledge, or epistemic, uncertainty).
- ``epkl``: expected pairwise KL divergence E[KL(π ‖ π')] for independent π, π'.
- ``confidence``: the largest expected class probability.

``dirichlet_uncertainty`` adds ``differential_entropy`` and ``precision`` (α₀).

Numerical notes:

- Inputs in float32 or float64 are computed in their own dtype; float16/bfloat16 inputs are
  computed and returned in float32 (digamma and lgamma are not accurate enough in 16 bits).
- ``0 · ln 0 = 0``: probabilities that are exactly zero are handled without NaN. An ensemble
  ``epkl`` is ``+inf`` when one member gives zero probability to a class another member supports,
  because that KL divergence is infinite.
- ``knowledge`` (and ``epkl``) are non-negative in exact arithmetic; the tiny negative values that
  rounding can produce are clamped to 0, and ``total = data + knowledge`` holds up to rounding.
- Cancellation is avoided where it bites: the Dirichlet mutual information is computed as
  Σ_c p̂_c g(α_c) − g(α₀) with g(x) = ψ(x + 1) − ln x (a series for large x) and the differential
  entropy with the Stirling terms cancelled on paper, so both keep float32 accuracy for α₀ up to
  10⁶ and beyond. The ensemble mutual information is the mean KL of each member from the mean;
  in float32 its absolute error is ~1e-7 nats, so values below ~1e-5 carry few correct digits.

References:
    Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020,
    arXiv:1905.00076.
    Malinin & Gales, "Predictive Uncertainty Estimation via Prior Networks", NeurIPS 2018,
    arXiv:1802.10501.
"""

from __future__ import annotations

import math

import torch

__all__ = ["dirichlet_from_logits", "dirichlet_uncertainty", "ensemble_uncertainty"]

# Probabilities must sum to 1 within this tolerance (or within the dtype's epsilon if larger).
_SUM_TOLERANCE = 1e-3

# Above this argument ψ(x + 1) − ln x is evaluated by its asymptotic series (error < 1e-12
# relative at the switch), below it directly (no harmful cancellation there).
_SERIES_THRESHOLD = 10.0


def ensemble_uncertainty(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Uncertainty measures of an ensemble of categorical predictions.

    Args:
        probs: Member probabilities, shape [..., M, K] (M members, K classes). Each row over K
            must be non-negative, finite and sum to 1 (within 1e-3).

    Returns:
        Dict of tensors of shape [...] with keys:
        ``total`` = H[π̄] with π̄ = mean_m π_m;
        ``data`` = mean_m H[π_m];
        ``knowledge`` = total − data (mutual information), ≥ 0;
        ``epkl`` = mean over all M² ordered pairs (m, m') of KL(π_m ‖ π_m')
        = −Σ_c π̄_c mean_m ln π_mc − data (the M pairs with m = m' contribute 0);
        ``confidence`` = max_c π̄_c.

    Raises:
        ValueError: If ``probs`` is not a floating-point tensor of rank ≥ 2 with M, K ≥ 1, or
            holds negative, NaN or infinite values, or rows that do not sum to 1.

    References:
        Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020.
    """
    probs = _checked_probabilities(probs)
    mean_probs = probs.mean(dim=-2)  # [..., K]
    log_probs = torch.log(probs)  # [..., M, K], −inf where a probability is 0
    # ln π̄ ≥ ln max_m π_m − ln M; the bound rescues the mean of subnormal probabilities,
    # which can round to 0 while a member's probability does not.
    log_mean_probs = torch.maximum(
        torch.log(mean_probs), log_probs.amax(dim=-2) - math.log(probs.shape[-2])
    )  # [..., K]

    total = -torch.special.xlogy(mean_probs, mean_probs).sum(dim=-1)
    data = -torch.special.xlogy(probs, probs).sum(dim=-1).mean(dim=-1)

    # knowledge = mean_m KL(π_m ‖ π̄): summing p·(ln p − ln q) avoids the cancellation of
    # total − data when the members nearly agree.
    knowledge = _sum_p_times(probs, log_probs - log_mean_probs.unsqueeze(-2)).mean(dim=-1)
    # epkl = mean_m Σ_c π_mc (ln π_mc − mean_m' ln π_m'c), the same regrouping.
    mean_log_probs = log_probs.mean(dim=-2, keepdim=True)  # [..., 1, K]
    epkl = _sum_p_times(probs, log_probs - mean_log_probs).mean(dim=-1)

    return {
        "total": total,
        "data": data,
        "knowledge": knowledge.clamp_min(0.0),
        "epkl": epkl.clamp_min(0.0),
        "confidence": mean_probs.amax(dim=-1),
    }


def dirichlet_uncertainty(alphas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Uncertainty measures of a Dirichlet Dir(α), e.g. a Prior Network's output.

    With α₀ = Σ_c α_c, p̂ = α / α₀ and ψ the digamma function.

    Args:
        alphas: Concentration parameters, shape [..., K], all finite and > 0.

    Returns:
        Dict of tensors of shape [...] with keys:
        ``total`` = H[p̂] = −Σ_c p̂_c ln p̂_c;
        ``data`` = −Σ_c p̂_c (ψ(α_c + 1) − ψ(α₀ + 1)) (expected entropy);
        ``knowledge`` = total − data (mutual information), ≥ 0;
        ``epkl`` = (K − 1) / α₀;
        ``confidence`` = max_c p̂_c;
        ``differential_entropy`` = Σ_c lnΓ(α_c) − lnΓ(α₀) − Σ_c (α_c − 1)(ψ(α_c) − ψ(α₀));
        ``precision`` = α₀.

    Raises:
        ValueError: If ``alphas`` is not a floating-point tensor of rank ≥ 1 with K ≥ 1, or holds
            non-positive, NaN or infinite values.

    References:
        Malinin & Gales, "Predictive Uncertainty Estimation via Prior Networks", NeurIPS 2018.
        Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020.
    """
    alphas = _checked_concentrations(alphas)
    num_classes = alphas.shape[-1]
    precision = alphas.sum(dim=-1)  # [...]
    expected_probs = alphas / precision.unsqueeze(-1)  # [..., K]

    total = -torch.special.xlogy(expected_probs, expected_probs).sum(dim=-1)
    # ψ(α + 1) directly: ψ(α) + 1/α would cancel two numbers of size 1/α for small α.
    data = -(
        expected_probs
        * (torch.digamma(alphas + 1.0) - torch.digamma(precision + 1.0).unsqueeze(-1))
    ).sum(dim=-1)
    # total − data = Σ_c p̂_c g(α_c) − g(α₀) with g(x) = ψ(x + 1) − ln x: no cancellation of
    # two O(ln K) numbers when α₀ is large and the mutual information is small.
    knowledge = (expected_probs * _digamma_plus_one_minus_log(alphas)).sum(
        dim=-1
    ) - _digamma_plus_one_minus_log(precision)
    differential_entropy = _dirichlet_differential_entropy(alphas, precision)

    return {
        "total": total,
        "data": data,
        "knowledge": knowledge.clamp_min(0.0),
        "epkl": (num_classes - 1) / precision,
        "confidence": expected_probs.amax(dim=-1),
        "differential_entropy": differential_entropy,
        "precision": precision,
    }


def dirichlet_from_logits(logits: torch.Tensor, *, offset: float = 0.0) -> torch.Tensor:
    """Concentrations of a Prior Network's Dirichlet from its logits: α = exp(z) + offset.

    Args:
        logits: Logits z, shape [..., K].
        offset: Added to every concentration: 0 for EnD² students (α = exp(z)), 1 for students
            trained with the Proxy-Dirichlet loss (α = exp(z) + 1).

    Returns:
        Concentrations α, shape [..., K], in the dtype of ``logits`` (float32 for 16-bit input).
        In float32 logits above ≈ 88 overflow to ``inf``.

    Raises:
        ValueError: If ``logits`` is not a floating-point tensor of rank ≥ 1 or ``offset`` < 0.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point torch.Tensor")
    if logits.ndim < 1:
        raise ValueError(f"logits must have shape [..., K], got a {logits.ndim}-d tensor")
    if not offset >= 0.0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return torch.exp(logits.to(_compute_dtype(logits.dtype))) + offset


def _sum_p_times(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Σ over the last axis of probs · values with 0 · anything = 0 (values may be ±inf there)."""
    terms = torch.where(probs > 0, probs * values, torch.zeros((), dtype=probs.dtype))
    return terms.sum(dim=-1)


def _digamma_plus_one_minus_log(x: torch.Tensor) -> torch.Tensor:
    """g(x) = ψ(x + 1) − ln x for x > 0, accurate to a few ulp of g for large x.

    Direct evaluation loses all digits for large x because ψ(x + 1) ≈ ln x + 1/(2x); the
    asymptotic series g(x) = 1/(2x) − 1/(12x²) + 1/(120x⁴) − 1/(252x⁶) + 1/(240x⁸) − …
    (Abramowitz & Stegun 6.3.18 with ψ(x + 1) = ψ(x) + 1/x) is used there instead.
    """
    large = x >= _SERIES_THRESHOLD
    x_small = torch.where(large, torch.ones((), dtype=x.dtype), x)
    direct = torch.digamma(x_small + 1.0) - torch.log(x_small)
    inv = torch.where(large, x, torch.full((), _SERIES_THRESHOLD, dtype=x.dtype)).reciprocal()
    inv2 = inv * inv
    series = inv * 0.5 - inv2 * (
        1.0 / 12.0 - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0)))
    )
    return torch.where(large, series, direct)


def _dirichlet_differential_entropy(alphas: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Σ lnΓ(α_c) − lnΓ(α₀) − Σ (α_c − 1)(ψ(α_c) − ψ(α₀)) without cancelling huge terms.

    Evaluated literally, lnΓ(α₀) ≈ α₀ ln α₀ and its partners cancel to a result of order ln α₀,
    which leaves no correct digit in float32 once α₀ ≳ 10⁶. Writing lnΓ(x) = (x − ½) ln x − x +
    ½ ln 2π + r(x) and ψ(x) = ln x − u(x), the large terms cancel exactly on paper:

        H = ½ Σ ln α_c + (½ − K) ln α₀ + (K − 1)·½ ln 2π + Σ r(α_c) − r(α₀)
            + Σ (α_c − 1) u(α_c) − (α₀ − K) u(α₀),

    and every remaining term is of moderate size (r and u are small for large arguments).
    """
    num_classes = alphas.shape[-1]
    log_alphas = torch.log(alphas)
    log_precision = torch.log(precision)
    half_log_two_pi = 0.5 * math.log(2.0 * math.pi)
    result = (
        0.5 * log_alphas.sum(dim=-1)
        + (0.5 - num_classes) * log_precision
        + (num_classes - 1) * half_log_two_pi
        + _stirling_remainder(alphas).sum(dim=-1)
        - _stirling_remainder(precision)
        + ((alphas - 1.0) * _log_minus_digamma(alphas)).sum(dim=-1)
        - (precision - num_classes) * _log_minus_digamma(precision)
    )
    return result


def _log_minus_digamma(x: torch.Tensor) -> torch.Tensor:
    """u(x) = ln x − ψ(x) = 1/x − (ψ(x + 1) − ln x), ≈ 1/(2x) for large x."""
    return x.reciprocal() - _digamma_plus_one_minus_log(x)


def _stirling_remainder(x: torch.Tensor) -> torch.Tensor:
    """r(x) = lnΓ(x) − (x − ½) ln x + x − ½ ln 2π for x > 0 (series for large x, A&S 6.1.41)."""
    large = x >= _SERIES_THRESHOLD
    x_small = torch.where(large, torch.ones((), dtype=x.dtype), x)
    direct = torch.lgamma(x_small) - (x_small - 0.5) * torch.log(x_small) + x_small
    direct = direct - 0.5 * math.log(2.0 * math.pi)
    inv = torch.where(large, x, torch.full((), _SERIES_THRESHOLD, dtype=x.dtype)).reciprocal()
    inv2 = inv * inv
    series = inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)))
    return torch.where(large, series, direct)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the measures are computed in: the input's, but at least float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _checked_probabilities(probs: torch.Tensor) -> torch.Tensor:
    if not isinstance(probs, torch.Tensor):
        raise ValueError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating-point tensor, got dtype {probs.dtype}")
    if probs.ndim < 2:
        raise ValueError(f"probs must have shape [..., M, K], got a {probs.ndim}-d tensor")
    if probs.shape[-2] == 0 or probs.shape[-1] == 0:
        raise ValueError(f"probs needs at least one member and one class, got {tuple(probs.shape)}")
    tolerance = max(_SUM_TOLERANCE, torch.finfo(probs.dtype).eps)
    probs = probs.to(_compute_dtype(probs.dtype))
    if not bool(torch.isfinite(probs).all()):
        raise ValueError("probs contains NaN or infinite values")
    if bool((probs < 0).any()):
        raise ValueError("probs contains negative values")
    if probs.numel() > 0:
        worst = (probs.sum(dim=-1) - 1.0).abs().max().item()
        if worst > tolerance:
            raise ValueError(
                f"probs must sum to 1 over the last axis (K), but a row is off by {worst:.3g}"
            )
    return probs


def _checked_concentrations(alphas: torch.Tensor) -> torch.Tensor:
    if not isinstance(alphas, torch.Tensor):
        raise ValueError(f"alphas must be a torch.Tensor, got {type(alphas).__name__}")
    if not alphas.is_floating_point():
        raise ValueError(f"alphas must be a floating-point tensor, got dtype {alphas.dtype}")
    if alphas.ndim < 1:
        raise ValueError("alphas must have shape [..., K], got a 0-d tensor")
    if alphas.shape[-1] == 0:
        raise ValueError(f"alphas needs at least one class, got {tuple(alphas.shape)}")
    alphas = alphas.to(_compute_dtype(alphas.dtype))
    if not bool(torch.isfinite(alphas).all()):
        raise ValueError("alphas contains NaN or infinite values")
    if bool((alphas <= 0).any()):
        raise ValueError("alphas must be positive (concentrations > 0)")
    return alphas
