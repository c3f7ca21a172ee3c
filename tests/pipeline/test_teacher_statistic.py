"""The EnD² teacher statistic once per held temperature trains bit for bit as computing it every
step: direct StudentModule fits, a resumed fit, the reduced cache and the pipeline's students."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import endd.losses
from endd import losses
from endd.config import load_yaml, resolve_config
from endd.data import load_data
from endd.engine import StudentModule, batch_loader, fit
from endd.methods import METHODS, get_method
from endd.pipeline import training
from endd.pipeline.run import run_stages
from endd.schedules import TemperatureSchedule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MEMBERS, CLASSES, SMOOTHING = 10, 3, 1e-4
# 300 training rows in batches of 64: four batches whose parts qualify for the table and a last
# one of 44 rows that does not (computed per step); 160 auxiliary rows: 32 per batch.
TRAIN, AUX, BATCH = 300, 160, 64


@pytest.fixture
def one_thread():
    """The spiral config's trainer.num_threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(train: int = TRAIN):
    generator = torch.Generator().manual_seed(0)
    x, x_aux = torch.randn(train, 2, generator=generator), torch.randn(AUX, 2, generator=generator)
    teacher = torch.randn(train + AUX, MEMBERS, CLASSES, generator=generator) * 8
    return x, x_aux * 3, teacher


def _module(
    mode: str, aux_weight: float, epochs: int, train: int = TRAIN, **schedule
) -> tuple[StudentModule, object]:
    """``logits``: batches carry logits [B, M, K] (the statistic every step, as before);
    ``rows``: the module holds the logits, no statistic loss (the logits every step);
    ``table``: held logits and EnD²'s statistic loss (the statistic once per held T)."""
    x, x_aux, teacher = _data(train)
    if mode == "logits":
        loader = batch_loader(
            x, teacher[:train], batch_size=BATCH, seed=3, extra=(x_aux, teacher[train:])
        )
        held = {}
    else:
        rows = torch.arange(train + AUX)
        loader = batch_loader(
            x, rows[:train], batch_size=BATCH, seed=3, extra=(x_aux, rows[train:])
        )
        held = {"teacher_logits": teacher}
        if mode == "table":
            held["statistic_loss"] = get_method("endd_aux").statistic_loss
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, CLASSES)
    )
    curve = {"hold_fraction": 0.3, "decay_end_fraction": 0.7} | schedule
    module = StudentModule(
        network,
        loss=losses.endd_loss,
        loss_kwargs={"smoothing": SMOOTHING},
        schedule=TemperatureSchedule(5.0, 1.0, total_steps=epochs * len(loader), **curve),
        aux_weight=aux_weight,
        **held,
    )
    return module, loader


def _fit(module, loader, epochs: int, folder: Path) -> None:
    fit(
        module,
        loader,
        epochs=epochs,
        checkpoint_dir=folder,
        trainer_config={"accelerator": "cpu"},
        gradient_clip=10.0,
    )


def _same_training(a: StudentModule, b: StudentModule) -> None:
    assert a.epoch_losses == b.epoch_losses  # exact float equality, every epoch
    assert a.epoch_temperatures == b.epoch_temperatures
    weights_a, weights_b = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)


def _recording(module: StudentModule) -> list[float]:
    """The temperatures at which ``module`` uses its statistic loss (one entry per part)."""
    temperatures: list[float] = []
    loss = module.statistic_loss

    def recorded(*args, **kwargs):
        temperatures.append(kwargs["temperature"])
        return loss(*args, **kwargs)

    module.statistic_loss = recorded
    return temperatures


@pytest.mark.parametrize("aux_weight", [0.1, 1.0])
def test_statistic_once_per_held_temperature_trains_bit_identically(
    aux_weight, tmp_path, one_thread, monkeypatch
):
    epochs = 12
    trained = {}
    for mode in ("logits", "rows", "table"):
        trained[mode] = _module(mode, aux_weight, epochs)
    used = _recording(trained["table"][0])
    builds = []
    table = endd.losses.teacher_statistic_table
    monkeypatch.setattr(
        endd.losses,
        "teacher_statistic_table",
        lambda logits, temperatures, **kw: (
            builds.append(temperatures) or table(logits, temperatures, **kw)
        ),
    )
    for mode, (module, loader) in trained.items():
        _fit(module, loader, epochs, tmp_path / mode)
    _same_training(trained["logits"][0], trained["rows"][0])
    _same_training(trained["logits"][0], trained["table"][0])
    # The table is built once per held temperature (T₀, then 1) and used only there: the
    # decay computes per batch. With aux weight 0.1 a batch's training part (64 rows) and
    # auxiliary part (32) each qualify; with 1 the whole batch (96); the last (44, 76) never.
    assert builds == [5.0, 1.0]
    schedule = trained["table"][0].schedule
    expected = 0
    for step in range(epochs * 5):
        if schedule(step) in (5.0, 1.0):
            last = step % 5 == 4
            expected += (1 if last else 2) if aux_weight != 1.0 else (0 if last else 1)
    assert len(used) == expected and set(used) == {5.0, 1.0}


def test_resumed_fit_with_the_table_matches_the_per_step_path(tmp_path, one_thread):
    """Killed after 5 epochs (T₀ into the decay) and resumed from the checkpoint (the table is
    not in it: rebuilt when T is next held): the weights of an uninterrupted fit, and exactly
    what the per-step path gives resumed the same way."""
    epochs = 12
    results = {}
    for mode in ("logits", "table"):
        first, loader = _module(mode, 0.1, epochs)
        _fit(first, loader, 5, tmp_path / mode)
        results[mode], loader = _module(mode, 0.1, epochs)
        _fit(results[mode], loader, epochs, tmp_path / mode)
    _same_training(results["logits"], results["table"])
    whole, loader = _module("table", 0.1, epochs)
    _fit(whole, loader, epochs, tmp_path / "whole")
    weights, resumed = whole.model.state_dict(), results["table"].model.state_dict()
    assert all(torch.equal(weights[key], resumed[key]) for key in weights)


def test_stored_tables_at_the_schedule_temperatures_train_like_the_logits(tmp_path, one_thread):
    """The reduced cache: {T: [N, K]} at the only temperatures the schedule takes (T₀ jumps to
    1 halfway) trains bit for bit like the logits, every batch part being a multiple of 32
    rows (256 training rows: 4 batches of 64, each with 32 auxiliary rows)."""
    epochs, train = 8, 256
    schedule = {"hold_fraction": 0.5, "decay_end_fraction": 0.5}
    reference, loader = _module("logits", 0.1, epochs, train, **schedule)
    _fit(reference, loader, epochs, tmp_path / "logits")
    held, loader = _module("table", 0.1, epochs, train, **schedule)
    tables = losses.teacher_statistic_table(held._held[0], [1.0, 5.0], smoothing=SMOOTHING)
    from_tables = StudentModule(
        held.model,
        loss=losses.endd_loss,
        loss_kwargs={"smoothing": SMOOTHING},
        schedule=held.schedule,
        aux_weight=0.1,
        teacher_statistics=tables,
        statistic_loss=held.statistic_loss,
    )
    used = _recording(from_tables)
    _fit(from_tables, loader, epochs, tmp_path / "tables")
    assert len(used) == 2 * epochs * 4  # both parts of every step
    _same_training(reference, from_tables)


def test_online_teacher_and_logits_in_the_batch_keep_the_per_step_path(tmp_path):
    x, _, teacher = _data()
    members = torch.nn.Linear(2, MEMBERS * CLASSES)

    class Ensemble(torch.nn.Module):
        def forward(self, inputs):
            return members(inputs).view(len(inputs), MEMBERS, CLASSES)

    module = StudentModule(
        torch.nn.Linear(2, CLASSES),
        loss=losses.endd_loss,
        loss_kwargs={"smoothing": SMOOTHING},
        schedule=TemperatureSchedule(2.0, 2.0, total_steps=10),
        teacher=Ensemble(),
        statistic_loss=losses.endd_loss_from_mean_log_probs,
    )
    used = _recording(module)
    with torch.no_grad():
        module.training_step((x[:64],), 0)
        module.training_step((x[:64], teacher[:64]), 0)
    assert used == []


def test_module_rejects_two_teachers_and_rows_without_one():
    model = torch.nn.Linear(2, CLASSES)
    schedule = TemperatureSchedule(2.0, total_steps=10)
    teacher = torch.zeros(8, MEMBERS, CLASSES)
    with pytest.raises(ValueError, match="at most one"):
        StudentModule(
            model,
            loss="endd",
            schedule=schedule,
            teacher=torch.nn.Identity(),
            teacher_logits=teacher,
        )
    with pytest.raises(ValueError, match=r"\[N, M, K\]"):
        StudentModule(model, loss="endd", schedule=schedule, teacher_logits=teacher[0])
    with pytest.raises(ValueError, match="statistic_loss"):
        StudentModule(
            model, loss="endd", schedule=schedule, teacher_statistics={1.0: teacher[:, 0]}
        )
    with pytest.raises(ValueError, match="row indices"):
        StudentModule(model, loss="endd", schedule=schedule).training_step(
            (torch.zeros(4, 2), torch.arange(4)), 0
        )


def test_registry_gives_the_statistic_form_of_the_endd_losses():
    for name in ("endd", "endd_aux"):
        method = get_method(name)
        assert method.statistic_loss is losses.endd_loss_from_mean_log_probs
        generator = torch.Generator().manual_seed(4)
        student = torch.randn(6, 4, generator=generator)
        teacher = torch.randn(6, 5, 4, generator=generator) * 4
        kwargs = method.loss_kwargs({"smoothing": 0.01})
        statistic = losses.mean_teacher_log_probs(teacher, temperature=2.0, **kwargs)
        torch.testing.assert_close(
            method.statistic_loss(student, statistic, temperature=2.0),
            method.loss(student, teacher, temperature=2.0, **kwargs),
        )
    for name in ("end", "end_aux", "proxy"):
        assert get_method(name).statistic_loss is None  # they keep the logits every step


def _student_result(run, name: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    folder = run.student(name)
    spec = json.loads((folder / "model.json").read_text())
    return spec["epoch_losses"], load_file(str(folder / "model.safetensors"))


def test_pipeline_students_train_as_with_the_statistic_every_step(
    tmp_path, tiny_spiral, monkeypatch
):
    """train_student (cached teacher, aux weight 0.1) gives the EnD²+AUX student bit for bit
    the epoch losses and weights of the same method with no statistic form, and uses the table."""
    overrides = [o for o in tiny_spiral if not o.startswith("students.epochs")]
    config = resolve_config(
        load_yaml(CONFIGS / "spiral.yaml"),
        [*overrides, "students.epochs=12", "students.methods=[endd_aux]"],
    )
    run = run_stages(tmp_path / "r", ["ensemble"], config=config, progress=False)
    data = load_data(config["data"], config["seed"])
    builds = []
    table = endd.losses.teacher_statistic_table
    monkeypatch.setattr(
        endd.losses,
        "teacher_statistic_table",
        lambda *args, **kw: builds.append(args[1]) or table(*args, **kw),
    )
    with_table = tmp_path / "with_table"
    training.train_student(run, config, data, "endd_aux", progress=False)
    assert builds == [5.0, 1.0]
    run.student("endd_aux").rename(with_table)

    method = get_method("endd_aux")
    monkeypatch.setitem(METHODS, "endd_aux", dataclasses.replace(method, statistic_loss=None))
    training.train_student(run, config, data, "endd_aux", progress=False)
    assert builds == [5.0, 1.0]  # not built again

    losses_every_step, weights_every_step = _student_result(run, "endd_aux")
    spec = json.loads((with_table / "model.json").read_text())
    assert spec["epoch_losses"] == losses_every_step
    weights = load_file(str(with_table / "model.safetensors"))
    assert all(torch.equal(weights[key], weights_every_step[key]) for key in weights)


def _reduced_run(tmp_path, tiny_spiral, name: str, *extra: str):
    """A spiral run of EnD²+AUX whose batches split into parts of 32-row multiples (192
    training rows in batches of 64, each with 32 of the 96 auxiliary rows)."""
    overrides = [o for o in tiny_spiral if not o.startswith(("students.epochs", "data."))]
    sizes = ["data.points_per_class=64", "data.aux_size=96", "data.ood_size=40"]
    config = resolve_config(
        load_yaml(CONFIGS / "spiral.yaml"),
        [
            *overrides,
            *sizes,
            "data.grid_resolution=8",
            "students.epochs=8",
            "students.methods=[endd_aux]",
            "students.batch_size=64",
            *extra,
        ],
    )
    run = run_stages(tmp_path / name, ["ensemble"], config=config, progress=False)
    if config["students"]["teacher"] == "reduced":  # the students must not need the logits
        for split in ("train", "aux"):
            (run.teacher / f"{split}.npy").rename(tmp_path / f"{name}_{split}.npy")
    run_stages(run.root, ["distill"], progress=False)
    return run, _student_result(run, "endd_aux")[0]


def test_reduced_teacher_cache_trains_exactly_at_its_temperatures(tmp_path, tiny_spiral):
    """students.teacher: reduced stores the statistic [N, K] per level in teacher/statistic/
    (checked by done.json) and trains EnD²+AUX bit for bit like the cached logits when the
    schedule takes only stored temperatures (T₀ = 5 jumps to 1 halfway)."""
    jump = ["students.temperature.hold_fraction=0.5", "students.temperature.decay_end_fraction=0.5"]
    cached_run, cached = _reduced_run(tmp_path, tiny_spiral, "cached", *jump)
    run, reduced = _reduced_run(tmp_path, tiny_spiral, "reduced", *jump, "students.teacher=reduced")
    done = json.loads((run.teacher / "done.json").read_text())
    assert done["statistic"]["temperatures"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    for name in done["statistic"]["files"]:
        assert name in done["files"] and (run.teacher / name).is_file()
    table = np.load(run.teacher / "statistic" / "train.T5.0.npy")
    logits = torch.from_numpy(np.load(tmp_path / "reduced_train.npy"))
    expected = losses.mean_teacher_log_probs(logits, temperature=5.0, smoothing=1e-4)
    torch.testing.assert_close(torch.from_numpy(table), expected, rtol=0, atol=1e-5)
    assert "statistic" not in json.loads((cached_run.teacher / "done.json").read_text())
    assert reduced == cached  # exact float equality, every epoch


def test_reduced_teacher_cache_between_its_temperatures_is_close(tmp_path, tiny_spiral):
    """While the schedule anneals, T falls between stored levels and the statistic is
    interpolated: the training is no longer exact, but close (measured on this run: see the
    bound), and closer with more levels."""
    cached = _reduced_run(tmp_path, tiny_spiral, "cached")[1]
    errors = {}
    for levels in ("[1, 5]", "[1, 2, 3, 4, 5]"):
        reduced = _reduced_run(
            tmp_path,
            tiny_spiral,
            f"reduced{len(levels)}",
            "students.teacher=reduced",
            f"students.reduced_temperatures={levels}",
        )[1]
        errors[levels] = max(abs(a - b) / abs(b) for a, b in zip(reduced, cached, strict=True))
    assert 0 < errors["[1, 2, 3, 4, 5]"] < errors["[1, 5]"]
    assert errors["[1, 2, 3, 4, 5]"] < 0.005, errors  # measured 7.3e-4 (two levels: 2.4e-3)


def test_students_reading_the_cache_from_disk_train_as_holding_it(
    tmp_path, tiny_spiral, monkeypatch
):
    """A cache above endd.store.teacher_cache.HOLD_IN_MEMORY_BYTES is read a batch of rows at a
    time from disk: the same students, bit for bit, as a cache held in memory."""
    import endd.store.teacher_cache as teacher_cache

    overrides = [*tiny_spiral, "students.methods=[end, endd_aux]"]
    config = resolve_config(load_yaml(CONFIGS / "spiral.yaml"), overrides)
    held = run_stages(tmp_path / "held", ["ensemble", "distill"], config=config, progress=False)
    opened = []
    original = teacher_cache.TeacherRows.__init__

    def recorded(self, *args, **kwargs):
        original(self, *args, **kwargs)
        opened.append(self.held is None)

    monkeypatch.setattr(teacher_cache, "HOLD_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(teacher_cache.TeacherRows, "__init__", recorded)
    streamed = run_stages(tmp_path / "disk", ["ensemble", "distill"], config=config, progress=False)
    assert opened and all(opened)  # every student read from disk
    for name in ("end", "endd_aux"):
        losses_held, weights_held = _student_result(held, name)
        losses_disk, weights_disk = _student_result(streamed, name)
        assert losses_disk == losses_held
        assert all(torch.equal(weights_disk[k], weights_held[k]) for k in weights_held)
