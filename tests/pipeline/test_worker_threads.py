"""Torch threads of a student worker process: trainer.num_threads when set, else a share of the
cores."""

from __future__ import annotations

import os

from endd.pipeline.run import worker_threads


def test_num_threads_is_kept_in_the_workers(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert worker_threads({"num_threads": 1}, 2) == 1
    assert worker_threads({"num_threads": 3}, 8) == 3
    assert worker_threads({"num_threads": None}, 2) == 8  # the cores shared out
    assert worker_threads({"num_threads": None}, 32) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one each
    assert worker_threads({"num_threads": None}, 2) == 1
