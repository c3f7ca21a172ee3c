"""Batched versus sequential ensemble training on the CPU.

Times the same training work two ways and prints a table:

- (a) 10 MLP members 2-100-100-3 on 3000 2-D points (the spiral experiment's size);
- (b) 10 small-CNN members on 28×28 one-channel random images (Fashion-MNIST's size);

each with batch 128 and Adam. *Sequential* trains member 1 for N steps, then member 2, and so on
(each member an ``nn.Module`` with its own Adam). *Batched* trains all members at once as one
:class:`endd.models.BatchedEnsemble` for N steps, with the cross-entropy summed over members;
"shared batch" feeds every member the same batch, "own batches" a different batch per member
(``per_member_inputs=True``), as when each member shuffles the data itself. Every variant runs
``--repeats`` times, interleaved, and the table shows the median.

Run from the repository root::

    .venv/bin/python benchmarks/bench_ensemble_training.py

The CPU is shared: check ``uptime`` first; the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from endd.models import build_model

MEMBERS = 10
BATCH = 128


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory instead of unmapping it (``M_MMAP_MAX = 0``).

    A batched ensemble's activations are M times larger than one member's; glibc serves such
    blocks with ``mmap`` and returns them on free, so every step page-faults them in again. With
    this setting the batched CNN step ran ~1.8× faster here; the sequential one barely changed.
    """
    libc_name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name)
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))


def batches(generator: torch.Generator, size: int, steps: int, count: int) -> torch.Tensor:
    """``[steps, count, BATCH]`` random example indices (``count`` independent batches a step)."""
    return torch.randint(0, size, (steps, count, BATCH), generator=generator)


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over members of each member's mean cross-entropy; logits ``[B, M, K]``, labels ``[B]``
    or ``[B, M]``."""
    batch, members, classes = logits.shape
    if labels.dim() == 1:
        labels = labels[:, None].expand(batch, members)
    return F.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1)) * members


def sequential_run(build: Callable, x, y, indices) -> Callable[[], None]:
    members = [build(seed=member) for member in range(MEMBERS)]
    optimisers = [torch.optim.Adam(member.parameters(), lr=1e-3) for member in members]

    def run() -> None:
        for index, (member, optimiser) in enumerate(zip(members, optimisers, strict=True)):
            for step in range(indices.shape[0]):
                batch = indices[step, index % indices.shape[1]]
                optimiser.zero_grad(set_to_none=True)
                F.cross_entropy(member(x[batch]), y[batch]).backward()
                optimiser.step()

    return run


def batched_run(build: Callable, x, y, indices, own_batches: bool) -> Callable[[], None]:
    ensemble = build(seed=0, members=MEMBERS)
    optimiser = torch.optim.Adam(ensemble.parameters(), lr=1e-3)

    def run() -> None:
        for step in range(indices.shape[0]):
            optimiser.zero_grad(set_to_none=True)
            if own_batches:
                batch = indices[step]  # [M, B]
                logits = ensemble(x[batch], per_member_inputs=True)
                loss = summed_cross_entropy(logits, y[batch].T)
            else:
                batch = indices[step, 0]
                loss = summed_cross_entropy(ensemble(x[batch]), y[batch])
            loss.backward()
            optimiser.step()

    return run


def workload(name: str, model: str, x, y, steps: int, options: dict) -> dict[str, Callable]:
    classes = int(y.max()) + 1
    input_shape = tuple(x.shape[1:])

    def build(seed: int, members: int = 1):
        return build_model(
            model,
            num_classes=classes,
            input_shape=input_shape,
            members=members,
            seed=seed,
            **options,
        )

    generator = torch.Generator().manual_seed(0)
    shared = batches(generator, len(x), steps, 1)
    own = batches(generator, len(x), steps, MEMBERS)
    return {
        "sequential": sequential_run(build, x, y, own),
        "batched, shared batch": batched_run(build, x, y, shared, own_batches=False),
        "batched, own batches": batched_run(build, x, y, own, own_batches=True),
    }


def time_variants(variants: dict[str, Callable], repeats: int) -> dict[str, float]:
    for run in variants.values():  # warm-up: allocator, oneDNN kernel selection
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlp-steps", type=int, default=200, help="training steps per member")
    parser.add_argument("--cnn-steps", type=int, default=6, help="training steps per member")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's malloc as is (default: keep freed memory, see keep_freed_memory)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False if args.glibc_default else keep_freed_memory()
    torch.manual_seed(0)

    points = torch.randn(3000, 2)
    point_labels = torch.randint(0, 3, (3000,))
    images = torch.randn(3000, 1, 28, 28)
    image_labels = torch.randint(0, 10, (3000,))
    workloads = {
        f"(a) {MEMBERS}× MLP 2-100-100-3, {args.mlp_steps} steps": workload(
            "mlp", "mlp", points, point_labels, args.mlp_steps, {"hidden": (100, 100)}
        ),
        f"(b) {MEMBERS}× small CNN 28×28, {args.cnn_steps} steps": workload(
            "cnn", "small_cnn", images, image_labels, args.cnn_steps, {}
        ),
    }

    load_before = os.getloadavg()
    results = {name: time_variants(variants, args.repeats) for name, variants in workloads.items()}
    load_after = os.getloadavg()

    print(
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), python {sys.version.split()[0]}, "
        f"malloc: {'glibc, freed memory kept (M_MMAP_MAX=0)' if tuned else 'glibc default'}"
    )
    print(
        "load average (1 min) before/after: "
        f"{load_before[0]:.2f} / {load_after[0]:.2f}; median of {args.repeats} runs\n"
    )
    print("| workload | variant | ms per step (all members) | images/s | speed-up |")
    print("|---|---|---:|---:|---:|")
    for name, timings in results.items():
        steps = args.mlp_steps if "MLP" in name else args.cnn_steps
        for variant, seconds in timings.items():
            per_step = seconds / steps
            print(
                f"| {name} | {variant} | {per_step * 1e3:.2f} | "
                f"{MEMBERS * BATCH / per_step:,.0f} | "
                f"{timings['sequential'] / seconds:.2f}× |"
            )


if __name__ == "__main__":
    main()
