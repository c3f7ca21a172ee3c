"""The recipes of docs/architecture.md, each followed exactly as written, end to end."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from endd.config import load_yaml
from endd.methods import METHODS, StudentMethod
from endd.pipeline import run as run_module
from endd.pipeline.run import run_config
from endd.pipeline.stages import Stage
from endd.store import artifacts
from endd.store.run_dir import MARKERS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def brier_to_mean(student_logits, teacher_logits, *, temperature=1.0):
    """A toy distillation loss: squared error between the student's probabilities and the
    ensemble's mean prediction."""
    mean = torch.softmax(teacher_logits / temperature, dim=-1).mean(dim=1)
    return F.mse_loss(torch.softmax(student_logits / temperature, dim=-1), mean)


def test_recipe_add_a_student_method(tmp_path, tiny_spiral, monkeypatch):
    toy = StudentMethod("brier", "Brier-EnD", brier_to_mean, "categorical", temperature="fixed")
    monkeypatch.setitem(METHODS, toy.name, toy)  # register_method(toy), undone after the test
    overrides = [*tiny_spiral, "students.methods=[endd, brier]"]
    run = run_config(load_yaml(CONFIGS / "spiral.yaml"), tmp_path / "run", overrides, quiet=True)
    metrics = json.loads(run.metrics.read_text())
    assert list(metrics["models"]) == ["individual", "ensemble", "endd", "brier"]
    assert set(metrics["models"]["brier"]["prr"]) == {"total", "confidence"}  # its kind's
    assert "fidelity" in metrics["models"]["brier"]
    assert "| Brier-EnD |" in run.report.read_text()
    spec = json.loads((run.student("brier") / "model.json").read_text())
    assert spec["kind"] == "categorical" and len(spec["epoch_losses"]) == 2


def test_recipe_bring_your_own_dataset(tmp_path, tiny_spiral):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(
        tmp_path / "mine.npz",
        x_train=x[:90],
        y_train=y[:90],
        x_test=x[90:],
        y_test=y[90:],
        x_ood_shifted=x[:30] + 4,
    )
    overrides = [
        *tiny_spiral,
        "students.methods=[endd]",
        "data.name=npz",
        f"data.path={tmp_path / 'mine.npz'}",
    ]
    run = run_config(load_yaml(CONFIGS / "spiral.yaml"), tmp_path / "run", overrides, quiet=True)
    metrics = json.loads(run.metrics.read_text())
    assert metrics["dataset"] == "npz" and metrics["num_classes"] == 2
    assert set(metrics["models"]["endd"]["ood"]) == {"shifted"}


def test_recipe_add_a_backbone(tmp_path, tiny_spiral, monkeypatch):
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class TwoLayer(nn.Module):
                def __init__(self, num_classes, input_shape, width=8):
                    super().__init__()
                    self.net = nn.Sequential(
                        nn.Linear(input_shape[0], width), nn.Tanh(), nn.Linear(width, num_classes)
                    )

                def forward(self, x):
                    return self.net(x)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = [
        *tiny_spiral,
        "students.methods=[endd]",
        "model.backbone=mynets.TwoLayer",
        "model.hidden=null",
        "model.width=12",
    ]
    run = run_config(load_yaml(CONFIGS / "spiral.yaml"), tmp_path / "run", overrides, quiet=True)
    spec = json.loads((run.ensemble / "model.json").read_text())
    assert spec["backbone"] == "mynets.TwoLayer" and spec["backbone_kwargs"] == {"width": 12}
    assert json.loads(run.metrics.read_text())["ensemble_size"] == 3
    sys.modules.pop("mynets", None)


def test_recipe_add_a_stage(tmp_path, tiny_spiral, monkeypatch):
    def summarise(ctx):
        metrics = artifacts.read_json(ctx.run.metrics)
        errors = {name: model["error"] for name, model in metrics["models"].items()}
        artifacts.write_json(ctx.run.root / "summary.json", errors)

    summary = Stage(
        "summary",
        "error summary",
        ("evaluate",),
        ("evaluate",),
        ("summary.json",),
        summarise,
        needs_data=False,
    )
    monkeypatch.setitem(MARKERS, "summary", "summary.json")
    planned = run_module.plan
    monkeypatch.setattr(run_module, "plan", lambda *args: [*planned(*args), summary])

    overrides = [*tiny_spiral, "students.methods=[endd]"]
    run = run_config(load_yaml(CONFIGS / "spiral.yaml"), tmp_path / "run", overrides, quiet=True)
    errors = json.loads((run.root / "summary.json").read_text())
    assert errors["endd"] == json.loads(run.metrics.read_text())["models"]["endd"]["error"]
