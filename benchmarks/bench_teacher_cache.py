"""The teacher cache on disk: its size, write, checksum and batch-read speed.

Students read ``teacher/train.npy`` a batch of rows at a time (``endd.store.TeacherRows``,
positioned reads) instead of holding it in memory. This prints, for caches of a few shapes and
both dtypes:

- size on disk, and write time (``write_array_chunks``, the teacher stage's writer);
- sha256 time (the size-and-checksum check a stage does before it reads the cache);
- a random batch of B rows (what a training step reads): rows/s from disk against rows/s from
  the same array held in memory (``tensor[rows]``), and their ratio;
- a sequential pass in 64 MiB chunks (the statistic table, the shard assembly): MB/s.

Run: ``python benchmarks/bench_teacher_cache.py [--rows N] [--folder DIR]``. The files go to a
temporary folder (the page cache is warm after writing: this measures the reads' CPU cost and
the page cache, not a cold disk).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _machine import cpu_name
from endd.data.ondisk import NpyRows, iter_chunks
from endd.store import TeacherRows, artifacts
from endd.store.integrity import sha256_of


def _best(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(folder: Path, rows: int, members: int, classes: int, dtype: str, batch: int) -> dict:
    path = folder / f"cache_{members}_{classes}_{dtype}.npy"
    rng = np.random.default_rng(0)
    chunk_rows = max(1, (16 << 20) // (members * classes * 4))

    block = rng.standard_normal((chunk_rows, members, classes), dtype=np.float32)

    def chunks():  # one block of logits again and again: the time is the writer's
        for start in range(0, rows, chunk_rows):
            yield block[: min(chunk_rows, rows - start)]

    start = time.perf_counter()
    artifacts.write_array_chunks(path, (rows, members, classes), np.dtype(dtype), chunks())
    write_s = time.perf_counter() - start
    size = path.stat().st_size
    hash_s = _best(lambda: sha256_of(path), repeat=2)

    on_disk = TeacherRows([path], hold_below=0)  # always from disk
    in_memory = torch.from_numpy(np.load(path)).float()
    batches = [torch.from_numpy(rng.integers(0, rows, batch)) for _ in range(50)]

    def read_disk():
        for index in batches:
            on_disk[index]

    def read_memory():
        for index in batches:
            in_memory[index]

    disk_s, memory_s = _best(read_disk), _best(read_memory)
    sequential_s = _best(lambda: sum(len(c) for _, c in iter_chunks(NpyRows(path))), repeat=2)
    path.unlink()
    mb = size / 1e6
    return {
        "shape": f"{rows}×{members}×{classes}",
        "dtype": dtype,
        "MB": mb,
        "write MB/s": mb / write_s,
        "sha256 MB/s": mb / hash_s,
        "disk rows/s": len(batches) * batch / disk_s,
        "memory rows/s": len(batches) * batch / memory_s,
        "sequential MB/s": mb / sequential_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = [(10, 3), (10, 10), (10, 100), (10, 1000)]
    print(f"teacher cache, {args.rows} rows (K = 1000: {args.rows // 10}), batch {args.batch}")
    print(f"machine: {cpu_name()}, torch {torch.__version__}, 1 thread\n")
    header = (
        "| shape | dtype | MB | write MB/s | sha256 MB/s | batch from disk (rows/s) "
        "| from memory (rows/s) | disk / memory | sequential MB/s |"
    )
    print(header)
    print("|" + "---|" * 9)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for members, classes in shapes:
            rows = args.rows if classes < 1000 else args.rows // 10
            for dtype in ("float32", "float16"):
                r = measure(Path(folder), rows, members, classes, dtype, args.batch)
                ratio = r["memory rows/s"] / r["disk rows/s"]
                print(
                    f"| {r['shape']} | {r['dtype']} | {r['MB']:.1f} | {r['write MB/s']:.0f} "
                    f"| {r['sha256 MB/s']:.0f} | {r['disk rows/s']:,.0f} "
                    f"| {r['memory rows/s']:,.0f} | {ratio:.1f}× slower "
                    f"| {r['sequential MB/s']:.0f} |"
                )


if __name__ == "__main__":
    main()
