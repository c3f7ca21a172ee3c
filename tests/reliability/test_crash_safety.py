"""SIGKILL at any moment of any stage, then the same command: metrics.json equal to an
uninterrupted run's (all but its ``timing`` section, wall-clock seconds).

Two kinds of kill moments, both drawn with fixed seeds:

- right after the N-th rename of a run (every artifact is written to a temporary name and
  renamed, the checkpoints too: a rename is the moment a file appears, so "after the N-th rename"
  is every moment between one file and the next, the marker included); N is drawn per stage from
  the renames an uninterrupted run makes (``census``). In the student process pool the renames of
  every process are counted, and the process that makes the N-th one kills itself (a worker:
  the parent must fail, and leave no worker behind);
- at a random wall-clock moment of a random stage, drawn inside the stage's duration in the
  census run (the whole process group is killed).

Most runs are forked from a server that has imported endd (see ``crashing.Runner``: the same
``endd.cli.main``, without 4 s of imports per run); one test kills the real ``endd run``
command. Every kill prints where it landed (``pytest -s`` shows the distribution).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crashing import (
    METHODS,
    SETS,
    STAGE_ORDER,
    Runner,
    check_complete_or_absent,
    cli_args,
    command,
    hook_env,
    metrics_without_timing,
    overrides,
    read_renames,
    sample,
    shared_census,
    shared_reference,
    stage_in_progress,
    stage_kind,
    stage_of,
    temporaries,
    wait_until_gone,
    write_hook,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="process groups and /proc: Linux"
)

SETS_POOL = overrides(2, methods=METHODS)
SEED = 11  # of every draw below


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("forked"))


@pytest.fixture(scope="module")
def hook(tmp_path_factory) -> Path:
    return write_hook(tmp_path_factory.mktemp("hook"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """metrics.json of an uninterrupted run of the real command (no hook, not forked)."""
    return shared_reference(tmp_path_factory)


@pytest.fixture(scope="module")
def census(tmp_path_factory, runner) -> dict:
    """An uninterrupted forked run with the hook counting: every rename, in order, with its
    stage and time."""
    run = shared_census(tmp_path_factory, runner)
    stages = [stage_of(run.out, r.path) for r in run.renames]
    return {"renames": run.renames, "stages": stages, "started": run.started, "out": run.out}


def test_the_census_run_renames_in_every_stage_and_equals_the_real_command(
    tmp_path_factory, runner, census, reference
):
    """The harness changes nothing: a forked run with the hook ends with the real command's
    metrics; and every rename is one of the run's, in every stage."""
    assert shared_census(tmp_path_factory, runner).metrics == reference
    assert "outside" not in census["stages"], census["renames"]
    assert {stage_kind(s) for s in census["stages"]} == set(STAGE_ORDER)


def _renames_of(census: dict, kind: str) -> list[int]:
    """The indices (1-based) of the census renames made by stages of ``kind``."""
    return [
        r.index
        for r, s in zip(census["renames"], census["stages"], strict=True)
        if stage_kind(s) == kind
    ]


def _kill_at_rename(runner, hook, census, reference, tmp_path, index, *, sets):
    """Kill the run right after rename ``index``, check what it left, rerun, compare."""
    out, log = tmp_path / "run", tmp_path / "renames"
    killed = runner.run(cli_args(out, sets), hook_env(hook, log, kill_at=index))
    renames = read_renames(log)
    # In a pool the other worker may rename a file or two before it is stopped or killed too.
    assert len(renames) == index or (sets is not SETS and len(renames) > index), len(renames)
    last = renames[index - 1]
    stage = stage_of(out, last.path)
    print(f"killed after rename {index} ({stage}: {Path(last.path).relative_to(out)})")
    if last.pid == killed.group:
        assert killed.exitcode == -signal.SIGKILL, killed.stderr
    else:  # a student worker process died: its parent must fail, and take the others down
        assert killed.exitcode not in (0, -signal.SIGKILL), killed.stderr
        lines = killed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("endd: error:"), killed.stderr
        assert "rerun" in lines[0]
    assert wait_until_gone(killed.group) == [], "a process of the killed run is still alive"
    check_complete_or_absent(out, census["out"])

    rerun = runner.run(cli_args(out, sets))
    assert rerun.exitcode == 0, rerun.stderr
    assert metrics_without_timing(out) == reference
    assert temporaries(out) == []
    return stage


# ---- right after a rename ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", STAGE_ORDER)
def test_sigkill_right_after_a_rename(runner, hook, census, reference, tmp_path, kind):
    """One seeded draw per stage (the default run); the slow test below draws more."""
    (index,) = sample(_renames_of(census, kind), 1, (SEED, kind))
    stage = _kill_at_rename(runner, hook, census, reference, tmp_path, index, sets=SETS)
    assert stage_kind(stage) == kind


@pytest.mark.slow
@pytest.mark.parametrize("kind", STAGE_ORDER[1:])
def test_sigkill_right_after_more_renames(runner, hook, census, reference, tmp_path, kind):
    """Per stage: right after each marker and right before it (the marker's files are all
    there, the marker is not), and two more seeded draws."""
    indices = _renames_of(census, kind)
    names = ("model.json", "done.json", "metrics.json", "report.md")
    markers = [r.index for r in census["renames"] if Path(r.path).name in names]
    around = {i for m in markers for i in (m - 1, m) if i in indices}
    drawn = sample([i for i in indices if i not in around], 2, (SEED, kind, "more"))
    for number, index in enumerate(sorted({*around, *drawn})):
        folder = tmp_path / str(number)
        folder.mkdir()
        _kill_at_rename(runner, hook, census, reference, folder, index, sets=SETS)


@pytest.mark.slow
def test_sigkill_of_a_student_worker_process(runner, hook, census, reference, tmp_path):
    """trainer.workers: 2; the worker process that makes a seeded rename SIGKILLs itself right
    after it: its parent fails with one line and no worker is left; the same command then ends
    with the uninterrupted metrics (the students are bit-identical in 1 and 2 processes:
    test_determinism). The whole process group killed during distillation:
    tests/pipeline/test_resume.py."""
    (index,) = sample(_renames_of(census, "student"), 1, (SEED, "pool", "self"))
    _kill_at_rename(runner, hook, census, reference, tmp_path, index, sets=SETS_POOL)


# ---- at a random moment --------------------------------------------------------------------------
#: What a stage's start is seen by: the file the stage before it writes last.
STARTS = {
    "ensemble": "config.yaml",
    "teacher": "ensemble/model.json",
    "student": "teacher/done.json",
    "evaluate": f"students/{METHODS[-1]}/model.json",
    "report": "metrics.json",
}


def _aim(census: dict, seed: int) -> tuple[str, str, float]:
    """A stage drawn uniformly, then a moment drawn uniformly in its duration in the census run
    (from the last rename of the stage before it to its own last rename): the kill comes that
    long after the stage's start is seen (``STARTS``)."""
    rng = random.Random(f"moment {seed}")
    kind = rng.choice(list(STARTS))
    times = {
        k: max(
            r.time
            for r, s in zip(census["renames"], census["stages"], strict=True)
            if stage_kind(s) == k
        )
        for k in STAGE_ORDER
    }
    previous = STAGE_ORDER[STAGE_ORDER.index(kind) - 1]
    return kind, STARTS[kind], rng.uniform(0, times[kind] - times[previous])


def _rerun_and_compare(runner, out: Path, reference: dict) -> None:
    rerun = runner.run(cli_args(out, SETS))
    assert rerun.exitcode == 0, rerun.stderr
    assert metrics_without_timing(out) == reference


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_sigkill_at_a_random_moment(runner, census, reference, tmp_path, seed):
    out = tmp_path / "run"
    aimed, start, delay = _aim(census, seed)
    killed = runner.kill_after(cli_args(out, SETS), delay, after=out / start)
    landed = stage_in_progress(out, METHODS)
    print(f"seed {seed}: aimed at {aimed} (+{delay:.3f} s), landed in {landed}")
    assert killed.exitcode in (0, -signal.SIGKILL), killed.stderr
    assert wait_until_gone(killed.group) == []
    check_complete_or_absent(out, census["out"])
    _rerun_and_compare(runner, out, reference)
    if temporaries(out):
        print(f"  left by the killed run: {temporaries(out)}")


def test_sigkill_of_the_real_command_at_a_random_moment(census, reference, tmp_path):
    """The real ``endd run`` (a fresh process, its own session), killed with its process group
    at a seeded moment of a seeded stage, then run again the same way."""
    out = tmp_path / "run"
    aimed, start, delay = _aim(census, SEED)
    process = subprocess.Popen(command(out, SETS), start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / start).exists() and process.poll() is None:
        assert time.monotonic() < deadline, f"{start} never appeared"
        time.sleep(0.001)
    try:
        process.wait(delay)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    landed = stage_in_progress(out, METHODS)
    print(f"real command: aimed at {aimed} (+{delay:.3f} s), landed in {landed}")
    assert wait_until_gone(process.pid) == []
    check_complete_or_absent(out, census["out"])
    subprocess.run(command(out, SETS), check=True, timeout=300)
    assert metrics_without_timing(out) == reference
