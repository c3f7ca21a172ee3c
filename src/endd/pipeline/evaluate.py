"""Stage 4: score every model on the test set and every OOD set, and measure distillation fidelity.

Models: ``individual`` (each member alone, metrics averaged over members), ``ensemble`` and each
student method the caller names. Student logits per split are saved under
``predictions/<method>/``; the ensemble's are the cached teacher logits.

Besides ``metrics.json`` the stage saves, under ``evaluation/``, everything the report draws, so
the report reads the run directory only (never the dataset, never a model); paths and readers in
:mod:`endd.store.evaluation`. Every file is an ``.npz`` (``allow_pickle=False``)::

    evaluation/
      measures/<model>/<split>.npz  ensemble and each student; split: test, ood_<name>, grid
                                    (2-D data): one float64 [N] array per measure of the model's
                                    kind (ensemble: total, data, knowledge, epkl, confidence)
      roc/<name>.npz                OOD set <name>: one [2, G] array (fpr, tpr) per curve drawn,
                                    keyed <model>/<measure>, in the report's order (ensemble
                                    total and knowledge, then each student's detection measure)
      data.npz                      2-D inputs only, raw coordinates: x_train, y_train, x_aux
                                    (when there is one), ood_<name> per OOD set, grid and
                                    grid_shape
      files.json                    size and sha256 of every file above, of each student's
                                    predictions/<model>/<split>.npy and of metrics.json; the
                                    report checks them before it reads anything

``metrics.json`` is the stage's marker: the stage deletes it (and ``evaluation/``) first and
writes it last, so its presence means ``evaluation/`` is complete and matches it.
"""

from __future__ import annotations

import functools
import math
import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor

from endd import metrics
from endd.data import DataBundle
from endd.engine import inference_device, predict_in_batches
from endd.methods import get_method
from endd.models.kinds import get_kind, outputs_from_logits
from endd.pipeline.sharded import world, write_sharded
from endd.store import RunDir, artifacts
from endd.store import evaluation as saved
from endd.store.models import load_model

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


def _save_measures(
    run: RunDir, model: str, kind: str, outputs: dict[str, dict[str, Tensor]]
) -> None:
    """Per-input measures of ``model``'s kind on each split (``evaluation/measures/``)."""
    for split, out in outputs.items():
        arrays = {m: out[m].numpy() for m in get_kind(kind).measures}
        saved.write_arrays(saved.measures_path(run, model, split), arrays)


def _roc_curves(
    model: str, kind: str, outputs: dict[str, dict[str, Tensor]], ood: list[str]
) -> dict[str, dict[str, np.ndarray]]:
    """Per OOD set, the ROC curves the report draws for ``model``, each as [2, G] (fpr, tpr)."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name in ood:
        curves[name] = {}
        for measure in saved.roc_measures(model, kind):
            fpr, tpr = metrics.roc_curve_points(
                outputs["test"][measure], outputs[f"ood_{name}"][measure]
            )
            curves[name][saved.roc_key(model, measure)] = np.stack([fpr, tpr])
    return curves


def _save_data(run: RunDir, data: DataBundle) -> None:
    """2-D inputs: the data in raw coordinates, for the data figure and the uncertainty maps."""
    raw = {split: np.asarray(x[:]) for split, x in data.raw_splits().items()}
    arrays = {"x_train": raw["train"], "y_train": data.y_train.numpy()}
    if "aux" in raw:
        arrays["x_aux"] = raw["aux"]
    arrays |= {f"ood_{name}": raw[f"ood_{name}"] for name in data.ood}
    arrays["grid"] = raw["grid"]
    arrays["grid_shape"] = np.asarray(data.grid_shape, dtype=np.int64)
    saved.write_arrays(saved.data_path(run), arrays)


def _logits_rows(
    network: torch.nn.Module, x: Tensor, batch_size: int, start: int, stop: int
) -> Iterator[Tensor]:
    """``network``'s logits on rows ``start..stop−1`` of ``x``, a batch at a time."""
    for first in range(start, stop, batch_size):
        yield predict_in_batches(network, x[first : min(stop, first + batch_size)], batch_size)


def write_predictions(
    run: RunDir, config: dict[str, Any], data: DataBundle, methods: list[str], splits: list[str]
) -> None:
    """Each student's logits on ``splits`` into ``predictions/<method>/<split>.npy``. Every rank
    of a process group calls this and computes its slice of the rows (in the batches one
    process would run, so the files do not depend on the number of ranks); global rank 0
    assembles the files (:mod:`endd.pipeline.sharded`)."""
    all_splits = data.unlabelled_splits()
    batch_size = config["trainer"]["eval_batch_size"]
    for method in methods:
        network = load_model(run.student(method)).to(inference_device(config["trainer"])).network

        for split in splits:
            x = all_splits[split]
            shape = (len(x), data.num_classes)
            path = run.predictions(method) / f"{split}.npy"
            rows = functools.partial(_logits_rows, network, x, batch_size)
            write_sharded(path, shape, np.float32, rows, quantum=batch_size)


def evaluate(
    run: RunDir, config: dict[str, Any], data: DataBundle, methods: list[str]
) -> dict[str, Any]:
    """Score the ensemble, its members and the students ``methods``; write predictions,
    ``evaluation/`` and, last, ``metrics.json``. Returns the metrics.

    Every rank of a process group calls this: the students' predictions are computed in
    shards by every rank (:func:`write_predictions`); global rank 0 then scores them over each
    whole split, once (no sample counted twice or dropped), and writes the rest. The other
    ranks return an empty dict."""
    start = time.perf_counter()
    rank = world()[0]
    if rank == 0:
        run.metrics.unlink(missing_ok=True)  # from here on the old marker vouches for nothing
        shutil.rmtree(run.evaluation, ignore_errors=True)
    ood = list(data.ood)
    splits = ["test", *(f"ood_{n}" for n in ood)] + (["grid"] if data.grid is not None else [])
    write_predictions(run, config, data, methods, splits)
    if rank != 0:
        return {}
    labels = data.y_test
    # A teacher brought from outside may lack the grid (the report then has no ensemble map).
    teacher_splits = [s for s in splits if s != "grid" or (run.teacher / "grid.npy").is_file()]
    ensemble_logits = {split: run.teacher_logits(split) for split in teacher_splits}
    ensemble = {s: outputs_from_logits("ensemble", v) for s, v in ensemble_logits.items()}
    members = next(iter(ensemble_logits.values())).shape[1]
    scoring_splits = ["test", *(f"ood_{n}" for n in ood)]

    models: dict[str, Any] = {}
    individual = []
    for m in range(members):
        outputs = {
            s: outputs_from_logits("categorical", ensemble_logits[s][:, m]) for s in scoring_splits
        }
        individual.append(score_model(outputs, labels, get_kind("categorical").measures, ood))
    models["individual"] = _average(individual)
    models["ensemble"] = score_model(ensemble, labels, get_kind("ensemble").measures, ood)
    _save_measures(run, "ensemble", "ensemble", ensemble)
    curves = _roc_curves("ensemble", "ensemble", ensemble, ood)

    for method in methods:
        kind = get_method(method).kind
        outputs = {}
        for split in splits:
            logits = artifacts.read_array(run.predictions(method) / f"{split}.npy", mmap=False)
            outputs[split] = outputs_from_logits(kind, torch.from_numpy(logits))
        result = score_model(outputs, labels, get_kind(kind).measures, ood)
        result["fidelity"] = fidelity(outputs, ensemble, teacher_splits)
        models[method] = result
        _save_measures(run, method, kind, outputs)
        for name, drawn in _roc_curves(method, kind, outputs, ood).items():
            curves[name] |= drawn
    for name, drawn in curves.items():
        saved.write_arrays(saved.roc_path(run, name), drawn)
    if data.grid is not None and data.input_shape == (2,):
        _save_data(run, data)

    timing = {}
    if run.is_done("ensemble"):  # absent when the teacher came from outside
        timing["ensemble"] = run.model_spec(run.ensemble)["train_seconds"]
    timing["teacher"] = artifacts.read_json(run.marker("teacher"))["seconds"]
    timing["distill"] = sum(run.model_spec(run.student(m))["train_seconds"] for m in methods)
    timing["evaluate"] = time.perf_counter() - start
    result = {
        "dataset": config["data"]["name"],
        "seed": config["seed"],
        "num_classes": data.num_classes,
        "ensemble_size": members,
        "models": models,
        "timing": timing,
    }
    # every file written above, with its size and checksum, then metrics.json (the marker)
    written = [p for p in sorted(run.evaluation.rglob("*")) if p.is_file()]
    written += [run.predictions(m) / f"{s}.npy" for m in methods for s in splits]
    text = artifacts.json_text(result)
    saved.write_manifest(run, written, text)
    artifacts.write_text(run.metrics, text)
    return result
