"""Stage 4: score every model on the test set and every OOD set, and measure distillation fidelity.

Models: ``individual`` (each member alone, metrics averaged over members), ``ensemble`` and each
trained student. Student logits per split are saved under ``predictions/<method>/``; the ensemble's
are the cached teacher logits.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from torch import Tensor

from endd import metrics
from endd.data import DataBundle
from endd.engine import predict_in_batches
from endd.models.prior import MEASURES, outputs_from_logits
from endd.pipeline import artifacts
from endd.pipeline.run_dir import RunDir, load_model
from endd.pipeline.stages import STUDENTS, student_methods, teacher_logits

FIDELITY_MEASURES = ("total", "data", "knowledge")


def _clean(value: float) -> float | None:
    """JSON has no NaN: undefined values (e.g. a constant score's correlation) become null."""
    return None if value is None or not math.isfinite(value) else float(value)


def score_model(
    outputs: dict[str, dict[str, Tensor]], labels: Tensor, measures: tuple[str, ...], ood: list[str]
) -> dict[str, Any]:
    """Classification, misclassification-detection and OOD-detection metrics of one model.

    Args:
        outputs: per split (``test`` and each ``ood_<name>``) the dict of
            :func:`outputs_from_logits`.
        labels: test labels [N].
        measures: the uncertainty measures to score.
        ood: names of the OOD sets.
    """
    test = outputs["test"]
    probs = test["probs"]
    errors = probs.argmax(dim=-1) != labels
    scores = {m: metrics.as_uncertainty_score(m, test[m]) for m in measures}
    misclassification = {
        m: metrics.misclassification_detection(s, errors) for m, s in scores.items()
    }
    result: dict[str, Any] = {
        "error": metrics.classification_error(probs, labels),
        "nll": metrics.nll(probs, labels),
        "ece": metrics.expected_calibration_error(probs, labels),
        "brier": metrics.brier_score(probs, labels),
        "prr": {
            m: _clean(metrics.prediction_rejection_ratio(s, errors)) for m, s in scores.items()
        },
        "misclassification": {
            key: {m: _clean(v[key]) for m, v in misclassification.items()}
            for key in ("auroc", "aupr")
        },
        "ood": {},
    }
    for name in ood:
        out = outputs[f"ood_{name}"]
        detection = {
            m: metrics.ood_detection(s, metrics.as_uncertainty_score(m, out[m]))
            for m, s in scores.items()
        }
        result["ood"][name] = {
            key: {m: _clean(v[key]) for m, v in detection.items()}
            for key in ("auroc", "aupr", "fpr95")
        }
    return result


def _average(results: list[Any]) -> Any:
    """Leaf-wise mean of nested dicts of numbers (None where any member is undefined)."""
    first = results[0]
    if isinstance(first, dict):
        return {key: _average([r[key] for r in results]) for key in first}
    if any(r is None for r in results):
        return None
    return float(np.mean(results))


def fidelity(
    student: dict[str, dict[str, Tensor]], ensemble: dict[str, dict[str, Tensor]], splits: list[str]
) -> dict[str, dict[str, float | None]]:
    """Spearman rank correlation between student and ensemble uncertainty, input by input."""
    result: dict[str, dict[str, float | None]] = {}
    for split in splits:
        pairs = {}
        for measure in FIDELITY_MEASURES:
            if measure in student[split]:
                a, b = student[split][measure].numpy(), ensemble[split][measure].numpy()
                constant = np.ptp(a) == 0 or np.ptp(b) == 0
                pairs[measure] = None if constant else _clean(spearmanr(a, b).statistic)
        result[split.removeprefix("ood_")] = pairs
    return result


def evaluate(run: RunDir, config: dict[str, Any], data: DataBundle) -> dict[str, Any]:
    """Write predictions and ``metrics.json``; returns the metrics."""
    start = time.perf_counter()
    ood = list(data.ood)
    splits = ["test", *(f"ood_{n}" for n in ood)] + (["grid"] if data.grid is not None else [])
    labels = data.y_test
    ensemble_logits = {split: teacher_logits(run, split) for split in splits}
    ensemble = {s: outputs_from_logits("ensemble", v) for s, v in ensemble_logits.items()}
    members = next(iter(ensemble_logits.values())).shape[1]
    scoring_splits = ["test", *(f"ood_{n}" for n in ood)]

    models: dict[str, Any] = {}
    individual = []
    for m in range(members):
        outputs = {
            s: outputs_from_logits("categorical", ensemble_logits[s][:, m]) for s in scoring_splits
        }
        individual.append(score_model(outputs, labels, MEASURES["categorical"], ood))
    models["individual"] = _average(individual)
    models["ensemble"] = score_model(ensemble, labels, MEASURES["ensemble"], ood)

    all_splits = data.unlabelled_splits()
    batch_size = config["trainer"]["eval_batch_size"]
    methods = student_methods(config, data)
    for method in methods:
        predictor = load_model(run.student(method))
        outputs = {}
        for split in splits:
            logits = predict_in_batches(predictor.network, all_splits[split], batch_size)
            artifacts.write_array(run.predictions(method) / f"{split}.npy", logits)
            outputs[split] = outputs_from_logits(STUDENTS[method]["kind"], logits)
        result = score_model(outputs, labels, predictor.measures, ood)
        result["fidelity"] = fidelity(outputs, ensemble, splits)
        models[method] = result

    timing = {}
    ensemble_spec = artifacts.read_json(run.ensemble / "model.json")
    timing["ensemble"] = ensemble_spec["train_seconds"]
    timing["teacher"] = artifacts.read_json(run.teacher / "done.json")["seconds"]
    timing["distill"] = sum(
        artifacts.read_json(run.student(m) / "model.json")["train_seconds"] for m in methods
    )
    timing["evaluate"] = time.perf_counter() - start
    result = {
        "dataset": config["data"]["name"],
        "seed": config["seed"],
        "num_classes": data.num_classes,
        "ensemble_size": members,
        "models": models,
        "timing": timing,
    }
    artifacts.write_json(run.metrics, result)
    return result
