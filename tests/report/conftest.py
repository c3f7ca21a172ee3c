"""A tiny finished run on a bring-your-own ``.npz`` with 2-D inputs, so the report draws every
figure (data, uncertainty maps, OOD ROC curves, training curves)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from endd.config import load_yaml
from endd.pipeline.run import run_config
from endd.store import RunDir
from tiny import TINY_SPIRAL

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session")
def npz_run(tmp_path_factory) -> RunDir:
    """A finished run (report included) on ``data.npz`` beside it: 2-D inputs, 3 classes, an
    auxiliary set and two OOD sets."""
    root = tmp_path_factory.mktemp("npz_run")
    rng = np.random.default_rng(0)

    def blob(n: int, centre: tuple[float, float], scale: tuple[float, float]) -> np.ndarray:
        return (rng.normal(size=(n, 2)) * np.asarray(scale) + np.asarray(centre)).astype("f4")

    x = blob(150, (10.0, -4.0), (3.0, 0.5))  # raw coordinates far from standardised ones
    y = (x[:, 0] > 10).astype(np.int64) + (x[:, 1] > -4)
    np.savez(
        root / "data.npz",
        x_train=x[:100],
        y_train=y[:100],
        x_test=x[100:],
        y_test=y[100:],
        x_aux=blob(60, (10.0, -4.0), (6.0, 6.0)),
        x_ood_far=blob(30, (30.0, 10.0), (1.0, 1.0)),
        x_ood_near=blob(20, (12.0, -2.0), (1.0, 1.0)),
    )
    overrides = [
        *TINY_SPIRAL,  # its spiral keys are dropped by the switch to npz
        "data.name=npz",
        f"data.path={root / 'data.npz'}",
        # one student of each model kind: categorical, dirichlet (with aux data), proxy_dirichlet
        "students.methods=[end, endd_aux, proxy]",
    ]
    return run_config(load_yaml(CONFIGS / "spiral.yaml"), root / "run", overrides, quiet=True)
