"""Peak memory and time of one distillation stage over many rows, with and without handing freed
memory back during training (``endd.engine.trainer.ReleaseFreedMemory``).

Builds the run of ``bench_out_of_core.py --form cifar10`` (1.2 M CIFAR-sized training rows by
default, written once into ``--work``), then reruns its distillation stage alone, each variant in a
fresh child process that samples its own resident memory every 20 ms:

- glibc's default allocator, or endd's CLI setting (``keep_freed_memory``: everything from the
  heap, 1 GiB of freed memory kept), or ``MALLOC_TRIM_THRESHOLD_=0`` (freed memory at the top of
  the heap returned at once);
- with endd's releases (every 32 steps and 1 s) or without them (the callback made a no-op).

Variants run interleaved, ``--rounds`` times each; the table gives the range of the peaks (the
growth differs from run to run) and the median time.

    python benchmarks/bench_release_memory.py [--rows 1200000] [--rounds 2] [--work DIR]

About 4 GB of disk and 10 minutes on a 2-core CPU at the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _machine import cpu_name
from bench_out_of_core import run as run_endd
from bench_out_of_core import write_cifar10

#: name → (keep_freed_memory, releases, extra environment)
VARIANTS: dict[str, tuple[bool, bool, dict[str, str]]] = {
    "glibc default, no releases": (False, False, {}),
    "keep_freed_memory (the CLI), no releases": (True, False, {}),
    "MALLOC_TRIM_THRESHOLD_=0, no releases": (False, False, {"MALLOC_TRIM_THRESHOLD_": "0"}),
    "glibc default, releases": (False, True, {}),
    "keep_freed_memory (the CLI), releases": (True, True, {}),
}

#: The child: the distillation stage alone, its peak RSS sampled every 20 ms.
CHILD = """
import json, re, shutil, sys, threading, time
from pathlib import Path
keep, releases, run = sys.argv[1] == "1", sys.argv[2] == "1", Path(sys.argv[3])
import endd.engine.trainer as trainer
from endd.models.allocator import keep_freed_memory
from endd.pipeline.run import run_stages
if keep:
    keep_freed_memory()
if not releases:
    trainer.release_freed_memory = lambda: False
shutil.rmtree(run / "students" / "endd", ignore_errors=True)
def rss():
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\\s+(\\d+)", text).group(1)) * 1024
peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], rss())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
run_stages(run, ["distill"], progress=False)
print(json.dumps({"peak": max(peak[0], rss()), "seconds": time.perf_counter() - start}))
"""


def distill(run: Path, keep: bool, releases: bool, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(int(keep)), str(int(releases)), str(run)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(work: Path, rows: int, rounds: int) -> dict[str, list[dict]]:
    """The run (built once in ``work``), then every variant ``rounds`` times, interleaved."""
    folder, run = work / f"data_{rows}", work / f"run_{rows}"
    if not (run / "metrics.json").is_file():
        write_cifar10(folder, rows)
        run_endd(folder, run, "cifar10")
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, (keep, releases, env) in VARIANTS.items():
            results[name].append(distill(run, keep, releases, env))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_200_000, help="training rows")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant")
    parser.add_argument("--work", type=Path, default=None, help="folder to keep the data in")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="endd-release-"))
    try:
        results = measure(work, args.rows, args.rounds)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(
        f"the distillation stage alone (one EnD² student, 1 epoch, batch 512) over {args.rows:,} "
        f"CIFAR-10 binary rows read in place; {args.rounds} interleaved rounds per variant\n"
    )
    print("| allocator | peak RSS (MiB, min-max) | seconds (median) |")
    print("|---|---|---|")
    for name, runs in results.items():
        peaks = [r["peak"] / 2**20 for r in runs]
        seconds = statistics.median(r["seconds"] for r in runs)
        print(f"| {name} | {min(peaks):.0f}-{max(peaks):.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
