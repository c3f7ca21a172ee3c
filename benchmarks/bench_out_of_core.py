"""A whole run (ensemble through report) on data several times larger than the run's memory.

Writes a generated dataset in the ``.npy``-folder form (``x_train.npy`` … on disk, see
``endd.data.ondisk``), runs ``endd run`` on it in a child process, and prints the data's size on
disk against the child's peak resident memory (``ru_maxrss``), next to the same run on a
dataset 1/20 the size: the peak should not grow with N.

    python benchmarks/bench_out_of_core.py [--rows 260000] [--features 3072] [--keep DIR]

About 3.2 GB of disk and a few minutes on a 2-core CPU at the defaults.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _machine import cpu_name
from endd.store.artifacts import write_array_chunks

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "spiral.yaml"
CLASSES = 10


def write_dataset(folder: Path, rows: int, features: int, seed: int = 0) -> int:
    """Ten Gaussian classes in ``features`` dimensions, written chunk by chunk (never whole in
    memory). Returns the bytes on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, features)).astype(np.float32)
    splits = {"train": rows, "test": max(rows // 10, 1000)}
    for split, count in splits.items():
        y = np.empty(count, dtype=np.int64)

        def chunks(count=count, y=y, step=8192):
            for start in range(0, count, step):
                stop = min(count, start + step)
                labels = rng.integers(0, CLASSES, size=stop - start)
                y[start:stop] = labels
                noise = rng.normal(scale=3.0, size=(stop - start, features)).astype(np.float32)
                yield centres[labels] + noise

        # plain sequential writes: a memory map's dirty pages would count in this process's
        # resident set, and a child's peak RSS starts from its parent's on Linux
        write_array_chunks(folder / f"x_{split}.npy", (count, features), np.float32, chunks())
        np.save(folder / f"y_{split}.npy", y)
    return sum(p.stat().st_size for p in folder.glob("*.npy"))


def run(folder: Path, out: Path) -> tuple[float, float]:
    """``endd run`` on ``folder`` in a child process: (wall seconds, the child's peak RSS in
    bytes)."""
    overrides = [
        "name=out_of_core",
        "data.name=npz",
        f"data.path={folder}",
        "model.hidden=[32]",
        "ensemble.members=3",
        "ensemble.epochs=1",
        "ensemble.batch_size=512",
        "students.methods=[endd]",
        "students.epochs=1",
        "students.batch_size=512",
        "trainer.workers=1",
        "trainer.eval_batch_size=2048",
        "trainer.num_threads=2",
    ]
    command = [sys.executable, "-m", "endd.cli", "run", str(CONFIG), "--out", str(out), "-q"]
    command += [f"--set={o}" for o in overrides]
    start = time.perf_counter()
    # ru_maxrss is kept across fork and exec on Linux: launch from a fresh, small interpreter so
    # the figure is the run's own peak, not this script's
    launcher = (
        "import os, subprocess, sys; c = subprocess.Popen(sys.argv[1:]); "
        "_, status, usage = os.wait4(c.pid, 0); "
        "print(usage.ru_maxrss, file=sys.stderr); sys.exit(os.waitstatus_to_exitcode(status))"
    )
    child = subprocess.Popen([sys.executable, "-c", launcher, *command], stderr=subprocess.PIPE)
    _, stderr = child.communicate()
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command, stderr=stderr)
    peak_kib = int(stderr.decode().strip().splitlines()[-1])  # Linux reports KiB
    return time.perf_counter() - start, peak_kib * 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=260_000)
    parser.add_argument("--features", type=int, default=3072)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="endd-ooc-"))
    try:
        results = []
        for label, rows in (("large", args.rows), ("small (1/20)", args.rows // 20)):
            folder = work / f"data_{rows}"
            size = write_dataset(folder, rows, args.features)
            seconds, peak = run(folder, work / f"run_{rows}")
            results.append((label, rows, size, peak, seconds))
            shutil.rmtree(folder)
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}")
        print(
            f"run: 3 MLP members (hidden 32), 1 epoch each stage, {args.features} float32 features"
        )
        print()
        print("| data | training rows | arrays on disk | peak RSS of the run | disk / RSS | wall |")
        print("|---|---|---|---|---|---|")
        for label, rows, size, peak, seconds in results:
            print(
                f"| {label} | {rows:,} | {size / 2**30:.2f} GiB | {peak / 2**20:.0f} MiB | "
                f"{size / peak:.1f}× | {seconds:.0f} s |"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
