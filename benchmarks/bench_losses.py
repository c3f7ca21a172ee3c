"""Time the distillation losses (forward + backward) against a plain cross-entropy.

The baseline is what an ordinary classifier pays per batch: ``F.cross_entropy`` of the student
logits [B, K] against the argmax of the ensemble mean. EnD² is timed twice: from the teacher
logits [B, M, K] (its softmax, smoothing and mean over members included), and from the cached
sufficient statistic mean_m ln π_mc [B, K] (``endd_loss_from_mean_log_probs``), which is what a
training loop pays when the statistic is precomputed. EnD and Proxy-Dirichlet are listed for
reference. Measurements are interleaved in rounds, so background load hits every loss alike;
the median and the best round are reported (the best round is the better estimate of the
uncontended cost when other processes share the CPU).

``--lower-bound`` adds a second table: the elementwise work any implementation must do (read the
teacher with one exp per element, and a log per element for ε > 0; one lgamma and one digamma per
student concentration), against the same cross-entropy.

Usage:
    .venv/bin/python benchmarks/bench_losses.py                # B=512, M=10, K=10 and 1000
    .venv/bin/python benchmarks/bench_losses.py --threads 1 --classes 10 100 1000
    .venv/bin/python benchmarks/bench_losses.py --threads 1 --classes 1000 --lower-bound
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

from _machine import cpu_name
from endd.losses import (
    end_loss,
    endd_loss,
    endd_loss_from_mean_log_probs,
    mean_teacher_log_probs,
    proxy_loss,
)
from endd.losses._ops import digamma
from endd.models.allocator import keep_freed_memory


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
    logits, teacher, labels = _problem(batch, members, classes)
    statistic = mean_teacher_log_probs(teacher, temperature=temperature, smoothing=smoothing)
    steps = {
        BASELINE: _forward_backward(lambda z: F.cross_entropy(z, labels), logits),
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
    return _interleaved(steps, rounds)


def bench_lower_bound(
    batch: int, members: int, classes: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """(median, best) seconds of the elementwise work no EnD² implementation can skip.

    From teacher logits the loss must read every teacher element and exponentiate it (softmax),
    and for ε > 0 the smoothed probabilities have no closed-form logarithm; the student needs a
    lnΓ per concentration forward and a ψ backward. Outputs go to preallocated buffers.
    """
    logits, teacher, labels = _problem(batch, members, classes)
    out = torch.empty_like(teacher)
    concentrations = torch.rand(batch, classes) * 5 + 0.1
    student_out = torch.empty_like(concentrations)
    steps = {
        BASELINE: _forward_backward(lambda z: F.cross_entropy(z, labels), logits),
        "teacher: read once (sum)": lambda: teacher.sum(),
        "teacher: exp per element": lambda: torch.exp(teacher, out=out),
        "teacher: exp2 per element": lambda: torch.exp2(teacher, out=out),
        "teacher: exp + log per element": lambda: torch.log(torch.exp(teacher, out=out), out=out),
        "student: lgamma per element": lambda: torch.lgamma(concentrations, out=student_out),
        "student: fast digamma per element": lambda: digamma(concentrations),
    }
    return _interleaved(steps, rounds)


BASELINE = "cross-entropy (baseline)"


def _problem(batch: int, members: int, classes: int):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=generator).requires_grad_(True)
    teacher = torch.randn(batch, members, classes, generator=generator) * 3.0
    labels = torch.softmax(teacher, dim=-1).mean(dim=1).argmax(dim=-1)
    return logits, teacher, labels


def _interleaved(
    steps: dict[str, Callable[[], object]], rounds: int
) -> dict[str, tuple[float, float]]:
    # Size each timing block to ~20 ms of the slowest step, so timer overhead is negligible.
    for step in steps.values():
        step()
    slowest = max(_time_per_call(step, 3) for step in steps.values())
    calls = max(1, int(0.02 / slowest))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():  # interleaved: background load hits every step alike
            samples[name].append(_time_per_call(step, calls))
    return {name: (statistics.median(values), min(values)) for name, values in samples.items()}


def _print_table(classes: int, times: dict[str, tuple[float, float]]) -> None:
    base_median, base_best = times[BASELINE]
    for name, (median, best) in times.items():
        print(
            f"| {classes} | {name} | {median * 1e3:.3f} | {median / base_median:.2f} "
            f"| {best * 1e3:.3f} | {best / base_best:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--smoothing", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    parser.add_argument(
        "--lower-bound",
        action="store_true",
        help="also time the unavoidable elementwise work (exp/log per teacher element, ...)",
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed memory, as endd's CPU training sets it (default: glibc's malloc)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory and not keep_freed_memory():
        raise SystemExit("--keep-freed-memory needs Linux with glibc")

    load_before = os.getloadavg()
    print(f"machine: {platform.platform()}; CPU: {cpu_name()}; {os.cpu_count()} logical cores")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32; "
        f"B={args.batch}, M={args.members}, T={args.temperature}, ε={args.smoothing}; "
        f"{args.rounds} interleaved rounds; "
        f"malloc: {'keeps freed memory' if args.keep_freed_memory else 'glibc default'}"
    )
    print()
    header = "| K | {} | median ms | × CE (median) | best ms | × CE (best) |"
    print(header.format("loss (forward + backward)"))
    print("|---:|---|---:|---:|---:|---:|")
    for classes in args.classes:
        _print_table(
            classes,
            bench(args.batch, args.members, classes, args.temperature, args.smoothing, args.rounds),
        )
    if args.lower_bound:
        print()
        print(header.format("unavoidable work (lower bound)"))
        print("|---:|---|---:|---:|---:|---:|")
        for classes in args.classes:
            _print_table(classes, bench_lower_bound(args.batch, args.members, classes, args.rounds))
    load_after = os.getloadavg()
    print()
    print(
        f"1-minute load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(other processes share these cores)"
    )


if __name__ == "__main__":
    main()
