"""Classification quality of predictive probabilities: error, NLL, ECE, Brier score.

All functions take `probs` [N, K] (rows are probability vectors: non-negative, summing to 1) and
integer `labels` [N] in [0, K), compute in float64 whatever the input dtype, and return a Python
float. The predicted class is ``argmax`` over K (the first maximal class on ties, as
``torch.argmax``) and the confidence is the largest probability.
"""

from __future__ import annotations

import torch
from torch import Tensor

from endd.metrics._validation import check_probs_and_labels

__all__ = ["brier_score", "classification_error", "expected_calibration_error", "nll"]


def classification_error(probs: Tensor, labels: Tensor) -> float:
    """Fraction of inputs whose most probable class is not the label.

    Args:
        probs: Predictive probabilities [N, K].
        labels: True classes [N], integers in [0, K).

    Returns:
        The error rate in [0, 1] (a fraction, not a percentage).

    Raises:
        ValueError: If shapes, dtypes or values are invalid.
    """
    probs64, labels64 = check_probs_and_labels(probs, labels)
    return (probs64.argmax(dim=1) != labels64).double().mean().item()


def nll(probs: Tensor, labels: Tensor, *, eps: float = 1e-12) -> float:
    """Mean negative log-probability of the true class, −mean_n ln max(p_{n,y_n}, eps).

    Args:
        probs: Predictive probabilities [N, K].
        labels: True classes [N], integers in [0, K).
        eps: Floor on the true-class probability, so that one probability that underflowed to 0
            contributes −ln(eps) ≈ 27.6 instead of infinity.

    Returns:
        The mean NLL in nats, ≥ 0.

    Raises:
        ValueError: If shapes, dtypes or values are invalid, or `eps` is not in (0, 1).
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    probs64, labels64 = check_probs_and_labels(probs, labels)
    true_class_probs = probs64.gather(1, labels64[:, None]).squeeze(1)
    return (-true_class_probs.clamp_min(eps).log()).mean().item()


def expected_calibration_error(probs: Tensor, labels: Tensor, *, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins.

    ECE = Σ_b (n_b / N) · |acc_b − conf_b|, where bin b holds the inputs whose confidence
    (largest probability) lies in (b/n_bins, (b+1)/n_bins] (confidence 0 goes to the first bin),
    acc_b is their accuracy and conf_b their mean confidence. Empty bins contribute nothing.

    Args:
        probs: Predictive probabilities [N, K].
        labels: True classes [N], integers in [0, K).
        n_bins: Number of equal-width bins on [0, 1]; the paper's convention is 15.

    Returns:
        ECE in [0, 1] (a fraction, not a percentage).

    Raises:
        ValueError: If shapes, dtypes or values are invalid, or `n_bins` < 1.

    References:
        Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
        Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
        Binning", AAAI 2015.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    probs64, labels64 = check_probs_and_labels(probs, labels)
    confidence, predicted = probs64.max(dim=1)
    correct = (predicted == labels64).double()
    boundaries = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=probs64.device)
    # right=False: index i satisfies boundaries[i-1] < confidence <= boundaries[i], i.e. the
    # (lower, upper] convention of Guo et al., compared against the same linspace values.
    bin_index = (torch.bucketize(confidence, boundaries, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64, device=probs64.device)
    count.index_add_(0, bin_index, torch.ones_like(confidence))
    correct_sum = torch.zeros_like(count).index_add_(0, bin_index, correct)
    confidence_sum = torch.zeros_like(count).index_add_(0, bin_index, confidence)
    # Σ_b (n_b/N)·|acc_b − conf_b| = Σ_b |Σ correct − Σ confidence| / N (empty bins give 0).
    return ((correct_sum - confidence_sum).abs().sum() / confidence.numel()).item()


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Multiclass Brier score, mean_n Σ_c (p_{n,c} − 1[c = y_n])².

    The convention is Brier's original one: summed over the K classes (range [0, 2]), not
    averaged over them and not the binary score of the top class only. Lower is better.

    Args:
        probs: Predictive probabilities [N, K].
        labels: True classes [N], integers in [0, K).

    Returns:
        The Brier score in [0, 2].

    Raises:
        ValueError: If shapes, dtypes or values are invalid.

    References:
        Brier, "Verification of Forecasts Expressed in Terms of Probability", Monthly Weather
        Review 78(1), 1950.
    """
    probs64, labels64 = check_probs_and_labels(probs, labels)
    one_hot = torch.nn.functional.one_hot(labels64, probs64.shape[1]).to(torch.float64)
    return (probs64 - one_hot).square().sum(dim=1).mean().item()
