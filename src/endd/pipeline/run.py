"""One loop runs the stages of a plan over a run directory; finished stages are skipped."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from endd.config import resolve_config
from endd.data import load_data
from endd.errors import RunDirError
from endd.pipeline.distributed import (
    barrier,
    is_distributed,
    is_rank_zero,
    join_process_group,
    launch_local_ranks,
    local_rank_first,
    outside_launcher,
    stop_launched_ranks,
)
from endd.pipeline.stages import (
    COMMANDS,
    Stage,
    StageContext,
    default_progress,
    plan,
    trainable_students,
)
from endd.store import RunDir
from endd.store.run_dir import STUDENT_PREFIX

log = logging.getLogger("endd")


def run_stages(
    run_dir: str | Path,
    commands: Iterable[str] = COMMANDS,
    *,
    config: dict[str, Any] | None = None,
    progress: bool | None = None,
    force: bool = False,
    notices: Iterable[str] = (),
) -> RunDir:
    """Run the stages that ``commands`` select over ``run_dir``.

    Args:
        run_dir: the run directory (created if ``config`` is given).
        commands: any of ``ensemble`` (members + cached teacher logits), ``distill``,
            ``evaluate``, ``report``; the stages run in their fixed order.
        config: a resolved config for a new run; None reads ``RUN/config.yaml``.
        progress: draw progress bars; None: only on a terminal with INFO logging on.
        force: recompute ``evaluate`` and ``report`` even if their outputs exist (training stages
            are never redone: delete their folder to retrain).
        notices: messages about the config (see ``resolve_config(notices=...)``), logged once the
            data and the stages' checks have passed.
    """
    run = RunDir(Path(run_dir))
    new_config = config
    if new_config is not None:
        run.check_config(new_config)  # before anything is loaded or written
    config = new_config if new_config is not None else run.read_config()
    unknown = set(commands) - set(COMMANDS)
    if unknown:
        raise ValueError(f"unknown stage command(s) {sorted(unknown)}; choose from {COMMANDS}")
    selected = set(commands)
    context = StageContext(run, config, default_progress() if progress is None else progress)
    trainer = config["trainer"]
    # Several processes (trainer.devices × num_nodes > 1): a rank that torchrun, SLURM or the
    # launching endd process started joins the process group now; see pipeline/distributed.py.
    together = join_process_group(trainer)
    try:
        _run_selected(context, selected, together, new_config, force, notices)
    except BaseException:
        stop_launched_ranks()  # none is left waiting for this process at a collective
        raise
    return run


def _run_selected(
    context: StageContext,
    selected: set[str],
    together: bool,
    new_config: dict[str, Any] | None,
    force: bool,
    notices: Iterable[str],
) -> None:
    """The body of :func:`run_stages` once the process group (if any) is joined."""
    run, config, trainer = context.run, context.config, context.config["trainer"]
    with torch_threads(trainer["num_threads"]):
        if together and outside_launcher() and selected - {"report"}:
            # torchrun, SLURM: each node's local rank 0 prepares the image cache before its
            # other ranks read it (endd's own launcher starts them once rank 0 has)
            local_rank_first(lambda: context.data, "load the data")
        # Which students the data can train decides the plan; the report alone needs no data.
        students = trainable_students(config, context.data) if selected - {"report"} else []
        everything = plan(config, students)
        stages = [s for s in everything if selected & set(s.commands)]
        pending = [s for s in stages if not run.is_done(s.name) or (force and s.recompute)]
        # Bad data or teacher files surface before anything is written or trained, so a failed
        # first attempt does not leave a run directory that then refuses the corrected config.
        if any(s.needs_data for s in pending):
            context.data  # noqa: B018 -- loads and checks the dataset
        _check_inputs(run, everything, pending)
        for stage in pending:
            if stage.check is not None:
                stage.check(context)
        if any(s.trains or s.every_rank for s in pending):
            # endd's own launcher: the other ranks start now, before anything is written
            together = launch_local_ranks(trainer) or together
        if is_rank_zero(trainer):
            for notice in notices:
                log.info("%s", notice)
            _remove_leftovers(run, everything, pending)
        if together:  # every rank has decided what it runs before anything is written
            barrier(trainer)
        if new_config is not None and is_rank_zero(trainer):
            run.root.mkdir(parents=True, exist_ok=True)
            run.write_config(new_config)
        index = 0
        while index < len(stages):
            stage = stages[index]
            if stage not in pending:
                if is_rank_zero(trainer):
                    log.info("[%s] already done, skipped", stage.name)
                index += 1
                continue
            group = [stage]
            while stage.parallel and index + len(group) < len(stages):
                following = stages[index + len(group)]
                if not (following.parallel and following in pending):
                    break
                group.append(following)
            if len(group) > 1 and not is_distributed(trainer):
                _run_in_processes(context, group)
            else:
                for one in group:
                    _run_stage(context, one)
            index += len(group)


def _run_stage(context: StageContext, stage: Stage) -> None:
    """Run one stage here. With several processes a training stage runs on every rank (DDP),
    and so does one that writes shards; any other on global rank 0 alone; every rank then waits
    for the others."""
    trainer = context.config["trainer"]
    begin = time.perf_counter()
    if stage.trains or stage.every_rank or is_rank_zero(trainer):
        stage.run(context)
    barrier(trainer)
    if is_rank_zero(trainer):
        log.info("[%s] done (%.1f s)", stage.name, time.perf_counter() - begin)


def _remove_leftovers(run: RunDir, everything: list[Stage], pending: list[Stage]) -> None:
    """What a killed attempt (SIGKILL: no clean-up ran) left behind: the temporary files of
    the writes it was in (``.<name>.<random>.tmp``, a checkpoint's ``last.ckpt.tmp``) in what
    the pending stages write, and the ``checkpoints/`` of training stages that finished (killed
    between ``model.json`` and deleting them). Nothing else: finished teacher shards are kept to
    be reused."""
    if not run.root.is_dir():
        return
    leftovers: list[Path] = list(run.root.glob(".config.yaml.*.tmp"))
    for stage in pending:
        for output in stage.outputs:
            path = run.root / output
            leftovers += path.parent.glob(f".{path.name}.*.tmp")
            if path.is_dir():
                leftovers += path.rglob(".*.tmp")
                leftovers += path.rglob("checkpoints/last.ckpt.tmp")
    for path in leftovers:
        path.unlink(missing_ok=True)
    for stage in everything:
        if stage.trains and run.is_done(stage.name):
            for output in stage.outputs:
                shutil.rmtree(run.root / output / "checkpoints", ignore_errors=True)
    if leftovers:
        log.debug("removed %d temporary file(s) of a killed attempt", len(leftovers))


def _check_inputs(run: RunDir, everything: list[Stage], pending: list[Stage]) -> None:
    """Every input of a pending stage is done or runs before it; else say what to run."""
    by_name = {s.name: s for s in everything}
    will_run: set[str] = set()
    for stage in pending:
        for name in stage.inputs:
            if name in will_run or run.is_done(name):
                continue
            source = by_name[name]
            raise RunDirError(
                f"no {source.title} in {run.root} ({stage.name} needs it); run "
                f"`endd {source.commands[0]} {run.root}`"
            )
        will_run.add(stage.name)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside (None: torch's default), restored on exit."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def distill_workers(config: dict[str, Any], pending: int) -> int:
    """How many students to train at once: one process per core on the CPU (small students
    barely use a second thread), one at a time on accelerators."""
    workers = config["trainer"]["workers"]
    if workers is None:
        on_cpu = config["trainer"]["accelerator"] == "cpu"
        workers = (os.cpu_count() or 1) if on_cpu else 1
    return max(1, min(int(workers), pending))


def worker_threads(trainer: dict[str, Any], workers: int) -> int:
    """Torch threads of each student worker process: ``trainer.num_threads`` when set (as in
    the ``endd`` process), else the cores shared out between the ``workers``."""
    if trainer["num_threads"]:
        return int(trainer["num_threads"])
    return max(1, (os.cpu_count() or 1) // workers)


def _run_in_processes(context: StageContext, group: list[Stage]) -> None:
    """Run parallel stages (students) in a pool of worker processes, or one after another
    when the config allows a single worker."""
    workers = distill_workers(context.config, len(group))
    if workers <= 1:
        for stage in group:
            _run_stage(context, stage)
        return
    names = [s.name.removeprefix(STUDENT_PREFIX) for s in group]
    log.info("[distill] %s in %d processes", ", ".join(names), workers)
    threads = worker_threads(context.config["trainer"], workers)
    root = str(context.run.root)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            with _sigint_blocked():  # the workers start with it blocked: Ctrl-C is ours alone
                futures = {
                    pool.submit(_student_worker, root, name, threads, os.getpid()): stage
                    for name, stage in zip(names, group, strict=True)
                }
            for future in as_completed(futures):
                seconds = future.result()  # re-raises a worker's error here
                log.info("[%s] done (%.1f s)", futures[future].name, seconds)
        except KeyboardInterrupt:
            # SIGTERM: a training worker unwinds (a write in progress deletes its temporary
            # file) and exits, an idle one exits; no student starts any more.
            for process in list((pool._processes or {}).values()):
                process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Inside, SIGINT waits (it is delivered on the way out). A process started inside inherits
    it blocked (a signal mask survives exec): a worker never dies of Ctrl-C half-way through its
    imports with a traceback; the parent stops it (see ``_run_in_processes``)."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Stopped(BaseException):
    """Raised in a student worker by SIGTERM: its parent is stopping it (Ctrl-C)."""


def _stop(signum: int, frame: Any) -> None:
    # once: a second SIGTERM (the pool's own clean-up sends one) must not cut the unwinding short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stopped


def _student_worker(root: str, method: str, threads: int, parent: int) -> float:
    """One student in a worker process. Exits if the parent dies (e.g. SIGKILL), so an orphan
    never keeps writing checkpoints that a resumed run also writes; on SIGTERM (the parent
    stopping it) the training unwinds first, so no temporary file is left."""
    from endd.pipeline.training import train_student

    _exit_with_parent(parent)
    signal.signal(signal.SIGTERM, _stop)
    try:
        begin = time.perf_counter()
        torch.set_num_threads(threads)
        run = RunDir(Path(root))
        config = run.read_config()
        if config["trainer"]["accelerator"] == "cpu":
            from endd.models.allocator import keep_freed_memory

            keep_freed_memory()  # this process is ours: see endd.models.allocator
        data = load_data(config["data"], config["seed"])
        train_student(run, config, data, method, progress=False)
        return time.perf_counter() - begin
    except _Stopped:
        os._exit(1)  # every write in progress has unwound
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # idle: SIGTERM ends it at once


def _exit_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_config(
    user_config: dict[str, Any],
    out: str | Path,
    overrides: Iterable[str] | dict[str, Any] = (),
    *,
    quiet: bool = False,
) -> RunDir:
    """Resolve a config (defaults ← ``user_config`` ← ``overrides``) and run every stage into
    ``out``. ``quiet``: no progress bars (messages go through the ``endd`` logger)."""
    config = resolve_config(user_config, overrides)
    return run_stages(out, config=config, progress=False if quiet else None)
