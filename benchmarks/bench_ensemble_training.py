"""Batched versus sequential ensemble training on the CPU.

Times the same training work two ways and prints a table:

- (a) 10 MLP members 2-100-100-3 on 3000 2-D points (the spiral experiment's size);
- (b) 10 small-CNN members on 28×28 one-channel random images (Fashion-MNIST's size);

each with batch 128 and Adam (fused, as the engine uses it). *Sequential* trains member 1 for N
steps, then member 2, and so on (each member an ``nn.Module`` with its own Adam). *Batched* trains
all members at once as one :class:`endd.models.BatchedEnsemble` for N steps, with the
cross-entropy summed over members; "shared batch" feeds every member the same batch, "own
batches" a different batch per member (``per_member_inputs=True``), as when each member shuffles
the data itself. Every variant runs ``--rounds`` times, interleaved with the others, after one
warm-up run; the table shows the median and the best round (the CPU is shared, and the best
round is the least disturbed one). glibc is told to keep freed memory unless
``--glibc-default`` (see :mod:`endd.models.allocator`). "released every N steps" is the shared
batch variant with the heap's free pages handed back after ``--release-every`` steps and at
least ``--release-seconds`` (counted across runs), as endd's training loop does
(:class:`endd.engine.trainer.ReleaseFreedMemory`): its cost is the page faults of the step after
each release.

A second table bounds what batching could gain: the matmul and convolution FLOPs of one member's
training step (``torch.utils.flop_counter``), the rate the sequential variant achieves, and the
rate of one large dense matmul (2048³ float32) on the same threads. Batching rearranges the same
arithmetic, so unless it runs faster than a dense matmul its speed-up over sequential is at most
the ratio of the two rates.

Run from the repository root::

    .venv/bin/python benchmarks/bench_ensemble_training.py

The CPU is shared: check ``uptime`` first; the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from _machine import cpu_name
from endd.models import build_model
from endd.models.allocator import keep_freed_memory, release_freed_memory

MEMBERS = 10


def batches(
    generator: torch.Generator, size: int, steps: int, count: int, batch: int
) -> torch.Tensor:
    """``[steps, count, batch]`` random example indices (``count`` independent batches a step)."""
    return torch.randint(0, size, (steps, count, batch), generator=generator)


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over members of each member's mean cross-entropy; logits ``[B, M, K]``, labels ``[B]``
    or ``[B, M]``."""
    batch, members, classes = logits.shape
    if labels.dim() == 1:
        labels = labels[:, None].expand(batch, members)
    return F.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1)) * members


def adam(parameters) -> torch.optim.Optimizer:
    """Adam as the engine makes it: the fused kernel where the device has one."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=1e-3, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(parameters, lr=1e-3)


def sequential_run(build: Callable, x, y, indices) -> Callable[[], None]:
    members = [build(seed=member) for member in range(MEMBERS)]
    optimisers = [adam(member.parameters()) for member in members]

    def run() -> None:
        for index, (member, optimiser) in enumerate(zip(members, optimisers, strict=True)):
            for step in range(indices.shape[0]):
                batch = indices[step, index % indices.shape[1]]
                optimiser.zero_grad(set_to_none=True)
                F.cross_entropy(member(x[batch]), y[batch]).backward()
                optimiser.step()

    return run


def batched_run(
    build: Callable, x, y, indices, own_batches: bool, release: tuple[int, float] | None = None
) -> Callable[[], None]:
    ensemble = build(seed=0, members=MEMBERS)
    optimiser = adam(ensemble.parameters())
    since = {"steps": 0, "time": time.monotonic()}

    def run() -> None:
        for step in range(indices.shape[0]):
            since["steps"] += 1
            if release and since["steps"] >= release[0]:
                if time.monotonic() - since["time"] >= release[1]:
                    release_freed_memory()
                    since.update(steps=0, time=time.monotonic())
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


def workload(
    model: str, x, y, steps: int, batch: int, options: dict, release: tuple[int, float]
) -> dict[str, Callable]:
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
    shared = batches(generator, len(x), steps, 1, batch)
    own = batches(generator, len(x), steps, MEMBERS, batch)
    return {
        "sequential": sequential_run(build, x, y, own),
        "batched, shared batch": batched_run(build, x, y, shared, own_batches=False),
        "batched, own batches": batched_run(build, x, y, own, own_batches=True),
        f"batched, shared batch, released ≥ {release[0]} steps and ≥ {release[1]:g} s apart": (
            batched_run(build, x, y, shared, own_batches=False, release=release)
        ),
    }


def step_flops(model: str, x, y, batch: int, options: dict) -> int:
    """Matmul/convolution FLOPs of one member's training step (forward + backward)."""
    member = build_model(
        model, num_classes=int(y.max()) + 1, input_shape=tuple(x.shape[1:]), **options
    )
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(member(x[:batch]), y[:batch]).backward()
    return counter.get_total_flops()


def dense_matmul_rate(size: int = 2048, rounds: int = 5) -> float:
    """FLOP/s of the best of ``rounds`` float32 ``size``³ matmuls (after a warm-up)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(rounds))
    return 2 * size**3 / best


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def time_variants(variants: dict[str, Callable], rounds: int) -> dict[str, list[float]]:
    """Seconds per run of each variant, over ``rounds`` interleaved rounds after a warm-up."""
    for run in variants.values():  # warm-up: allocator, oneDNN kernel selection
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlp-steps", type=int, default=200, help="MLP steps per member and run")
    parser.add_argument("--cnn-steps", type=int, default=4, help="CNN steps per member and run")
    parser.add_argument("--batch", type=int, default=128, help="examples per member and step")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed runs per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--only", choices=("mlp", "cnn"), default=None, help="run one workload (default: both)"
    )
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's malloc as is (default: endd.models.allocator.keep_freed_memory)",
    )
    parser.add_argument(
        "--release-every",
        type=int,
        default=32,
        help="least steps between releases of freed memory in the last variant (endd's: 32)",
    )
    parser.add_argument(
        "--release-seconds",
        type=float,
        default=1.0,
        help="least seconds between releases in the last variant (endd's: 1)",
    )
    args = parser.parse_args(argv)
    if args.release_every < 1 or args.release_seconds < 0:
        parser.error("--release-every must be >= 1 and --release-seconds >= 0")
    release = (args.release_every, args.release_seconds)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False if args.glibc_default else keep_freed_memory()
    torch.manual_seed(0)

    workloads: dict[str, tuple[int, dict[str, Callable]]] = {}
    flops: dict[str, int] = {}
    if args.only in (None, "mlp"):
        points, labels = torch.randn(3000, 2), torch.randint(0, 3, (3000,))
        name = f"(a) {MEMBERS}× MLP 2-100-100-3, 3000 points"
        variants = workload(
            "mlp",
            points,
            labels,
            args.mlp_steps,
            args.batch,
            {"hidden": (100, 100)},
            release,
        )
        workloads[name] = (args.mlp_steps, variants)
        flops[name] = step_flops("mlp", points, labels, args.batch, {"hidden": (100, 100)})
    if args.only in (None, "cnn"):
        images, labels = torch.randn(3000, 1, 28, 28), torch.randint(0, 10, (3000,))
        name = f"(b) {MEMBERS}× small CNN, 28×28"
        workloads[name] = (
            args.cnn_steps,
            workload("small_cnn", images, labels, args.cnn_steps, args.batch, {}, release),
        )
        flops[name] = step_flops("small_cnn", images, labels, args.batch, {})

    load_before = os.getloadavg()
    results = {
        name: time_variants(variants, args.rounds) for name, (_, variants) in workloads.items()
    }
    matmul_rate = dense_matmul_rate()
    load_after = os.getloadavg()

    print(
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), python {sys.version.split()[0]}; "
        f"malloc: {'glibc keeping freed memory (M_MMAP_MAX=0)' if tuned else 'glibc default'}"
    )
    print(
        f"batch {args.batch} per member, {args.rounds} interleaved rounds after a warm-up; "
        f"1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n"
    )
    print(
        "| workload | variant | ms/step median | ms/step best | examples/s (median) "
        "| speed-up median | speed-up best |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, timings in results.items():
        steps = workloads[name][0]
        sequential_median = statistics.median(timings["sequential"])
        sequential_best = min(timings["sequential"])
        for variant, seconds in timings.items():
            median, best = statistics.median(seconds), min(seconds)
            print(
                f"| {name} | {variant} | {median / steps * 1e3:.2f} | {best / steps * 1e3:.2f} | "
                f"{MEMBERS * args.batch * steps / median:,.0f} | "
                f"{sequential_median / median:.2f}× | {sequential_best / best:.2f}× |"
            )

    print(f"\ndense float32 matmul 2048³: {matmul_rate / 1e9:.0f} GFLOP/s\n")
    print(
        "| workload | matmul+conv FLOP per member step | sequential GFLOP/s (best) "
        "| share of dense matmul | batching speed-up ceiling |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, timings in results.items():
        steps = workloads[name][0]
        rate = flops[name] * MEMBERS * steps / min(timings["sequential"])
        print(
            f"| {name} | {flops[name] / 1e6:,.0f} M | {rate / 1e9:.1f} | "
            f"{rate / matmul_rate:.0%} | {matmul_rate / rate:.1f}× |"
        )


if __name__ == "__main__":
    main()
