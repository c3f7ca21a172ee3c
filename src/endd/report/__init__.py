"""Stage 5: ``report.md`` and ``figures/`` from ``metrics.json`` and saved predictions.

Nothing here trains or predicts: figures read the cached teacher logits and the students'
saved prediction logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from endd import metrics as metric_fns
from endd.data import DataBundle, load_data
from endd.models.prior import outputs_from_logits
from endd.pipeline import artifacts
from endd.pipeline.run_dir import RunDir
from endd.pipeline.stages import STUDENTS
from endd.report import figures
from endd.report.tables import (
    classification_table,
    fidelity_table,
    ood_table,
    timing_table,
    title,
)

__all__ = ["write_report"]


def _logits(run: RunDir, model: str, split: str) -> torch.Tensor:
    path = (run.teacher if model == "ensemble" else run.predictions(model)) / f"{split}.npy"
    return torch.from_numpy(np.array(artifacts.read_array(path)))


def _kind(model: str) -> str:
    return "ensemble" if model == "ensemble" else STUDENTS[model]["kind"]


def _detection_measure(kind: str) -> str:
    return "total" if kind == "categorical" else "knowledge"


def write_report(run: RunDir, data: DataBundle | None = None) -> Path:
    """Write figures and ``report.md``; returns the report's path."""
    config = run.read_config()
    result = artifacts.read_json(run.metrics)
    data = data if data is not None else load_data(config["data"], config["seed"])
    students = [m for m in result["models"] if m in STUDENTS]
    shown = ["ensemble", *students]
    sections: list[str] = []

    two_d = data.grid is not None and data.input_shape == (2,)
    if two_d:
        raw = lambda x: data.to_raw(x).numpy()  # noqa: E731
        x_train = raw(data.x_train)
        figures.data_figure(
            x_train,
            data.y_train.numpy(),
            None if data.x_aux is None else raw(data.x_aux),
            {name: raw(x) for name, x in data.ood.items()},
            run.figures / "data.png",
        )
        maps = {}
        for model in shown:
            if _kind(model) == "categorical":
                continue
            out = outputs_from_logits(_kind(model), _logits(run, model, "grid"))
            maps[model] = {m: out[m].numpy() for m in ("total", "data", "knowledge")}
        figures.uncertainty_maps(
            raw(data.grid), data.grid_shape, maps, x_train, run.figures / "uncertainty_maps.png"
        )
        sections += [
            "## Data\n",
            "![training, auxiliary and OOD data](figures/data.png)\n",
            "## Uncertainty over the input plane (paper Fig. 3)\n",
            "Rows: models; columns: total, data and knowledge uncertainty (nats), each column on "
            "one colour scale. White dots: training data. An EnD² student should match the "
            "ensemble's total and data uncertainty; only with auxiliary data (EnD²+AUX) should "
            "it also reproduce the ensemble's knowledge uncertainty away from the data.\n",
            "![uncertainty maps](figures/uncertainty_maps.png)\n",
        ]

    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]] = {}
    test_out = {m: outputs_from_logits(_kind(m), _logits(run, m, "test")) for m in shown}
    for name in data.ood:
        curves[name] = {}
        for model in shown:
            kind = _kind(model)
            measures = ["total", "knowledge"] if model == "ensemble" else [_detection_measure(kind)]
            ood_out = outputs_from_logits(kind, _logits(run, model, f"ood_{name}"))
            for measure in measures:
                fpr, tpr = metric_fns.roc_curve_points(test_out[model][measure], ood_out[measure])
                auroc = result["models"][model]["ood"][name]["auroc"][measure]
                label = f"{title(model)} {measure}"
                curves[name][label] = (fpr, tpr, auroc if auroc is not None else float("nan"))
    if curves:
        figures.roc_figure(curves, run.figures / "ood_roc.png")

    specs = {"ensemble": artifacts.read_json(run.ensemble / "model.json")}
    specs |= {m: artifacts.read_json(run.student(m) / "model.json") for m in students}
    figures.training_figure(
        {m: s["epoch_losses"] for m, s in specs.items()},
        {m: s.get("epoch_temperatures", []) for m, s in specs.items()},
        run.figures / "training.png",
    )
    artifacts.write_text(run.report, _markdown(config, result, sections, bool(curves)))
    return run.report


def _markdown(
    config: dict[str, Any], result: dict[str, Any], sections: list[str], roc: bool
) -> str:
    members = result["ensemble_size"]
    lines = [
        f"# endd report: {config['name']}",
        "",
        f"Dataset **{result['dataset']}** ({result['num_classes']} classes), ensemble of "
        f"**{members}** `{config['model']['backbone']}` members, seed {result['seed']}. "
        "Rates in %. *Individual* is each member alone, averaged over members. "
        "Uncertainty measures: T.Unc total, D.Unc data, K.Unc knowledge (mutual information).",
        "",
        "## Classification and misclassification detection (test set)",
        "",
        "PRR: prediction rejection ratio (100 = oracle, 0 = random). AUROC: misclassified inputs "
        "are the positive class. EnD students are ordinary classifiers: they have no K.Unc.",
        "",
        classification_table(result),
        "",
        "## OOD detection (AUROC %, OOD = positive class)",
        "",
        "50 = chance. Below 50 a model is *more* certain on the OOD inputs than on the test "
        "inputs, which happens when the test data is noisy (high data uncertainty) and the "
        "networks extrapolate confidently far from it.",
        "",
        ood_table(result),
        "",
    ]
    if roc:
        lines += ["![ROC curves for OOD detection](figures/ood_roc.png)", ""]
    lines += sections
    lines += [
        "## Distillation fidelity",
        "",
        "Spearman rank correlation between each student's uncertainty and the ensemble's, input "
        "by input (1 = the same ranking).",
        "",
        fidelity_table(result),
        "",
        "## Training",
        "",
        "![training curves](figures/training.png)",
        "",
        timing_table(result),
        "",
        "Full numbers: `metrics.json`; resolved settings: `config.yaml`.",
        "",
    ]
    return "\n".join(lines)
