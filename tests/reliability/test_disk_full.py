"""A full disk or an unwritable folder in the middle of a run: exit status 2, one line on stderr
that names the file and the problem (no traceback), no half-written artifact, no temporary file,
and once there is space the same command finishes with the metrics of an uninterrupted run.

Two simulations (CI runs as root, for whom ``chmod`` makes nothing unwritable):

- a file-size limit (``RLIMIT_FSIZE``; Python ignores SIGXFSZ, so a write past the limit fails
  with EFBIG part-way, as on a full disk). Each stage's turn: the stages before it are finished
  first (a run killed right after the marker of the stage before), then the command runs under
  a limit one byte below the size of a seeded one of the stage's files; the first of its files
  larger than that fails while being written;
- the ``crashing`` hook, from a seeded file or folder creation of a stage on, failing every
  creation under the run directory with ``ENOSPC`` (no space left) or ``EACCES`` (permission
  denied), as a full disk or a folder made read-only would.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import sys
from pathlib import Path

import pytest
from crashing import (
    METHODS,
    SETS,
    STAGE_ORDER,
    Runner,
    artifact_name,
    check_complete_or_absent,
    cli_args,
    failing_env,
    hook_env,
    metrics_without_timing,
    overrides,
    sample,
    shared_census,
    stage_kind,
    stage_of,
    temporaries,
    wait_until_gone,
    write_hook,
)

from endd.store import artifacts

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="resource limits, process groups: Linux"
)

SETS_POOL = overrides(2, methods=METHODS)


def _marker(stage: str) -> str:
    """The file that marks ``stage`` (``student:<method>`` included) done."""
    if stage.startswith("student"):  # the folder students/ is made by the first student
        return (
            f"students/{stage.removeprefix('student').removeprefix(':') or METHODS[0]}/model.json"
        )
    names = {"config": "config.yaml", "ensemble": "ensemble/model.json"}
    return (
        names.get(stage)
        or {
            "teacher": "teacher/done.json",
            "evaluate": "metrics.json",
            "report": "report.md",
        }[stage]
    )


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("forked"))


@pytest.fixture(scope="module")
def hook(tmp_path_factory) -> Path:
    return write_hook(tmp_path_factory.mktemp("hook"))


@pytest.fixture(scope="module")
def census(tmp_path_factory, runner) -> dict:
    """An uninterrupted run (the reference) with every rename (and the renamed file's size) and
    every file or folder creation under the run directory, each with its stage."""
    run = shared_census(tmp_path_factory, runner)
    return {
        "out": run.out,
        "metrics": run.metrics,
        "renames": [(r, stage_kind(stage_of(run.out, r.path))) for r in run.renames],
        "creations": [
            (i, path, stage_kind(stage_of(run.out, path))) for i, _, path in run.creations
        ],
    }


def _check_failed(outcome, out: Path, census: dict, problem: str, named: Path) -> None:
    """The run failed as a full disk must make it fail, on the file or folder ``named``."""
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome.stderr
    assert lines[0].startswith("endd: error: ") and problem in lines[0], lines[0]
    assert str(named) in lines[0], f"{named} is not named: {lines[0]}"
    assert outcome.exitcode == 2, outcome.stderr
    assert wait_until_gone(outcome.group) == []
    assert temporaries(out) == []
    check_complete_or_absent(out, census["out"])
    assert not (out / _marker(stage_of(out, named))).exists()


def _finish(runner, out: Path, census: dict, sets: list[str]) -> None:
    """There is space again: the same command finishes with the uninterrupted metrics."""
    rerun = runner.run(cli_args(out, sets))
    assert rerun.exitcode == 0, rerun.stderr
    assert metrics_without_timing(out) == census["metrics"]
    assert temporaries(out) == []


# ---- the writer ---------------------------------------------------------------------------------
def test_a_failed_write_names_the_artifact_and_leaves_nothing(tmp_path):
    """``atomic_path``: a write error names the artifact (the writers' errors name no file, or
    the temporary one); an error about another file (an input read while writing) is kept."""
    target = tmp_path / "out" / "a.npy"
    with pytest.raises(OSError) as caught, artifacts.atomic_path(target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    with pytest.raises(OSError) as caught, artifacts.atomic_path(target):
        raise OSError("8000 requested and 109 written")  # numpy's short write: no errno
    assert caught.value.filename == str(target) and "109 written" in caught.value.strerror
    with pytest.raises(FileNotFoundError) as caught, artifacts.atomic_path(target):
        open(tmp_path / "missing")
    assert caught.value.filename == str(tmp_path / "missing")
    assert list(target.parent.iterdir()) == []


# ---- a file-size limit: writes fail part-way (EFBIG) ---------------------------------------------
def _finish_stages_before(runner, hook, census, kind: str, out: Path, log: Path, sets) -> int:
    """Run until the marker of the stage before ``kind`` is written, then SIGKILL. Returns the
    index of that rename in the census (0 for the ensemble: nothing is run)."""
    if kind == "ensemble":
        return 0
    before = STAGE_ORDER[STAGE_ORDER.index(kind) - 1]
    marker = max(r.index for r, k in census["renames"] if k == before)
    killed = runner.run(cli_args(out, sets), hook_env(hook, log, kill_at=marker))
    assert killed.exitcode == -signal.SIGKILL, killed.stderr
    return marker


def _size_limit(census: dict, kind: str, after: int, seed) -> tuple[int, str]:
    """A file-size limit that fails a write of stage ``kind`` when the run resumes after rename
    ``after``: one byte below the size of a seeded one of the stage's files that are larger than
    every file written before the stage. Returns it and the artifact that fails first."""
    pending = [(r, k) for r, k in census["renames"] if r.index > after]
    earlier = max(
        [0] + [r.size for r, k in pending if STAGE_ORDER.index(k) < STAGE_ORDER.index(kind)]
    )
    (chosen,) = sample([r for r, k in pending if k == kind and r.size > earlier], 1, seed)
    limit = chosen.size - 1
    first = next(r for r, _ in pending if r.size > limit)
    relative = Path(first.path).relative_to(census["out"])
    return limit, str(relative.with_name(artifact_name(relative.name)))


@pytest.mark.parametrize("kind", STAGE_ORDER[1:])
def test_file_size_limit_in_a_stage(runner, hook, census, tmp_path, kind):
    out = tmp_path / "run"
    after = _finish_stages_before(runner, hook, census, kind, out, tmp_path / "renames", SETS)
    limit, failing = _size_limit(census, kind, after, ("fsize", kind))
    print(f"{kind}: limit {limit} B, {failing} fails")
    failed = runner.run(cli_args(out, SETS), fsize=limit)
    _check_failed(failed, out, census, os.strerror(errno.EFBIG), out / failing)
    _finish(runner, out, census, SETS)


@pytest.mark.slow
def test_file_size_limit_in_the_student_process_pool(runner, hook, census, tmp_path):
    """A student worker process's write fails: its parent fails with the worker's one line."""
    out = tmp_path / "run"
    after = _finish_stages_before(runner, hook, census, "student", out, tmp_path / "r", SETS_POOL)
    limit, failing = _size_limit(census, "student", after, ("fsize", "pool"))
    failed = runner.run(cli_args(out, SETS_POOL), fsize=limit)
    # the worker that trains the other student fails alike: which one's error comes first varies
    other = failing.replace(f"/{METHODS[0]}/", f"/{METHODS[1]}/")
    named = out / (failing if str(out / failing) in failed.stderr else other)
    _check_failed(failed, out, census, os.strerror(errno.EFBIG), named)
    _finish(runner, out, census, SETS_POOL)


# ---- no space left, or no permission, from a file or folder creation on --------------------------
def _creation(census: dict, kind: str, seed) -> tuple[int, Path, str]:
    """A seeded creation of stage ``kind``: its index, the path an error should name (the
    artifact a temporary file stands for, or the folder) and a seeded errno name."""
    creations = [(index, path) for index, path, k in census["creations"] if k == kind]
    ((index, path),) = sample(creations, 1, seed)
    error = random.Random(str(seed)).choice(["ENOSPC", "EACCES"])
    path = Path(path)
    return index, path.with_name(artifact_name(path.name)), error


@pytest.mark.parametrize("kind", STAGE_ORDER)
def test_no_space_or_no_permission_in_a_stage(runner, hook, census, tmp_path, kind):
    out = tmp_path / "run"
    index, named, error = _creation(census, kind, ("create", kind))
    named = out / named.relative_to(census["out"])
    print(f"{kind}: creation {index} and later fail with {error}; {named.relative_to(tmp_path)}")
    env = failing_env(hook, tmp_path / "creations", out, fail_from=index, error=error)
    failed = runner.run(cli_args(out, SETS), env)
    _check_failed(failed, out, census, os.strerror(getattr(errno, error)), named)
    _finish(runner, out, census, SETS)


@pytest.mark.slow
@pytest.mark.parametrize("kind", STAGE_ORDER[1:])
def test_no_space_or_no_permission_more_moments(runner, hook, census, tmp_path, kind):
    """Two more seeded creations per stage."""
    creations = [index for index, _, k in census["creations"] if k == kind]
    for number, index in enumerate(sample(creations, 2, ("create more", kind))):
        out = tmp_path / str(number)
        path = Path(next(p for i, p, _ in census["creations"] if i == index))
        named = out / path.with_name(artifact_name(path.name)).relative_to(census["out"])
        error = ["ENOSPC", "EACCES"][number % 2]
        env = failing_env(hook, tmp_path / f"creations{number}", out, index, error)
        failed = runner.run(cli_args(out, SETS), env)
        _check_failed(failed, out, census, os.strerror(getattr(errno, error)), named)
        _finish(runner, out, census, SETS)
