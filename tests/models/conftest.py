"""Model tests run single-threaded: their tensors are tiny, and on a busy shared CPU two OpenMP
threads made some of them a hundred times slower (seconds instead of milliseconds)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
