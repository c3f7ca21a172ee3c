"""Every stage under Lightning DDP: ``trainer.devices=2`` on the CPU (two gloo processes, the
second started by endd's launcher re-executing the command before the first stage).

Tolerances: the 2-process run is not bit-identical to one process. Each rank takes half of every
batch (``batch_size`` stays the global batch, see EpochSeededBatchSampler) and DDP averages the
two half-batch gradients, which equals the whole batch's mean gradient up to float32 rounding
(a different summation order; Lightning also gives each rank half the CPU threads, which changes
the kernels' reduction order). On the tiny spiral run (2 epochs) the metrics agree to about 2e-9
(measured); a relative 1e-5 leaves room for other BLAS builds. A resumed 2-process run repeats
an uninterrupted one exactly: two-rank gloo sums are order-independent (a + b = b + a).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from endd.engine.batches import EpochSeededBatchSampler

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "spiral.yaml"
#: what a launcher leaves in the environment; the test's runs start clean
_LAUNCHER_KEYS = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
)
RELATIVE, ABSOLUTE = 1e-5, 1e-7


def _command(out: Path, devices: int, tiny: list[str], *extra: str) -> list[str]:
    overrides = [*tiny, "students.methods=[end, endd]", f"trainer.devices={devices}", *extra]
    args = [sys.executable, "-m", "endd.cli", "run", str(CONFIG), "--out", str(out), "--quiet"]
    return args + [f"--set={o}" for o in overrides]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _LAUNCHER_KEYS}


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, timeout=400, env=_env())


def _metrics(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("timing")
    return metrics


def _leaves(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}{key}.")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), value


def _assert_close(a: dict, b: dict) -> None:
    left, right = dict(_leaves(a)), dict(_leaves(b))
    assert left.keys() == right.keys()
    for key, value in left.items():
        other = right[key]
        if isinstance(value, float) and isinstance(other, float):
            assert math.isclose(value, other, rel_tol=RELATIVE, abs_tol=ABSOLUTE), key
        else:
            assert value == other, key


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_the_sampler_gives_each_rank_a_slice_of_every_batch():
    def batches(rank: int, world: int) -> list[list]:
        sampler = EpochSeededBatchSampler([10, 7], batch_size=4, seed=3)
        sampler.shard(rank, world)
        sampler.set_epoch(2)
        return list(sampler)

    whole = batches(0, 1)
    parts = [batches(rank, 2) for rank in range(2)]
    assert all(len(p) == len(whole) for p in parts)  # as many steps as one process
    for b, batch in enumerate(whole):
        for group in range(2):
            joined = [i for p in parts for i in p[b][group].tolist()]
            assert joined == batch[group].tolist()
    # a batch of fewer rows than ranks: no rank is left without a primary row
    sampler = EpochSeededBatchSampler([5], batch_size=4, seed=0)
    sampler.shard(1, 2)
    assert [len(b[0]) for b in sampler] == [2, 1]
    with pytest.raises(ValueError):
        sampler.shard(2, 2)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tiny_spiral):
    one, two = tmp_path / "one", tmp_path / "two"
    small_batches = "trainer.eval_batch_size=16"  # every split has rows for both ranks
    _run(_command(one, 1, tiny_spiral, small_batches))
    _run(_command(two, 2, tiny_spiral, small_batches))
    _assert_close(_metrics(two), _metrics(one))
    # every file once, as one process writes it: no temporary files, no checkpoints left, one
    # config (equal to the single-process one but for trainer.devices)
    assert _files(two) == _files(one)
    assert not [f for f in _files(two) if ".tmp" in f or "checkpoints" in f]
    configs = [p for p in two.rglob("config*")]
    assert configs == [two / "config.yaml"]
    one_config = (one / "config.yaml").read_text().replace("devices: 1", "devices: 2")
    assert (two / "config.yaml").read_text() == one_config
    # the teacher cache was written in shards by both ranks, each its own slice of the rows
    done = json.loads((two / "teacher" / "done.json").read_text())
    for split, shape in done["splits"].items():
        (first, middle), (again, last) = (s["rows"] for s in done["shards"][split])
        assert [s["rank"] for s in done["shards"][split]] == [0, 1]
        assert (first, again, last) == (0, middle, shape[0]) and 0 < middle < shape[0], split
    assert "shards" not in json.loads((one / "teacher" / "done.json").read_text())
    # the predictions both ranks wrote are, byte for byte, what one process writes: the same
    # run evaluated again with its config set to one device
    alone = tmp_path / "alone"
    shutil.copytree(two, alone)
    config = alone / "config.yaml"
    config.write_text(config.read_text().replace("devices: 2", "devices: 1"))
    _run([sys.executable, "-m", "endd.cli", "evaluate", str(alone), "--force", "--quiet"])
    for path in (two / "predictions").rglob("*.npy"):
        assert (alone / path.relative_to(two)).read_bytes() == path.read_bytes(), path
    # a teacher from outside (no training stage before it) is also cached by both ranks, and
    # equals the cache it was given, byte for byte
    outside = tmp_path / "outside"
    teacher = [small_batches, "teacher.source=logits", f"teacher.path={one / 'teacher'}"]
    _run(_command(outside, 2, tiny_spiral, *teacher))
    done = json.loads((outside / "teacher" / "done.json").read_text())
    assert {s["rank"] for shards in done["shards"].values() for s in shards} == {0, 1}
    for split in done["splits"]:
        cached = (outside / "teacher" / f"{split}.npy").read_bytes()
        assert cached == (one / "teacher" / f"{split}.npy").read_bytes(), split
    for name in ("end", "endd"):
        spec_one = json.loads((one / "students" / name / "model.json").read_text())
        spec_two = json.loads((two / "students" / name / "model.json").read_text())
        # the recorded epoch loss is the mean over both ranks' rows, as in one process
        assert spec_two["epoch_losses"] == pytest.approx(spec_one["epoch_losses"], rel=RELATIVE)


def _start(command: list[str]) -> subprocess.Popen:
    """The run in its own session (a process group: both ranks), stderr captured."""
    return subprocess.Popen(
        command, start_new_session=True, env=_env(), stderr=subprocess.PIPE, text=True
    )


def _wait_for(process: subprocess.Popen, path: Path, newer_than: int = -1) -> None:
    """Until ``path`` exists with a modification time after ``newer_than`` (ns)."""
    deadline = time.monotonic() + 300
    while not (path.exists() and path.stat().st_mtime_ns > newer_than):
        assert process.poll() is None, "the run finished before it could be stopped"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


@pytest.mark.slow
def test_two_processes_stopped_during_distillation_resume(tmp_path, tiny_spiral):
    """SIGTERM to both ranks (a scheduler cancelling the job): each says so in one line, exit
    status 143, within seconds, no process left. Then SIGKILL to both ranks in the resumed run.
    The third attempt ends with the metrics of an uninterrupted 2-process run."""
    longer = ("students.epochs=60", "students.batch_size=16")
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    _run(_command(reference, 2, tiny_spiral, *longer))
    command = _command(stopped, 2, tiny_spiral, *longer)
    checkpoint = stopped / "students" / "endd" / "checkpoints" / "last.ckpt"

    process = _start(command)
    _wait_for(process, checkpoint)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    lines = stderr.splitlines()
    assert lines and set(lines) == {"endd: terminated (SIGTERM); rerun the same command to resume"}
    with pytest.raises(ProcessLookupError):  # nothing left in the group
        os.killpg(process.pid, 0)
    assert not [f for f in _files(stopped) if ".tmp" in f]

    written = checkpoint.stat().st_mtime_ns
    process = _start(command)
    _wait_for(process, checkpoint, newer_than=written)  # resumed and one more epoch saved
    os.killpg(process.pid, signal.SIGKILL)  # both ranks: the launcher's child is in the group
    process.communicate()
    assert not (stopped / "metrics.json").exists()
    assert not (stopped / "students" / "endd" / "model.json").exists()

    _run(command)
    assert _metrics(stopped) == _metrics(reference)
    assert not [f for f in _files(stopped) if ".tmp" in f or "checkpoints" in f]
