"""The notebook API: train from arrays, load a run, predict on raw inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import endd
from endd.errors import DataError, RunDirError

TINY = {
    "ensemble.members": 3,
    "ensemble.epochs": 3,
    "students.epochs": 3,
    "model.hidden": [16],
    "trainer.workers": 1,
}


def _blobs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 3
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    return (centres[y] + rng.normal(size=(n, 2)) + 100.0).astype(np.float32), y


def test_distill_arrays_then_load_and_predict(tmp_path):
    rng = np.random.default_rng(0)
    x, y = _blobs(150, rng)
    run = endd.distill_arrays(
        x,
        y,
        x_aux=x[:30] * 1.5,
        x_ood={"far": x[:20] + 50},
        out=tmp_path / "arr",
        methods=["endd", "endd_aux", "end"],
        overrides=TINY | {"ensemble.epochs": 60, "ensemble.lr": 0.02},
    )
    assert set(run.metrics["models"]) == {"individual", "ensemble", "endd", "endd_aux", "end"}
    loaded = endd.load_run(tmp_path / "arr")
    prior = loaded.students["endd"]
    assert isinstance(prior, endd.PriorNetwork) and prior.kind == "dirichlet"
    assert loaded.students["end"].kind == "categorical"
    assert not isinstance(loaded.students["end"], endd.PriorNetwork)
    out = prior.predict(x[:7])  # raw, unstandardised inputs
    assert out["probs"].shape == (7, 3) and out["alphas"].shape == (7, 3)
    assert torch.allclose(out["probs"].sum(-1), torch.ones(7, dtype=torch.float64))
    assert torch.allclose(out["total"], out["data"] + out["knowledge"])
    ens = loaded.ensemble.predict(x[:7])
    assert ens["member_probs"].shape == (7, 3, 3)
    # the test split was held out of the training data (20 %)
    assert run.metrics["models"]["ensemble"]["error"] < 0.2


def test_predict_checks_the_input_shape(tmp_path):
    rng = np.random.default_rng(1)
    x, y = _blobs(60, rng)
    run = endd.distill_arrays(
        x, y, x_test=x, y_test=y, out=tmp_path / "r", methods=["endd"], overrides=TINY
    )
    with pytest.raises(ValueError, match=r"inputs must be \[N, 2\]"):
        run.students["endd"].predict(np.zeros((4, 3)))
    with pytest.raises(RunDirError, match="no finished model 'proxy'"):
        run.model("proxy")


def test_distill_arrays_argument_errors(tmp_path):
    with pytest.raises(DataError, match="both x_test and y_test"):
        endd.distill_arrays(np.zeros((4, 2)), np.zeros(4), x_test=np.zeros((2, 2)))
