"""Helpers of the crash-safety tests: tiny spiral runs, killed and rerun.

- :func:`command` is the real ``endd run`` command line (a fresh Python process each time);
- :class:`Runner` runs the same ``endd.cli.main`` in processes forked from a server that has
  already imported endd, torch and Lightning (``multiprocessing``'s forkserver with a preload):
  an interrupted run and its rerun then cost the work of the run itself, not 4 s of imports
  each, so many kill moments fit in the test budget. Each run is its own process group (killing
  the group kills it and its student worker processes) with its stderr in a file;
- :data:`HOOK` is a ``sitecustomize.py`` that logs every rename (``os.replace`` / ``os.rename``,
  the last step of every atomic write) and SIGKILLs its process, or its whole process group, right
  after the N-th one (or sends another signal: SIGINT for Ctrl-C); it can also fail every file or
  folder creation under a folder from the N-th on (ENOSPC, EACCES). It is put on ``PYTHONPATH``,
  so the spawned student worker processes load it too; renames and creations are counted across
  all processes of a run (locked log files).
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tiny import TINY_SPIRAL

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "spiral.yaml"

#: The stages in run order; ``config`` is the run's first file (``config.yaml``).
STAGE_ORDER = ("config", "ensemble", "teacher", "student", "evaluate", "report")


def overrides(workers: int = 1, *, methods: Sequence[str] = ("endd", "proxy"), **more) -> list[str]:
    """The tiny spiral run (a few seconds) with ``workers`` student processes, ``methods`` and
    any other ``key=value`` (dots as ``__``: ``students__epochs=20``)."""
    extra = {key.replace("__", "."): value for key, value in more.items()}
    replaced = ("trainer.workers", "students.methods", *extra)
    result = [o for o in TINY_SPIRAL if not o.startswith(tuple(f"{k}=" for k in replaced))]
    result += [f"trainer.workers={workers}", f"students.methods=[{', '.join(methods)}]"]
    return result + [f"{key}={value}" for key, value in extra.items()]


def cli_args(out: Path, sets: Iterable[str]) -> list[str]:
    """The arguments of ``endd`` for a run of the spiral config into ``out``."""
    return ["run", str(CONFIG), "--out", str(out), "--quiet", *[f"--set={s}" for s in sets]]


def command(out: Path, sets: Iterable[str]) -> list[str]:
    """The whole ``endd run`` command line, for :mod:`subprocess`."""
    return [sys.executable, "-m", "endd.cli", *cli_args(out, sets)]


def metrics_without_timing(out: Path) -> dict:
    """``metrics.json`` less its ``timing`` section (wall-clock seconds)."""
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("timing")
    return metrics


def temporaries(root: Path) -> list[str]:
    """Temporary files under ``root``: an atomic write's ``.<name>.<random>.tmp`` and the
    checkpoint's ``last.ckpt.tmp``."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*.tmp"))


def living_processes(group: int) -> list[int]:
    """Processes of process group ``group`` that are alive (zombies, which write nothing and are
    only waiting to be reaped, are not counted). Linux: reads ``/proc``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == group and state not in ("Z", "X"):
            alive.append(int(stat.parent.name))
    return alive


def wait_until_gone(group: int, seconds: float = 10.0) -> list[int]:
    """Wait up to ``seconds`` for every process of ``group`` to end; returns those still alive."""
    deadline = time.monotonic() + seconds
    while (alive := living_processes(group)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def stage_of(root: Path, path: str | Path) -> str:
    """The stage that writes ``path`` (a file under the run directory ``root``)."""
    try:
        parts = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(root))).parts
    except ValueError:
        return "outside"
    if not parts:  # the run directory itself
        return "config"
    top = artifact_name(parts[0])
    if top == "config.yaml":
        return "config"
    if top in ("ensemble", "teacher"):
        return top
    if top == "students":
        return f"student:{parts[1]}" if len(parts) > 1 else "student"
    if top in ("predictions", "evaluation", "metrics.json"):
        return "evaluate"
    if top in ("figures", "report.md"):
        return "report"
    return top


def artifact_name(name: str) -> str:
    """The artifact a temporary file's name stands for (``.metrics.json.1a2b3c4d5e6f.tmp`` →
    ``metrics.json``, ``last.ckpt.tmp`` → ``last.ckpt``); other names unchanged."""
    if name.startswith(".") and name.endswith(".tmp"):
        return name[1:].rsplit(".", 2)[0]
    return name.removesuffix(".tmp")


def check_complete_or_absent(killed: Path, reference: Path) -> None:
    """Every artifact a killed or failed run left is complete: arrays and weights equal to those
    of the uninterrupted run in ``reference`` (training and scoring are deterministic), JSON
    parses. Temporary files are not artifacts."""
    import numpy as np

    for path in Path(killed).rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp"):
            continue
        twin = Path(reference) / path.relative_to(killed)
        if path.suffix in (".npy", ".safetensors") and twin.is_file():
            assert path.read_bytes() == twin.read_bytes(), f"{path} differs from {twin}"
        elif path.suffix == ".npz" and twin.is_file():  # a zip: its entries carry a date
            with np.load(path) as got, np.load(twin) as want:
                assert got.files == want.files, path
                for key in want.files:
                    np.testing.assert_array_equal(got[key], want[key], err_msg=str(path))
        elif path.suffix == ".json":
            json.loads(path.read_text())


def stage_kind(stage: str) -> str:
    """``student:<method>`` → ``student``; the others unchanged."""
    return stage.split(":")[0]


#: Each stage's marker (written last), relative to the run directory.
MARKERS = {
    "ensemble": "ensemble/model.json",
    "teacher": "teacher/done.json",
    "evaluate": "metrics.json",
    "report": "report.md",
}


def stage_in_progress(root: Path, methods: Sequence[str]) -> str:
    """Where a killed run stopped: the first stage whose marker is missing (``finished`` if none
    is; ``start`` before ``config.yaml``)."""
    root = Path(root)
    if not (root / "config.yaml").is_file():
        return "start"
    markers = [("ensemble", MARKERS["ensemble"]), ("teacher", MARKERS["teacher"])]
    markers += [(f"student:{m}", f"students/{m}/model.json") for m in methods]
    markers += [("evaluate", MARKERS["evaluate"]), ("report", MARKERS["report"])]
    for stage, marker in markers:
        if not (root / marker).is_file():
            return stage
    return "finished"


# ---- the rename hook ---------------------------------------------------------------------------
HOOK = '''\
"""Test hook (written by tests/reliability/crashing.py).

Renames: log every one; after the N-th, kill (or signal) this process or its process group.
ENDD_TEST_RENAME_LOG  the log file: one line "index pid time function size destination" per rename
ENDD_TEST_KILL_AT     N: after the N-th rename of the run (counted over all its processes)...
ENDD_TEST_KILL_WHO    ...kill this process ("self") or its whole process group ("group")...
ENDD_TEST_SIGNAL      ...with this signal (default SIGKILL)

Creations (os.open with O_CREAT, os.mkdir) under a folder: log every one; from the N-th on, fail
as a full disk or an unwritable folder would.
ENDD_TEST_CREATE_LOG   the log file: one line "index pid path" per creation under...
ENDD_TEST_CREATE_UNDER ...this folder
ENDD_TEST_FAIL_FROM    N: the N-th creation and every later one raise...
ENDD_TEST_FAIL_ERRNO   ...OSError with this errno (ENOSPC, EACCES, ...)
"""
import errno
import fcntl
import os
import signal
import time


def _append(log, rest):
    """Append the line "<index> <rest>" to ``log`` under a lock; returns the index."""
    with open(log, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        index = sum(1 for _ in handle) + 1
        handle.write(f"{index} {rest}\\n")
        handle.flush()
        return index


def _renaming(function):
    def rename(src, dst, *args, **kwargs):
        function(src, dst, *args, **kwargs)
        log = os.environ.get("ENDD_TEST_RENAME_LOG")
        if not log:
            return
        destination = os.path.abspath(os.fsdecode(dst))
        try:
            size = os.stat(destination).st_size
        except OSError:
            size = -1
        line = f"{os.getpid()} {time.time():.6f} {function.__name__} {size} {destination}"
        if _append(log, line) == int(os.environ.get("ENDD_TEST_KILL_AT", "0")):
            sent = getattr(signal, os.environ.get("ENDD_TEST_SIGNAL", "SIGKILL"))
            if os.environ.get("ENDD_TEST_KILL_WHO", "self") == "group":
                os.killpg(os.getpgrp(), sent)
            else:
                os.kill(os.getpid(), sent)

    rename.__name__ = function.__name__
    return rename


def _creating(function, creates):
    def create(path, *args, **kwargs):
        log = os.environ.get("ENDD_TEST_CREATE_LOG")
        under = os.environ.get("ENDD_TEST_CREATE_UNDER")
        if log and under and creates(*args, **kwargs):
            target = os.path.abspath(os.fsdecode(path))
            # only what is new takes space (an existing folder or file: EEXIST or just opened)
            inside = (target + os.sep).startswith(os.path.abspath(under) + os.sep)
            if inside and not os.path.lexists(target):
                index = _append(log, f"{os.getpid()} {target}")
                if index >= int(os.environ.get("ENDD_TEST_FAIL_FROM", "0") or 0) > 0:
                    code = getattr(errno, os.environ.get("ENDD_TEST_FAIL_ERRNO", "ENOSPC"))
                    raise OSError(code, os.strerror(code), os.fsdecode(path))
        return function(path, *args, **kwargs)

    create.__name__ = function.__name__
    return create


def _open_creates(flags, *args, **kwargs):
    return bool(flags & os.O_CREAT)


if not getattr(os, "_endd_test_hooked", False):
    os.replace = _renaming(os.replace)
    os.rename = _renaming(os.rename)
    os.open = _creating(os.open, _open_creates)
    os.mkdir = _creating(os.mkdir, lambda *args, **kwargs: True)
    os._endd_test_hooked = True
'''


def write_hook(folder: Path) -> Path:
    """Write :data:`HOOK` as ``folder/sitecustomize.py``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    return folder


@dataclass(frozen=True)
class Rename:
    index: int
    pid: int
    time: float
    function: str
    size: int
    path: str


def read_renames(log: Path) -> list[Rename]:
    if not log.is_file():
        return []
    renames = []
    for line in log.read_text().splitlines():
        index, pid, moment, function, size, path = line.split(" ", 5)
        renames.append(Rename(int(index), int(pid), float(moment), function, int(size), path))
    return renames


def read_creations(log: Path) -> list[tuple[int, int, str]]:
    """(index, pid, path) of every creation the hook logged."""
    if not log.is_file():
        return []
    rows = [line.split(" ", 2) for line in log.read_text().splitlines()]
    return [(int(index), int(pid), path) for index, pid, path in rows]


def hook_env(hook: Path, log: Path, kill_at: int = 0, who: str = "self") -> dict[str, str]:
    """Environment variables that load the hook (in this run and its worker processes) and log
    the renames into ``log``; ``kill_at``: SIGKILL ``who`` after that rename."""
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": path,
        "ENDD_TEST_RENAME_LOG": str(log),
        "ENDD_TEST_KILL_AT": str(kill_at),
        "ENDD_TEST_KILL_WHO": who,
    }


def failing_env(hook: Path, log: Path, under: Path, fail_from: int = 0, error="ENOSPC"):
    """Environment variables that load the hook and log every file or folder created under
    ``under`` into ``log``; from creation number ``fail_from`` on (0: never), each fails with
    ``OSError(errno.<error>)``."""
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": path,
        "ENDD_TEST_CREATE_LOG": str(log),
        "ENDD_TEST_CREATE_UNDER": str(under),
        "ENDD_TEST_FAIL_FROM": str(fail_from),
        "ENDD_TEST_FAIL_ERRNO": error,
    }


# ---- runs in processes forked from a server that has imported endd ------------------------------
PRELOAD = [
    "crashing",
    "endd.cli",
    "endd.config",
    "endd.data",
    "endd.engine",
    "endd.pipeline.run",
    "endd.pipeline.teacher",
    "endd.pipeline.training",
    "endd.pipeline.evaluate",
    "endd.report",
    "lightning",
    "matplotlib.pyplot",
]


def _child(argv, env, stderr: str, started: str, hook: str | None, fsize: int | None):
    """A forked run: its own process group, stderr to a file, the hook if asked, a file-size
    limit if asked, then the CLI."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh `endd`
    fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(env)
    if hook is not None:  # this process was forked, not started: load the hook by hand
        import importlib.util

        spec = importlib.util.spec_from_file_location("_endd_test_hook", hook)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    if fsize is not None:
        # Writes past ``fsize`` bytes fail with EFBIG, like a full disk (Python ignores SIGXFSZ);
        # the student worker processes inherit the limit.
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    Path(started).touch()
    from endd.cli import main

    sys.exit(main(argv))


@dataclass
class Outcome:
    exitcode: int
    stderr: str
    #: from the start of the run (after the fork) to its end
    seconds: float
    #: the run's process group (its process id)
    group: int
    #: ``time.time()`` when the run started (after the fork)
    started: float


class Runner:
    """``endd`` runs in processes forked from a forkserver that has imported endd."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        self.count = 0

    def start(self, argv: list[str], env: dict[str, str] | None = None, fsize: int | None = None):
        """Start a run; returns (process, stderr file, started file). An ``env`` from
        :func:`hook_env` or :func:`failing_env` loads the hook into this process too; ``fsize``
        limits the size of every file it writes."""
        self.count += 1
        stderr = self.scratch / f"stderr.{self.count}"
        started = self.scratch / f"started.{self.count}"
        env = dict(env or {})
        hook = None
        if any(key.startswith("ENDD_TEST_") for key in env):
            hook = env["PYTHONPATH"].split(os.pathsep)[0] + "/sitecustomize.py"
        process = self.context.Process(
            target=_child, args=(argv, env, str(stderr), str(started), hook, fsize)
        )
        process.start()
        return process, stderr, started

    def run(self, argv: list[str], env=None, *, fsize: int | None = None, timeout=300) -> Outcome:
        """Run to the end (or the hook's kill)."""
        process, stderr, started = self.start(argv, env, fsize)
        process.join(timeout)
        if process.exitcode is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.join()
            raise AssertionError(f"endd {' '.join(argv)} did not finish in {timeout} s")
        begin = started.stat().st_mtime
        return Outcome(
            process.exitcode, stderr.read_text(), time.time() - begin, process.pid, begin
        )

    def kill_after(self, argv: list[str], delay: float, *, after: Path, timeout=300) -> Outcome:
        """Start a run and SIGKILL its process group ``delay`` seconds after the file ``after``
        appeared (polled every millisecond), unless it finished first."""
        process, stderr, started = self.start(argv)
        deadline = time.monotonic() + timeout
        while not Path(after).exists() and process.exitcode is None:
            assert time.monotonic() < deadline, f"{after} never appeared"
            time.sleep(0.001)
        process.join(delay)
        if process.exitcode is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.join(timeout)
        begin = started.stat().st_mtime
        return Outcome(
            process.exitcode, stderr.read_text(), time.time() - begin, process.pid, begin
        )


# ---- one uninterrupted run per test session, shared by the test modules and xdist workers --------
#: The tiny run every crash test interrupts: one student process, two students.
METHODS = ("endd", "proxy")
SETS = overrides(1, methods=METHODS)


@dataclass
class Census:
    """An uninterrupted forked run of :data:`SETS` with the hook logging: its run directory, its
    metrics (less timing), every rename (in order, with the file's size) and every file or folder
    created under the run directory."""

    out: Path
    metrics: dict
    renames: list[Rename]
    creations: list[tuple[int, int, str]]
    #: ``time.time()`` when the run started
    started: float


def _shared(tmp_path_factory, name: str, make) -> Path:
    """A folder ``name`` made once per test session by ``make(folder)``, also across pytest-xdist
    workers (a lock in the folder they share)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            folder.mkdir(exist_ok=True)
            make(folder)
            done.touch()
    return folder


def shared_census(tmp_path_factory, runner: Runner) -> Census:
    def make(folder: Path) -> None:
        hook, out = write_hook(folder / "hook"), folder / "run"
        env = {**hook_env(hook, folder / "renames"), **failing_env(hook, folder / "creations", out)}
        outcome = runner.run(cli_args(out, SETS), env)
        assert outcome.exitcode == 0, outcome.stderr
        (folder / "started").write_text(repr(outcome.started))

    folder = _shared(tmp_path_factory, "endd_census", make)
    return Census(
        folder / "run",
        metrics_without_timing(folder / "run"),
        read_renames(folder / "renames"),
        read_creations(folder / "creations"),
        float((folder / "started").read_text()),
    )


def shared_reference(tmp_path_factory) -> dict:
    """metrics.json (less timing) of an uninterrupted run of :data:`SETS` by the real command
    (a fresh process, no hook)."""

    def make(folder: Path) -> None:
        subprocess.run(command(folder / "run", SETS), check=True, timeout=300)

    return metrics_without_timing(_shared(tmp_path_factory, "endd_reference", make) / "run")


def sample(items: Sequence, count: int, seed: object) -> list:
    """``count`` items of ``items`` drawn without replacement by ``random.Random(seed)``, in the
    items' order (all of them if there are fewer)."""
    chosen = random.Random(str(seed)).sample(range(len(items)), min(count, len(items)))
    return [items[i] for i in sorted(chosen)]
