"""The training loop hands freed memory back every so many steps (ReleaseFreedMemory)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import endd.engine.trainer as engine_trainer
from endd import losses
from endd.engine import StudentModule, batch_loader, fit
from endd.engine.trainer import ReleaseFreedMemory, lightning_quiet
from endd.schedules import TemperatureSchedule


def _student(steps: int) -> StudentModule:
    torch.manual_seed(0)
    return StudentModule(
        torch.nn.Linear(2, 3),
        loss=losses.endd_loss,
        loss_kwargs={"smoothing": 1e-4},
        schedule=TemperatureSchedule(2.0, 1.0, total_steps=steps),
    )


def _loader():
    generator = torch.Generator().manual_seed(0)
    x, teacher = torch.randn(50, 2, generator=generator), torch.randn(50, 4, 3, generator=generator)
    return batch_loader(x, teacher, batch_size=10, seed=0)  # 5 steps an epoch


@pytest.fixture
def releases(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(engine_trainer, "release_freed_memory", lambda: calls.append(1) or True)
    return calls


def _fit_with(callback: ReleaseFreedMemory) -> None:
    """Two epochs of five steps."""
    with lightning_quiet():
        trainer = L.Trainer(max_epochs=2, callbacks=[callback], barebones=True, devices=1)
        trainer.fit(_student(10), _loader())


def test_released_every_n_steps_and_at_each_epoch_end(releases):
    _fit_with(ReleaseFreedMemory(every=2, seconds=0))
    # steps 2 and 4, the epoch's end (which restarts the count), steps 7 and 9, the epoch's end
    assert len(releases) == 6


def test_not_released_more_often_than_the_interval(releases):
    _fit_with(ReleaseFreedMemory(every=1, seconds=3600))
    assert len(releases) == 2  # at the epoch ends only


def test_the_engines_fit_releases(releases, tmp_path):
    fit(_student(10), _loader(), epochs=2, checkpoint_dir=tmp_path, trainer_config={})
    assert len(releases) == 2  # 10 steps: no 32-step mark, two epoch ends


def test_bad_intervals_raise():
    with pytest.raises(ValueError, match="every"):
        ReleaseFreedMemory(every=0)
    with pytest.raises(ValueError, match="seconds"):
        ReleaseFreedMemory(seconds=-1)
