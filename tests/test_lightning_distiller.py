"""endd.lightning.Distiller: a LightningModule users fit with their own Trainer and DataModule."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import endd
from endd import losses
from endd.engine import batch_loader
from endd.lightning import Distiller
from endd.schedules import TemperatureSchedule

# Lightning's own use of a torch API deprecated in torch 2.13 (endd's fit() silences it too).
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "distill_your_ensemble.py"

FEATURES, CLASSES, MEMBERS, N = 4, 3, 3, 48


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and keeps the shared CPU free (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (N,), generator=generator)
    return x, y


def _members(seed: int = 1) -> list[nn.Module]:
    torch.manual_seed(seed)
    members = [nn.Linear(FEATURES, CLASSES) for _ in range(MEMBERS)]
    with torch.no_grad():
        for member in members:
            member.weight.mul_(4)  # confident, disagreeing members
    return members


class _Stacked(nn.Module):
    """A batched ensemble: one module returning [B, M, K]."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([member(x) for member in self.members], dim=1)


def _student(seed: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.ReLU(), nn.Linear(8, CLASSES))


def _trainer(max_epochs: int = 2, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(max_epochs=max_epochs, **(defaults | kwargs))


def _loader(*tensors: torch.Tensor, batch_size: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=False)


# --- the example ---------------------------------------------------------------------------


@pytest.mark.slow
def test_example_runs_and_the_student_matches_the_ensemble(tmp_path):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,  # anything it writes lands here
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    rows = dict(
        (name, (float(error), float(knowledge)))
        for name, error, knowledge in re.findall(
            r"^(ensemble|student)\s+([\d.]+)%\s+([\d.]+)$", result.stdout, flags=re.MULTILINE
        )
    )
    assert set(rows) == {"ensemble", "student"}, result.stdout
    (ensemble_error, ensemble_knowledge), (student_error, student_knowledge) = (
        rows["ensemble"],
        rows["student"],
    )
    assert ensemble_error < 10  # the digits are easy: a few per cent
    assert student_error <= ensemble_error + 3  # within a few points of the ensemble
    assert 0 < student_knowledge < 1 and 0 < ensemble_knowledge < 1
    assert re.search(r"^wall time: [\d.]+ s", result.stdout, flags=re.MULTILINE)
    assert seconds < 120, f"the example took {seconds:.0f} s"


# --- batch forms -------------------------------------------------------------------------


def _fit(distiller: Distiller, loader: DataLoader, **trainer_kwargs) -> dict[str, torch.Tensor]:
    _trainer(**trainer_kwargs).fit(distiller, loader)
    return {k: v.detach().clone() for k, v in distiller.student.state_dict().items()}


def test_every_batch_form_trains_to_the_same_student():
    """x, [x], (x, y) and (x, cached logits) give the same targets, so the same student; a list
    of members and one module returning [B, M, K] are the same teacher."""
    x, y = _data()
    members = _members()
    with torch.no_grad():
        cached = torch.stack([member(x) for member in members], dim=1)
    forms = {
        "x": (DataLoader(x, batch_size=16), members),  # batches are tensors [16, FEATURES]
        "[x]": (_loader(x), members),
        "(x, y)": (_loader(x, y), members),
        "(x, y), batched teacher": (_loader(x, y), _Stacked(members)),
        "(x, logits)": (_loader(x, cached), None),
    }
    trained = {}
    for name, (loader, teacher) in forms.items():
        distiller = Distiller(_student(), teacher=teacher, temperature=2.0)
        before = {k: v.clone() for k, v in distiller.student.state_dict().items()}
        trained[name] = _fit(distiller, loader)
        assert len(distiller.epoch_losses) == 2
        assert all(math.isfinite(loss) for loss in distiller.epoch_losses), name
        assert any(not torch.equal(before[k], v) for k, v in trained[name].items()), name
    reference = trained["(x, logits)"]
    for name, weights in trained.items():
        for key, value in weights.items():
            torch.testing.assert_close(value, reference[key], msg=f"{name}: {key}")


def test_temperature_forms():
    x, y = _data()
    constant = Distiller(_student(), teacher=_members(), temperature=3)
    _fit(constant, _loader(x, y))
    assert constant.epoch_temperatures == [3.0, 3.0]

    given = TemperatureSchedule(5.0, total_steps=6, hold_fraction=0.0, decay_end_fraction=1.0)
    scheduled = Distiller(_student(), teacher=_members(), temperature=given)
    _fit(scheduled, _loader(x, y))  # 3 steps per epoch: the given schedule is used as it is
    assert scheduled.schedule is given
    assert scheduled.epoch_temperatures == [given(3), given(6)] == [3.0, 1.0]

    mapping = Distiller(_student(), teacher=_members(), temperature={"initial": 4.0})
    _fit(mapping, _loader(x, y), max_epochs=5)  # 15 optimiser steps
    assert mapping.schedule == TemperatureSchedule(4.0, total_steps=15)


def test_train_loss_and_temperature_reach_the_users_logger(tmp_path):
    x, y = _data()
    distiller = Distiller(_student(), teacher=_members(), temperature={"initial": 2.0})
    trainer = _trainer(logger=CSVLogger(tmp_path), log_every_n_steps=1)
    trainer.fit(distiller, _loader(x, y))
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    for metric in ("train_loss_step", "temperature_step", "train_loss_epoch", "temperature_epoch"):
        assert sum(1 for row in rows if row.get(metric)) >= 2, metric
    steps = [float(row["temperature_step"]) for row in rows if row.get("temperature_step")]
    assert steps[0] == 2.0 and steps[-1] < 2.0
    assert {"train_loss", "temperature"} <= set(trainer.callback_metrics)


# --- checkpoints and resume ----------------------------------------------------------------


class _Temperatures(Callback):
    """The temperature each optimiser step trains at."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.values.append(pl_module.temperature())


SCHEDULE = {"initial": 5.0, "final": 1.0, "hold_fraction": 0.25, "decay_end_fraction": 0.75}
EPOCHS, STEPS_PER_EPOCH = 4, 3


def _resumable(x: torch.Tensor, y: torch.Tensor, student_seed: int = 2) -> tuple:
    # endd's own loader: shuffled, with each epoch's order a function of (seed, epoch), so a
    # resumed fit sees the batches an uninterrupted one does.
    loader = batch_loader(x, y, batch_size=16, seed=0)
    distiller = Distiller(
        _student(student_seed), teacher=_members(), temperature=SCHEDULE, loss="endd"
    )
    return distiller, loader


def test_a_fit_resumed_from_a_checkpoint_ends_as_an_uninterrupted_one(tmp_path):
    x, y = _data()
    distiller, loader = _resumable(x, y)
    temperatures = _Temperatures()
    saving = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    trainer = _trainer(EPOCHS, enable_checkpointing=True, callbacks=[temperatures, saving])
    trainer.fit(distiller, loader)
    full_weights = distiller.student.state_dict()
    assert len(temperatures.values) == EPOCHS * STEPS_PER_EPOCH
    assert temperatures.values[0] == 5.0 and temperatures.values[-1] == 1.0

    # Killed after epoch 2: a new Distiller (another initialisation: the weights come from the
    # checkpoint) resumes from Lightning's own checkpoint, loaded with weights_only=True.
    resumed, loader = _resumable(x, y, student_seed=7)
    resumed_temperatures = _Temperatures()
    _trainer(EPOCHS, callbacks=[resumed_temperatures]).fit(
        resumed, loader, ckpt_path=tmp_path / "epoch=1.ckpt", weights_only=True
    )
    assert resumed_temperatures.values == temperatures.values[2 * STEPS_PER_EPOCH :]
    assert resumed.schedule == distiller.schedule
    assert resumed.epoch_temperatures == distiller.epoch_temperatures
    assert resumed.epoch_losses == distiller.epoch_losses
    for key, value in resumed.student.state_dict().items():
        assert torch.equal(value, full_weights[key]), key


def test_a_resumed_fit_keeps_the_checkpoints_schedule(tmp_path):
    """The schedule is the original fit's even when the resumed Trainer would estimate another
    length (here a longer fit): the checkpoint's schedule wins over the one built at fit start."""
    x, y = _data()
    distiller, loader = _resumable(x, y)
    trainer = _trainer(2)
    trainer.fit(distiller, loader)
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    resumed, loader = _resumable(x, y)
    _trainer(6).fit(resumed, loader, ckpt_path=tmp_path / "manual.ckpt", weights_only=True)
    assert resumed.schedule.total_steps == distiller.schedule.total_steps == 2 * STEPS_PER_EPOCH
    # and a fresh fit of the same Distiller builds a new one over its own length
    _trainer(3).fit(resumed, loader)
    assert resumed.schedule.total_steps == 3 * STEPS_PER_EPOCH


def test_checkpoints_hold_the_student_and_schedule_but_not_the_teacher(tmp_path):
    x, y = _data()
    members = _members()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in members]
    distiller = Distiller(_student(), teacher=members, temperature={"initial": 3.0})
    trainer = _trainer(2)
    trainer.fit(distiller, _loader(x, y))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == {f"model.{k}" for k in distiller.student.state_dict()}
    assert checkpoint["endd"]["schedule"] == distiller.schedule.state_dict()
    assert "hyper_parameters" not in checkpoint
    # the teacher is frozen and untouched
    for member, weights in zip(members, before, strict=True):
        assert not member.training
        assert not any(p.requires_grad for p in member.parameters())
        for key, value in member.state_dict().items():
            assert torch.equal(value, weights[key])
    assert not any(name.startswith("_teacher") for name, _ in distiller.named_modules())


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ((torch.zeros(4, FEATURES), torch.zeros(4, 3, CLASSES), torch.zeros(4)), "3 elements"),
        ((torch.zeros(4, FEATURES), torch.zeros(4, CLASSES)), r"shape \[4, 3\]"),  # soft labels
        ((torch.zeros(4, FEATURES), torch.zeros(5, dtype=torch.long)), "neither"),  # wrong length
        ((torch.zeros(4, FEATURES), torch.zeros(4, dtype=torch.bool)), "neither"),
        (([0.0] * 4, torch.zeros(4, dtype=torch.long)), "not a tensor"),
        ({"x": torch.zeros(4, FEATURES)}, "got a dict"),
        ((), "0 elements"),
    ],
)
def test_a_batch_of_no_accepted_form_is_a_clear_error(batch, message):
    distiller = Distiller(_student(), teacher=_members())
    with pytest.raises(ValueError, match=r"batches must be x, \(x, y\).*" + message):
        distiller.training_step(batch, 0)


def test_no_teacher_and_no_cached_logits_is_a_clear_error():
    x, y = _data()
    with pytest.raises(
        ValueError, match="no cached teacher logits and the Distiller has no teacher"
    ):
        _trainer(1).fit(Distiller(_student()), _loader(x, y))
    with pytest.raises(ValueError, match="no teacher"):
        Distiller(_student()).training_step(x, 0)


def test_teacher_outputs_of_the_wrong_shape_are_clear_errors():
    x, _ = _data()
    single = Distiller(_student(), teacher=nn.Linear(FEATURES, CLASSES))  # [B, K], not [B, M, K]
    with pytest.raises(ValueError, match=r"\[B, M, K\].*got shape \[48, 3\].*pass a list"):
        single.training_step(x, 0)
    nested = Distiller(_student(), teacher=[_Stacked(_members())])
    with pytest.raises(ValueError, match=r"teacher member 0 must return logits \[B, K\]"):
        nested.training_step(x, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"loss": "endd2"}, ValueError, "unknown loss"),
        ({"loss": 3}, TypeError, "loss must be"),
        ({"temperature": {"initial": 2.0, "hold": 0.1}}, ValueError, "unknown temperature"),
        ({"temperature": {"final": 1.0}}, ValueError, "needs 'initial'"),
        ({"temperature": 0.0}, ValueError, "initial"),
        ({"temperature": "hot"}, TypeError, "temperature must be"),
        ({"smoothing": 1.0}, ValueError, "smoothing"),
        ({"teacher": []}, ValueError, "empty"),
        ({"teacher": [nn.Linear(2, 2), "member"]}, TypeError, r"teacher\[1\]"),
        ({"teacher": "ensemble.pt"}, TypeError, "teacher must be"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        Distiller(_student(), **kwargs)


def test_a_temperature_mapping_needs_a_fit_of_known_length():
    x, y = _data()
    distiller = Distiller(_student(), teacher=_members(), temperature={"initial": 2.0})
    with pytest.raises(ValueError, match="set max_epochs or max_steps"):
        _trainer(max_epochs=-1).fit(distiller, _loader(x, y))


# --- the losses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        ("endd", lambda s, t: losses.endd_loss(s, t, temperature=2.0, smoothing=0.05)),
        ("proxy", lambda s, t: losses.proxy_loss(s, t, temperature=2.0, smoothing=0.05)),
        ("end", lambda s, t: losses.end_loss(s, t, temperature=2.0)),  # EnD has no smoothing
    ],
)
def test_smoothing_reaches_the_losses_that_take_it(loss, expected):
    x, _ = _data()
    teacher = 10 * torch.randn(N, MEMBERS, CLASSES, generator=torch.Generator().manual_seed(3))
    distiller = Distiller(_student(), loss=loss, temperature=2.0, smoothing=0.05)
    with torch.no_grad():
        got = distiller.training_step((x, teacher), 0)
        student_logits = distiller.student(x)
        torch.testing.assert_close(got, expected(student_logits, teacher))
        if loss != "end":  # the smoothing matters for these sharp targets
            unsmoothed = losses.get_loss(loss)(student_logits, teacher, temperature=2.0)
            assert not torch.allclose(got, unsmoothed)


def test_a_callable_loss_gets_smoothing_only_if_it_takes_it():
    x, _ = _data()
    teacher = torch.randn(N, MEMBERS, CLASSES)
    received = []

    def with_smoothing(student, teacher, *, temperature, smoothing):
        received.append(("with", temperature, smoothing))
        return losses.endd_loss(student, teacher, temperature=temperature, smoothing=smoothing)

    def without(student, teacher, *, temperature):
        received.append(("without", temperature))
        return losses.end_loss(student, teacher, temperature=temperature)

    for loss in (with_smoothing, without):
        Distiller(_student(), loss=loss, temperature=1.5, smoothing=0.01).training_step(
            (x, teacher), 0
        )
    assert received == [("with", 1.5, 0.01), ("without", 1.5)]


def test_the_student_is_a_prior_network_and_distiller_is_exported():
    assert endd.Distiller is Distiller
    x, y = _data()
    distiller = Distiller(_student(), teacher=_members(), temperature=2.0)
    _fit(distiller, _loader(x, y))
    out = endd.PriorNetwork(distiller.student).predict(x)
    assert out["alphas"].shape == (N, CLASSES) and out["knowledge"].shape == (N,)
    assert bool((out["knowledge"] >= 0).all())
    torch.testing.assert_close(distiller(x), distiller.student(x))
