"""endd.uncertainty against closed forms, Monte Carlo, a float64 reference and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from endd.uncertainty import dirichlet_from_logits, dirichlet_uncertainty, ensemble_uncertainty

ENSEMBLE_KEYS = {"total", "data", "knowledge", "epkl", "confidence"}
DIRICHLET_KEYS = ENSEMBLE_KEYS | {"differential_entropy", "precision"}


# ---------------------------------------------------------------------------------------------
# Independent float64 references: plain loops over members, pairs and classes (numpy / scipy).
# ---------------------------------------------------------------------------------------------


def _entropy(p: np.ndarray) -> float:
    return -sum(float(pc) * math.log(pc) for pc in p if pc > 0)


def reference_ensemble(probs: np.ndarray) -> dict[str, float]:
    """Measures of one ensemble [M, K] by definition, with the M² pairwise KLs summed explicitly."""
    num_members, num_classes = probs.shape
    mean = probs.mean(axis=0)
    total = _entropy(mean)
    data = sum(_entropy(member) for member in probs) / num_members
    pairwise = 0.0
    for m in range(num_members):
        for other in range(num_members):
            pairwise += sum(
                probs[m, c] * (math.log(probs[m, c]) - math.log(probs[other, c]))
                for c in range(num_classes)
            )
    return {
        "total": total,
        "data": data,
        "knowledge": total - data,
        "epkl": pairwise / num_members**2,
        "confidence": float(mean.max()),
    }


def reference_dirichlet(alpha: np.ndarray) -> dict[str, float]:
    """Measures of Dir(alpha) [K] from the formulas, differential entropy from scipy.stats."""
    precision = alpha.sum()
    expected = alpha / precision
    total = _entropy(expected)
    data = -float(
        np.sum(expected * (scipy.special.digamma(alpha + 1) - scipy.special.digamma(precision + 1)))
    )
    return {
        "total": total,
        "data": data,
        "knowledge": total - data,
        "epkl": (len(alpha) - 1) / precision,
        "confidence": float(expected.max()),
        "differential_entropy": float(scipy.stats.dirichlet(alpha).entropy()),
        "precision": float(precision),
    }


def _random_member_probs(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    scale = torch.rand((*shape[:-1], 1), generator=generator, dtype=torch.float64) * 4 + 0.2
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
    return torch.softmax(logits, dim=-1)


# ---------------------------------------------------------------------------------------------
# Reference agreement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_members", "num_classes"), [(1, 2), (2, 3), (5, 10), (10, 100)])
def test_ensemble_matches_float64_reference(num_members, num_classes):
    generator = torch.Generator().manual_seed(num_members * 1000 + num_classes)
    probs = _random_member_probs(generator, (4, num_members, num_classes))
    result = ensemble_uncertainty(probs)
    assert set(result) == ENSEMBLE_KEYS
    for row in range(probs.shape[0]):
        expected = reference_ensemble(probs[row].numpy())
        for key, value in expected.items():
            assert result[key][row].item() == pytest.approx(value, rel=1e-6, abs=1e-12), key


@pytest.mark.parametrize("num_classes", [2, 7, 100])
def test_dirichlet_matches_float64_reference(num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    log_alphas = torch.rand((6, num_classes), generator=generator, dtype=torch.float64) * 12 - 5
    alphas = log_alphas.exp()
    result = dirichlet_uncertainty(alphas)
    assert set(result) == DIRICHLET_KEYS
    for row in range(alphas.shape[0]):
        expected = reference_dirichlet(alphas[row].numpy())
        for key, value in expected.items():
            assert result[key][row].item() == pytest.approx(value, rel=1e-6, abs=1e-12), key


def test_float32_ensemble_is_accurate():
    generator = torch.Generator().manual_seed(3)
    probs = _random_member_probs(generator, (50, 10, 100))
    exact = ensemble_uncertainty(probs)
    single = ensemble_uncertainty(probs.float())
    for key in ENSEMBLE_KEYS:
        assert single[key].dtype == torch.float32
        torch.testing.assert_close(single[key].double(), exact[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-3, 1e-1, 1.0, 1e2, 1e4, 1e6])
def test_float32_dirichlet_is_accurate(scale):
    """float32 agrees with float64 at every precision α₀.

    Evaluated naively, the mutual information (total − data) and the differential entropy
    (lnΓ(α₀) against Σ lnΓ(α_c)) lose most of their digits in float32 for large α₀, and the
    data uncertainty for tiny α.
    """
    generator = torch.Generator().manual_seed(7)
    alphas = (torch.rand((200, 10), generator=generator, dtype=torch.float64) + 0.05) * scale
    alphas = alphas.float().double()  # the same input values in both precisions
    exact = dirichlet_uncertainty(alphas)
    single = dirichlet_uncertainty(alphas.float())
    for key in DIRICHLET_KEYS:
        assert single[key].dtype == torch.float32
        error = (single[key].double() - exact[key]).abs()
        relative_error = error / exact[key].abs().clamp_min(1e-3)
        assert relative_error.max().item() < 2e-4, key


# ---------------------------------------------------------------------------------------------
# Closed forms vs Monte Carlo
# ---------------------------------------------------------------------------------------------

MC_ALPHA = torch.tensor([0.8, 2.0, 5.0, 1.3], dtype=torch.float64)
MC_SAMPLES = 100_000


@pytest.fixture(scope="module")
def dirichlet_samples() -> torch.Tensor:
    torch.manual_seed(1234)
    return torch.distributions.Dirichlet(MC_ALPHA).sample((MC_SAMPLES,))  # [N, K]


def _assert_within_mc_error(samples: torch.Tensor, closed_form: float, sigmas: float = 5.0):
    error = samples.std().item() / math.sqrt(samples.numel())
    assert abs(samples.mean().item() - closed_form) < sigmas * error + 1e-12


def test_data_uncertainty_matches_monte_carlo(dirichlet_samples):
    entropies = -(dirichlet_samples * dirichlet_samples.log()).sum(dim=-1)
    _assert_within_mc_error(entropies, dirichlet_uncertainty(MC_ALPHA)["data"].item())


def test_epkl_matches_monte_carlo(dirichlet_samples):
    first, second = dirichlet_samples.chunk(2)  # independent pairs (π, π')
    pairwise_kl = (first * (first.log() - second.log())).sum(dim=-1)
    _assert_within_mc_error(pairwise_kl, dirichlet_uncertainty(MC_ALPHA)["epkl"].item())


def test_differential_entropy_matches_monte_carlo_and_torch(dirichlet_samples):
    distribution = torch.distributions.Dirichlet(MC_ALPHA)
    closed_form = dirichlet_uncertainty(MC_ALPHA)["differential_entropy"]
    _assert_within_mc_error(-distribution.log_prob(dirichlet_samples), closed_form.item())
    alphas = torch.exp(torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator()) * 2)
    torch.testing.assert_close(
        dirichlet_uncertainty(alphas)["differential_entropy"],
        torch.distributions.Dirichlet(alphas).entropy(),
        rtol=1e-10,
        atol=1e-10,
    )


def test_ensemble_of_dirichlet_samples_matches_dirichlet(dirichlet_samples):
    """An ensemble of many members drawn from Dir(α) has the Dirichlet's measures."""
    num_members = 20_000
    members = dirichlet_samples[:num_members]
    ensemble = ensemble_uncertainty(members)
    closed = dirichlet_uncertainty(MC_ALPHA)
    for key in ("total", "data", "knowledge", "confidence"):
        assert ensemble[key].item() == pytest.approx(closed[key].item(), rel=0.02), key
    # The M pairs (m, m) with KL = 0 are part of the mean over M² pairs.
    expected_epkl = closed["epkl"].item() * (num_members - 1) / num_members
    assert ensemble["epkl"].item() == pytest.approx(expected_epkl, rel=0.03)


# ---------------------------------------------------------------------------------------------
# Analytic cases
# ---------------------------------------------------------------------------------------------


def test_opposite_one_hot_members_have_ln2_mutual_information():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    result = ensemble_uncertainty(probs)
    assert result["knowledge"].item() == pytest.approx(math.log(2), abs=1e-15)
    assert result["total"].item() == pytest.approx(math.log(2), abs=1e-15)
    assert result["data"].item() == 0.0
    assert result["epkl"].item() == math.inf  # a member puts zero mass where the other is sure
    assert not any(torch.isnan(value).any() for value in result.values())


@pytest.mark.parametrize("smoothing", [1e-3, 1e-6])
def test_smoothed_opposite_one_hot_members(smoothing):
    one_hot = torch.eye(2, dtype=torch.float64)
    probs = (1 - smoothing) * one_hot + smoothing / 2
    result = ensemble_uncertainty(probs)
    binary_entropy = -(smoothing / 2) * math.log(smoothing / 2) - (1 - smoothing / 2) * math.log(
        1 - smoothing / 2
    )
    assert result["knowledge"].item() == pytest.approx(math.log(2) - binary_entropy, rel=1e-12)
    assert result["knowledge"].item() == pytest.approx(math.log(2), abs=0.01)
    assert math.isfinite(result["epkl"].item())


@pytest.mark.parametrize("num_members", [2, 3, 5])
def test_members_sure_of_different_classes_have_log_m_mutual_information(num_members):
    probs = torch.eye(num_members, 7, dtype=torch.float64)
    assert ensemble_uncertainty(probs)["knowledge"].item() == pytest.approx(math.log(num_members))


def test_identical_members_have_no_knowledge_uncertainty():
    member = torch.tensor([0.7, 0.2, 0.1, 0.0], dtype=torch.float64)
    result = ensemble_uncertainty(member.expand(4, 4))
    assert result["knowledge"].item() == 0.0
    assert result["epkl"].item() == 0.0
    assert result["total"].item() == pytest.approx(result["data"].item(), rel=1e-15)
    assert result["confidence"].item() == pytest.approx(0.7)


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_flat_dirichlet(num_classes):
    result = dirichlet_uncertainty(torch.ones(num_classes, dtype=torch.float64))
    harmonic = sum(1.0 / n for n in range(1, num_classes + 1))
    assert result["total"].item() == pytest.approx(math.log(num_classes), rel=1e-12)
    assert result["data"].item() == pytest.approx(harmonic - 1.0, rel=1e-12)
    assert result["differential_entropy"].item() == pytest.approx(
        -math.lgamma(num_classes), abs=1e-10
    )
    assert result["epkl"].item() == pytest.approx((num_classes - 1) / num_classes)
    assert result["precision"].item() == num_classes
    assert result["confidence"].item() == pytest.approx(1.0 / num_classes)


def test_sharp_dirichlet_mutual_information_is_half_epkl():
    # For large α₀: MI ≈ (K − 1) / (2 α₀) = epkl / 2.
    alphas = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64) * 1e6
    result = dirichlet_uncertainty(alphas)
    assert result["knowledge"].item() == pytest.approx(result["epkl"].item() / 2, rel=1e-4)


def test_batch_shapes_and_dtypes():
    probs = torch.softmax(torch.randn(2, 3, 5, 4), dim=-1)
    for key, value in ensemble_uncertainty(probs).items():
        assert value.shape == (2, 3) and value.dtype == torch.float32, key
    for key, value in dirichlet_uncertainty(torch.rand(2, 3, 4, dtype=torch.float64) + 0.1).items():
        assert value.shape == (2, 3) and value.dtype == torch.float64, key
    bf16 = ensemble_uncertainty(probs.bfloat16())
    assert all(value.dtype == torch.float32 for value in bf16.values())
    assert dirichlet_uncertainty(torch.ones(2, 3, dtype=torch.bfloat16))["data"].dtype == (
        torch.float32
    )


def test_dirichlet_from_logits():
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    torch.testing.assert_close(
        dirichlet_from_logits(logits), torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        dirichlet_from_logits(logits, offset=1.0), torch.tensor([[2.0, 4.0]], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="offset"):
        dirichlet_from_logits(logits, offset=-1.0)


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ---------------------------------------------------------------------------------------------


@st.composite
def member_probabilities(draw) -> torch.Tensor:
    """[M, K] probabilities, sometimes with exact zeros, sometimes near one-hot."""
    num_members = draw(st.integers(1, 6))
    num_classes = draw(st.integers(2, 10))
    entry = st.one_of(st.just(0.0), st.floats(1e-6, 1.0), st.floats(0.0, 1e-12))
    size = num_members * num_classes
    weights = torch.tensor(draw(st.lists(entry, min_size=size, max_size=size)), dtype=torch.float64)
    weights = weights.reshape(num_members, num_classes)
    empty = weights.sum(dim=-1) == 0
    weights[empty, 0] = 1.0
    return weights / weights.sum(dim=-1, keepdim=True)


@st.composite
def dirichlet_concentrations(draw) -> torch.Tensor:
    num_classes = draw(st.integers(2, 20))
    log_alphas = draw(st.lists(st.floats(-6, 9), min_size=num_classes, max_size=num_classes))
    return torch.tensor(log_alphas, dtype=torch.float64).exp()


def _assert_decomposition(result: dict[str, torch.Tensor], num_classes: int) -> None:
    log_k = math.log(num_classes)
    total, data, knowledge = (result[key].item() for key in ("total", "data", "knowledge"))
    assert not any(math.isnan(value.item()) for value in result.values())
    assert knowledge >= 0.0
    assert total == pytest.approx(data + knowledge, abs=1e-10)
    for value in (total, data, knowledge):
        assert -1e-12 <= value <= log_k + 1e-12
    assert result["epkl"].item() >= knowledge - 1e-10  # EPKL bounds MI from above
    assert 1.0 / num_classes - 1e-12 <= result["confidence"].item() <= 1.0 + 1e-12


@settings(max_examples=150, deadline=None)
@given(member_probabilities())
def test_ensemble_properties(probs):
    _assert_decomposition(ensemble_uncertainty(probs), probs.shape[-1])


@settings(max_examples=150, deadline=None)
@given(dirichlet_concentrations())
def test_dirichlet_properties(alphas):
    result = dirichlet_uncertainty(alphas)
    _assert_decomposition(result, alphas.shape[-1])
    assert result["precision"].item() == pytest.approx(alphas.sum().item(), rel=1e-15)


@settings(max_examples=100, deadline=None)
@given(member_probabilities(), st.randoms(use_true_random=False))
def test_ensemble_permutation_invariance(probs, rng):
    num_members, num_classes = probs.shape
    member_order = torch.tensor(rng.sample(range(num_members), num_members))
    class_order = torch.tensor(rng.sample(range(num_classes), num_classes))
    original = ensemble_uncertainty(probs)
    permuted = ensemble_uncertainty(probs[member_order][:, class_order])
    for key in ENSEMBLE_KEYS:
        torch.testing.assert_close(permuted[key], original[key], rtol=1e-12, atol=1e-14)


@settings(max_examples=100, deadline=None)
@given(dirichlet_concentrations(), st.randoms(use_true_random=False))
def test_dirichlet_permutation_invariance(alphas, rng):
    order = torch.tensor(rng.sample(range(alphas.shape[-1]), alphas.shape[-1]))
    original = dirichlet_uncertainty(alphas)
    permuted = dirichlet_uncertainty(alphas[order])
    for key in DIRICHLET_KEYS:
        torch.testing.assert_close(permuted[key], original[key], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Invalid input
# ---------------------------------------------------------------------------------------------

_GOOD_PROBS = torch.tensor([[0.5, 0.5], [0.9, 0.1]])


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        (torch.tensor([0.5, 0.5]), r"shape \[\.\.\., M, K\]"),
        (torch.tensor([[0.5, 0.7], [0.5, 0.5]]), "sum to 1"),
        (torch.tensor([[1.2, -0.2], [0.5, 0.5]]), "negative"),
        (torch.tensor([[float("nan"), 1.0], [0.5, 0.5]]), "NaN"),
        (torch.tensor([[float("inf"), 1.0], [0.5, 0.5]]), "infinite"),
        (torch.tensor([[1, 0], [0, 1]]), "floating-point"),
        (torch.empty(3, 0, 2), "at least one member"),
        (np.array([[0.5, 0.5]]), "torch.Tensor"),
    ],
)
def test_ensemble_rejects_bad_input(probs, message):
    with pytest.raises(ValueError, match=message):
        ensemble_uncertainty(probs)


def test_ensemble_accepts_rounding_within_tolerance():
    ensemble_uncertainty(_GOOD_PROBS * (1 + 5e-4))
    with pytest.raises(ValueError, match="sum to 1"):
        ensemble_uncertainty(_GOOD_PROBS * (1 + 5e-3))


@pytest.mark.parametrize(
    ("alphas", "message"),
    [
        (torch.tensor([1.0, 0.0]), "positive"),
        (torch.tensor([1.0, -2.0]), "positive"),
        (torch.tensor([1.0, float("nan")]), "NaN"),
        (torch.tensor([1.0, float("inf")]), "infinite"),
        (torch.tensor(1.0), r"shape \[\.\.\., K\]"),
        (torch.tensor([1, 2]), "floating-point"),
        (torch.empty(2, 0), "at least one class"),
    ],
)
def test_dirichlet_rejects_bad_input(alphas, message):
    with pytest.raises(ValueError, match=message):
        dirichlet_uncertainty(alphas)
