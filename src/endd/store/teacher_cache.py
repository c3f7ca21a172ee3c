"""The teacher cache read a batch of rows at a time: the training loop never holds a large one.

``teacher/<split>.npy`` is N·M·K numbers (ImageNet: 25.6 GB in float16). :class:`TeacherRows`
reads the rows a batch asks for with positioned reads (:class:`endd.data.ondisk.NpyRows`, not a
memory map, whose touched pages would stay in the resident set) and returns them as float32, so
a student's memory holds one batch of the cache. Several files (the training split, then the
auxiliary one) read as one array of their rows in order.

A cache of at most :data:`HOLD_IN_MEMORY_BYTES` (64 MiB) is read into memory once instead (as
stored, float16 or float32): a random batch of short rows costs one system call per row from
disk, 5-160× the time of indexing memory for K ≤ 100 (benchmarks/bench_teacher_cache.py), while
a small cache costs little memory. Both give the same numbers, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from endd.data.ondisk import ArrayRows, ConcatRows, NpyRows, Rows

__all__ = ["HOLD_IN_MEMORY_BYTES", "TeacherRows"]

#: Caches up to this size (all files together, as stored) are held in memory; larger ones are
#: read a batch of rows at a time. The image sets' threshold too
#: (``endd.data.images.cache``): a run's memory stays flat from there on as N grows.
HOLD_IN_MEMORY_BYTES = 64 << 20


class TeacherRows:
    """Member logits [N, M, K] (or a reduced statistic [N, K]) of one or more ``.npy`` files
    (their rows concatenated), read on demand as float32 tensors.

    Args:
        paths: the ``.npy`` files, their rows in this order.
        hold_below: read the files into memory once when they hold at most this many bytes
            (0: always read from disk; None: :data:`HOLD_IN_MEMORY_BYTES`).

    Indexing with a slice, an int, or an int64 index tensor/array returns a float32 tensor;
    ``shape``, ``len``, ``dtype`` and ``ndim`` are those of the float32 array it stands for.
    ``detach()`` and ``float()`` return it unchanged, so it goes where the training loop takes
    a held tensor of logits.
    """

    def __init__(self, paths: Sequence[str | Path], *, hold_below: int | None = None) -> None:
        if not paths:
            raise ValueError("TeacherRows needs at least one file")
        parts = [NpyRows(p) for p in paths]
        if len({(part.shape[1:], part.dtype) for part in parts}) != 1:
            shapes = ", ".join(f"{p.path.name} {list(p.shape)} {p.dtype}" for p in parts)
            raise ValueError(f"teacher files must agree but for their rows (M, K, dtype): {shapes}")
        self.rows: Rows = parts[0] if len(parts) == 1 else ConcatRows(parts)
        self.shape = torch.Size(self.rows.shape)
        self.dtype = torch.float32
        self.ndim = len(self.shape)
        self.device = torch.device("cpu")
        stored = sum(len(part) * part.row_bytes for part in parts)
        #: the rows as stored, when the cache is small enough to hold (see the module doc)
        self.held: np.ndarray | None = None
        if stored <= (HOLD_IN_MEMORY_BYTES if hold_below is None else hold_below):
            self.held = self.rows.read(0, len(self.rows))
            self.rows = ArrayRows(self.held, name=str(parts[0].path))

    def __len__(self) -> int:
        return self.shape[0]

    def is_floating_point(self) -> bool:
        return True

    def detach(self) -> TeacherRows:
        return self

    def float(self) -> TeacherRows:
        return self

    def __getitem__(self, index: int | slice | np.ndarray | Tensor) -> Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._convert(self._read(start, max(start, stop)))
            index = np.arange(start, stop, step)
        if isinstance(index, (int, np.integer)):
            position = int(index) + (len(self) if index < 0 else 0)
            return self[position : position + 1][0]
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        return self._convert(self._take(np.asarray(index, dtype=np.int64).reshape(-1)))

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.rows.read(start, stop)

    def _take(self, rows: np.ndarray) -> np.ndarray:
        return self.rows.take(rows)

    @staticmethod
    def _convert(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)

    def __repr__(self) -> str:
        return f"TeacherRows({self.rows!r})"
