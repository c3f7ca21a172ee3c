"""The teacher-cache stage: member logits [N, M, K] on every split, computed once, as ``.npy``.

Everything downstream (students with a cached teacher, evaluation, the report) reads the teacher
from ``teacher/``, never from where it came from. Today the source is the ensemble this run
trained; other sources (a folder of logits, a user's member checkpoints) fill the same files.
"""

from __future__ import annotations

import time
from typing import Any

from endd.data import DataBundle
from endd.engine import predict_in_batches
from endd.store import RunDir, artifacts
from endd.store.models import load_model


def cache_teacher(run: RunDir, config: dict[str, Any], data: DataBundle) -> None:
    """Run the trained ensemble over every split and cache its logits; ``done.json`` last."""
    start = time.perf_counter()
    ensemble = load_model(run.ensemble)
    shapes = {}
    for split, x in data.unlabelled_splits().items():
        logits = predict_in_batches(ensemble.network, x, config["trainer"]["eval_batch_size"])
        artifacts.write_array(run.teacher / f"{split}.npy", logits.float())
        shapes[split] = list(logits.shape)
    done = {"source": "ensemble", "splits": shapes, "seconds": time.perf_counter() - start}
    artifacts.write_json(run.marker("teacher"), done)
