"""Inference throughput: one distilled student against the ensemble it replaces.

The point of distillation is cost: a student should predict at about M times the ensemble's
rate. Times ``model(x)`` in eval mode under ``torch.no_grad()`` on random inputs for each
(backbone, input shape) below, for the M-member ensemble (one batched module, as endd trains and
serves it) and for a single student of the same backbone, and prints images/s and the ratio
student/ensemble, to compare with M (the issue's target: ≥ 0.8·M).

    .venv/bin/python benchmarks/bench_inference.py [--members 10] [--batch 512] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from endd.models import build_model
from endd.models.allocator import keep_freed_memory

CASES = [
    ("mlp", (2,), 3, {"hidden": [100, 100]}),
    ("small_cnn", (1, 28, 28), 10, {}),
]


@torch.no_grad()
def images_per_second(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> float:
    model.eval()
    model(x)  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"M = {args.members}, batch {args.batch}, median of {args.rounds} rounds\n")
    print("| backbone | input | ensemble img/s | student img/s | student / ensemble | ÷ M |")
    print("|---|---|---:|---:|---:|---:|")
    for name, shape, classes, options in CASES:
        x = torch.randn(args.batch, *shape)
        common = {"num_classes": classes, "input_shape": shape, "seed": 0, **options}
        ensemble = build_model(name, members=args.members, **common)
        student = build_model(name, members=1, **common)
        rate_ensemble = images_per_second(ensemble, x, args.rounds)
        rate_student = images_per_second(student, x, args.rounds)
        ratio = rate_student / rate_ensemble
        print(
            f"| {name} | {'×'.join(map(str, shape))} | {rate_ensemble:,.0f} | "
            f"{rate_student:,.0f} | {ratio:.1f}× | {ratio / args.members:.2f} |"
        )


if __name__ == "__main__":
    main()
