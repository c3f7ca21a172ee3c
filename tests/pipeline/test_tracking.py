"""trainer.logger: per-epoch training curves through Lightning's loggers, under RUN/logs/."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from endd.config import load_yaml
from endd.pipeline.run import run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_csv_logger_writes_loss_and_temperature_per_epoch(tmp_path, tiny_spiral):
    overrides = [*tiny_spiral, "students.methods=[endd]", "trainer.logger=csv", "students.epochs=3"]
    run = run_config(load_yaml(CONFIGS / "spiral.yaml"), tmp_path / "run", overrides, quiet=True)
    with open(run.logs / "ensemble" / "metrics.csv") as handle:
        ensemble = list(csv.DictReader(handle))
    with open(run.logs / "student_endd" / "metrics.csv") as handle:
        student = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in ensemble] == [0, 1]  # tiny: 2 ensemble epochs
    assert [int(row["epoch"]) for row in student] == [0, 1, 2]
    spec = run.model_spec(run.student("endd"))
    assert [float(r["loss"]) for r in student] == pytest.approx(spec["epoch_losses"])
    assert [float(r["temperature"]) for r in student] == pytest.approx(spec["epoch_temperatures"])


def test_tensorboard_logger_writes_event_files(tmp_path, tiny_spiral):
    pytest.importorskip("tensorboardX")
    overrides = [*tiny_spiral, "students.methods=[end]", "trainer.logger=tensorboard"]
    run = run_config(load_yaml(CONFIGS / "spiral.yaml"), tmp_path / "run", overrides, quiet=True)
    assert list((run.logs / "ensemble").glob("events.out.tfevents.*"))
    assert list((run.logs / "student_end").glob("events.out.tfevents.*"))
