"""``endd export``: a run's model as one ONNX or TorchScript file, raw inputs to named outputs.

The file holds the run's standardisation, the network and the model's uncertainty measures
(:mod:`endd.deploy.graph`, elementary operators only), with a dynamic batch axis:

- ONNX: input ``x`` [N, *input_shape] float32; outputs named as in
  :func:`~endd.deploy.graph.graph_outputs`. Needs only onnxruntime (no endd, no torch) to run;
  exporting needs ``pip install 'endd[export]'`` (onnx, onnxscript, onnxruntime). Metadata
  properties ``endd.*`` record the kind, input shape, outputs and endd version.
- TorchScript: ``torch.jit.load(path)(x)`` returns a **dict** {output name: tensor}; needs only
  torch. The same metadata is stored as the extra file ``endd.json``.

Right after exporting, the file is loaded (onnxruntime / ``torch.jit.load``) and run on a batch
of inputs of another size than the one traced, and every output is compared with endd's own
float64 outputs of the model: within 1e-4 (absolute for values up to 1, relative above) or the
export fails and nothing is written. The file is written atomically.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from endd import __version__
from endd.deploy._common import check_out_path, load_named_model, open_run
from endd.deploy.graph import ExportGraph, graph_outputs
from endd.errors import EnddError
from endd.store.artifacts import atomic_path

if TYPE_CHECKING:
    from endd.api import Run
    from endd.models.prior import Predictor

__all__ = ["FORMATS", "PARITY_TOLERANCE", "ExportResult", "ParityError", "export_model"]

log = logging.getLogger("endd")

FORMATS = ("onnx", "torchscript")
#: Largest allowed |exported − endd| / max(1, |endd|) on any output in the parity check.
PARITY_TOLERANCE = 1e-4
#: Inputs traced (the batch axis stays dynamic) and inputs of the parity check: different sizes.
_TRACE_ROWS, _CHECK_ROWS = 3, 16
_ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
#: ONNX files hold at most 2 GiB in one protobuf.
_ONNX_MAX_BYTES = 2**31 - 2**24
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class ParityError(EnddError):
    """The exported file's outputs differ from endd's beyond :data:`PARITY_TOLERANCE`."""


@dataclass(frozen=True)
class ExportResult:
    """What was exported.

    Attributes:
        path: the file written.
        format: ``onnx`` or ``torchscript``.
        kind: the model kind.
        input_shape: one input's shape (the file takes [N, *input_shape]).
        outputs: the output names, in order.
        parity_rows: how many inputs the parity check ran.
        parity_error: per output, max |exported − endd| / max(1, |endd|) on those inputs.
    """

    path: Path
    format: str
    kind: str
    input_shape: tuple[int, ...]
    outputs: tuple[str, ...]
    parity_rows: int
    parity_error: dict[str, float]

    def summary(self) -> str:
        shape = ", ".join(["N", *map(str, self.input_shape)])
        worst = max(self.parity_error.values())
        return (
            f"{self.path} ({self.format}): x [{shape}] → {', '.join(self.outputs)}; "
            f"parity with endd on {self.parity_rows} inputs: max error {worst:.1e} "
            f"(≤ {PARITY_TOLERANCE:g})"
        )


def export_model(run: str | Path | Run, model: str, format: str, out: str | Path) -> ExportResult:
    """Export ``model`` of ``run`` to ``out`` as ``format`` (``onnx`` or ``torchscript``).

    Args:
        run: a run directory (or an opened :class:`~endd.api.Run`).
        model: ``"ensemble"`` (the batched ensemble with its measures) or a finished student.
        format: ``"onnx"`` (needs ``pip install 'endd[export]'``) or ``"torchscript"``.
        out: the file to write (atomically, only once the parity check has passed).

    Returns:
        An :class:`ExportResult` (path, outputs, parity errors).

    Raises:
        EnddError: (one line, nothing written) an unknown format or model, a missing run, an
            ``out`` that is a directory or lies in a folder that does not exist, the ONNX
            packages not installed, a model kind without a graph, a network the exporter cannot
            trace (the exporter's error is chained).
        ParityError: the exported file disagrees with endd (nothing written).
    """
    if format not in FORMATS:
        raise EnddError(f"unknown export format '{format}'; choose onnx or torchscript")
    out = check_out_path(out)
    if format == "onnx":
        missing = [name for name in _ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise EnddError(
                f"exporting to ONNX needs {', '.join(missing)}: pip install 'endd[export]'"
            )
    run = open_run(run)
    predictor = load_named_model(run, model).float().eval()
    try:
        names = graph_outputs(predictor.kind)
    except ValueError as error:
        raise EnddError(str(error)) from None
    input_shape = tuple(int(n) for n in predictor.spec["input_shape"])
    metadata = {
        "endd_version": __version__,
        "model": model,
        "kind": predictor.kind,
        "input": "x",
        "input_shape": ["N", *input_shape],
        "outputs": list(names),
        "num_classes": predictor.spec.get("num_classes"),
        "dataset": predictor.spec.get("dataset"),
    }
    trace_inputs = example_inputs(predictor, _TRACE_ROWS, seed=0)
    check_inputs = example_inputs(predictor, _CHECK_ROWS, seed=1)
    with atomic_path(out) as temporary:
        try:
            with _quiet_exporters():
                if format == "onnx":
                    _write_onnx(predictor, trace_inputs, temporary, metadata)
                else:
                    _write_torchscript(predictor, trace_inputs, temporary, metadata)
        except EnddError:
            raise
        except Exception as error:  # the exporters' own errors span pages: one line (-v: all)
            first = next((line for line in str(error).splitlines() if line.strip()), "")
            raise EnddError(
                f"torch could not export model '{model}' to {format}: "
                f"{type(error).__name__}: {first.strip()[:300]} (rerun with -v for details)"
            ) from error
        errors = check_parity(temporary, format, predictor, check_inputs)
    result = ExportResult(
        out, format, predictor.kind, input_shape, names, len(check_inputs), errors
    )
    log.debug("exported %s", result.summary())
    return result


def example_inputs(predictor: Predictor, rows: int, *, seed: int) -> torch.Tensor:
    """Raw inputs like the training data: mean + std · N(0, 1) of the run's standardisation."""
    shape = (rows, *predictor.spec["input_shape"])
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=generator)
    if predictor.mean is None:
        return noise
    return predictor.mean.float() + predictor.std.float() * noise


def _write_onnx(
    predictor: Predictor, example: torch.Tensor, path: Path, metadata: dict[str, object]
) -> None:
    graph = ExportGraph(predictor, as_tuple=True).eval()
    size = sum(t.numel() * t.element_size() for t in [*graph.parameters(), *graph.buffers()])
    if size > _ONNX_MAX_BYTES:
        raise EnddError(
            f"the model's weights ({size / 2**30:.1f} GiB) exceed what one ONNX file holds "
            "(2 GiB); use --format torchscript"
        )
    program = torch.onnx.export(
        graph,
        (example,),
        None,
        input_names=["x"],
        output_names=list(graph.names),
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    for key, value in metadata.items():
        program.model.metadata_props[f"endd.{key}"] = json.dumps(value)
    program.save(str(path), external_data=False)


def _write_torchscript(
    predictor: Predictor, example: torch.Tensor, path: Path, metadata: dict[str, object]
) -> None:
    graph = ExportGraph(predictor).eval()
    # Saved parameters keep their requires_grad: frozen, the loaded module's outputs convert to
    # NumPy directly (the caller's model gets its flags back).
    flags = [(parameter, parameter.requires_grad) for parameter in graph.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        with torch.no_grad():
            traced = torch.jit.trace(graph, (example,), strict=False, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"endd.json": json.dumps(metadata)})
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def run_exported(path: Path, format: str, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Outputs of an exported file on raw inputs ``x``, by name, as NumPy arrays."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        values = session.run(names, {"x": x.numpy()})
        return dict(zip(names, values, strict=True))
    with warnings.catch_warnings():  # torch.jit is deprecated in torch 2.13, still supported
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return {name: value.numpy() for name, value in module(x).items()}


def parity_errors(
    exported: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> dict[str, float]:
    """Per output: max |exported − reference| / max(1, |reference|) (inf on a shape mismatch,
    a missing output, or a non-finite value where float32 could hold the reference)."""
    errors = {}
    for name, expected in reference.items():
        got = exported.get(name)
        if got is None or got.shape != expected.shape:
            errors[name] = math.inf
            continue
        got = got.astype(np.float64)
        representable = np.abs(expected) <= _FLOAT32_MAX  # beyond: float32 holds only inf
        if not (np.isinf(got[~representable]).all() and np.isfinite(got[representable]).all()):
            errors[name] = math.inf
            continue
        difference = np.abs(got - expected)[representable]
        scale = np.maximum(1.0, np.abs(expected[representable]))
        errors[name] = float((difference / scale).max()) if difference.size else 0.0
    return errors


def check_parity(
    path: Path, format: str, predictor: Predictor, x: torch.Tensor
) -> dict[str, float]:
    """Run the exported file on ``x`` and compare every output with endd's; ParityError if
    any differs by more than :data:`PARITY_TOLERANCE`."""
    from endd.models.kinds import outputs_from_logits
    from endd.models.prior import predict_in_batches

    names = graph_outputs(predictor.kind)
    outputs = outputs_from_logits(predictor.kind, predict_in_batches(predictor, x, len(x)))
    reference = {name: outputs[name].numpy() for name in names}
    errors = parity_errors(run_exported(path, format, x), reference)
    bad = {name: error for name, error in errors.items() if not error <= PARITY_TOLERANCE}
    if bad:
        listed = ", ".join(f"{name} {error:.1e}" for name, error in bad.items())
        raise ParityError(
            f"the exported {format} file disagrees with endd on {len(x)} inputs beyond "
            f"{PARITY_TOLERANCE:g} ({listed}); nothing was written"
        )
    return errors


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' chatter (deprecation and tracer warnings, torch.onnx's progress
    lines and log messages) for this call only; the logger levels are restored afterwards."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
