"""The library changes no process-wide state, at import or per call: only the CLI configures."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import torch

from endd.config import load_yaml
from endd.pipeline.run import run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")


def _state() -> dict:
    return {
        "threads": torch.get_num_threads(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].tobytes(),  # noqa: NPY002
        "torch_rng": torch.random.get_rng_state().numpy().tobytes(),
        "warning_filters": list(warnings.filters),
        "levels": {n: logging.getLogger(n).level for n in ("endd", *LIGHTNING_LOGGERS)},
        "endd_handlers": list(logging.getLogger("endd").handlers),
        "backend": matplotlib.get_backend(),
        "pl_seed": os.environ.get("PL_GLOBAL_SEED"),
    }


def test_a_whole_run_leaves_the_process_as_it_was(tmp_path, tiny_spiral):
    config = load_yaml(CONFIGS / "spiral.yaml")
    assert config["trainer"]["num_threads"] == 1  # the run changes the thread count inside
    overrides = [*tiny_spiral, "students.methods=[end, endd]"]
    # A first run lets third-party modules that load lazily (and set their own warning filters
    # or logger levels on import) do so; the second run must then change nothing.
    run_config(config, tmp_path / "warm-up", overrides, quiet=True)
    torch.set_num_threads(2)
    random.seed(123)
    before = _state()
    run_config(config, tmp_path / "run", [*overrides, "seed=1"], quiet=True)
    assert (tmp_path / "run" / "report.md").is_file()
    after = _state()
    assert after == before, {k for k in before if before[k] != after[k]}


def test_importing_endd_changes_nothing():
    code = (
        "import logging, warnings, matplotlib, torch, lightning.pytorch, scipy.stats, pydantic\n"
        "filters, backend = list(warnings.filters), matplotlib.get_backend()\n"
        "import endd, endd.api, endd.pipeline.run, endd.report, endd.report.figures, endd.cli\n"
        "assert list(warnings.filters) == filters, 'warning filters changed'\n"
        "assert matplotlib.get_backend() == backend, 'matplotlib backend changed'\n"
        "assert not logging.getLogger('endd').handlers, 'endd logger configured'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
