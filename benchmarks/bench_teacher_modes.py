"""Cached versus online teacher: what a distillation step costs with each.

*Cached*: the ensemble's logits were computed once, on un-augmented inputs, and each student step
reads them ([B, M, K] per batch). *Online*: the ensemble runs on every (augmented) batch the
student sees, so targets match the student's inputs exactly, at M extra forward passes per step.
Times Lightning-free student steps (forward, EnD² loss, backward, Adam) for a small CNN student
with a 10-member small-CNN ensemble on 28×28 inputs with crop + flip augmentation, and prints
ms/step and the ratio.

    .venv/bin/python benchmarks/bench_teacher_modes.py [--steps 30] [--batch 128]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from endd.data.image_bundle import BatchSeededCropFlip
from endd.losses import endd_loss
from endd.models import build_model
from endd.models.allocator import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--members", type=int, default=10)
    args = parser.parse_args()
    keep_freed_memory()
    shape, classes = (1, 28, 28), 10
    common = {"num_classes": classes, "input_shape": shape, "seed": 0}
    ensemble = build_model("small_cnn", members=args.members, **common).eval()
    augment = BatchSeededCropFlip(0)
    x = torch.rand(args.steps, args.batch, *shape)
    with torch.no_grad():
        cached = torch.stack([ensemble(batch) for batch in x])  # un-augmented targets

    def run(online: bool) -> float:
        student = build_model("small_cnn", members=1, **common)
        optimiser = torch.optim.Adam(student.parameters(), lr=1e-3)
        times = []
        for step in range(args.steps):
            start = time.perf_counter()
            inputs = augment(x[step])
            if online:
                with torch.no_grad():
                    targets = ensemble(inputs)
            else:
                targets = cached[step]
            loss = endd_loss(student(inputs), targets, temperature=2.0, smoothing=1e-4)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            times.append(time.perf_counter() - start)
        return statistics.median(times[2:]) * 1000

    cached_ms, online_ms = run(False), run(True)
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"small_cnn student, {args.members}-member small_cnn ensemble, batch {args.batch}\n")
    print("| teacher | ms/step (median) | × cached |")
    print("|---|---:|---:|")
    print(f"| cached (un-augmented targets) | {cached_ms:.1f} | 1.00 |")
    print(
        f"| online (targets on the augmented batch) | {online_ms:.1f} "
        f"| {online_ms / cached_ms:.2f} |"
    )


if __name__ == "__main__":
    main()
