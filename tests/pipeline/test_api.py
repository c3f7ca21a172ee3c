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


def _members(x: np.ndarray, y: np.ndarray, count: int = 3) -> list[torch.nn.Module]:
    """Small classifiers trained with plain PyTorch on raw inputs, as a user's would be."""
    members = []
    for seed in range(count):
        torch.manual_seed(seed)
        member = torch.nn.Sequential(
            torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )
        optimiser = torch.optim.Adam(member.parameters(), lr=0.05)
        inputs = torch.from_numpy((x - 100.0).astype(np.float32))  # the member's own scaling
        for _ in range(60):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(member(inputs), torch.from_numpy(y)).backward()
            optimiser.step()
        members.append(torch.nn.Sequential(_Shift(-100.0), member).eval())
    return members


class _Shift(torch.nn.Module):
    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return x + self.offset


def test_distill_arrays_from_the_users_members_or_their_logits(tmp_path):
    rng = np.random.default_rng(2)
    x, y = _blobs(150, rng)
    x_test, y_test = _blobs(60, rng)
    members = _members(x, y)
    common = dict(x_test=x_test, y_test=y_test, methods=["endd"], overrides=TINY)
    from_members = endd.distill_arrays(x, y, out=tmp_path / "m", teacher_members=members, **common)
    with torch.no_grad():
        logits = {
            split: torch.stack([m(torch.from_numpy(v)) for m in members], dim=1).numpy()
            for split, v in (("train", x), ("test", x_test))
        }
    from_logits = endd.distill_arrays(x, y, out=tmp_path / "l", teacher_logits=logits, **common)
    a, b = from_members.metrics, from_logits.metrics
    a.pop("timing"), b.pop("timing")
    # endd also ran the members over the 2-D grid, which the user's logits do not cover
    assert set(a["models"]["endd"]["fidelity"]) == {"test", "grid"}
    del a["models"]["endd"]["fidelity"]["grid"]
    assert a == b  # the members ran on the same raw inputs as the user's own call
    assert a["ensemble_size"] == 3 and a["models"]["ensemble"]["error"] < 0.2
    assert not (tmp_path / "m" / "ensemble").exists()  # nothing trained but the student
    with pytest.raises(RunDirError, match="teacher from outside"):
        from_members.ensemble  # noqa: B018


def test_distill_arrays_holds_out_the_teacher_logits_with_the_test_set(tmp_path):
    rng = np.random.default_rng(3)
    x, y = _blobs(100, rng)
    logits = np.stack([np.eye(3)[y] * 4.0 + rng.normal(size=(100, 3)) for _ in range(3)], axis=1)
    run = endd.distill_arrays(
        x, y, teacher_logits={"train": logits}, out=tmp_path / "r", methods=["end"], overrides=TINY
    )
    test = np.load(tmp_path / "r" / "teacher" / "test.npy")
    assert test.shape == (20, 3, 3)  # 20 % held out, with their logits
    assert run.metrics["models"]["ensemble"]["error"] < 0.1
    with pytest.raises(DataError, match="not both"):
        endd.distill_arrays(x, y, teacher_logits={"train": logits}, teacher_members=[])
