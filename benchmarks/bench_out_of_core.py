"""A whole run (ensemble through report) on data several times larger than the run's memory.

Writes a generated dataset, runs ``endd run`` on it in a child process, and prints the data's
size on disk against the child's peak resident memory (``ru_maxrss``), next to the same run on a
dataset 1/20 the size: the peak should not grow with N. Two forms of data:

- ``--form npy`` (default): the ``.npy``-folder form of bring-your-own data (``x_train.npy`` …,
  float32 features, see ``endd.data.ondisk``);
- ``--form cifar10``: CIFAR-10's own binary files (``cifar-10-batches-bin/data_batch_1.bin`` …,
  3 073-byte records of a label and 32×32×3 uint8 pixels), read in place by the image reader, with
  two synthetic OOD sets made from the test split (Gaussian noise, vertical flips).

    python benchmarks/bench_out_of_core.py [--form npy] [--rows 260000] [--features 3072]
    python benchmarks/bench_out_of_core.py --form cifar10 [--rows 1200000]
    (either: [--keep DIR])

About 3.2 GB (npy) / 3.7 GB (cifar10) of disk and a few minutes on a 2-core CPU at the defaults.
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


def write_cifar10(folder: Path, rows: int, seed: int = 0) -> int:
    """Ten classes of 32×32 RGB images (a class pattern plus noise) as CIFAR-10 binary files:
    ``rows`` training records in the five ``data_batch_*.bin``, 10 000 in ``test_batch.bin`` (as
    CIFAR-10; fewer for fewer than 100 000 rows: ``rows // 10``, at least 1000), written a chunk
    at a time. The test split stays small because evaluation holds it in memory: its logits
    [N_test, M, K] and the measures' float64 intermediates, which grow with N_test (not with the
    training set this benchmark scales). Returns the bytes on disk."""
    batches = folder / "cifar-10-batches-bin"
    batches.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patterns = rng.integers(40, 216, size=(CLASSES, 3072), dtype=np.int16)
    files = {f"data_batch_{i + 1}.bin": rows // 5 + (i < rows % 5) for i in range(5)}
    files["test_batch.bin"] = min(max(rows // 10, 1000), 10_000)
    for name, count in files.items():
        # plain sequential writes, as for the .npy form (no memory map in this process)
        with open(batches / name, "wb") as handle:
            for start in range(0, count, 16384):
                n = min(16384, count - start)
                labels = rng.integers(0, CLASSES, size=n)
                noise = rng.integers(-40, 41, size=(n, 3072), dtype=np.int16)
                records = np.empty((n, 3073), dtype=np.uint8)
                records[:, 0] = labels
                records[:, 1:] = patterns[labels] + noise
                handle.write(records.tobytes())
    return sum(p.stat().st_size for p in batches.glob("*.bin"))


def run(folder: Path, out: Path, form: str = "npy") -> tuple[float, float]:
    """``endd run`` on ``folder`` in a child process: (wall seconds, the child's peak RSS in
    bytes)."""
    if form == "npy":
        data = ["data.name=npz", f"data.path={folder}"]
    else:
        data = [
            "data.name=cifar10",
            f"data.path={folder}",
            f"data.cache={out.parent / 'cache'}",
            "data.ood=[gaussian_noise, vflip]",
            "data.ood_size=2000",
            "data.aux=null",
        ]
    overrides = [
        "name=out_of_core",
        *data,
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
    parser.add_argument("--form", choices=("npy", "cifar10"), default="npy")
    parser.add_argument("--rows", type=int, default=None, help="npy: 260000, cifar10: 1200000")
    parser.add_argument("--features", type=int, default=3072, help="npy form only")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = parser.parse_args()
    rows_large = args.rows or (260_000 if args.form == "npy" else 1_200_000)
    work = args.keep or Path(tempfile.mkdtemp(prefix="endd-ooc-"))
    try:
        results = []
        for label, rows in (("large", rows_large), ("small (1/20)", rows_large // 20)):
            folder = work / f"data_{rows}"
            if args.form == "npy":
                size = write_dataset(folder, rows, args.features)
            else:
                size = write_cifar10(folder, rows)
            seconds, peak = run(folder, work / f"run_{rows}", args.form)
            results.append((label, rows, size, peak, seconds))
            shutil.rmtree(folder)
            shutil.rmtree(work / "cache", ignore_errors=True)
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}")
        inputs = (
            f"{args.features} float32 features"
            if args.form == "npy"
            else "CIFAR-10 binary files read in place (3 072 uint8 pixels a record), OOD: "
            "gaussian_noise and vflip of the test split (2 000 each)"
        )
        print(f"run: 3 MLP members (hidden 32), 1 epoch each stage, {inputs}")
        print()
        print("| data | training rows | files on disk | peak RSS of the run | disk / RSS | wall |")
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
