"""A model's measures as one float32 graph of elementary operators, for ONNX and TorchScript.

ONNX has no lgamma or digamma operator, and a float32 graph cannot form α = exp(z) for z > 88.7
without overflowing. So the measures here are built from operators every runtime has (add, mul,
div, exp, log, max, sum, where), a Dirichlet is handled in log space, and no two large numbers
are subtracted to get a small one:

- ln α = min(z, 700) (α = exp(z)) or softplus(min(z, 700)) (α = exp(z) + 1), the clamp of
  :mod:`endd.models.kinds`; ln α₀ by log-sum-exp (as ln(1 + s) of the non-maximal terms), and
  ln p̂ = ln α − max − ln Σ exp(ln α − max), so no intermediate value overflows.
- ψ itself (:func:`digamma`): the recurrence ψ(x) = ψ(x + 6) − Σ_{k<6} 1/(x + k), then the
  asymptotic series (A&S 6.3.18) to the 1/y¹⁰ term.
- Dirichlet data and knowledge uncertainty: for α₀ < ``SERIES_FROM`` (every α_c small) data
  = Σ p̂_c (ψ(α₀ + 1) − ψ(α_c + 1)) with each difference a function of the gap α₀ − α_c
  (:func:`digamma_difference`), and knowledge = total − data; above it knowledge
  = Σ p̂_c (g(α_c) − g(α₀)) with g(x) = ψ(x + 1) − ln x from its series in 1/x = exp(−ln x)
  (:func:`digamma_plus_one_minus_log`) and the near-certain class through its gap, and
  data = total − knowledge.
- Ensemble mutual information and EPKL from the members' deviations from their mean
  log-probability, with ln(1 + x) and exp(x) − 1 by Goldberg's and Kahan's methods
  (:func:`log1p`, :func:`expm1`; ONNX has neither operator).
- ``alphas`` itself is exp(ln α): float32, so ``inf`` where α > 3.4e38 (z > 88.7), as is ``epkl``
  where (K − 1)/α₀ > 3.4e38; every other output is finite for any finite logit.

The accuracy of every output against endd's float64 :func:`~endd.models.kinds.outputs_from_logits`
is measured by ``benchmarks/deploy_accuracy.py`` and stated in docs/deploy.md (within 2e-6
relative, 5e-5 for the ensemble's knowledge and EPKL, on values ≥ 1e-6).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from endd.models.kinds import get_kind

__all__ = [
    "OUTPUTS",
    "SERIES_FROM",
    "ExportGraph",
    "digamma",
    "digamma_difference",
    "digamma_plus_one_minus_log",
    "expm1",
    "graph_outputs",
    "log1p",
    "measures_from_logits",
    "outputs_of_kind",
]

#: Above this argument ψ and g are taken from their asymptotic series; below it ψ is shifted up
#: by the recurrence ψ(x) = ψ(x + 6) − Σ_{k<6} 1/(x + k). With the series to the 1/x¹⁰ term the
#: truncation error at 6 is below 1e-11, far under float32 rounding.
SERIES_FROM = 6.0
_SHIFT = 6
_LOG_SERIES_FROM = math.log(SERIES_FROM)
#: The logit clamp of :mod:`endd.models.kinds` (there in float64; here it keeps ln α finite).
_MAX_LOGIT = 700.0

#: Every output a graph (and ``endd predict``) can have, in this order; a kind has a subset.
OUTPUTS = ("probs", "alphas", "total", "data", "knowledge", "epkl", "confidence")
_PRIOR_OFFSETS = {"dirichlet": 0.0, "proxy_dirichlet": 1.0}
_DECOMPOSED = ("total", "data", "knowledge", "epkl", "confidence")
_GRAPH_OUTPUTS = {
    "categorical": ("probs", "total", "confidence"),
    "ensemble": ("probs", *_DECOMPOSED),
    "dirichlet": ("probs", "alphas", *_DECOMPOSED),
    "proxy_dirichlet": ("probs", "alphas", *_DECOMPOSED),
}


def outputs_of_kind(kind: str) -> tuple[str, ...]:
    """The outputs a model of ``kind`` has (``endd predict``'s keys): ``probs``, ``alphas`` for
    Prior Networks, and those of total, data, knowledge, epkl and confidence the kind has."""
    spec = get_kind(kind)
    measures = tuple(name for name in OUTPUTS[2:] if name in spec.measures)
    return ("probs", *(("alphas",) if spec.prior_network else ()), *measures)


def graph_outputs(kind: str) -> tuple[str, ...]:
    """The named outputs of an exported model of ``kind``; ValueError for a kind with no graph."""
    if kind not in _GRAPH_OUTPUTS:
        raise ValueError(
            f"model kind '{kind}' cannot be exported; exportable kinds: {', '.join(_GRAPH_OUTPUTS)}"
        )
    return _GRAPH_OUTPUTS[kind]


def _series_tail(inverse_squared: Tensor) -> Tensor:
    """1/12 − 1/(120y²) + 1/(252y⁴) − 1/(240y⁶) + 1/(132y⁸) (Horner in 1/y²)."""
    tail = 1.0 / 240.0 - inverse_squared * (1.0 / 132.0)
    tail = 1.0 / 252.0 - inverse_squared * tail
    tail = 1.0 / 120.0 - inverse_squared * tail
    return 1.0 / 12.0 - inverse_squared * tail


def digamma(x: Tensor) -> Tensor:
    """ψ(x) for x > 0 from elementary operators (no lgamma/digamma operator needed).

    Below ``SERIES_FROM`` the argument is shifted by the recurrence ψ(x) = ψ(x + 6) −
    Σ_{k=0}^{5} 1/(x + k); then ψ(y) = ln y − 1/(2y) − 1/(12y²) + 1/(120y⁴) − 1/(252y⁶)
    + 1/(240y⁸) − 1/(132y¹⁰) (Abramowitz & Stegun 6.3.18), truncation below 1e-11 for y ≥ 6.
    Accurate for large x too: no term grows with x (1/y² underflows to 0 harmlessly).
    """
    small = x < SERIES_FROM
    y = torch.where(small, x + float(_SHIFT), x)
    shift = 1.0 / x
    for k in range(1, _SHIFT):
        shift = shift + 1.0 / (x + float(k))
    inverse = 1.0 / y
    inverse_squared = inverse * inverse
    series = torch.log(y) - 0.5 * inverse - inverse_squared * _series_tail(inverse_squared)
    return torch.where(small, series - shift, series)


def digamma_plus_one_minus_log(log_x: Tensor, inverse: Tensor | None = None) -> Tensor:
    """g(x) = ψ(x + 1) − ln x for x > 0, from ln x (x itself may exceed float32's range).

    For x ≥ ``SERIES_FROM``: g(x) = 1/(2x) − 1/(12x²) + 1/(120x⁴) − 1/(252x⁶) + 1/(240x⁸)
    − 1/(132x¹⁰) with 1/x = exp(−ln x) (it underflows to 0 where g is below float32's range).
    Below: ψ(x + 1) − ln x with the elementary :func:`digamma` (no harmful cancellation there).
    ``inverse``: 1/x where the caller has it more accurately than exp(−ln x).
    """
    large = log_x >= _LOG_SERIES_FROM
    small_x = torch.exp(torch.clamp(log_x, max=_LOG_SERIES_FROM))
    direct = digamma(small_x + 1.0) - log_x
    if inverse is None:
        inverse = torch.exp(-log_x)
    inverse = torch.clamp(inverse, max=1.0 / SERIES_FROM)
    inverse_squared = inverse * inverse
    series = inverse * 0.5 - inverse_squared * _series_tail(inverse_squared)
    return torch.where(large, series, direct)


def log1p(x: Tensor) -> Tensor:
    """ln(1 + x) for x > −1 to a few ulp, from add, log and div (ONNX has no Log1p operator).

    With u = 1 + x rounded, ln(u) · x / (u − 1) corrects the rounding of u (Goldberg, "What
    every computer scientist should know about floating-point arithmetic", 1991, Thm. 4).
    """
    u = 1.0 + x
    rounded = u - 1.0
    exact = rounded == 0.0
    return torch.where(exact, x, torch.log(u) * x / torch.where(exact, 1.0, rounded))


def expm1(x: Tensor) -> Tensor:
    """exp(x) − 1 to a few ulp, from exp, log and div (ONNX has no Expm1 operator).

    For |x| < 1/2, (u − 1) · x / ln u with u = exp(x) rounded corrects the rounding of u
    (Kahan's method); elsewhere u − 1 loses nothing.
    """
    u = torch.exp(x)
    rounded = u - 1.0
    near = torch.abs(x) < 0.5
    exact = rounded == 0.0
    corrected = rounded * x / torch.where(exact | ~near, 1.0, torch.log(u))
    return torch.where(near, torch.where(exact, x, corrected), rounded)


def digamma_difference(x: Tensor, delta: Tensor) -> Tensor:
    """ψ(1 + x + Δ) − ψ(1 + x) for x, Δ ≥ 0, to float32's *relative* accuracy even for tiny Δ.

    The recurrence gives Σ_{k=1}^{6} Δ / ((k + x)(k + x + Δ)) + ψ(7 + x + Δ) − ψ(7 + x), and the
    last difference is taken from the asymptotic series of ψ with Δ factored out of every term
    (a = 1/(7 + x), b = 1/(7 + x + Δ): a − b = Δ a b, a² − b² = (a − b)(a + b), …), so no two
    close numbers are ever subtracted (ψ(1 + Δ) − ψ(1) ≈ ζ(2) Δ for tiny Δ). Truncation below
    1e-11 relative.
    """
    head = delta / ((1.0 + x) * (1.0 + x + delta))
    for k in range(2, _SHIFT + 1):
        head = head + delta / ((float(k) + x) * (float(k) + x + delta))
    a = 1.0 / (_SHIFT + 1.0 + x)
    b = 1.0 / (_SHIFT + 1.0 + x + delta)
    a2, b2 = a * a, b * b
    d1 = delta * a * b  # a − b
    d2 = d1 * (a + b)  # a² − b²
    d4 = d2 * (a2 + b2)  # a⁴ − b⁴
    d6 = d2 * (a2 * a2 + a2 * b2 + b2 * b2)  # a⁶ − b⁶
    d8 = d4 * (a2 * a2 + b2 * b2)  # a⁸ − b⁸
    tail = log1p(delta * a) + 0.5 * d1 + d2 / 12.0 - d4 / 120.0 + d6 / 252.0 - d8 / 240.0
    return head + tail


def _series_difference(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    """g(x) − g(y) for 6 ≤ x ≤ y from a = 1/x, b = 1/y and ratio = (y − x)/x, by g's series
    with a − b = b · ratio factored out of every term (for y close to x)."""
    a2, b2 = a * a, b * b
    d1 = b * ratio  # a − b
    d2 = d1 * (a + b)  # a² − b²
    d4 = d2 * (a2 + b2)  # a⁴ − b⁴
    d6 = d2 * (a2 * a2 + a2 * b2 + b2 * b2)  # a⁶ − b⁶
    d8 = d4 * (a2 * a2 + b2 * b2)  # a⁸ − b⁸
    d10 = d2 * (
        (a2 * a2) * (a2 * a2) + (b2 * b2) * (b2 * b2) + a2 * b2 * (a2 * a2 + a2 * b2 + b2 * b2)
    )
    return 0.5 * d1 - d2 / 12.0 + d4 / 120.0 - d6 / 252.0 + d8 / 240.0 - d10 / 132.0


def _others_and_ties(shifted: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """For ``shifted`` ≤ 0 with maximum 0: Σ exp of the negative terms, and how many are 0."""
    ties = (shifted == 0.0).to(shifted.dtype).sum(dim=dim)  # ≥ 1
    others = torch.where(shifted < 0.0, torch.exp(shifted), 0.0).sum(dim=dim)
    return others, ties


def _log_sum_exp_shifted(shifted: Tensor, dim: int) -> Tensor:
    """ln Σ exp(shifted) along ``dim`` for ``shifted`` ≤ 0 with its maximum 0, as
    log1p(Σ of the other terms): ln(1 + s) with a tiny s keeps its digits."""
    others, ties = _others_and_ties(shifted, dim)
    return log1p(others + (ties - 1.0))


def _log_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """ln softmax, finite everywhere, with ln p of a near-certain class accurate (≈ −Σ others)."""
    shifted = logits - logits.amax(dim=dim, keepdim=True)
    return shifted - _log_sum_exp_shifted(shifted, dim).unsqueeze(dim)


def _logsumexp(values: Tensor, dim: int) -> Tensor:
    top = values.amax(dim=dim, keepdim=True)
    return top.squeeze(dim) + _log_sum_exp_shifted(values - top, dim)


def _entropy_terms(probs: Tensor, log_probs: Tensor) -> Tensor:
    """−Σ_c p ln p over the last axis, with finite ln p (so 0 · ln p = 0)."""
    return -(probs * log_probs).sum(dim=-1)


def _categorical(logits: Tensor) -> dict[str, Tensor]:
    log_probs = _log_softmax(logits)
    probs = torch.exp(log_probs)
    return {
        "probs": probs,
        "total": _entropy_terms(probs, log_probs),
        "confidence": probs.amax(dim=-1),
    }


def _ensemble(logits: Tensor) -> dict[str, Tensor]:
    """Member logits [B, M, K] -> the measures of :func:`endd.uncertainty.ensemble_uncertainty`."""
    members = logits.shape[-2]
    log_probs = _log_softmax(logits)  # [B, M, K], finite
    probs = torch.exp(log_probs)
    mean_probs = probs.mean(dim=-2)
    # Deviations of ln π_mc from their member mean ā_c, through differences to member 0 (close
    # numbers subtract exactly); ln p̄_c − ā_c = ln mean_m exp(e_mc) is then a log1p of small
    # terms while the members agree, so knowledge and epkl keep relative accuracy when small.
    relative = log_probs - log_probs[..., :1, :]
    deviations = relative - relative.mean(dim=-2, keepdim=True)  # e_mc
    largest = deviations.amax(dim=-2)  # ≥ 0
    agree = largest < 1.0
    mean_log = log_probs.mean(dim=-2)
    excess = log1p(expm1(deviations).mean(dim=-2))  # ln p̄_c − ā_c while the members agree
    direct = _logsumexp(log_probs, dim=-2) - math.log(members)  # ln p̄_c where they do not
    log_mean_probs = torch.where(agree, mean_log + excess, direct)  # finite, unlike ln(p̄)
    log_ratios = torch.where(  # ln π_mc − ln p̄_c
        agree.unsqueeze(-2),
        deviations - excess.unsqueeze(-2),
        log_probs - direct.unsqueeze(-2),
    )
    knowledge = (probs * log_ratios).sum(dim=-1).mean(dim=-1)
    epkl = (probs * deviations).sum(dim=-1).mean(dim=-1)
    return {
        "probs": mean_probs,
        "total": _entropy_terms(mean_probs, log_mean_probs),
        "data": _entropy_terms(probs, log_probs).mean(dim=-1),
        "knowledge": torch.clamp(knowledge, min=0.0),
        "epkl": torch.clamp(epkl, min=0.0),
        "confidence": mean_probs.amax(dim=-1),
    }


def _prior(logits: Tensor, offset: float) -> dict[str, Tensor]:
    """Prior Network logits [B, K] -> α and the measures of ``dirichlet_uncertainty``."""
    clamped = torch.clamp(logits, max=_MAX_LOGIT)
    if offset == 0.0:
        log_alphas = clamped
    else:  # ln(exp(z) + 1) = max(z, 0) + ln(1 + exp(−|z|)), no overflow
        log_alphas = torch.relu(clamped) + log1p(torch.exp(-torch.abs(clamped)))
    num_classes = logits.shape[-1]
    top = log_alphas.amax(dim=-1, keepdim=True)
    shifted = log_alphas - top
    log_sum = _log_sum_exp_shifted(shifted, dim=-1)  # ln α₀ = top + log_sum
    log_precision = top.squeeze(-1) + log_sum
    # ln p̂ = shifted − log_sum: never through ln α₀, whose rounding (ulp 6e-5 at 700) it would
    # inherit; likewise 1/α₀ = exp(−top) · exp(−log_sum) below.
    log_probs = shifted - log_sum.unsqueeze(-1)
    probs = torch.exp(log_probs)
    # exp(−top) alone overflows for top < −88.7 although 1/α₀ may still fit in float32: there,
    # exp(−ln α₀) (its rounding no longer matters at that size).
    inverse_precision = torch.where(
        top.squeeze(-1) < -88.0,
        torch.exp(-log_precision),
        torch.exp(-top.squeeze(-1)) * torch.exp(-log_sum),
    )
    g_classes = digamma_plus_one_minus_log(log_alphas)
    g_precision = digamma_plus_one_minus_log(log_precision, inverse_precision)
    total = _entropy_terms(probs, log_probs)
    # Two forms of the same pair, each used where it has no cancellation (total = data +
    # knowledge in both): for α₀ < SERIES_FROM (every α_c small) data directly as
    # −Σ p̂_c (ψ(α_c + 1) − ψ(α₀ + 1)); above it knowledge as Σ p̂_c g(α_c) − g(α₀), whose terms
    # are small. (Through g at small α, g ≈ −ln α would cancel terms of size |ln α| ~ 100.)
    small = log_precision < _LOG_SERIES_FROM
    small_alphas = torch.exp(torch.clamp(log_alphas, max=_LOG_SERIES_FROM))
    small_precision = torch.exp(torch.clamp(log_precision, max=_LOG_SERIES_FROM))
    # Σ p̂_c (ψ(α₀ + 1) − ψ(α_c + 1)): every term ≥ 0 and taken as a function of the gap
    # α₀ − α_c, which for a class holding nearly all the mass is exp(top) · Σ_others exp(·)
    # (α₀ − α_c would cancel there).
    others, ties = _others_and_ties(shifted, dim=-1)
    sole_top = (shifted == 0.0) & (ties == 1.0).unsqueeze(-1)
    top_gap = torch.exp(torch.clamp(top, max=_LOG_SERIES_FROM)) * others.unsqueeze(-1)
    gaps = torch.where(sole_top, top_gap, small_precision.unsqueeze(-1) - small_alphas)
    direct_data = (probs * digamma_difference(small_alphas, gaps)).sum(dim=-1)
    # Σ p̂_c (g(α_c) − g(α₀)); for a class holding nearly all the mass g(α_c) − g(α₀) is the
    # difference of two close numbers, taken from g's series with the gap factored out instead.
    top_difference = _series_difference(
        torch.exp(-top), inverse_precision.unsqueeze(-1), others.unsqueeze(-1)
    )
    by_series = sole_top & (top >= _LOG_SERIES_FROM)
    series_knowledge = (
        probs * torch.where(by_series, top_difference, g_classes - g_precision.unsqueeze(-1))
    ).sum(dim=-1)
    data = torch.where(small, direct_data, total - series_knowledge)
    knowledge = torch.where(small, total - direct_data, series_knowledge)
    return {
        "probs": probs,
        "alphas": torch.exp(log_alphas),
        "total": total,
        "data": data,
        "knowledge": torch.clamp(knowledge, min=0.0),
        "epkl": float(num_classes - 1) * inverse_precision,
        "confidence": probs.amax(dim=-1),
    }


def measures_from_logits(kind: str, logits: Tensor) -> dict[str, Tensor]:
    """The outputs of ``graph_outputs(kind)`` from float32 logits, elementary operators only."""
    names = graph_outputs(kind)
    logits = logits.float()
    if kind == "categorical":
        out = _categorical(logits)
    elif kind == "ensemble":
        out = _ensemble(logits)
    else:
        out = _prior(logits, _PRIOR_OFFSETS[kind])
    return {name: out[name] for name in names}


class ExportGraph(nn.Module):
    """Raw inputs [B, *input_shape] -> the named float32 outputs ``names`` (``graph_outputs``).

    Wraps a :class:`~endd.models.prior.Predictor` (whose forward applies the run's
    standardisation) and appends the measures of its kind built from elementary operators.

    Args:
        predictor: the trained model.
        as_tuple: return the outputs as a tuple in ``names`` order (ONNX) instead of a dict.
    """

    def __init__(self, predictor: nn.Module, *, as_tuple: bool = False) -> None:
        super().__init__()
        self.kind = predictor.kind
        self.names = graph_outputs(self.kind)
        self.as_tuple = as_tuple
        self.predictor = predictor

    def forward(self, x: Tensor) -> dict[str, Tensor] | tuple[Tensor, ...]:
        out = measures_from_logits(self.kind, self.predictor(x.float()))
        if self.as_tuple:
            return tuple(out[name] for name in self.names)
        return out
