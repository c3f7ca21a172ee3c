"""Arrays of one row per input, written in shards by every rank, assembled by global rank 0.

The teacher cache (``teacher/<split>.npy``) and the students' predictions
(``predictions/<model>/<split>.npy``) are computed row by row from the inputs. With several
processes (an initialised process group) each rank computes a contiguous slice of the rows,
``[N·r/W, N·(r+1)/W)``, and writes it as its own ``.npy`` shard under a ``.shards/`` folder beside
the target; after a barrier global rank 0 concatenates the shards, in order, into the target
(atomically, one sequential pass) and removes them. Separate shard files, not one file written
at offsets by every rank: that is safe on every shared file system (NFS clients write whole pages)
and each shard is itself atomic, so a killed run can keep the shards that were finished
(``reuse=True``, for inputs that cannot change within a run, like the teacher's).

One process (no process group, or a world of one) writes the target directly, a batch at a
time, as before.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from endd.data.ondisk import READ_ERRORS, NpyRows
from endd.errors import DataError
from endd.store import artifacts

#: Rows copied at a time when assembling shards (memory stays bounded).
_COPY_BYTES = 64 << 20

Rows = Callable[[int, int], Iterable[np.ndarray | torch.Tensor]]


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group, or ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def shard_rows(num_rows: int, rank: int, size: int, quantum: int = 1) -> tuple[int, int]:
    """The contiguous slice ``[start, stop)`` of ``num_rows`` rows that ``rank`` of ``size``
    computes; the slices of ranks 0..size−1 cover every row exactly once, in order, and start
    at multiples of ``quantum`` (a batch size: each rank then runs the very batches one
    process would, so the results do not depend on the number of ranks)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside a world of {size}")
    if quantum < 1:
        raise ValueError(f"quantum must be positive, got {quantum}")
    blocks = -(-num_rows // quantum)

    def edge(r: int) -> int:
        return min(num_rows, quantum * (blocks * r // size))

    return edge(rank), edge(rank + 1)


@dataclass(frozen=True)
class ShardRecord:
    """What one rank did for one array: its rows, whether it reused a finished shard, and how
    long it took."""

    rank: int
    start: int
    stop: int
    reused: bool
    seconds: float

    def as_json(self) -> dict:
        return {
            "rank": self.rank,
            "rows": [self.start, self.stop],
            "reused": self.reused,
            "seconds": round(self.seconds, 3),
        }


def write_sharded(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype,
    rows: Rows,
    *,
    reuse: bool = False,
    quantum: int = 1,
) -> list[ShardRecord]:
    """Write the array ``shape`` (rows first) to ``path``, every rank computing its slice.

    Every rank of the process group must call this, with the same arguments but ``rows``.

    Args:
        path: the target ``.npy``; written atomically by global rank 0.
        shape: the whole array's shape.
        dtype: the dtype on disk.
        rows: ``rows(start, stop)`` yields consecutive chunks of rows ``start..stop−1``.
        reuse: keep a shard a killed earlier attempt finished (only for inputs that cannot
            have changed since).
        quantum: slices start at multiples of this (see :func:`shard_rows`).

    Returns:
        On global rank 0, one record per rank (rank order); on the others, their own record.
    """
    begin = time.perf_counter()
    rank, size = world()
    start, stop = shard_rows(shape[0], rank, size, quantum)
    if size == 1:
        artifacts.write_array_chunks(path, shape, dtype, rows(0, shape[0]))
        _remove_shards(path, [])  # any an earlier attempt with several ranks left
        return [ShardRecord(0, 0, shape[0], False, time.perf_counter() - begin)]
    shard = _shard_path(path, start, stop)
    part_shape = (stop - start, *shape[1:])
    reused = reuse and _complete(shard, part_shape, dtype)
    if not reused:
        artifacts.write_array_chunks(shard, part_shape, dtype, rows(start, stop), checksum=False)
    mine = ShardRecord(rank, start, stop, reused, time.perf_counter() - begin)
    records = _gather(mine, size)
    if rank == 0:
        _assemble(path, shape, dtype, [_shard_path(path, r.start, r.stop) for r in records])
    barrier()  # the file is in place for every rank when this returns
    return records if rank == 0 else [mine]


def _shard_path(path: Path, start: int, stop: int) -> Path:
    return path.parent / ".shards" / f"{path.stem}.{start}-{stop}.npy"


def _complete(shard: Path, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """A shard an earlier attempt finished (shards are written atomically: present means
    complete, unless damaged since; its header and size are checked)."""
    if not shard.is_file():
        return False
    try:
        rows = NpyRows(shard)
    except (DataError, *READ_ERRORS):
        return False
    return rows.shape == shape and rows.dtype == np.dtype(dtype)


def _gather(mine: ShardRecord, size: int) -> list[ShardRecord]:
    """Every rank's record, on every rank (a tensor all-gather: nothing is pickled)."""
    values = torch.tensor(
        [mine.rank, mine.start, mine.stop, int(mine.reused), mine.seconds], dtype=torch.float64
    )
    backend = dist.get_backend()
    if backend == "nccl":
        values = values.cuda()
    gathered = [torch.zeros_like(values) for _ in range(size)]
    dist.all_gather(gathered, values)
    return [
        ShardRecord(int(v[0]), int(v[1]), int(v[2]), bool(v[3]), float(v[4]))
        for v in (g.cpu() for g in gathered)
    ]


def _assemble(path: Path, shape: tuple[int, ...], dtype: np.dtype, shards: list[Path]) -> None:
    """Concatenate the shards (rank order) into ``path`` atomically, then remove them."""

    def chunks():
        for shard in shards:
            part = NpyRows(shard)
            step = max(1, _COPY_BYTES // max(part.row_bytes, 1))
            for first in range(0, len(part), step):
                yield part.read(first, first + step)

    artifacts.write_array_chunks(path, shape, dtype, chunks())
    _remove_shards(path, shards)


def _remove_shards(path: Path, shards: list[Path]) -> None:
    """Delete ``shards`` and any other shard of ``path`` an earlier attempt with another number
    of ranks left; the shard folder too once it is empty."""
    folder = path.parent / ".shards"
    if not folder.is_dir():
        return
    for shard in [*shards, *folder.glob(f"{path.stem}.*-*.npy")]:
        shard.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
