"""Tiny finished runs, built once per session: a spiral run with the EnD, EnD² and Proxy students
and a Fashion-MNIST-format image run (grey 28×28 fakes read as 3 × 12 × 12) with an EnD² student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from endd.config import load_yaml
from endd.data.images import write_fake_dataset
from endd.pipeline.run import run_config
from tiny import TINY_SPIRAL

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_IMAGE_RUN = [
    "ensemble.members=2",
    "ensemble.epochs=1",
    "ensemble.batch_size=32",
    "students.epochs=1",
    "students.batch_size=32",
    "students.methods=[endd]",
    "model.hidden=16",
    "data.ood=[gaussian_noise]",
    "data.ood_size=16",
    "data.aux=null",
    "data.channels=3",
    "data.size=12",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.workers=1",
    "trainer.eval_batch_size=256",
]


@pytest.fixture(scope="session")
def spiral_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "spiral"
    overrides = [*TINY_SPIRAL, "students.methods=[end, endd, proxy]"]
    run_config(load_yaml(CONFIGS / "spiral.yaml"), out, overrides, quiet=True)
    return out


@pytest.fixture(scope="session")
def image_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy-images")
    write_fake_dataset("fashion_mnist", root / "data", num_images=24)
    overrides = [*TINY_IMAGE_RUN, f"data.path={root / 'data'}"]
    run_config(load_yaml(CONFIGS / "fashion_mnist.yaml"), root / "run", overrides, quiet=True)
    return root / "run"


@pytest.fixture(scope="session")
def spiral_inputs(tmp_path_factory) -> Path:
    """Raw 2-D inputs [60, 2] as .npy: on the spirals' scale, and far outside it (large logits)."""
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(scale=200.0, size=(40, 2)), rng.normal(scale=3000.0, size=(20, 2))]
    ).astype(np.float32)
    path = tmp_path_factory.mktemp("deploy-inputs") / "x.npy"
    np.save(path, x)
    return path
