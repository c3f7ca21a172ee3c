"""A damaged or foreign file is reported, never reused: weights, training checkpoints, the
teacher cache, predictions, the evaluation files and metrics.json.

Each artifact a command reads back carries its size and SHA-256 in a sidecar. For each one, a
tiny spiral run is damaged three ways (one flipped byte, same size; truncated; replaced by
another model's or run's valid file) and the command that reads it is run: exit status 2, one
line on stderr naming the file, what is wrong and the command that rebuilds it, and the run
directory byte-for-byte unchanged. Undamaged copies, runs written before the records existed and
a run killed between a checkpoint's sidecar and its rename go on working.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from endd.cli import main
from endd.config import load_yaml, resolve_config
from endd.engine.trainer import CHECKPOINT_NAME, CHECKPOINT_SIDECAR, AtomicEpochCheckpoint
from endd.errors import DamagedArtifactError
from endd.pipeline.run import run_stages
from endd.store import file_record
from tiny import TINY_SPIRAL

SPIRAL = Path(__file__).resolve().parents[2] / "configs" / "spiral.yaml"
#: Students distilled online read the ensemble's weights; two students of one shape give a
#: foreign weights file of the same size.
OVERRIDES = [*TINY_SPIRAL, "students.teacher=online", "students.methods=[endd, proxy]"]


class _Killed(Exception):
    """Stands for SIGKILL after a student's first checkpoint (in-process, so it is fast)."""


def _train_interrupted(run: Path, commands: list[str], config: dict | None = None) -> None:
    """Run ``commands`` over ``run``, stopping a student right after its first checkpoint."""
    original = AtomicEpochCheckpoint.on_train_epoch_end

    def then_killed(self, trainer, module):
        original(self, trainer, module)
        if "students" in self.path.parts:
            raise _Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AtomicEpochCheckpoint, "on_train_epoch_end", then_killed)
        with pytest.raises(_Killed):
            run_stages(run, commands, config=config, progress=False)


@dataclass(frozen=True)
class Runs:
    finished: Path  # ensemble, teacher, students endd and proxy, evaluation (no report)
    killed: Path  # the same, with student endd killed after its first epoch's checkpoint
    other: Path  # another seed: its ensemble, and its student endd killed likewise
    foreign: Path  # files of another run that this code never wrote (metrics.json of seed 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("damage")
    finished, killed, other = root / "finished", root / "killed", root / "other"
    config = resolve_config(load_yaml(SPIRAL), OVERRIDES)
    run_stages(finished, ["ensemble", "distill", "evaluate"], config=config, progress=False)
    shutil.copytree(finished, killed)
    shutil.rmtree(killed / "students" / "endd")
    _train_interrupted(killed, ["distill"])
    other_config = resolve_config(load_yaml(SPIRAL), [*OVERRIDES, "seed=1"])
    _train_interrupted(other, ["ensemble", "distill"], other_config)
    for run in (killed, other):
        checkpoints = run / "students" / "endd" / "checkpoints"
        assert (checkpoints / CHECKPOINT_NAME).is_file()
        assert (checkpoints / CHECKPOINT_SIDECAR).is_file()
        assert not (run / "students" / "endd" / "model.json").exists()
    foreign = root / "foreign"
    foreign.mkdir()
    metrics = (finished / "metrics.json").read_text()
    assert '"seed": 0,' in metrics
    (foreign / "metrics.json").write_text(metrics.replace('"seed": 0,', '"seed": 1,'))
    with np.load(finished / "evaluation" / "measures" / "endd" / "test.npz") as measures:
        np.savez(foreign / "test.npz", **{key: measures[key][::-1] for key in measures.files})
    return Runs(finished, killed, other, foreign)


def tree_hash(path: Path) -> str:
    """Names and bytes of everything under ``path``."""
    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        digest.update(str(item.relative_to(path)).encode())
        digest.update(item.read_bytes() if item.is_file() else b"<dir>")
    return digest.hexdigest()


# ---- the artifacts, the command that reads each, and what rebuilds it --------------------------
@dataclass(frozen=True)
class Artifact:
    id: str
    source: Callable[[Runs], Path]  # the run to copy
    file: str  # the file, relative to the run
    sidecar: str  # where its record is
    foreign: Callable[[Runs], Path]  # a valid file of the same kind from another model or run
    command: Callable[[Path], list[str]]
    rebuild: Callable[[Path], str]


ARTIFACTS = [
    Artifact(
        "ensemble weights",
        lambda r: r.killed,  # a student left to distill online reads the ensemble
        "ensemble/model.safetensors",
        "ensemble/model.json",
        lambda r: r.other / "ensemble" / "model.safetensors",
        lambda run: ["distill", str(run)],
        lambda run: f"delete {run / 'ensemble'} and run `endd ensemble {run}`",
    ),
    Artifact(
        "student weights",
        lambda r: r.finished,
        "students/endd/model.safetensors",
        "students/endd/model.json",
        lambda r: r.finished / "students" / "proxy" / "model.safetensors",
        lambda run: ["evaluate", str(run), "--force"],
        lambda run: f"delete {run / 'students' / 'endd'} and run `endd distill {run}`",
    ),
    Artifact(
        "checkpoint",
        lambda r: r.killed,
        f"students/endd/checkpoints/{CHECKPOINT_NAME}",
        f"students/endd/checkpoints/{CHECKPOINT_SIDECAR}",
        lambda r: r.other / "students" / "endd" / "checkpoints" / CHECKPOINT_NAME,
        lambda run: ["distill", str(run)],
        lambda run: (
            f"delete {run / 'students' / 'endd' / 'checkpoints'} and run `endd distill {run}` "
            "(training restarts from epoch 1)"
        ),
    ),
    Artifact(
        "teacher cache",
        lambda r: r.finished,
        "teacher/test.npy",
        "teacher/done.json",
        lambda r: r.other / "teacher" / "test.npy",
        lambda run: ["evaluate", str(run), "--force"],
        lambda run: f"delete {run / 'teacher'} and run `endd ensemble {run}`",
    ),
    Artifact(
        "predictions",
        lambda r: r.finished,
        "predictions/endd/test.npy",
        "evaluation/files.json",
        lambda r: r.finished / "predictions" / "proxy" / "test.npy",
        lambda run: ["report", str(run)],
        lambda run: f"run `endd evaluate {run} --force`",
    ),
    Artifact(
        "evaluation measures",
        lambda r: r.finished,
        "evaluation/measures/endd/test.npz",
        "evaluation/files.json",
        lambda r: r.foreign / "test.npz",  # another run's measures: the same arrays' shapes
        lambda run: ["report", str(run)],
        lambda run: f"run `endd evaluate {run} --force`",
    ),
    Artifact(
        "metrics",
        lambda r: r.finished,
        "metrics.json",
        "evaluation/files.json",
        lambda r: r.foreign / "metrics.json",
        lambda run: ["report", str(run)],
        lambda run: f"run `endd evaluate {run} --force`",
    ),
]


def _flip(path: Path, runs: Runs, artifact: Artifact) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path, runs: Runs, artifact: Artifact) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _foreign(path: Path, runs: Runs, artifact: Artifact) -> None:
    shutil.copyfile(artifact.foreign(runs), path)


DAMAGES = {"one byte flipped": _flip, "truncated": _truncate, "foreign": _foreign}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("artifact", ARTIFACTS, ids=[a.id for a in ARTIFACTS])
def test_a_damaged_file_is_one_line_and_changes_nothing(tmp_path, runs, capsys, artifact, damage):
    run = tmp_path / "run"
    shutil.copytree(artifact.source(runs), run)
    path, sidecar = run / artifact.file, run / artifact.sidecar
    size = path.stat().st_size
    DAMAGES[damage](path, runs, artifact)
    assert path.read_bytes() != (artifact.source(runs) / artifact.file).read_bytes()
    if damage == "truncated":
        problem = f"size {size // 2} bytes, {sidecar} says {size}"
    else:
        assert path.stat().st_size == size  # only the checksum can tell
        problem = f"contents differ from the checksum in {sidecar}"
    before = tree_hash(run)

    code = main(artifact.command(run))

    err = capsys.readouterr().err
    assert code == 2, err
    expected = f"endd: error: damaged artifact {path}: {problem}; {artifact.rebuild(run)}\n"
    assert err == expected
    assert tree_hash(run) == before


@pytest.mark.parametrize("command", ["predict", "export"])
def test_deployment_refuses_damaged_weights(tmp_path, runs, capsys, command):
    """``endd predict`` and ``endd export`` read a student's weights too: same line, and no
    output file."""
    run = tmp_path / "run"
    shutil.copytree(runs.finished, run)
    path = run / "students" / "endd" / "model.safetensors"
    _flip(path, runs, ARTIFACTS[1])
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.zeros((4, 2), dtype=np.float32))
    out = tmp_path / ("p.npz" if command == "predict" else "m.pt")
    argv = [command, str(run), "--model", "endd", "--out", str(out)]
    argv += ["--input", str(inputs)] if command == "predict" else ["--format", "torchscript"]
    before = tree_hash(run)

    assert main(argv) == 2
    sidecar = run / "students" / "endd" / "model.json"
    assert capsys.readouterr().err == (
        f"endd: error: damaged artifact {path}: contents differ from the checksum in {sidecar}; "
        f"delete {path.parent} and run `endd distill {run}`\n"
    )
    assert not out.exists()
    assert tree_hash(run) == before


# ---- what must go on working ---------------------------------------------------------------
def _metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("timing")
    return metrics


def test_the_intact_copies_are_read_as_before(tmp_path, runs, capsys):
    """The runs the damage tests start from work: evaluate scores them again, and the killed
    student resumes from its checkpoint (checked against its sidecar) and finishes."""
    finished = tmp_path / "finished"
    shutil.copytree(runs.finished, finished)
    assert main(["evaluate", str(finished), "--force", "-q"]) == 0
    assert _metrics(finished) == _metrics(runs.finished)

    killed = tmp_path / "killed"
    shutil.copytree(runs.killed, killed)
    assert main(["distill", str(killed), "-q"]) == 0
    assert (killed / "students" / "endd" / "model.json").is_file()
    assert not (killed / "students" / "endd" / "checkpoints").exists()
    assert capsys.readouterr().err == ""


def test_models_saved_before_the_records_existed_still_load(tmp_path, runs, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs.finished, run)
    for sidecar in run.glob("**/model.json"):
        spec = json.loads(sidecar.read_text())
        assert set(spec.pop("files")) == {"model.safetensors"}
        sidecar.write_text(json.dumps(spec, indent=2))
    assert main(["evaluate", str(run), "--force", "-q"]) == 0
    assert _metrics(run) == _metrics(runs.finished)
    assert capsys.readouterr().err == ""


def _sidecar(run: Path) -> Path:
    return run / "students" / "endd" / "checkpoints" / CHECKPOINT_SIDECAR


def _older_endd(run: Path, runs: Runs) -> None:
    """A checkpoint written by an endd without checkpoint sidecars."""
    _sidecar(run).unlink()


def _killed_between_sidecar_and_rename(run: Path, runs: Runs) -> None:
    """The sidecar names the new checkpoint (left as the temporary file), ``last.ckpt`` is still
    the previous one: its record is the sidecar's ``previous``."""
    checkpoints = _sidecar(run).parent
    current = json.loads(_sidecar(run).read_text())["record"]
    newer = runs.other / "students" / "endd" / "checkpoints" / CHECKPOINT_NAME
    shutil.copyfile(newer, checkpoints / "last.ckpt.tmp")
    content = {"checkpoint": CHECKPOINT_NAME, "epoch": 2, "record": file_record(newer)}
    _sidecar(run).write_text(json.dumps({**content, "previous": current}))


@pytest.mark.parametrize("state", [_older_endd, _killed_between_sidecar_and_rename])
def test_checkpoints_a_kill_or_an_older_endd_left_still_resume(tmp_path, runs, capsys, state):
    run = tmp_path / "run"
    shutil.copytree(runs.killed, run)
    state(run, runs)
    assert main(["distill", str(run), "-q"]) == 0
    assert (run / "students" / "endd" / "model.json").is_file()
    assert capsys.readouterr().err == ""


# ---- the checkpoint's sidecar, written by every fit --------------------------------------------
def _fit(folder: Path, epochs: int) -> None:
    from endd.engine import StudentModule, batch_loader, fit
    from endd.losses import endd_loss
    from endd.schedules import TemperatureSchedule

    generator = torch.Generator().manual_seed(0)
    x, teacher = torch.randn(32, 2, generator=generator), torch.randn(32, 3, 3, generator=generator)
    torch.manual_seed(0)
    schedule = TemperatureSchedule(2.0, 1.0, total_steps=4, hold_fraction=0.25)
    module = StudentModule(torch.nn.Linear(2, 3), loss=endd_loss, schedule=schedule)
    loader = batch_loader(x, teacher, batch_size=16, seed=0)
    fit(module, loader, epochs=epochs, checkpoint_dir=folder, trainer_config={})


def test_each_checkpoint_has_a_sidecar_with_its_record_and_the_previous_one(tmp_path):
    _fit(tmp_path, 1)
    first = json.loads((tmp_path / CHECKPOINT_SIDECAR).read_text())
    assert first["record"] == file_record(tmp_path / CHECKPOINT_NAME)
    assert first["previous"] is None and first["epoch"] == 1
    _fit(tmp_path, 2)  # resumes from epoch 1's checkpoint
    second = json.loads((tmp_path / CHECKPOINT_SIDECAR).read_text())
    assert second["record"] == file_record(tmp_path / CHECKPOINT_NAME)
    assert second["previous"] == first["record"] != second["record"]
    assert second["epoch"] == 2


def test_a_fit_refuses_a_damaged_checkpoint_before_it_writes(tmp_path):
    _fit(tmp_path, 1)
    checkpoint = tmp_path / CHECKPOINT_NAME
    data = bytearray(checkpoint.read_bytes())
    data[-3] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    before = tree_hash(tmp_path)
    with pytest.raises(DamagedArtifactError) as error:
        _fit(tmp_path, 2)
    assert str(error.value) == (
        f"damaged artifact {checkpoint}: contents differ from the checksum in "
        f"{tmp_path / CHECKPOINT_SIDECAR}; delete {tmp_path} and rerun the same command "
        "(training restarts from epoch 1)"
    )
    assert tree_hash(tmp_path) == before


@pytest.mark.parametrize("older", [False, True], ids=["sidecar", "older endd, no sidecar"])
def test_a_fit_killed_between_the_sidecar_and_the_rename_resumes(tmp_path, monkeypatch, older):
    """The real sequence, stopped where a SIGKILL could stop it: epoch 2's sidecar is written,
    its checkpoint is not yet renamed over epoch 1's. The resumed fit accepts epoch 1's."""
    from types import SimpleNamespace

    from endd.engine import trainer

    _fit(tmp_path, 1)
    if older:
        (tmp_path / CHECKPOINT_SIDECAR).unlink()

    def killed(*args):
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "os", SimpleNamespace(replace=killed))
        # a SIGKILL runs no clean-up: the temporary checkpoint stays
        patch.setattr(AtomicEpochCheckpoint, "on_exception", lambda *args: None)
        with pytest.raises(_Killed):
            _fit(tmp_path, 2)
    sidecar = json.loads((tmp_path / CHECKPOINT_SIDECAR).read_text())
    assert sidecar["record"] == file_record(tmp_path / "last.ckpt.tmp")
    assert sidecar["record"] != file_record(tmp_path / CHECKPOINT_NAME) == sidecar["previous"]
    _fit(tmp_path, 2)
    assert json.loads((tmp_path / CHECKPOINT_SIDECAR).read_text())["epoch"] == 2


def test_checkpoints_are_written_in_the_run_directory_not_staged_in_tmpdir(tmp_path, monkeypatch):
    """Lightning's own checkpoint writer stages the file in the temporary folder first: a fit
    then needed room there (and a SIGKILL left a checkpoint-sized file in /tmp). endd writes it
    straight to its temporary name in the run directory: a fit works without any TMPDIR."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no such folder"))
    _fit(tmp_path / "run", 1)
    assert (tmp_path / "run" / CHECKPOINT_NAME).is_file()
