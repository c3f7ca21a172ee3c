"""``endd predict``: probabilities and uncertainty of a run's model for a file of raw inputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from endd.deploy._common import (
    check_batch_size,
    check_out_path,
    default_progress,
    load_named_model,
    open_run,
)
from endd.deploy.graph import outputs_of_kind
from endd.deploy.inputs import open_input
from endd.models.kinds import outputs_from_logits
from endd.models.prior import predict_in_batches
from endd.store.artifacts import atomic_path

if TYPE_CHECKING:
    from endd.api import Run

__all__ = ["predict_file"]

log = logging.getLogger("endd")


def predict_file(
    run: str | Path | Run,
    model: str,
    input: str | Path,
    out: str | Path,
    batch_size: int | None = None,
    *,
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` of ``run`` over the raw inputs in ``input`` and write ``out`` (``.npz``).

    Args:
        run: a run directory (or an opened :class:`~endd.api.Run`).
        model: ``"ensemble"`` or a finished student's method name.
        input: ``.npy`` (memory-mapped), ``.npz`` with the array ``x``, or a folder of images
            (see :func:`endd.deploy.inputs.open_input`); raw inputs, the run's standardisation
            is applied by the model.
        out: the ``.npz`` to write, atomically (temporary file, then rename).
        batch_size: inputs per forward pass; default ``trainer.eval_batch_size`` of the run.
        progress: a progress bar on stderr; default only on a terminal.

    Returns:
        What was written, float64: ``probs`` [N, K]; ``alphas`` [N, K] for Prior Networks; those
        of ``total``, ``data``, ``knowledge``, ``epkl``, ``confidence`` [N] the model's kind has
        (EnD students: ``total`` and ``confidence``); for an image folder also ``files`` [N]
        (each row's path relative to the folder).

    Raises:
        EnddError: (one line, nothing written) a missing run, unknown model, unreadable or
            malformed input, NaN/inf inputs, an ``out`` that is a directory or lies in a folder
            that does not exist.
    """
    check_batch_size(batch_size)
    out = check_out_path(out)
    run = open_run(run)
    predictor = load_named_model(run, model)
    input_shape = tuple(predictor.spec["input_shape"])
    source = open_input(input, input_shape)
    batch_size = batch_size or int(run.config["trainer"]["eval_batch_size"])
    names = outputs_of_kind(predictor.kind)
    log.debug(
        "predicting %d inputs of %s with '%s' in batches of %d",
        source.count,
        input,
        model,
        batch_size,
    )

    results: dict[str, np.ndarray] = {}
    bar = None
    if default_progress() if progress is None else progress:
        from tqdm.auto import tqdm  # installed with lightning; imported only when shown

        bar = tqdm(total=source.count, unit="input", desc=f"predict {model}")
    try:
        for start, batch in source.batches(batch_size):
            logits = predict_in_batches(predictor, torch.from_numpy(batch), batch_size)
            outputs = outputs_from_logits(predictor.kind, logits)
            for name in names:
                value = outputs[name].numpy()
                if name not in results:
                    results[name] = np.empty((source.count, *value.shape[1:]), dtype=np.float64)
                results[name][start : start + len(value)] = value
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if source.files is not None:
        results["files"] = np.asarray(source.files, dtype=str)
    with atomic_path(out) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **results)
    log.debug("wrote %s", out)
    return results
