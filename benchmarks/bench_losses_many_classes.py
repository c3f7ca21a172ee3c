"""Many classes: time and peak memory per forward + backward step of each loss, K = 10 … 1000.

For every K (default 10, 100, 1000) at B = 256, M = 10, one table row per loss:

- **time**: forward + backward of one step, best and median over interleaved rounds (background
  load hits every loss alike), in ms and as a multiple of the cross-entropy baseline (the best
  round is the better estimate of the uncontended cost on a shared CPU);
- **peak**: the most bytes held by tensors allocated during one step, above what was allocated
  before it. On CPU from torch's profiler (``profile_memory=True``): its allocation events carry
  the running total of the CPU allocator, whose maximum minus the total before the step is the
  peak (the inputs — student logits, teacher logits [B, M, K], the cached statistic — exist
  before the step and are not counted). On CUDA, ``torch.cuda.max_memory_allocated`` minus
  ``torch.cuda.memory_allocated`` before the step;
- **largest tensor allocated**: the most elements of any tensor an op allocated during the step
  (views and in-place results share an input's storage and are skipped; the test
  ``tests/test_losses_memory.py`` bounds those too), from a ``TorchDispatchMode`` that sees every
  aten op, the autograd engine's included; as a multiple of B·M·K, the size of the teacher
  logits. A tensor of B·K·K elements would be K / M times the teacher (100× at K = 1000).

Losses: cross-entropy (the baseline: student logits against the argmax of the ensemble mean), EnD
(KD to the ensemble mean), EnD² from the teacher logits [B, M, K], EnD² from the cached
statistic mean_m ln π_mc [B, K], Proxy-Dirichlet (reverse KL, the default).

Usage:
    .venv/bin/python benchmarks/bench_losses_many_classes.py --threads 1
    .venv/bin/python benchmarks/bench_losses_many_classes.py --device cuda   # on a GPU
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
from torch.profiler import ProfilerActivity, profile
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from _machine import cpu_name
from endd.losses import (
    end_loss,
    endd_loss,
    endd_loss_from_mean_log_probs,
    mean_teacher_log_probs,
    proxy_loss,
)

BASELINE = "cross-entropy (baseline)"
MIB = 1024.0 * 1024.0


class LargestTensor(TorchDispatchMode):
    """The most elements of any tensor an op allocates (every aten op; views and in-place results,
    whose storage is an input's, allocate nothing and are skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0
        self.op = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            leaf.untyped_storage().data_ptr()
            for leaf in pytree.tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor)
        }
        for tensor in pytree.tree_leaves(out):
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.numel() > self.elements
                and tensor.untyped_storage().data_ptr() not in inputs
            ):
                self.elements = tensor.numel()
                self.op = f"{func}{tuple(tensor.shape)}"
        return out


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _problem(batch: int, members: int, classes: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=generator).to(device).requires_grad_(True)
    teacher = (torch.randn(batch, members, classes, generator=generator) * 3.0).to(device)
    labels = torch.softmax(teacher, dim=-1).mean(dim=1).argmax(dim=-1)
    return logits, teacher, labels


def _steps(
    logits: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    smoothing: float,
) -> dict[str, Callable[[], None]]:
    statistic = mean_teacher_log_probs(teacher, temperature=temperature, smoothing=smoothing)
    losses: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        BASELINE: lambda z: F.cross_entropy(z, labels),
        "EnD (KD to the mean)": lambda z: end_loss(z, teacher, temperature=temperature),
        "EnD² (teacher logits [B,M,K])": lambda z: endd_loss(
            z, teacher, temperature=temperature, smoothing=smoothing
        ),
        "EnD² (cached statistic [B,K])": lambda z: endd_loss_from_mean_log_probs(
            z, statistic, temperature=temperature
        ),
        "Proxy-Dirichlet (reverse KL)": lambda z: proxy_loss(z, teacher, temperature=temperature),
    }

    def forward_backward(loss_of: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            logits.grad = None
            loss_of(logits).backward()

        return step

    return {name: forward_backward(loss_of) for name, loss_of in losses.items()}


def _time_per_call(step: Callable[[], None], calls: int, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / calls


def _times(
    steps: dict[str, Callable[[], None]], rounds: int, device: torch.device
) -> dict[str, tuple[float, float]]:
    """(median, best) seconds per step; rounds interleaved, each block ~20 ms of the slowest."""
    for step in steps.values():
        step()
    slowest = max(_time_per_call(step, 3, device) for step in steps.values())
    calls = max(1, int(0.02 / slowest))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            samples[name].append(_time_per_call(step, calls, device))
    return {name: (statistics.median(values), min(values)) for name, values in samples.items()}


def _events(nodes):
    for node in nodes:
        yield node
        yield from _events(node.children)


def _peak_bytes_cpu(step: Callable[[], None]) -> int:
    """Peak of the CPU allocator's running total during one step, above its value before."""
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations = sorted(
        (
            event
            for event in _events(prof.profiler.kineto_results.experimental_event_tree())
            if event.tag == _EventType.Allocation
        ),
        key=lambda event: event.start_time_ns,
    )
    if not allocations:
        return 0
    first = allocations[0].extra_fields
    before = first.total_allocated - first.alloc_size
    return max(event.extra_fields.total_allocated for event in allocations) - before


def _peak_bytes_cuda(step: Callable[[], None], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _memory(
    steps: dict[str, Callable[[], None]], logits: torch.Tensor, device: torch.device
) -> dict[str, tuple[int, int, str]]:
    """(peak bytes, largest allocated tensor's elements, the op that made it) of each loss's step.

    The student's gradient of the previous step is freed before the measured step (it was
    allocated before the profiler started), and the step allocates its own.
    """
    result = {}
    for name, step in steps.items():
        step()  # warm: lazily initialised state is not the step's
        logits.grad = None
        peak = _peak_bytes_cuda(step, device) if device.type == "cuda" else _peak_bytes_cpu(step)
        recorder = LargestTensor()
        with recorder:
            step()
        result[name] = (peak, recorder.elements, recorder.op)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--smoothing", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument(
        "--show-ops", action="store_true", help="also print the op that made the largest tensor"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    load_before = os.getloadavg()
    print(f"machine: {platform.platform()}; CPU: {cpu_name()}; {os.cpu_count()} logical cores")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    peak_source = (
        "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "torch.profiler (profile_memory=True), CPU allocator total"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; device {device}; float32; "
        f"B={args.batch}, M={args.members}, T={args.temperature}, ε={args.smoothing} (EnD²); "
        f"best of {args.rounds} interleaved rounds; peak memory per step: {peak_source}; "
        f"largest tensor: TorchDispatchMode over every op"
    )
    print()
    print(
        "| K | loss (forward + backward) | best ms | × CE (best) | median ms | peak MiB per step "
        "| largest tensor allocated (elements) | ÷ B·M·K |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    ops = []
    for classes in args.classes:
        logits, teacher, labels = _problem(args.batch, args.members, classes, device)
        steps = _steps(logits, teacher, labels, args.temperature, args.smoothing)
        times = _times(steps, args.rounds, device)
        memory = _memory(steps, logits, device)
        teacher_elements = args.batch * args.members * classes
        base_best = times[BASELINE][1]
        for name, (median, best) in times.items():
            peak, largest, op = memory[name]
            print(
                f"| {classes} | {name} | {best * 1e3:.3f} | {best / base_best:.2f} "
                f"| {median * 1e3:.3f} | {peak / MIB:.2f} | {largest:,} "
                f"| {largest / teacher_elements:.2f} |"
            )
            ops.append(f"K={classes} {name}: {op}")
    print()
    print(
        "For scale: the teacher logits [B, M, K] are "
        + ", ".join(
            f"{args.batch * args.members * k * 4 / MIB:.2f} MiB (K={k})" for k in args.classes
        )
        + "; a [B, K, K] float32 tensor would be "
        + ", ".join(f"{args.batch * k * k * 4 / MIB:,.1f} MiB (K={k})" for k in args.classes)
        + "."
    )
    if args.show_ops:
        print()
        print("\n".join(ops))
    load_after = os.getloadavg()
    print(
        f"1-minute load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(other processes share these cores)"
    )


if __name__ == "__main__":
    main()
