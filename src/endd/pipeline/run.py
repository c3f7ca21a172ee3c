"""Run the stages in order over a run directory; finished stages are skipped."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from endd.data import DataBundle, load_data
from endd.errors import RunDirError
from endd.pipeline.config import resolve_config
from endd.pipeline.evaluate import evaluate
from endd.pipeline.run_dir import RunDir, torch_threads
from endd.pipeline.stages import (
    cache_teacher,
    distill,
    is_distilled,
    student_methods,
    train_ensemble,
)

STAGES = ("ensemble", "distill", "evaluate", "report")


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def run_stages(
    run_dir: str | Path,
    stages: Iterable[str] = STAGES,
    *,
    config: dict[str, Any] | None = None,
    quiet: bool = False,
    force: bool = False,
) -> RunDir:
    """Run ``stages`` over ``run_dir``.

    Args:
        run_dir: the run directory (created if ``config`` is given).
        stages: any of ``ensemble`` (members + cached teacher logits), ``distill``, ``evaluate``,
            ``report``, in that order.
        config: a resolved config for a new run; None reads ``RUN/config.yaml``.
        quiet: no progress bars or stage messages.
        force: recompute ``evaluate`` and ``report`` even if their outputs exist (training stages
            are never redone: delete their folder to retrain).
    """
    run = RunDir(Path(run_dir))
    new_config = config
    if new_config is not None and run.config_path.is_file():
        run.write_config(new_config)  # refuses a config that differs from the run's
    config = new_config if new_config is not None else run.read_config()
    torch_threads(config)
    wanted = [s for s in STAGES if s in set(stages)]
    # Data problems surface before anything is written, so a failed first attempt does not
    # leave a run directory that then refuses the corrected config.
    data = load_data(config["data"], config["seed"]) if set(wanted) - {"report"} else None
    if new_config is not None:
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_config(new_config)
        config = run.read_config()

    for stage in wanted:
        begin = time.perf_counter()
        if stage == "ensemble":
            _say(f"[ensemble] {config['ensemble']['members']} members on {data.name}", quiet)
            trained = train_ensemble(run, config, data, quiet=quiet)
            cached = cache_teacher(run, config, data)
            state = "done" if trained or cached else "already done, skipped"
        elif stage == "distill":
            if not (run.ensemble / "model.json").is_file():
                raise RunDirError(
                    f"no trained ensemble in {run.root}; run `endd ensemble {run.root}`"
                )
            cache_teacher(run, config, data)
            done = distill_students(run, config, data, quiet=quiet)
            state = "done" if any(done) else "already done, skipped"
        elif stage == "evaluate":
            if run.metrics.is_file() and not force:
                state = "already done, skipped"
            else:
                evaluate(run, config, data)
                state = "done"
        else:
            from endd.report import write_report

            if not run.metrics.is_file():
                raise RunDirError(f"no metrics.json in {run.root}; run `endd evaluate {run.root}`")
            if run.report.is_file() and not force:
                state = "already done, skipped"
            else:
                write_report(run, data=data)
                state = "done"
        _say(f"[{stage}] {state} ({time.perf_counter() - begin:.1f} s)", quiet)
    return run


def distill_workers(config: dict[str, Any], pending: int) -> int:
    """How many students to train at once: one process per core on the CPU (small students
    barely use a second thread), one at a time on accelerators."""
    workers = config["trainer"]["workers"]
    if workers is None:
        on_cpu = config["trainer"]["accelerator"] == "cpu"
        workers = (os.cpu_count() or 1) if on_cpu else 1
    return max(1, min(int(workers), pending))


def distill_students(
    run: RunDir, config: dict[str, Any], data: DataBundle, *, quiet: bool
) -> list[bool]:
    """Train every configured student that is not done yet, in parallel processes if useful."""
    methods = [m for m in student_methods(config, data) if not is_distilled(run, m)]
    workers = distill_workers(config, len(methods))
    if workers <= 1:
        done = []
        for method in methods:
            _say(f"[distill] {method}", quiet)
            done.append(distill(run, config, data, method, quiet=quiet))
        return done
    _say(f"[distill] {', '.join(methods)} in {workers} processes", quiet)
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {
            pool.submit(_distill_worker, str(run.root), method, threads, os.getpid()): method
            for method in methods
        }
        for future in as_completed(futures):
            future.result()  # re-raises a worker's error here
            _say(f"[distill] {futures[future]} done", quiet)
    return [True] * len(methods)


def _distill_worker(root: str, method: str, threads: int, parent: int) -> bool:
    """One student in a worker process. Exits if the parent dies (e.g. SIGKILL), so an orphan
    never keeps writing checkpoints that a resumed run also writes."""
    _exit_with_parent(parent)
    torch.set_num_threads(threads)
    run = RunDir(Path(root))
    config = run.read_config()
    data = load_data(config["data"], config["seed"])
    return distill(run, config, data, method, quiet=True)


def _exit_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_config(
    user_config: dict[str, Any],
    out: str | Path,
    overrides: Iterable[str] = (),
    *,
    quiet: bool = False,
) -> RunDir:
    """Resolve a config (defaults ← file ← overrides) and run every stage into ``out``."""
    return run_stages(out, config=resolve_config(user_config, overrides), quiet=quiet)
