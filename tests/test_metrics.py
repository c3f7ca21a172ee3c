import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torchmetrics.functional.classification import multiclass_calibration_error

from endd.metrics import (
    as_uncertainty_score,
    brier_score,
    classification_error,
    expected_calibration_error,
    misclassification_detection,
    nll,
    ood_detection,
    ood_false_positive_rate,
    prediction_rejection_ratio,
    rejection_curve,
    roc_curve_points,
)

# torchmetrics accumulates its ROC/PR curves in float32: results agree with sklearn to ~1e-7.
TORCHMETRICS_TOLERANCE = 1e-6

# ---------------------------------------------------------------- independent numpy references


def reference_ece(probs, labels, n_bins=15):
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    boundaries = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lower, upper in itertools.pairwise(boundaries):
        in_bin = (confidence > lower) & (confidence <= upper)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return ece


def reference_prr(uncertainty, errors):
    """PRR from the rejection curve at every integer number of rejections (no ties)."""
    n = len(errors)
    order = np.argsort(-uncertainty, kind="stable")
    sorted_errors = errors[order].astype(float)
    remaining_errors = sorted_errors.sum() - np.concatenate([[0.0], np.cumsum(sorted_errors)])
    fractions = np.arange(n + 1) / n
    area = np.trapezoid(remaining_errors / n, fractions)
    base = errors.mean()
    random_area = np.trapezoid(base * (1 - fractions), fractions)
    oracle_curve = np.maximum(errors.sum() - np.arange(n + 1), 0) / n
    oracle_area = np.trapezoid(oracle_curve, fractions)
    return (random_area - area) / (random_area - oracle_area)


def reference_fpr95(scores_in, scores_ood):
    for value in np.sort(scores_in):
        if (scores_in <= value).mean() >= 0.95:
            return (scores_ood <= value).mean()
    raise AssertionError("unreachable")


def random_probs_and_labels(generator, n, k):
    concentration = torch.full((k,), 0.5)
    probs = torch.distributions.Dirichlet(concentration).sample((n,))
    probs = probs / probs.sum(dim=1, keepdim=True)
    labels = torch.randint(0, k, (n,), generator=generator)
    return probs.double(), labels


# ---------------------------------------------------------------- classification metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_numpy(seed):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    probs, labels = random_probs_and_labels(generator, 500, 7)
    p, y = probs.numpy(), labels.numpy()

    assert classification_error(probs, labels) == pytest.approx((p.argmax(1) != y).mean())
    expected_nll = -np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean()
    assert nll(probs, labels) == pytest.approx(expected_nll, rel=1e-12)
    assert expected_calibration_error(probs, labels) == pytest.approx(
        reference_ece(p, y), abs=1e-12
    )
    assert expected_calibration_error(probs, labels, n_bins=7) == pytest.approx(
        reference_ece(p, y, 7), abs=1e-12
    )
    one_hot = np.eye(7)[y]
    assert brier_score(probs, labels) == pytest.approx(((p - one_hot) ** 2).sum(1).mean())


def test_ece_agrees_with_torchmetrics_on_continuous_confidences():
    torch.manual_seed(3)
    probs, labels = random_probs_and_labels(torch.Generator().manual_seed(3), 2000, 5)
    theirs = multiclass_calibration_error(probs.float(), labels, num_classes=5, n_bins=15)
    assert expected_calibration_error(probs, labels) == pytest.approx(theirs.item(), abs=1e-5)


def test_ece_on_bin_boundaries_uses_upper_inclusive_bins():
    # bins are (lower, upper]: a confidence exactly on the boundary 8/15 shares the bin (7/15,
    # 8/15] with a confidence of 0.5, instead of opening the next bin
    boundary = torch.linspace(0.0, 1.0, 16, dtype=torch.float64)[8].item()
    probs = torch.tensor([[boundary, 1 - boundary], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 1])  # the first right, the second wrong (argmax picks class 0)
    shared_bin = abs(0.5 - (boundary + 0.5) / 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(shared_bin)


def test_ece_by_hand():
    # every input 90 % confident, half of them right: one bin, |0.5 - 0.9|
    probs = torch.tensor([[0.9, 0.1]] * 4)
    labels = torch.tensor([0, 0, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)


def test_ece_vanishes_for_perfectly_calibrated_predictions():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.ones(3)).sample((200_000,)).double()
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # y ~ Cat(p)
    assert expected_calibration_error(probs, labels) < 0.01
    # and a miscalibrated version of the same predictions is clearly not calibrated
    sharpened = probs**3 / (probs**3).sum(dim=1, keepdim=True)
    assert expected_calibration_error(sharpened, labels) > 0.05


def test_nll_floors_zero_probability_and_brier_range():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([1, 0])
    assert nll(probs, labels) == pytest.approx((-math.log(1e-12) + math.log(2)) / 2)
    assert nll(probs, labels, eps=1e-6) == pytest.approx((-math.log(1e-6) + math.log(2)) / 2)
    assert brier_score(probs, labels) == pytest.approx((2.0 + 0.5) / 2)
    assert brier_score(torch.eye(3), torch.arange(3)) == 0.0
    assert classification_error(probs, labels) == 0.5


def test_half_precision_probabilities_are_accepted():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(64, 10), dim=1)
    labels = torch.randint(0, 10, (64,))
    for dtype in (torch.float16, torch.bfloat16):
        assert nll(probs.to(dtype), labels) == pytest.approx(nll(probs, labels), rel=2e-2)


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (torch.tensor([0.5, 0.5]), torch.tensor([0]), r"shape \[N, K\]"),
        (torch.ones(2, 2, 2) / 2, torch.tensor([0, 1]), r"shape \[N, K\]"),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.long), r"shape \[N, K\]"),
        (torch.tensor([[1, 0]]), torch.tensor([0]), "floating-point"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([0, 1]), r"labels must have shape \[N\]"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([2]), r"labels must lie in \[0, 2\)"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([-1]), r"labels must lie in \[0, 2\)"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([0.0]), "integer tensor"),
        (torch.tensor([[math.nan, 0.5]]), torch.tensor([0]), "NaN"),
        (torch.tensor([[1.5, -0.5]]), torch.tensor([0]), "negative"),
        (torch.tensor([[0.6, 0.6]]), torch.tensor([0]), "sum to 1"),
    ],
)
@pytest.mark.parametrize(
    "metric", [classification_error, nll, expected_calibration_error, brier_score]
)
def test_classification_metrics_reject_bad_inputs(metric, probs, labels, message):
    with pytest.raises(ValueError, match=message):
        metric(probs, labels)


def test_classification_metric_options_are_validated():
    probs, labels = torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, labels, n_bins=0)
    with pytest.raises(ValueError, match="eps"):
        nll(probs, labels, eps=0.0)


# ---------------------------------------------------------------- ranking metrics vs sklearn


def tied_scores(generator, n, scale):
    """Scores on 11 distinct values, so that most inputs are tied with others."""
    return torch.round(torch.rand(n, generator=generator, dtype=torch.float64) * 10) * scale


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scale", [1.0, 100.0, -3.0])  # outside [0, 1]: no sigmoid squashing
def test_misclassification_detection_matches_sklearn_with_ties(seed, scale):
    generator = torch.Generator().manual_seed(seed)
    uncertainty = tied_scores(generator, 400, scale)
    # errors more likely at high uncertainty (positive scale), so the ranking is informative
    p_error = 0.1 + 0.6 * torch.rand(400, generator=generator, dtype=torch.float64)
    errors = torch.rand(400, generator=generator, dtype=torch.float64) < p_error
    result = misclassification_detection(uncertainty, errors)
    assert result["auroc"] == pytest.approx(
        roc_auc_score(errors, uncertainty), abs=TORCHMETRICS_TOLERANCE
    )
    assert result["aupr"] == pytest.approx(
        average_precision_score(errors, uncertainty), abs=TORCHMETRICS_TOLERANCE
    )


@pytest.mark.parametrize("seed", range(4))
def test_ood_detection_matches_sklearn_with_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    # 310 in-domain inputs: 95 % of them is not a whole number
    scores_in = torch.round(torch.randn(310, generator=generator) * 3)
    scores_ood = torch.round(torch.randn(150, generator=generator) * 3 + 2)
    result = ood_detection(scores_in, scores_ood)
    scores = torch.cat([scores_in, scores_ood]).numpy()
    is_ood = np.r_[np.zeros(310), np.ones(150)]
    assert result["auroc"] == pytest.approx(
        roc_auc_score(is_ood, scores), abs=TORCHMETRICS_TOLERANCE
    )
    assert result["aupr"] == pytest.approx(
        average_precision_score(is_ood, scores), abs=TORCHMETRICS_TOLERANCE
    )
    assert result["fpr95"] == pytest.approx(reference_fpr95(scores_in.numpy(), scores_ood.numpy()))


def test_large_scores_are_not_squashed_into_ties():
    # torchmetrics on raw float32 scores 20 and 30 would sigmoid both to 1.0 and report 0.5
    result = ood_detection(torch.tensor([20.0, 21.0]), torch.tensor([30.0, 40.0]))
    assert result == pytest.approx({"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0})


def test_roc_curve_points_match_sklearn():
    generator = torch.Generator().manual_seed(5)
    scores_in = torch.round(torch.randn(200, generator=generator) * 4)
    scores_ood = torch.round(torch.randn(100, generator=generator) * 4 + 3)
    fpr, tpr = roc_curve_points(scores_in, scores_ood)
    scores = torch.cat([scores_in, scores_ood]).numpy()
    is_ood = np.r_[np.zeros(200), np.ones(100)]
    sk_fpr, sk_tpr, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    assert fpr.dtype == np.float64
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-7)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-7)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    area = np.trapezoid(tpr, fpr)
    assert area == pytest.approx(ood_detection(scores_in, scores_ood)["auroc"], abs=1e-6)


def test_detection_is_nan_without_both_classes():
    uncertainty = torch.rand(10)
    for errors in (torch.zeros(10, dtype=torch.bool), torch.ones(10, dtype=torch.long)):
        result = misclassification_detection(uncertainty, errors)
        assert math.isnan(result["auroc"]) and math.isnan(result["aupr"])


# ---------------------------------------------------------------- PRR


def test_prr_is_one_for_the_oracle_and_minus_one_for_its_reverse():
    generator = torch.Generator().manual_seed(0)
    errors = torch.rand(1000, generator=generator) < 0.2
    assert prediction_rejection_ratio(errors.double(), errors) == pytest.approx(1.0)
    assert prediction_rejection_ratio(-errors.double(), errors) == pytest.approx(-1.0)
    # any score that puts every error above every correct input is an oracle
    oracle_like = errors.double() * 5 + torch.rand(1000, generator=generator, dtype=torch.float64)
    assert prediction_rejection_ratio(oracle_like, errors) == pytest.approx(1.0)


def test_prr_is_zero_for_random_scores_on_average():
    generator = torch.Generator().manual_seed(1)
    errors = torch.rand(500, generator=generator) < 0.3
    values = [
        prediction_rejection_ratio(torch.rand(500, generator=generator), errors) for _ in range(200)
    ]
    assert abs(np.mean(values)) < 0.05
    assert np.std(values) > 0.01  # the test would notice a constant output


def test_prr_of_a_constant_score_is_exactly_zero():
    errors = torch.tensor([True, False, False, True, False])
    assert prediction_rejection_ratio(torch.ones(5), errors) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_prr_matches_a_step_by_step_reference_without_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    uncertainty = torch.rand(300, generator=generator, dtype=torch.float64)
    errors = torch.rand(300, generator=generator, dtype=torch.float64) < 0.2 + 0.5 * uncertainty
    expected = reference_prr(uncertainty.numpy(), errors.numpy())
    assert prediction_rejection_ratio(uncertainty, errors) == pytest.approx(expected, abs=1e-12)


def test_prr_with_ties_is_the_average_over_all_tie_orders():
    uncertainty = np.array([0.3, 0.3, 0.3, 0.9, 0.1, 0.1, 0.9])
    errors = np.array([1, 0, 1, 0, 0, 1, 1], dtype=bool)
    # break ties by every permutation of the inputs and average the tie-free PRR
    values = []
    for tie_breaker in itertools.permutations(range(7)):
        broken = uncertainty + np.array(tie_breaker) * 1e-6
        values.append(reference_prr(broken, errors))
    expected = np.mean(values)
    actual = prediction_rejection_ratio(torch.from_numpy(uncertainty), torch.from_numpy(errors))
    assert actual == pytest.approx(expected, abs=1e-12)


def test_rejection_curve_knots():
    uncertainty = torch.tensor([0.9, 0.5, 0.5, 0.1])
    errors = torch.tensor([1, 1, 0, 0])
    rejected, error_rate = rejection_curve(uncertainty, errors)
    # reject nothing; the 0.9 (an error); the tied 0.5s (one error); everything
    assert rejected.tolist() == [0.0, 0.25, 0.75, 1.0]
    assert error_rate.tolist() == [0.5, 0.25, 0.0, 0.0]


def test_prr_is_nan_without_both_classes():
    assert math.isnan(prediction_rejection_ratio(torch.rand(5), torch.zeros(5, dtype=torch.bool)))
    assert math.isnan(prediction_rejection_ratio(torch.rand(5), torch.ones(5, dtype=torch.bool)))


# ---------------------------------------------------------------- FPR95, directions, validation


def test_fpr95_by_hand():
    scores_in = torch.arange(1, 21, dtype=torch.float64)  # threshold: the 19th smallest = 19
    scores_ood = torch.tensor([0.5, 19.0, 19.5, 25.0])  # 0.5 accepted, 19 accepted (tie)
    assert ood_false_positive_rate(scores_in, scores_ood) == 0.5
    assert ood_detection(scores_in, scores_ood)["fpr95"] == 0.5
    # 0.95 · 30 = 28.5 in-domain inputs: keeping at least that many takes 29, threshold 29
    scores_in_30 = torch.arange(1, 31, dtype=torch.float64)
    assert ood_false_positive_rate(scores_in_30, torch.tensor([28.5, 29.5])) == 0.5
    # keeping 50 % of in-domain: threshold 10
    assert ood_false_positive_rate(scores_in, scores_ood, in_domain_kept=0.5) == 0.25
    # keeping everything: threshold 20
    assert ood_false_positive_rate(scores_in, scores_ood, in_domain_kept=1.0) == 0.75


def test_fpr95_ties_at_the_threshold_count_as_accepted():
    scores_in = torch.zeros(100)  # e.g. a saturated confidence: every score equal
    assert ood_false_positive_rate(scores_in, torch.zeros(10)) == 1.0
    assert ood_false_positive_rate(scores_in, torch.full((10,), 1e-9)) == 0.0


def test_perfect_separation():
    result = ood_detection(torch.rand(50), torch.rand(30) + 2)
    assert result == pytest.approx({"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0})


def test_as_uncertainty_score_directions():
    values = torch.tensor([0.2, 0.7])
    for name in ("confidence", "precision"):
        assert torch.equal(as_uncertainty_score(name, values), -values)
    for name in ("total", "data", "knowledge", "epkl", "differential_entropy"):
        assert as_uncertainty_score(name, values) is values
    with pytest.raises(ValueError, match="unknown uncertainty measure 'max_prob'"):
        as_uncertainty_score("max_prob", values)
    # negated confidence detects OOD inputs that are less confident
    confidence_in, confidence_ood = torch.tensor([0.9, 0.95]), torch.tensor([0.4, 0.5])
    auroc = ood_detection(
        as_uncertainty_score("confidence", confidence_in),
        as_uncertainty_score("confidence", confidence_ood),
    )["auroc"]
    assert auroc == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("uncertainty", "errors", "message"),
    [
        (torch.rand(5), torch.zeros(4, dtype=torch.bool), r"errors must have shape \[N\] = \[5\]"),
        (torch.rand(5, 1), torch.zeros(5, dtype=torch.bool), r"uncertainty must have shape \[N\]"),
        (torch.empty(0), torch.empty(0, dtype=torch.bool), r"uncertainty must have shape \[N\]"),
        (torch.tensor([0.1, math.nan]), torch.tensor([True, False]), "uncertainty contains NaN"),
        (torch.rand(2), torch.tensor([0.0, 1.0]), "errors must be bool"),
        (torch.rand(2), torch.tensor([0, 2]), "only 0 and 1"),
        ([0.1, 0.2], torch.tensor([True, False]), "must be a torch Tensor"),
    ],
)
@pytest.mark.parametrize(
    "metric", [misclassification_detection, prediction_rejection_ratio, rejection_curve]
)
def test_misclassification_metrics_reject_bad_inputs(metric, uncertainty, errors, message):
    with pytest.raises(ValueError, match=message):
        metric(uncertainty, errors)


@pytest.mark.parametrize(
    ("scores_in", "scores_ood", "message"),
    [
        (torch.empty(0), torch.rand(3), "uncertainty_in must have shape"),
        (torch.rand(3), torch.rand(3, 2), "uncertainty_ood must have shape"),
        (torch.rand(3), torch.tensor([math.nan]), "uncertainty_ood contains NaN"),
    ],
)
@pytest.mark.parametrize("metric", [ood_detection, ood_false_positive_rate, roc_curve_points])
def test_ood_metrics_reject_bad_inputs(metric, scores_in, scores_ood, message):
    with pytest.raises(ValueError, match=message):
        metric(scores_in, scores_ood)


def test_fpr_rejects_bad_fraction():
    with pytest.raises(ValueError, match="in_domain_kept"):
        ood_false_positive_rate(torch.rand(3), torch.rand(3), in_domain_kept=0.0)


def test_infinite_scores_still_rank():
    scores_in = torch.tensor([0.0, 1.0, -math.inf])
    scores_ood = torch.tensor([math.inf, 5.0])
    assert ood_detection(scores_in, scores_ood)["auroc"] == pytest.approx(1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_give_the_same_results_on_cuda():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    probs, labels = random_probs_and_labels(generator, 300, 4)
    uncertainty = tied_scores(generator, 300, 1.0)
    errors = probs.argmax(dim=1) != labels
    for metric in (classification_error, nll, expected_calibration_error, brier_score):
        assert metric(probs.cuda(), labels.cuda()) == pytest.approx(metric(probs, labels))
    assert prediction_rejection_ratio(uncertainty.cuda(), errors) == pytest.approx(
        prediction_rejection_ratio(uncertainty, errors)
    )
    assert ood_detection(uncertainty[:200].cuda(), uncertainty[200:].cuda()) == pytest.approx(
        ood_detection(uncertainty[:200], uncertainty[200:])
    )
