"""Ctrl-C: ``endd run`` stops within seconds, says so in one line (exit status 130), leaves no
temporary file and no process behind, and the same command then finishes with the metrics of an
uninterrupted run.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group (``endd`` and its student
worker processes); ``kill -INT PID`` to the ``endd`` process alone. Both are tested. The liveness
tests train "forever" (students.epochs huge), so a run that ignored the signal would be caught by
the time bound, not by luck; the resume tests send the signal from inside the run, right after a
seeded rename of a training stage (the ``crashing`` hook, SIGINT instead of SIGKILL), so the
moment is exact. The real ``endd run`` is interrupted in process; the other runs are forked from
a server that has imported endd (``crashing.Runner``: the same ``endd.cli.main``, without 4 s of
imports per run; the student worker processes are spawned, fresh Python processes, either way).
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
    Runner,
    cli_args,
    command,
    hook_env,
    metrics_without_timing,
    overrides,
    read_renames,
    sample,
    shared_census,
    stage_kind,
    stage_of,
    temporaries,
    wait_until_gone,
    write_hook,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="process groups and /proc: Linux"
)

#: A bound on how long endd may take to stop, generous for a loaded CI machine: a liveness
#: check (measured: about 1-3 s), not a benchmark.
STOP_WITHIN = 15.0
INTERRUPTED = "endd: interrupted; rerun the same command to resume"
TERMINATED = "endd: terminated (SIGTERM); rerun the same command to resume"
#: Runs ``python ARGS`` with SIGINT at its default (an ignored signal stays ignored across exec,
#: and Python then installs no KeyboardInterrupt handler).
SIGINT_AT_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("forked"))


def _start_real(out: Path, sets: list[str]):
    """The real ``endd run`` in its own session (a process group the test can signal), with
    Ctrl-C at its default (a test runner may have been started with SIGINT ignored, which
    children inherit). Returns its pid, ``poll()`` and ``wait(timeout)`` → (status, stderr)."""
    python, *args = command(out, sets)
    process = subprocess.Popen(
        [python, "-c", SIGINT_AT_DEFAULT, *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait(timeout: float) -> tuple[int | None, str]:
        try:
            stderr = process.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            return None, ""
        return process.returncode, stderr

    return process.pid, process.poll, wait


def _start_forked(runner: Runner, out: Path, sets: list[str]):
    """The same, forked from the server that has imported endd (``crashing.Runner``)."""
    process, stderr, _ = runner.start(cli_args(out, sets))

    def wait(timeout: float) -> tuple[int | None, str]:
        process.join(timeout)
        done = process.exitcode is not None
        return process.exitcode, stderr.read_text() if done else ""

    return process.pid, lambda: process.exitcode, wait


# ---- liveness: a training that would not end by itself ------------------------------------------
@pytest.mark.parametrize(
    "workers, whole_group, sent_signal",
    [
        pytest.param(1, True, signal.SIGINT, id="ctrl-c-in-process"),
        pytest.param(2, True, signal.SIGINT, id="ctrl-c-process-pool"),
        pytest.param(2, False, signal.SIGINT, id="kill-int-parent-of-pool"),
        pytest.param(1, False, signal.SIGTERM, id="sigterm-in-process"),
        pytest.param(2, True, signal.SIGTERM, id="sigterm-process-pool"),
    ],
)
def test_sigint_during_training_stops_within_seconds(
    tmp_path, runner, workers, whole_group, sent_signal
):
    """SIGTERM (``kill``, a scheduler cancelling the job) stops endd as Ctrl-C does."""
    out = tmp_path / "run"
    sets = overrides(workers, methods=METHODS, students__epochs=10**6, students__batch_size=16)
    pid, poll, wait = _start_real(out, sets) if workers == 1 else _start_forked(runner, out, sets)
    # each student has finished an epoch: training is under way in every process; then a
    # seeded moment within the next few epochs (an epoch is about 30 ms)
    checkpoints = [out / "students" / m / "checkpoints" / "last.ckpt" for m in METHODS[:workers]]
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in checkpoints):
        assert poll() is None, f"endd ended early: {wait(0)[1]}"
        assert time.monotonic() < deadline, f"{checkpoints} did not appear"
        time.sleep(0.01)
    time.sleep(random.Random(f"{workers} {whole_group}").uniform(0, 0.3))
    sent = time.monotonic()
    if whole_group:
        os.killpg(pid, sent_signal)
    else:
        os.kill(pid, sent_signal)
    status, stderr = wait(STOP_WITHIN)
    if status is None:
        os.killpg(pid, signal.SIGKILL)
        wait(60)
        pytest.fail(f"endd was still running {STOP_WITHIN} s after {sent_signal.name}")
    seconds = time.monotonic() - sent
    print(f"workers={workers} {'group' if whole_group else 'parent'}: stopped in {seconds:.2f} s")
    if sent_signal == signal.SIGTERM:
        assert status == 143, stderr
        assert stderr.splitlines() == [TERMINATED], stderr
    else:
        assert status == 130, stderr
        assert stderr.splitlines() == [INTERRUPTED], stderr
    assert (left := temporaries(out)) == [], left
    # every worker process is gone when endd returns (none outlives it and keeps writing)
    assert wait_until_gone(pid, seconds=1.0) == []
    assert not (out / "students" / METHODS[0] / "model.json").exists()


# ---- resume: interrupted right after a seeded rename of a training stage ------------------------
@pytest.fixture(scope="module")
def hook(tmp_path_factory) -> Path:
    return write_hook(tmp_path_factory.mktemp("hook"))


@pytest.fixture(scope="module")
def census(tmp_path_factory, runner) -> dict:
    """An uninterrupted run (the reference metrics) and its renames."""
    run = shared_census(tmp_path_factory, runner)
    stages = [stage_kind(stage_of(run.out, r.path)) for r in run.renames]
    return {"metrics": run.metrics, "renames": run.renames, "stages": stages}


@pytest.mark.parametrize(
    "workers, stage",
    [
        pytest.param(1, "ensemble", id="ensemble"),
        pytest.param(1, "student", id="student-in-process"),
        pytest.param(2, "student", id="student-process-pool", marks=pytest.mark.slow),
        pytest.param(1, "student-sigterm", id="sigterm-student-in-process"),
    ],
)
def test_ctrl_c_then_the_same_command_finishes(tmp_path, runner, hook, census, workers, stage):
    """SIGINT to the whole process group (Ctrl-C) during the training of ``stage``: right after
    a seeded one of its checkpoint renames (in the pool: made by a worker process), then the same
    command. ``student-sigterm``: SIGTERM instead (a scheduler cancelling the job)."""
    stage, terminated = stage.removesuffix("-sigterm"), stage.endswith("-sigterm")
    out, log = tmp_path / "run", tmp_path / "renames"
    argv = cli_args(out, overrides(workers, methods=METHODS))
    renames = zip(census["renames"], census["stages"], strict=True)
    training = [r.index for r, s in renames if s == stage and "/checkpoints/" in r.path]
    (index,) = sample(training, 1, ("ctrl-c", stage, workers))
    env = hook_env(hook, log, kill_at=index, who="group")
    env["ENDD_TEST_SIGNAL"] = "SIGTERM" if terminated else "SIGINT"
    interrupted = runner.run(argv, env)
    renames = read_renames(log)
    assert len(renames) >= index
    print(f"{env['ENDD_TEST_SIGNAL']} after rename {index}: {renames[index - 1].path}")
    assert interrupted.exitcode == (143 if terminated else 130), interrupted.stderr
    expected = TERMINATED if terminated else INTERRUPTED
    assert interrupted.stderr.splitlines() == [expected], interrupted.stderr
    assert temporaries(out) == []
    assert wait_until_gone(interrupted.group, seconds=1.0) == []

    rerun = runner.run(argv)
    assert rerun.exitcode == 0, rerun.stderr
    assert metrics_without_timing(out) == census["metrics"]
    assert temporaries(out) == []
