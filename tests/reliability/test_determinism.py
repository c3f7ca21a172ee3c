"""The same config gives bit-identical metrics.json (all but its ``timing`` section) whether the
students train one after another in the ``endd`` process (``trainer.workers: 1``) or at once in
a pool of worker processes (``trainer.workers: 2``).

Every student method is trained (the +AUX ones too), for a few epochs of small batches, so that
a difference in seeding, batch order or data between the two paths would show. Threads differ
too: the ``endd`` process uses ``trainer.num_threads`` (1 here); the pool runs with
``trainer.num_threads: null``, so a worker takes ``os.cpu_count() // workers``, with
``os.cpu_count()`` made to say 16: each worker computes with 8 threads, as on a machine bigger
than CI's.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from crashing import command, metrics_without_timing, overrides

METHODS = ("end", "endd", "end_aux", "endd_aux", "proxy")


def _metrics(out, workers: int, env: dict[str, str] | None = None, **more) -> dict:
    sets = overrides(workers, methods=METHODS, students__epochs=5, students__batch_size=32, **more)
    subprocess.run(command(out, sets), check=True, timeout=300, env={**os.environ, **(env or {})})
    return metrics_without_timing(out)


@pytest.mark.slow
def test_one_and_two_student_processes_give_identical_metrics(tmp_path):
    in_process = _metrics(tmp_path / "one", 1)
    assert set(in_process["models"]) == {"individual", "ensemble", *METHODS}

    sixteen = tmp_path / "sixteen_cores"
    sixteen.mkdir()
    (sixteen / "sitecustomize.py").write_text("import os\n\nos.cpu_count = lambda: 16\n")
    path = os.pathsep.join(p for p in (str(sixteen), os.environ.get("PYTHONPATH")) if p)
    pool = _metrics(tmp_path / "two", 2, {"PYTHONPATH": path}, trainer__num_threads="null")
    assert pool == in_process
