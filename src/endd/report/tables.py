"""Paper-style Markdown tables from ``metrics.json`` (rates shown as percentages)."""

from __future__ import annotations

from typing import Any

from endd.methods import METHODS

#: Titles of the models that are not student methods (students take theirs from the registry).
BASELINE_TITLES = {"individual": "Individual", "ensemble": "Ensemble"}

MEASURE_TITLES = {
    "total": "T.Unc",
    "data": "D.Unc",
    "knowledge": "K.Unc",
    "epkl": "EPKL",
    "confidence": "Conf",
    "differential_entropy": "Diff.Ent",
}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def title(model: str) -> str:
    """A model's name in reports: "Individual", "Ensemble", a student method's registered title
    ("EnD²+AUX"), or the name itself for a method this process does not know."""
    if model in BASELINE_TITLES:
        return BASELINE_TITLES[model]
    return METHODS[model].title if model in METHODS else model


def classification_table(metrics: dict[str, Any]) -> str:
    """Error, NLL, ECE, Brier and PRR (total / knowledge uncertainty) per model."""
    rows = []
    for model, m in metrics["models"].items():
        rows.append(
            [
                title(model),
                _pct(m["error"]),
                _num(m["nll"]),
                _pct(m["ece"]),
                _num(m["brier"]),
                _pct(m["prr"].get("total")),
                _pct(m["prr"].get("knowledge")),
                _pct(m["misclassification"]["auroc"].get("total")),
            ]
        )
    header = [
        "model",
        "error %",
        "NLL",
        "ECE %",
        "Brier",
        "PRR T.Unc %",
        "PRR K.Unc %",
        "AUROC T.Unc %",
    ]
    return _table(header, rows)


def ood_table(metrics: dict[str, Any], measures: tuple[str, ...] = ("total", "knowledge")) -> str:
    """OOD detection AUROC per OOD set and measure, one row per model."""
    models = metrics["models"]
    sets = list(next(iter(models.values()))["ood"])
    header = ["model"] + [f"{s} {MEASURE_TITLES[m]}" for s in sets for m in measures]
    rows = []
    for model, m in models.items():
        row = [title(model)]
        for s in sets:
            row += [_pct(m["ood"][s]["auroc"].get(measure)) for measure in measures]
        rows.append(row)
    return _table(header, rows)


def fidelity_table(metrics: dict[str, Any]) -> str:
    """Spearman correlation of each student's uncertainty with the ensemble's, per split."""
    rows = []
    for model, m in metrics["models"].items():
        for split, values in m.get("fidelity", {}).items():
            rows.append(
                [title(model), split]
                + [_num(values.get(measure), 3) for measure in ("total", "data", "knowledge")]
            )
    return _table(["model", "split", "T.Unc", "D.Unc", "K.Unc"], rows)


def timing_table(metrics: dict[str, Any]) -> str:
    rows = [[stage, f"{seconds:.1f}"] for stage, seconds in metrics["timing"].items()]
    return _table(["stage", "seconds"], rows)
