"""Stage 5: ``report.md`` and ``figures/`` from the run directory alone.

The report reads ``config.yaml``, ``metrics.json``, ``evaluation/`` (per-input measures, ROC
points and 2-D data that the evaluate stage saved; see :mod:`endd.store.evaluation`) and the
models' ``model.json`` (training curves). It never loads the dataset or a model, recomputes no
measure, and imports nothing from :mod:`endd.pipeline`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from endd.errors import RunDirError
from endd.report.tables import (
    classification_table,
    fidelity_table,
    ood_table,
    timing_table,
    title,
)
from endd.store import RunDir, artifacts
from endd.store import evaluation as saved

__all__ = ["write_report"]

#: The measures of the uncertainty maps (columns), for models whose kind separates them.
MAP_MEASURES = ("total", "data", "knowledge")


def write_report(run: RunDir) -> Path:
    """Write figures and ``report.md``; returns the report's path.

    Raises:
        RunDirError: no ``metrics.json``, or a run evaluated by an older endd (no
            ``evaluation/``).
    """
    from endd.report import figures  # matplotlib: loaded only when drawing

    config = run.read_config()
    if not run.metrics.is_file():
        raise RunDirError(f"no metrics.json in {run.root}; run `endd evaluate {run.root}`")
    if not run.evaluation.is_dir():
        raise RunDirError(
            f"{run.root} was evaluated by an older endd (no evaluation/ folder); "
            f"run `endd evaluate {run.root} --force`"
        )
    saved.check_evaluation(run)  # damaged or foreign files: one line, and how to rebuild
    result = artifacts.read_json(run.metrics)
    students = [m for m in result["models"] if m not in ("individual", "ensemble")]
    # training curves: the ensemble's only when this run trained it (not for a teacher from outside)
    specs = {"ensemble": run.model_spec(run.ensemble)} if run.is_done("ensemble") else {}
    specs |= {m: run.model_spec(run.student(m)) for m in students}
    sections: list[str] = []

    if saved.data_path(run).is_file():
        data = saved.read_arrays(run, saved.data_path(run))
        ood_sets = [key for key in data if key.startswith("ood_")]
        figures.data_figure(
            data["x_train"],
            data["y_train"],
            data.get("x_aux"),
            {key.removeprefix("ood_"): data[key] for key in ood_sets},
            run.figures / "data.png",
        )
        maps = {}
        missing_map = not saved.measures_path(run, "ensemble", "grid").is_file()
        for model in [m for m in ("ensemble", *students) if not (m == "ensemble" and missing_map)]:
            measures = saved.read_arrays(run, saved.measures_path(run, model, "grid"))
            if "knowledge" not in measures:  # a single categorical: no split to map
                continue
            maps[model] = {m: measures[m] for m in MAP_MEASURES if m in measures}
        if maps:  # none when the ensemble's map is missing and every student is categorical
            figures.uncertainty_maps(
                data["grid"],
                tuple(int(n) for n in data["grid_shape"]),
                maps,
                data["x_train"],
                run.figures / "uncertainty_maps.png",
            )
        sections += [
            "## Data\n",
            "![training, auxiliary and OOD data](figures/data.png)\n",
            "## Uncertainty over the input plane (paper Fig. 3)\n",
            "Rows: models; columns: total, data and knowledge uncertainty (nats), each column on "
            "one colour scale. White dots: training data. An EnD² student should match the "
            "ensemble's total and data uncertainty; only with auxiliary data (EnD²+AUX) should "
            "it also reproduce the ensemble's knowledge uncertainty away from the data.\n",
            *(
                [
                    "**The ensemble's map is missing**: the teacher logits this run was given "
                    "have no `grid.npy`.\n"
                ]
                if missing_map
                else []
            ),
            *(["![uncertainty maps](figures/uncertainty_maps.png)\n"] if maps else []),
        ]

    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]] = {}
    for name in result["models"]["ensemble"]["ood"]:
        curves[name] = {}
        for key, (fpr, tpr) in saved.read_arrays(run, saved.roc_path(run, name)).items():
            model, measure = key.rsplit("/", 1)
            auroc = result["models"][model]["ood"][name]["auroc"][measure]
            label = f"{title(model)} {measure}"
            curves[name][label] = (fpr, tpr, auroc if auroc is not None else float("nan"))
    if curves:
        figures.roc_figure(curves, run.figures / "ood_roc.png")

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
    teacher = {
        "train": f"ensemble of **{members}** `{config['model']['backbone']}` members",
        "logits": f"teacher: **{members}** members' logits from `{config['teacher']['path']}`",
        "checkpoints": f"teacher: **{members}** member checkpoints (`teacher.members`)",
    }[config["teacher"]["source"]]
    lines = [
        f"# endd report: {config['name']}",
        "",
        f"Dataset **{result['dataset']}** ({result['num_classes']} classes), {teacher}, "
        f"seed {result['seed']}. "
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
    ]
    if result["models"]["ensemble"]["ood"]:
        lines += [
            "50 = chance. Below 50 a model is *more* certain on the OOD inputs than on the test "
            "inputs, which happens when the test data is noisy (high data uncertainty) and the "
            "networks extrapolate confidently far from it.",
            "",
            ood_table(result),
            "",
        ]
    else:
        lines += ["This run has no OOD sets (`x_ood_<name>` arrays, or `data.ood`).", ""]
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
