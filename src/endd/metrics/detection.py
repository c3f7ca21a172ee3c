"""Ranking metrics for uncertainty: misclassification detection, PRR, and OOD detection.

Conventions (the same in every function here):

* **Higher score = more uncertain** = more likely misclassified / out-of-domain (OOD). Measures
  where higher means *more certain* (``confidence``, the Dirichlet ``precision``) must be negated
  first: `as_uncertainty_score` does that by name.
* **Positive class** for AUROC and AUPR: the misclassified inputs (misclassification detection) or
  the OOD inputs (OOD detection). AUPR is average precision with those positives, as
  ``sklearn.metrics.average_precision_score``.
* **Ties** in the score are handled as by scikit-learn: AUROC counts a tied positive/negative pair
  as half-correct; average precision puts all tied inputs on one threshold. PRR averages over all
  orders of tied inputs. FPR95 uses an inclusive threshold (see `ood_false_positive_rate`).
* Scores are 1-D Tensors; NaN is an error, ±inf is allowed (it still orders). Results are Python
  floats; a metric that is undefined for the input (e.g. AUROC without any misclassification) is
  ``nan``, as documented per function.

AUROC, AUPR and the ROC curve come from torchmetrics. Its binary metrics pass any score outside
[0, 1] through a sigmoid, which in float32 merges large scores into ties (uncertainties 20 and 30
both become 1.0) and silently changes the result; so the scores are first replaced by their dense
ranks scaled to [0, 1] in float64, which keeps order and ties exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_roc,
)

from endd.metrics._validation import check_errors, check_scores

__all__ = [
    "HIGHER_MEANS_CERTAIN",
    "HIGHER_MEANS_UNCERTAIN",
    "as_uncertainty_score",
    "misclassification_detection",
    "ood_detection",
    "ood_false_positive_rate",
    "prediction_rejection_ratio",
    "rejection_curve",
    "roc_curve_points",
]

#: Measures (keys of `endd.uncertainty`'s dicts) that grow with uncertainty: used as they are.
HIGHER_MEANS_UNCERTAIN = frozenset({"total", "data", "knowledge", "epkl", "differential_entropy"})
#: Measures that grow with certainty: negated by `as_uncertainty_score`.
HIGHER_MEANS_CERTAIN = frozenset({"confidence", "precision"})


def as_uncertainty_score(name: str, values: Tensor) -> Tensor:
    """Turn an uncertainty measure into a score where higher means more uncertain.

    Args:
        name: A measure name as returned by `endd.uncertainty` (``total``, ``data``,
            ``knowledge``, ``epkl``, ``differential_entropy``, ``confidence``, ``precision``).
        values: The measure's values, any shape.

    Returns:
        ``-values`` for ``confidence`` and ``precision`` (higher means more certain), else
        ``values`` unchanged.

    Raises:
        ValueError: If `name` is not a known measure: guessing the direction of an unknown one
            would silently invert every metric computed from it.
    """
    if name in HIGHER_MEANS_CERTAIN:
        return -values
    if name in HIGHER_MEANS_UNCERTAIN:
        return values
    known = sorted(HIGHER_MEANS_UNCERTAIN | HIGHER_MEANS_CERTAIN)
    raise ValueError(f"unknown uncertainty measure {name!r}; known: {known}")


def _ranks_in_unit_interval(scores: Tensor) -> Tensor:
    """Dense ranks of `scores` [N] scaled to [0, 1] (float64): same order, same ties."""
    unique_scores, inverse = torch.unique(scores, sorted=True, return_inverse=True)
    if unique_scores.numel() == 1:
        return torch.zeros_like(scores, dtype=torch.float64)
    return inverse.to(torch.float64) / (unique_scores.numel() - 1)


def _auroc_and_aupr(scores: Tensor, is_positive: Tensor) -> dict[str, float]:
    """AUROC and average precision with `is_positive` [N] as the positive class; nan if either
    class is empty."""
    num_positive = int(is_positive.sum().item())
    if num_positive == 0 or num_positive == is_positive.numel():
        return {"auroc": math.nan, "aupr": math.nan}
    ranks = _ranks_in_unit_interval(scores)
    target = is_positive.to(torch.long)
    auroc = binary_auroc(ranks, target, thresholds=None, validate_args=False)
    aupr = binary_average_precision(ranks, target, thresholds=None, validate_args=False)
    return {"auroc": auroc.item(), "aupr": aupr.item()}


def misclassification_detection(uncertainty: Tensor, errors: Tensor) -> dict[str, float]:
    """How well an uncertainty score ranks misclassified inputs above correct ones.

    Args:
        uncertainty: Score per input [N], higher = more likely misclassified (see
            `as_uncertainty_score`).
        errors: True where the prediction is wrong [N] (bool, or integers 0/1): the positive class.

    Returns:
        ``{"auroc": float, "aupr": float}``: area under the ROC curve and average precision with
        misclassifications as positives. Both are ``nan`` when all or none of the inputs are
        misclassified (no ranking to assess).

    Raises:
        ValueError: On shape mismatch, NaN scores, or non-binary `errors`.
    """
    scores = check_scores("uncertainty", uncertainty)
    is_error = check_errors(errors, scores.shape[0]).to(scores.device)
    return _auroc_and_aupr(scores, is_error)


def rejection_curve(uncertainty: Tensor, errors: Tensor) -> tuple[Tensor, Tensor]:
    """Misclassification rate after rejecting the most uncertain inputs, averaged over tie orders.

    Rejecting a fraction r means handing the ⌈rN⌉ most uncertain inputs to an oracle, which gets
    them right; the error rate stays over all N inputs. Between consecutive distinct score values
    the expected curve over random orderings of the tied inputs is linear, so the curve is exactly
    described by its values at the boundaries of tie groups.

    Args:
        uncertainty: Score per input [N], higher = more uncertain.
        errors: True where the prediction is wrong [N].

    Returns:
        ``(rejected_fraction, error_rate)``, float64 Tensors [G + 1] for G distinct scores:
        the knots of the piecewise-linear curve, from (0, base error rate) to (1, 0).

    Raises:
        ValueError: On shape mismatch, NaN scores, or non-binary `errors`.
    """
    scores = check_scores("uncertainty", uncertainty)
    is_error = check_errors(errors, scores.shape[0]).to(scores.device)
    return _rejection_curve(scores, is_error)


def _rejection_curve(scores: Tensor, is_error: Tensor) -> tuple[Tensor, Tensor]:
    num_items = scores.shape[0]
    _, group, group_size = torch.unique(
        scores, sorted=True, return_inverse=True, return_counts=True
    )
    errors_in_group = torch.zeros(group_size.shape[0], dtype=torch.float64, device=scores.device)
    errors_in_group.index_add_(0, group, is_error.to(torch.float64))
    # Most uncertain group first; cumulative sums of integers are exact in float64.
    zero = torch.zeros(1, dtype=torch.float64, device=scores.device)
    rejected = torch.cat([zero, group_size.flip(0).to(torch.float64).cumsum(0)])
    errors_rejected = torch.cat([zero, errors_in_group.flip(0).cumsum(0)])
    total_errors = errors_rejected[-1]
    return rejected / num_items, (total_errors - errors_rejected) / num_items


def prediction_rejection_ratio(uncertainty: Tensor, errors: Tensor) -> float:
    """Prediction rejection ratio (PRR) of an uncertainty score for misclassification detection.

    With base error rate e, random rejection gives the curve e·(1 − r) (area e/2) and the oracle,
    which rejects the errors first, max(e − r, 0) (area e²/2). With A the area under the score's
    `rejection_curve` (tied inputs averaged over their orders):

        PRR = (e/2 − A) / (e/2 − e²/2)

    1 for a score that ranks every error above every correct input, 0 for random (and for a
    constant score), negative when worse than random.

    Args:
        uncertainty: Score per input [N], higher = more likely misclassified.
        errors: True where the prediction is wrong [N].

    Returns:
        PRR as a fraction (the paper reports it ×100). ``nan`` when no input or every input is
        misclassified: then every ranking gives the same curve and the ratio is 0/0.

    Raises:
        ValueError: On shape mismatch, NaN scores, or non-binary `errors`.

    References:
        Malinin, "Uncertainty Estimation in Deep Learning with application to Spoken Language
        Assessment", PhD thesis, Cambridge 2019; Malinin, Mlodozeniec & Gales, "Ensemble
        Distribution Distillation", ICLR 2020.
    """
    scores = check_scores("uncertainty", uncertainty)
    is_error = check_errors(errors, scores.shape[0]).to(scores.device)
    base_error = is_error.to(torch.float64).mean().item()
    if base_error in (0.0, 1.0):
        return math.nan
    rejected, error_rate = _rejection_curve(scores, is_error)
    area = torch.trapezoid(error_rate, rejected).item()
    random_area = base_error / 2
    oracle_area = base_error**2 / 2
    return (random_area - area) / (random_area - oracle_area)


def ood_false_positive_rate(
    uncertainty_in: Tensor, uncertainty_ood: Tensor, *, in_domain_kept: float = 0.95
) -> float:
    """Fraction of OOD inputs accepted as in-domain at the threshold that keeps `in_domain_kept`
    of the in-domain inputs (FPR95 with the default; "FPR at 95 % TPR" with in-domain as the
    class whose true-positive rate is fixed).

    The threshold τ is the smallest in-domain score such that at least `in_domain_kept` of the
    in-domain inputs have score ≤ τ (the ⌈0.95·N⌉-th smallest in-domain score). An input is
    accepted when its score is ≤ τ, so OOD inputs tied with τ count as accepted: a tie is never
    resolved in the detector's favour.

    Args:
        uncertainty_in: Scores of in-domain inputs [N], higher = more likely OOD.
        uncertainty_ood: Scores of OOD inputs [M].
        in_domain_kept: Fraction of in-domain inputs to keep, in (0, 1].

    Returns:
        The false positive rate in [0, 1].

    Raises:
        ValueError: On empty or non-1-D inputs, NaN scores, or `in_domain_kept` outside (0, 1].

    References:
        Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
        Examples in Neural Networks", ICLR 2017; Liang, Li & Srikant, "Enhancing the Reliability
        of Out-of-distribution Image Detection in Neural Networks" (ODIN), ICLR 2018.
    """
    if not 0 < in_domain_kept <= 1:
        raise ValueError(f"in_domain_kept must lie in (0, 1], got {in_domain_kept}")
    scores_in = check_scores("uncertainty_in", uncertainty_in)
    scores_ood = check_scores("uncertainty_ood", uncertainty_ood).to(scores_in.device)
    return _ood_false_positive_rate(scores_in, scores_ood, in_domain_kept)


def _ood_false_positive_rate(scores_in: Tensor, scores_ood: Tensor, in_domain_kept: float) -> float:
    num_in = scores_in.shape[0]
    # round() absorbs representation error (0.95 · 20 = 18.999…); ⌈·⌉ then keeps "at least".
    num_kept = max(1, math.ceil(round(in_domain_kept * num_in, 6)))
    threshold = torch.sort(scores_in).values[num_kept - 1]
    return (scores_ood <= threshold).to(torch.float64).mean().item()


def ood_detection(uncertainty_in: Tensor, uncertainty_ood: Tensor) -> dict[str, float]:
    """How well an uncertainty score separates OOD inputs from in-domain ones.

    Args:
        uncertainty_in: Scores of in-domain inputs [N], higher = more likely OOD (see
            `as_uncertainty_score`).
        uncertainty_ood: Scores of OOD inputs [M]: the positive class.

    Returns:
        ``{"auroc": float, "aupr": float, "fpr95": float}``: AUROC and average precision with OOD
        as positives, and `ood_false_positive_rate` at 95 % of in-domain inputs kept.

    Raises:
        ValueError: On empty or non-1-D inputs, or NaN scores.
    """
    scores_in = check_scores("uncertainty_in", uncertainty_in)
    scores_ood = check_scores("uncertainty_ood", uncertainty_ood).to(scores_in.device)
    scores = torch.cat([scores_in, scores_ood])
    is_ood = torch.cat(
        [
            torch.zeros(scores_in.shape[0], dtype=torch.bool, device=scores.device),
            torch.ones(scores_ood.shape[0], dtype=torch.bool, device=scores.device),
        ]
    )
    result = _auroc_and_aupr(scores, is_ood)
    result["fpr95"] = _ood_false_positive_rate(scores_in, scores_ood, 0.95)
    return result


def roc_curve_points(
    uncertainty_in: Tensor, uncertainty_ood: Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve of OOD detection, for plotting.

    Args:
        uncertainty_in: Scores of in-domain inputs [N], higher = more likely OOD.
        uncertainty_ood: Scores of OOD inputs [M]: the positive class.

    Returns:
        ``(fpr, tpr)``: float64 numpy arrays [G + 1] for G distinct scores, from (0, 0) to
        (1, 1); at each threshold t, fpr is the fraction of in-domain and tpr the fraction of
        OOD inputs with score ≥ t. The area under it is `ood_detection`'s AUROC.

    Raises:
        ValueError: On empty or non-1-D inputs, or NaN scores.
    """
    scores_in = check_scores("uncertainty_in", uncertainty_in)
    scores_ood = check_scores("uncertainty_ood", uncertainty_ood).to(scores_in.device)
    ranks = _ranks_in_unit_interval(torch.cat([scores_in, scores_ood]))
    target = torch.cat(
        [
            torch.zeros(scores_in.shape[0], dtype=torch.long, device=ranks.device),
            torch.ones(scores_ood.shape[0], dtype=torch.long, device=ranks.device),
        ]
    )
    fpr, tpr, _ = binary_roc(ranks, target, thresholds=None, validate_args=False)
    return (
        fpr.detach().cpu().numpy().astype(np.float64),
        tpr.detach().cpu().numpy().astype(np.float64),
    )
