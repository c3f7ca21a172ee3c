"""EnD² student steps with the teacher statistic once per temperature versus every step.

With a cached teacher, EnD² needs only mean_m ln π_mc (π_m = smoothed softmax(t_m / T)); while
the temperature schedule holds T, ``StudentModule`` computes it once for the whole training (and
auxiliary) set and each step takes its batch's rows, instead of recomputing it from the batch's
logits [B, M, K] every step. This times the spiral config's EnD² and EnD²+AUX students (MLP
[100, 100], K = 3, batch 128, 3000 training and 3000 auxiliary inputs, ε = 1e-4, gradient clip
10, aux weight 0.1, one thread) with its M = 10 members and, as configs/spiral_m100.yaml, 100:

1. ms per optimiser step in each phase of the schedule (T held at T₀, decaying, held at 1),
   without Lightning: fetching the batch, ``training_step``, backward, clip, Adam;
2. for M = 10, a whole student fit through ``endd.engine.fit`` (Lightning, as the pipeline runs
   it) over ``--epochs`` epochs with the config's schedule.

"before" feeds batches (x, teacher logits [B, M, K]) and recomputes the statistic every step
(the code path before this change, still taken for such batches); "after" feeds (x, row
indices) to a module holding the logits and ``statistic_loss``. Both train bit-identically
(checked on the whole fits). The two alternate, in rounds, so that background load hits both
alike; printed are the median over rounds and the best round, and their ratios.

Only batch parts of a multiple of 32 rows take the table (the exactness guard,
``endd.losses.table_is_exact_for``): the training part of each batch (128 rows) does, the last
batch (56) and the +AUX students' auxiliary part (125 rows a batch) compute per step.

    .venv/bin/python benchmarks/bench_statistic_table.py [--run RUN_DIR] [--rounds 7]

``--run`` takes the M = 10 teacher logits from a finished spiral run (``teacher/train.npy``,
``teacher/aux.npy``); otherwise, and for M = 100, random logits of the same scale are used (the
cost does not depend on the values).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from endd.engine import StudentModule, batch_loader, fit
from endd.losses import endd_loss, endd_loss_from_mean_log_probs
from endd.models import build_model
from endd.schedules import TemperatureSchedule

TEMPERATURE = {"initial": 5.0, "final": 1.0, "hold_fraction": 0.3, "decay_end_fraction": 0.7}
BATCH, SMOOTHING, AUX_WEIGHT, CLIP = 128, 1e-4, 0.1, 10.0
PHASES = {"held at T0": 0, "decay": 4000, "held at 1": 8000}  # first steps, of 10 000


class _Stepped(StudentModule):
    """A StudentModule whose step counter is set by hand (no Trainer in the phase timings)."""

    step = 0

    @property
    def global_step(self) -> int:
        return self.step


def _teacher(run: Path | None, members: int) -> tuple[torch.Tensor, torch.Tensor]:
    if run is not None and members == 10:
        return (
            torch.from_numpy(np.load(run / "teacher" / "train.npy")),
            torch.from_numpy(np.load(run / "teacher" / "aux.npy")),
        )
    generator = torch.Generator().manual_seed(members)
    return (
        torch.randn(3000, members, 3, generator=generator) * 8,
        torch.randn(3000, members, 3, generator=generator) * 8,
    )


def _setup(mode: str, aux: bool, teacher, total_steps: int, module_class=StudentModule):
    """(module, loader) for "before" (logits in the batch) or "after" (held logits, table)."""
    train, aux_logits = teacher
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(len(train), 2, generator=generator)
    x_aux = torch.randn(len(aux_logits), 2, generator=generator) * 3
    if mode == "before":
        extra = (x_aux, aux_logits) if aux else None
        loader = batch_loader(x, train, batch_size=BATCH, seed=0, extra=extra)
        held = {}
    else:
        rows = torch.arange(len(train) + (len(aux_logits) if aux else 0))
        extra = (x_aux, rows[len(train) :]) if aux else None
        loader = batch_loader(x, rows[: len(train)], batch_size=BATCH, seed=0, extra=extra)
        logits = torch.cat([train, aux_logits]) if aux else train
        held = {"teacher_logits": logits, "statistic_loss": endd_loss_from_mean_log_probs}
    network = build_model(
        "mlp", num_classes=3, input_shape=(2,), members=1, seed=0, hidden=[100, 100]
    )
    module = module_class(
        network,
        loss=endd_loss,
        loss_kwargs={"smoothing": SMOOTHING},
        schedule=TemperatureSchedule.from_config(TEMPERATURE, total_steps=total_steps),
        aux_weight=AUX_WEIGHT if aux else 1.0,
        **held,
    )
    return module, loader


class _Stepper:
    """Lightning-free optimiser steps of one module, the batch fetch included in the time."""

    def __init__(self, mode: str, aux: bool, teacher) -> None:
        self.module, self.loader = _setup(mode, aux, teacher, 10_000, _Stepped)
        self.optimiser = torch.optim.Adam(self.module.parameters(), lr=1e-3)
        self.batches = iter(())

    def _next(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def median_ms(self, first_step: int, steps: int) -> float:
        times = []
        for step in range(steps):
            start = time.perf_counter()
            batch = self._next()
            self.module.step = first_step + step
            loss = self.module.training_step(batch, 0)
            self.optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), CLIP)
            self.optimiser.step()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000


def _fit(mode: str, aux: bool, teacher, epochs: int) -> tuple[float, list[float]]:
    """ms per step of a whole fit (Lightning, barebones), and its per-epoch losses."""
    steps_per_epoch = math.ceil(len(teacher[0]) / BATCH)
    module, loader = _setup(mode, aux, teacher, epochs * steps_per_epoch)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        fit(
            module,
            loader,
            epochs=epochs,
            checkpoint_dir=Path(folder),
            trainer_config={"accelerator": "cpu"},
            gradient_clip=CLIP,
        )
        seconds = time.perf_counter() - start
    return seconds * 1000 / (epochs * len(loader)), module.epoch_losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="a finished spiral run directory")
    parser.add_argument("--members", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100, help="steps per phase and round")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of a whole fit")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the spiral config's trainer.num_threads
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"1 thread, load average {os.getloadavg()[0]:.2f}; M = 10 teacher "
        f"{'from ' + str(args.run) if args.run else 'random'}\n"
    )
    samples: dict[tuple, dict[str, list[float]]] = {}
    for members in args.members:
        teacher = _teacher(args.run, members)
        for aux in (False, True):
            steppers = {mode: _Stepper(mode, aux, teacher) for mode in ("before", "after")}
            for stepper in steppers.values():  # warm up: allocations, the first table
                for first in PHASES.values():
                    stepper.median_ms(first, 30)
            for round_ in range(args.rounds):
                order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
                for phase, first in PHASES.items():
                    for mode in order:
                        ms = steppers[mode].median_ms(first, args.steps)
                        samples.setdefault((members, aux, phase), {"before": [], "after": []})
                        samples[members, aux, phase][mode].append(ms)
            if members == 10 and args.epochs:
                whole = f"whole fit, {args.epochs} epochs"
                samples[members, aux, whole] = {"before": [], "after": []}
                for round_ in range(args.rounds):
                    losses = {}
                    order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
                    for mode in order:
                        ms, losses[mode] = _fit(mode, aux, teacher, args.epochs)
                        samples[members, aux, whole][mode].append(ms)
                    assert losses["before"] == losses["after"], "the paths must train alike"
    print(f"{args.rounds} rounds; ms per optimiser step, median over rounds (best round)\n")
    print("| student | M | phase | before | after | after / before: median (best) |")
    print("|---|---:|---|---:|---:|---:|")
    for (members, aux, phase), times in samples.items():
        before, after = times["before"], times["after"]
        name = "EnD²+AUX" if aux else "EnD²"
        print(
            f"| {name} | {members} | {phase} "
            f"| {statistics.median(before):.3f} ({min(before):.3f}) "
            f"| {statistics.median(after):.3f} ({min(after):.3f}) "
            f"| {statistics.median(after) / statistics.median(before):.2f} "
            f"({min(after) / min(before):.2f}) |"
        )


if __name__ == "__main__":
    main()
