"""Evaluation metrics: classification quality of probabilities and ranking quality of uncertainty.

* `endd.metrics.classification`: `classification_error`, `nll`, `expected_calibration_error`,
  `brier_score` on probabilities [N, K] and labels [N].
* `endd.metrics.detection`: `prediction_rejection_ratio`, `misclassification_detection`
  (AUROC / AUPR), `ood_detection` (AUROC / AUPR / FPR95), `roc_curve_points`, `rejection_curve`,
  and `as_uncertainty_score`, which negates measures where higher means more certain.

Every metric takes torch Tensors, computes in float64, and returns Python floats (dicts of floats
for the detection summaries). Higher uncertainty means "more likely misclassified / OOD", and the
misclassified or OOD inputs are the positive class for AUROC and AUPR.
"""

from endd.metrics.classification import (
    brier_score,
    classification_error,
    expected_calibration_error,
    nll,
)
from endd.metrics.detection import (
    HIGHER_MEANS_CERTAIN,
    HIGHER_MEANS_UNCERTAIN,
    as_uncertainty_score,
    misclassification_detection,
    ood_detection,
    ood_false_positive_rate,
    prediction_rejection_ratio,
    rejection_curve,
    roc_curve_points,
)

__all__ = [
    "HIGHER_MEANS_CERTAIN",
    "HIGHER_MEANS_UNCERTAIN",
    "as_uncertainty_score",
    "brier_score",
    "classification_error",
    "expected_calibration_error",
    "misclassification_detection",
    "nll",
    "ood_detection",
    "ood_false_positive_rate",
    "prediction_rejection_ratio",
    "rejection_curve",
    "roc_curve_points",
]
