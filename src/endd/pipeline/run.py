"""Run the stages in order over a run directory; finished stages are skipped."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from endd.data import load_data
from endd.errors import RunDirError
from endd.pipeline.config import resolve_config
from endd.pipeline.evaluate import evaluate
from endd.pipeline.run_dir import RunDir, torch_threads
from endd.pipeline.stages import cache_teacher, distill, student_methods, train_ensemble

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
    if config is not None:
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_config(config)
    config = run.read_config()
    torch_threads(config)
    wanted = [s for s in STAGES if s in set(stages)]
    data = load_data(config["data"], config["seed"]) if set(wanted) - {"report"} else None

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
            done = []
            for method in student_methods(config, data):
                _say(f"[distill] {method}", quiet)
                done.append(distill(run, config, data, method, quiet=quiet))
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


def run_config(
    user_config: dict[str, Any],
    out: str | Path,
    overrides: Iterable[str] = (),
    *,
    quiet: bool = False,
) -> RunDir:
    """Resolve a config (defaults ← file ← overrides) and run every stage into ``out``."""
    return run_stages(out, config=resolve_config(user_config, overrides), quiet=quiet)
