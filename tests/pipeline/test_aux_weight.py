"""+AUX students: auxiliary rows are marked in every batch and weighted by students.aux_weight."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch

from endd import losses
from endd.config import load_yaml, resolve_config
from endd.data import load_data
from endd.engine import StudentModule, batch_loader
from endd.methods import METHODS, get_method
from endd.pipeline import training
from endd.pipeline.run import run_stages
from endd.schedules import TemperatureSchedule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_batches_with_extra_data_end_with_a_mask_of_its_rows():
    x, t = torch.arange(10.0).unsqueeze(1) + 1, torch.zeros(10, 3, 2)
    x_aux, t_aux = -torch.arange(7.0).unsqueeze(1) - 1, torch.ones(7, 3, 2)
    loader = batch_loader(x, t, batch_size=4, seed=0, extra=(x_aux, t_aux))
    seen_aux = []
    for xb, tb, is_aux in loader:
        assert is_aux.dtype == torch.bool and is_aux.shape == (len(xb),)
        assert torch.equal(is_aux, xb[:, 0] < 0)  # aux inputs are the negative ones
        assert torch.equal(tb[is_aux], torch.ones_like(tb[is_aux]))
        seen_aux += xb[is_aux, 0].tolist()
    assert sorted(seen_aux) == sorted(x_aux[:, 0].tolist())
    # without extra data the batches are unchanged: no mask
    assert len(next(iter(batch_loader(x, t, batch_size=4, seed=0)))) == 2


STUDENTS_SECTION = {"smoothing": 1e-4, "end_temperature": 1.0}


def _student(aux_weight: float, method: str = "endd_aux") -> StudentModule:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    schedule = TemperatureSchedule(2.0, 2.0, total_steps=10)
    recipe = get_method(method)
    return StudentModule(
        model,
        loss=recipe.loss,
        loss_kwargs=recipe.loss_kwargs(STUDENTS_SECTION),
        schedule=schedule,
        aux_weight=aux_weight,
    )


# What each +AUX method's loss must be called with, written out here (not derived from the
# registry): EnD² takes the central smoothing, EnD has none.
EXPECTED_LOSS = {
    "endd_aux": (losses.endd_loss, {"temperature": 2.0, "smoothing": 1e-4}),
    "end_aux": (losses.end_loss, {"temperature": 2.0}),
}


@pytest.mark.parametrize("method", sorted(EXPECTED_LOSS))
def test_aux_rows_are_weighted_in_the_loss(method):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(7, 2, generator=generator)
    teacher = 3 * torch.randn(7, 4, 3, generator=generator)
    is_aux = torch.tensor([False, False, False, True, True, True, True])
    loss_fn, kwargs = EXPECTED_LOSS[method]

    student = _student(0.25, method)
    with torch.no_grad():
        logits = student.model(x)
        train_part = loss_fn(logits[:3], teacher[:3], **kwargs)
        aux_part = loss_fn(logits[3:], teacher[3:], **kwargs)
        pooled = loss_fn(logits, teacher, **kwargs)
        got = student.training_step((x, teacher, is_aux), 0)
    expected = (3 * train_part + 0.25 * 4 * aux_part) / (3 + 0.25 * 4)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, pooled)  # the weight matters
    # weight 1 is the plain mean over the batch
    with torch.no_grad():
        torch.testing.assert_close(
            _student(1.0, method).training_step((x, teacher, is_aux), 0), pooled
        )


def test_aux_weight_must_be_positive():
    with pytest.raises(ValueError, match="aux_weight"):
        _student(0.0)


def test_distill_passes_the_configured_aux_weight(tmp_path, tiny_spiral, monkeypatch):
    config = resolve_config(
        load_yaml(CONFIGS / "spiral.yaml"),
        [*tiny_spiral, "students.methods=[endd_aux]", "students.aux_weight=0.3"],
    )
    run = run_stages(tmp_path / "r", ["ensemble"], config=config, progress=False)
    weights = []

    class Recording(StudentModule):
        def training_step(self, batch, batch_idx):
            weights.append((self.aux_weight, bool(batch[-1].any())))
            return super().training_step(batch, batch_idx)

    monkeypatch.setattr(training, "StudentModule", Recording)
    data = load_data(config["data"], config["seed"])
    training.train_student(run, config, data, "endd_aux", progress=False)
    assert weights and all(w == (0.3, True) for w in weights)


def test_smoothing_reaches_every_loss_that_takes_it(tmp_path, tiny_spiral, monkeypatch):
    """students.smoothing must reach the EnD² *and* the Proxy loss (it once reached only EnD²)."""
    config = resolve_config(
        load_yaml(CONFIGS / "spiral.yaml"),
        [*tiny_spiral, "students.methods=[end, endd, proxy]", "students.smoothing=0.02"],
    )
    run = run_stages(tmp_path / "r", ["ensemble"], config=config, progress=False)
    received: dict[str, dict] = {}

    def recording(name, loss):
        @functools.wraps(loss)  # keeps the signature: the registry reads which options it takes
        def wrapped(student, teacher, **kwargs):
            received[name] = kwargs
            return loss(student, teacher, **kwargs)

        return wrapped

    data = load_data(config["data"], config["seed"])
    for name in config["students"]["methods"]:
        method = get_method(name)
        patched = dataclasses.replace(method, loss=recording(name, method.loss))
        monkeypatch.setitem(METHODS, name, patched)
        training.train_student(run, config, data, name, progress=False)
    assert received["endd"]["smoothing"] == 0.02
    assert received["proxy"]["smoothing"] == 0.02
    assert "smoothing" not in received["end"]  # EnD's loss has no smoothing
