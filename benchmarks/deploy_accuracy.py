"""Accuracy of the exported (float32, elementary-operator) measures against endd's float64 ones.

``endd export`` builds each model's measures into the graph from operators every runtime has
(:mod:`endd.deploy.graph`): no lgamma/digamma operator, a Dirichlet handled in log space. This
script feeds the same logits to that graph and to endd's float64
:func:`endd.models.kinds.outputs_from_logits` and prints, for every model kind and output, the
largest absolute and relative difference over a range of logits:

- ``ensemble``: member logits [N, 10, K];
- ``categorical``, ``dirichlet``, ``proxy_dirichlet``: logits [N, K];

with K ∈ {3, 10, 100, 1000} and logits drawn as shift + scale · N(0, 1) (and one class raised
by a gap, for confident rows) for shifts from −100 to 1000 and scales from 0.01 to 50, which
covers flat and sharp predictions, α₀ from ~1e-40 to the clamp (z ≤ 700) and beyond it.

Both the torch graph (what TorchScript runs) and, when onnxruntime is installed, the graph
exported to ONNX and run by onnxruntime (``pip install 'endd[export]'``) are measured. The
absolute error is taken where |reference| ≤ 1, the relative error where |reference| ≥ 1e-6;
for ``alphas`` and ``epkl`` only where the reference is below float32's maximum (3.4e38; for α
that is z ≤ 88.7), since a float32 output cannot hold more and is ``inf`` there.

Run from the repository root::

    .venv/bin/python benchmarks/deploy_accuracy.py            # table for docs/deploy.md
    .venv/bin/python benchmarks/deploy_accuracy.py --digamma  # + the digamma against torch's
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

import numpy as np
import torch
from torch import nn

from _machine import cpu_name
from endd.deploy.export import _quiet_exporters
from endd.deploy.graph import digamma, graph_outputs, measures_from_logits
from endd.models.kinds import outputs_from_logits

KINDS = ("ensemble", "categorical", "dirichlet", "proxy_dirichlet")
CLASSES = (3, 10, 100, 1000)
SHIFTS = (-100.0, -20.0, 0.0, 20.0, 88.0, 200.0, 699.0, 1000.0)
SCALES = (0.01, 1.0, 5.0, 50.0)
GAPS = (0.0, 10.0, 50.0)
MEMBERS = 10
ROWS = 16
REL_FLOOR = 1e-6
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def sample_logits(kind: str, num_classes: int, seed: int = 0) -> torch.Tensor:
    """float32 logits [N, (M,) K] over every shift × scale × gap."""
    generator = torch.Generator().manual_seed(seed)
    shape = (ROWS, MEMBERS, num_classes) if kind == "ensemble" else (ROWS, num_classes)
    parts = []
    for shift in SHIFTS:
        for scale in SCALES:
            for gap in GAPS:
                z = shift + scale * torch.randn(shape, generator=generator, dtype=torch.float64)
                z[..., 0] += gap
                parts.append(z)
    return torch.cat(parts).float()


class _LogitsGraph(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = measures_from_logits(self.kind, logits)
        return tuple(out[name] for name in graph_outputs(self.kind))


def onnx_runner(kind: str, example: torch.Tensor):
    """A function logits -> dict of outputs through onnxruntime, or None without the extra."""
    try:
        import onnxruntime
    except ImportError:
        return None
    names = graph_outputs(kind)
    batch = torch.export.Dim("batch")
    with tempfile.TemporaryDirectory() as folder, _quiet_exporters():
        path = os.path.join(folder, "graph.onnx")
        torch.onnx.export(
            _LogitsGraph(kind),
            (example,),
            path,
            input_names=["logits"],
            output_names=list(names),
            dynamic_shapes={"logits": {0: batch}},
            external_data=False,
            verbose=False,
        )
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(logits: torch.Tensor) -> dict[str, np.ndarray]:
        values = session.run(list(names), {"logits": logits.numpy()})
        return dict(zip(names, values, strict=True))

    return run


def errors(got: np.ndarray, reference: np.ndarray, name: str) -> tuple[float, float]:
    """Max absolute error where |reference| ≤ 1, max relative error where |reference| ≥ 1e-6
    (for alphas and epkl only where float32 can hold the reference)."""
    got, reference = np.asarray(got, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    keep = np.ones(reference.shape, dtype=bool)
    if name in ("alphas", "epkl"):
        keep = reference <= FLOAT32_MAX
    difference = np.abs(got - reference)[keep]
    size = np.abs(reference)[keep]
    small, relevant = size <= 1.0, size >= REL_FLOOR
    absolute = difference[small].max() if small.any() else 0.0
    relative = (difference[relevant] / size[relevant]).max() if relevant.any() else 0.0
    return float(absolute), float(relative)


def measure(kind: str, runtime: str) -> dict[str, tuple[float, float]]:
    worst: dict[str, tuple[float, float]] = {}
    for num_classes in CLASSES:
        logits = sample_logits(kind, num_classes, seed=num_classes)
        reference = outputs_from_logits(kind, logits)
        if runtime == "torch":
            got = {k: v.numpy() for k, v in measures_from_logits(kind, logits).items()}
        else:
            runner = onnx_runner(kind, logits[:3])
            if runner is None:
                return {}
            got = runner(logits)
        for name, value in got.items():
            if not np.isfinite(value).all() and name not in ("alphas", "epkl"):
                raise AssertionError(f"{kind} {name}: non-finite output on {runtime}")
            abs_err, rel_err = errors(value, reference[name].numpy(), name)
            old = worst.get(name, (0.0, 0.0))
            worst[name] = (max(old[0], abs_err), max(old[1], rel_err))
    return worst


def digamma_table() -> None:
    x64 = torch.logspace(-3, 8, 200_001, dtype=torch.float64)
    x32 = x64.float()
    reference = torch.digamma(x32.double())  # the float32 arguments, evaluated in float64
    print("\nψ(x) on 200 001 log-spaced points in [1e-3, 1e8] (float32 arguments):\n")
    print("rel err: |ψ̃ − ψ| / max(1, |ψ|) against torch.digamma in float64\n")
    print("| implementation | max abs error | max rel err |")
    print("|---|---:|---:|")
    for title, value in (
        ("elementary (endd.deploy.graph.digamma), float32", digamma(x32)),
        ("torch.digamma, float32", torch.digamma(x32)),
    ):
        difference = (value.double() - reference).abs()
        mixed = difference / reference.abs().clamp(min=1.0)
        print(f"| {title} | {difference.max():.1e} | {mixed.max():.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digamma", action="store_true", help="also the digamma table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}",
        end="",
    )
    try:
        import onnxruntime

        print(f", onnxruntime {onnxruntime.__version__}")
    except ImportError:
        print(", onnxruntime not installed (torch graph only)")
    print(
        f"logits: shifts {SHIFTS}, scales {SCALES}, gaps {GAPS}, K {CLASSES}, "
        f"{MEMBERS} members for the ensemble\n"
    )
    print(
        "abs err: max |graph − endd| where |endd| ≤ 1; rel err: max |graph − endd| / |endd| "
        "where |endd| ≥ 1e-6 (alphas, epkl: where float32 holds the value, ≤ 3.4e38)\n"
    )
    print(
        "| kind | output | torch: abs err | torch: rel err "
        "| onnxruntime: abs err | onnxruntime: rel err |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for kind in KINDS:
        torch_errors = measure(kind, "torch")
        onnx_errors = measure(kind, "onnx")
        for name in graph_outputs(kind):
            t = torch_errors[name]
            o = onnx_errors.get(name)
            onnx_cells = f"{o[0]:.1e} | {o[1]:.1e}" if o else "– | –"
            print(f"| {kind} | {name} | {t[0]:.1e} | {t[1]:.1e} | {onnx_cells} |")
    if args.digamma:
        digamma_table()


if __name__ == "__main__":
    main()
