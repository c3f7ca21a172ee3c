"""How far the EnD² loss moves when the teacher statistic is interpolated between stored levels.

The reduced cache (``endd.losses.teacher_statistic_table``) stores mean_m ln π_mc [N, K] at a few
temperatures instead of the logits [N, M, K]; during the decay, ``statistic_at`` interpolates
between the two stored levels around T. At a stored level the loss is exact (bit for bit); this
measures the error in between on a finished spiral run: its cached teacher logits (training and
auxiliary sets) and its trained EnD²+AUX student's logits on the same inputs, at 401
temperatures evenly spread over the 5 → 1 decay, for evenly spaced levels (5, 9 and 17 by
default), interpolating linearly in T and in 1/T.

Printed per set and level count: the largest absolute error of the loss over the whole set, of
the loss of a batch of 128 (the batches of one shuffle), and of the statistic itself, each with
the loss's size there for scale. The student is the final one: the logits met during the decay
differ, so read the numbers as orders of magnitude.

    .venv/bin/python benchmarks/statistic_interpolation.py --run RUN_DIR [--levels 5 9 17]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from endd.config import load_yaml, resolve_config
from endd.data import load_data
from endd.losses import (
    endd_loss_from_mean_log_probs,
    statistic_at,
    teacher_statistic_table,
)
from endd.store.models import load_model

BATCH = 128


def _errors(logits, statistic_exact, statistic_interp, temperature, batches):
    whole_exact = endd_loss_from_mean_log_probs(logits, statistic_exact, temperature=temperature)
    whole = endd_loss_from_mean_log_probs(logits, statistic_interp, temperature=temperature)
    batch_errors = [
        abs(
            endd_loss_from_mean_log_probs(logits[b], statistic_interp[b], temperature=temperature)
            - endd_loss_from_mean_log_probs(logits[b], statistic_exact[b], temperature=temperature)
        ).item()
        for b in batches
    ]
    return (
        abs(whole - whole_exact).item(),
        abs(whole_exact).item(),
        max(batch_errors),
        (statistic_interp - statistic_exact).abs().max().item(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished spiral run")
    parser.add_argument("--levels", type=int, nargs="+", default=[5, 9, 17])
    parser.add_argument("--points", type=int, default=401, help="temperatures over the decay")
    args = parser.parse_args()
    config = resolve_config(load_yaml(args.run / "config.yaml"), [])
    section = config["students"]
    smoothing = section["smoothing"]
    initial, final = section["temperature"]["initial"], section["temperature"]["final"]
    data = load_data(config["data"], config["seed"])
    student = load_model(args.run / "students" / "endd_aux").network.eval()
    sets = {}
    for name, x in (("train", data.x_train), ("aux", data.x_aux)):
        teacher = torch.from_numpy(np.load(args.run / "teacher" / f"{name}.npy"))
        with torch.no_grad():
            logits = student(x).float()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        sets[name] = (teacher, logits, list(order.split(BATCH)))
    temperatures = np.linspace(final, initial, args.points).tolist()
    print(
        f"run {args.run}: K = {data.num_classes}, M = {sets['train'][0].shape[1]}, "
        f"ε = {smoothing}, decay {initial} → {final}, {args.points} temperatures; student: "
        "the run's EnD²+AUX\n"
    )
    print(
        "| set | levels | interpolation | max abs error, whole-set loss | (loss there) "
        "| max abs error, batch of 128 | max abs error, statistic |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, (teacher, logits, batches) in sets.items():
        exact = teacher_statistic_table(teacher, temperatures, smoothing=smoothing)
        for count in args.levels:
            levels = np.linspace(final, initial, count).tolist()
            tables = teacher_statistic_table(teacher, levels, smoothing=smoothing)
            for space in ("temperature", "inverse_temperature"):
                worst = (0.0, 0.0, 0.0, 0.0)
                for temperature in temperatures:
                    interp = statistic_at(tables, temperature, interpolation=space)
                    errors = _errors(logits, exact[temperature], interp, temperature, batches)
                    worst = (
                        max(worst[0], errors[0]),
                        errors[1] if errors[0] >= worst[0] else worst[1],
                        max(worst[2], errors[2]),
                        max(worst[3], errors[3]),
                    )
                label = "T" if space == "temperature" else "1/T"
                print(
                    f"| {name} | {count} | linear in {label} | {worst[0]:.3g} | {worst[1]:.3g} "
                    f"| {worst[2]:.3g} | {worst[3]:.3g} |"
                )


if __name__ == "__main__":
    main()
