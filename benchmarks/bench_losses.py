"""Time the distillation losses (forward + backward) against a plain cross-entropy.

The baseline is what an ordinary classifier pays per batch: ``F.cross_entropy`` of the student
logits [B, K] against the argmax of the ensemble mean. EnD² is timed twice: from the teacher
logits [B, M, K] (its softmax, smoothing and mean over members included), and from the cached
sufficient statistic mean_m ln π_mc [B, K] (``endd_loss_from_mean_log_probs``), which is what a
training loop pays when the statistic is precomputed. EnD and Proxy-Dirichlet are listed for
reference. Measurements are interleaved in rounds, so background load hits every loss alike;
the median and the best round are reported (the best round is the better estimate of the
uncontended cost when other processes share the CPU).

Usage:
    .venv/bin/python benchmarks/bench_losses.py                # B=512, M=10, K=10 and 1000
    .venv/bin/python benchmarks/bench_losses.py --threads 1 --classes 10 100 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from endd.losses import (
    end_loss,
    endd_loss,
    endd_loss_from_mean_log_probs,
    mean_teacher_log_probs,
    proxy_loss,
)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _time_per_call(step: Callable[[], None], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls


def _forward_backward(loss_of: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor):
    def step() -> None:
        logits.grad = None
        loss_of(logits).backward()

    return step


def bench(
    batch: int, members: int, classes: int, temperature: float, smoothing: float, rounds: int
) -> dict[str, tuple[float, float]]:
    """(median, best) seconds per forward+backward call of each loss for one problem size."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=generator).requires_grad_(True)
    teacher = torch.randn(batch, members, classes, generator=generator) * 3.0
    labels = torch.softmax(teacher, dim=-1).mean(dim=1).argmax(dim=-1)
    statistic = mean_teacher_log_probs(teacher, temperature=temperature, smoothing=smoothing)
    steps = {
        "cross-entropy (baseline)": _forward_backward(lambda z: F.cross_entropy(z, labels), logits),
        "EnD² (teacher logits [B,M,K])": _forward_backward(
            lambda z: endd_loss(z, teacher, temperature=temperature, smoothing=smoothing), logits
        ),
        "EnD² (cached statistic [B,K])": _forward_backward(
            lambda z: endd_loss_from_mean_log_probs(z, statistic, temperature=temperature), logits
        ),
        "EnD (KD to the mean)": _forward_backward(
            lambda z: end_loss(z, teacher, temperature=temperature), logits
        ),
        "Proxy-Dirichlet (reverse KL)": _forward_backward(
            lambda z: proxy_loss(z, teacher, temperature=temperature), logits
        ),
    }
    # Size each timing block to ~20 ms of the slowest step, so timer overhead is negligible.
    for step in steps.values():
        step()
    slowest = max(_time_per_call(step, 3) for step in steps.values())
    calls = max(1, int(0.02 / slowest))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():  # interleaved: background load hits every loss alike
            samples[name].append(_time_per_call(step, calls))
    return {name: (statistics.median(values), min(values)) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--smoothing", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    print(f"machine: {platform.platform()}; CPU: {_cpu_name()}; {os.cpu_count()} logical cores")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32; "
        f"B={args.batch}, M={args.members}, T={args.temperature}, ε={args.smoothing}; "
        f"{args.rounds} interleaved rounds"
    )
    print()
    print("| K | loss (forward + backward) | median ms | × CE (median) | best ms | × CE (best) |")
    print("|---:|---|---:|---:|---:|---:|")
    for classes in args.classes:
        times = bench(
            args.batch, args.members, classes, args.temperature, args.smoothing, args.rounds
        )
        base_median, base_best = times["cross-entropy (baseline)"]
        for name, (median, best) in times.items():
            print(
                f"| {classes} | {name} | {median * 1e3:.3f} | {median / base_median:.2f} "
                f"| {best * 1e3:.3f} | {best / base_best:.2f} |"
            )
    load_after = os.getloadavg()
    print()
    print(
        f"1-minute load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(other processes share these cores)"
    )


if __name__ == "__main__":
    main()
