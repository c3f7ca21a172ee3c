"""What ``predict`` and ``export`` share: opening a run's model by name, checking ``--out``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from endd.errors import EnddError, RunDirError, did_you_mean

if TYPE_CHECKING:
    from endd.api import Run
    from endd.models.prior import Predictor

log = logging.getLogger("endd")


def open_run(run: str | Path | Run) -> Run:
    """``run`` itself if it is a :class:`~endd.api.Run`, else the run directory opened."""
    from endd.api import Run, load_run

    if isinstance(run, Run):
        return run
    if not Path(run).is_dir():
        raise RunDirError(f"run directory not found: {run}")
    return load_run(run)


def available_models(run: Run) -> list[str]:
    """``ensemble`` (once trained) and every finished student, the names ``--model`` takes."""
    from endd.store import RunDir

    run_dir = RunDir(run.root)
    return [*(["ensemble"] if run_dir.is_done("ensemble") else []), *run_dir.finished_students()]


def load_named_model(run: Run, name: str) -> Predictor:
    """The model ``name`` of ``run``; one-line RunDirError listing the available ones otherwise."""
    available = available_models(run)
    if name not in available:
        raise RunDirError(
            f"unknown model '{name}' in {run.root}; available: "
            f"{', '.join(available) or 'none (no stage has finished yet)'}"
            f"{did_you_mean(name, available)}"
        )
    return run.model(name)


def check_out_path(out: str | Path) -> Path:
    """``out`` as a Path, refused (one line) if it is a directory or its folder does not exist."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise EnddError(f"--out {out} is a directory; give a file name")
    if not out.parent.is_dir():
        raise EnddError(f"--out {out}: folder {out.parent} does not exist")
    return out


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise EnddError(f"batch size must be a positive integer, got {batch_size}")


def default_progress() -> bool:
    """Progress bars only on a terminal and only when INFO messages are shown (as the stages)."""
    return sys.stderr.isatty() and log.isEnabledFor(logging.INFO)
