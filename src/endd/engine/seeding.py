"""Seeded training without touching the caller's random state."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside: Python's, NumPy's and torch's generators (CPU and every CUDA device) seeded with
    ``seed``, as Lightning's ``seed_everything`` seeds them; on exit the caller's states are
    restored, so a library call leaves a notebook's random streams where they were."""
    # NumPy's legacy global generator is what seed_everything seeds and what user code may use.
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)  # noqa: NPY002
