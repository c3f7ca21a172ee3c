"""A run killed with SIGKILL during distillation resumes and ends with the same metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "spiral.yaml"


def _command(out: Path, workers: int, tiny: list[str]) -> list[str]:
    replaced = ("students.epochs", "students.batch_size", "trainer.workers")
    overrides = [o for o in tiny if not o.startswith(replaced)]
    overrides += [
        "students.epochs=100",
        "students.batch_size=16",
        f"trainer.workers={workers}",
        "students.methods=[endd, proxy]",
    ]
    args = [sys.executable, "-m", "endd.cli", "run", str(CONFIG), "--out", str(out), "--quiet"]
    return args + [f"--set={o}" for o in overrides]


def _metrics_without_timing(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("timing")
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_during_distillation_then_resume(tmp_path, workers, tiny_spiral):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_command(reference, workers, tiny_spiral), check=True, timeout=300)

    process = subprocess.Popen(_command(killed, workers, tiny_spiral), start_new_session=True)
    checkpoint = killed / "students" / "endd" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert process.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline, "no distillation checkpoint appeared"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists()
    assert not (killed / "students" / "endd" / "model.json").exists()

    subprocess.run(_command(killed, workers, tiny_spiral), check=True, timeout=300)
    assert _metrics_without_timing(killed) == _metrics_without_timing(reference)


def test_a_resumed_fit_keeps_every_epochs_record(tmp_path):
    """The per-epoch checkpoint is saved before the module's own epoch-end hook runs: it must
    still hold that epoch's loss and temperature (a resumed run once lost one epoch of each)."""
    import torch

    from endd.engine import StudentModule, batch_loader, fit
    from endd.losses import endd_loss
    from endd.schedules import TemperatureSchedule

    generator = torch.Generator().manual_seed(0)
    x, teacher = torch.randn(64, 2, generator=generator), torch.randn(64, 3, 3, generator=generator)

    def module() -> StudentModule:
        torch.manual_seed(0)
        return StudentModule(
            torch.nn.Linear(2, 3),
            loss=endd_loss,
            schedule=TemperatureSchedule(3.0, 1.0, total_steps=16, hold_fraction=0.25),
        )

    def train(student: StudentModule, epochs: int, folder: str) -> StudentModule:
        loader = batch_loader(x, teacher, batch_size=16, seed=0)
        fit(student, loader, epochs=epochs, checkpoint_dir=tmp_path / folder, trainer_config={})
        return student

    whole = train(module(), 4, "whole")
    train(module(), 2, "split")  # "killed" after epoch 2: its checkpoint is on disk
    resumed = train(module(), 4, "split")
    assert resumed.epoch_losses == whole.epoch_losses and len(whole.epoch_losses) == 4
    assert resumed.epoch_temperatures == whole.epoch_temperatures


def test_a_rerun_removes_what_a_killed_attempt_left(tmp_path, tiny_spiral):
    """SIGKILL runs no clean-up: the next run of a command deletes the temporary files in what
    its pending stages write and the checkpoints of finished training stages, and keeps
    everything else (finished teacher shards are reused)."""
    from endd.config import load_yaml, resolve_config
    from endd.pipeline.run import run_stages

    config = resolve_config(
        load_yaml(Path(__file__).resolve().parents[2] / "configs" / "spiral.yaml"),
        [*tiny_spiral, "students.methods=[end]"],
    )
    out = tmp_path / "run"
    run_stages(out, ["ensemble"], config=config, progress=False)
    leftovers = [
        out / "ensemble" / "checkpoints" / "last.ckpt",  # ensemble done: its checkpoints go
        out / "students" / "end" / ".model.safetensors.0a1b2c.tmp",
        out / "students" / "end" / "checkpoints" / "last.ckpt.tmp",
        out / ".metrics.json.3d4e5f.tmp",
        out / "figures" / ".data.png.0f0f0f.tmp",
    ]
    kept = [out / "teacher" / ".shards" / "aux.0-64.npy", out / "notes.txt"]
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left by a killed attempt")
    run_stages(out, progress=False)
    assert not [p for p in leftovers if p.exists()]
    assert not (out / "ensemble" / "checkpoints").exists()
    assert all(p.read_bytes() == b"left by a killed attempt" for p in kept)
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()
