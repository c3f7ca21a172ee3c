"""Arrays that stay on disk: ``.npy`` files read a batch of rows at a time.

A dataset larger than memory is a folder of ``.npy`` files. :class:`NpyRows` reads the rows a
batch asks for with positioned reads (``os.pread``) into fresh memory, instead of a memory map,
so the process's resident memory holds one batch, not every page the run has touched (mapped
file pages count towards the resident set and the address space). :class:`StandardisedRows`
puts the standardisation on top, per batch, and behaves like the float32 tensor
``(x − mean) / std`` where the pipeline indexes it: ``len``, ``shape``, ``[i]``, ``[a:b]``,
``[index_tensor]``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from tokenize import TokenError

import numpy as np
import torch
from torch import Tensor

from endd.errors import DataError

__all__ = ["READ_ERRORS", "NpyRows", "StandardisedRows", "iter_chunks"]

#: What numpy raises on a damaged ``.npy`` file or header: a short file (EOFError), a bad magic
#: string or dtype (ValueError), an unparsable header dict (SyntaxError, and tokenize's
#: TokenError, which numpy lets through), an unreadable file (OSError).
READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, TokenError)


class NpyRows:
    """The rows of a C-ordered ``.npy`` file, read on demand (no pickle, no memory map).

    Args:
        path: the ``.npy`` file.

    Raises:
        DataError: not a readable ``.npy`` array of a plain numeric dtype in C order.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(handle)
                else:
                    header = np.lib.format.read_array_header_2_0(handle)
                shape, fortran, dtype = header
                self.offset = handle.tell()
            size = self.path.stat().st_size
        except READ_ERRORS as error:
            detail = " ".join(str(error).split())[:300] or type(error).__name__
            raise DataError(f"cannot read {self.path} as a .npy array ({detail})") from None
        if dtype.hasobject or fortran or len(shape) == 0:
            raise DataError(
                f"{self.path} must hold a numeric array in C order (no objects, no Fortran "
                "order, at least one axis); save it with numpy.save(path, np.ascontiguousarray(x))"
            )
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = dtype
        self.row_bytes = math.prod(shape[1:]) * dtype.itemsize  # Python ints: no overflow
        expected = self.offset + self.row_bytes * shape[0]
        if size < expected:
            raise DataError(
                f"{self.path} is truncated: {size} bytes, the header promises {expected}"
            )

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (one positioned read)."""
        start, stop = max(0, start), min(len(self), stop)
        count = max(0, stop - start)
        out = np.empty((count, *self.shape[1:]), dtype=self.dtype)
        if count:
            with open(self.path, "rb", buffering=0) as handle:
                self._pread(handle.fileno(), out, start)
        return out

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (any order), one read per run of consecutive rows."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows of {self.path}")
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        if not len(indices):
            return out
        order = np.argsort(indices, kind="stable")
        sorted_rows = indices[order]
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        gathered = np.empty_like(out)
        with open(self.path, "rb", buffering=0) as handle:
            for run in np.split(np.arange(len(sorted_rows)), breaks):
                first = int(sorted_rows[run[0]])
                self._pread(handle.fileno(), gathered[run[0] : run[-1] + 1], first)
        out[order] = gathered
        return out

    def _pread(self, fd: int, out: np.ndarray, first_row: int) -> None:
        view = memoryview(out.reshape(-1).view(np.uint8))
        position = self.offset + first_row * self.row_bytes
        done = 0
        while done < len(view):
            read = os.preadv(fd, [view[done:]], position + done)
            if read <= 0:
                raise DataError(f"{self.path} ended early while reading rows")
            done += read


def iter_chunks(rows: NpyRows, chunk_bytes: int = 64 << 20) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` chunks of about ``chunk_bytes`` each, in order."""
    step = max(1, chunk_bytes // max(rows.row_bytes, 1))
    for start in range(0, len(rows), step):
        yield start, rows.read(start, start + step)


class StandardisedRows:
    """``(x − mean) / std`` over the rows of an :class:`NpyRows`, computed per batch, float32.

    Indexing (an int, a slice or an index array/tensor) returns a float32 tensor; ``len`` and
    ``shape`` are those of the array. ``mean``/``std`` None: the raw values (as float32), exactly
    as the file holds them.
    """

    def __init__(self, rows: NpyRows, mean: Tensor | None, std: Tensor | None) -> None:
        self.rows, self.mean, self.std = rows, mean, std
        self.shape = torch.Size(rows.shape)
        self.dtype = torch.float32

    def __len__(self) -> int:
        return len(self.rows)

    def _convert(self, array: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)
        if self.mean is not None and self.std is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x

    def __getitem__(self, index: int | slice | np.ndarray | Tensor) -> Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self._convert(self.rows.take(np.arange(start, stop, step)))
            return self._convert(self.rows.read(start, stop))
        if isinstance(index, (int, np.integer)):
            position = int(index) + (len(self) if index < 0 else 0)
            return self._convert(self.rows.read(position, position + 1))[0]
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        return self._convert(self.rows.take(np.asarray(index)))

    def raw(self) -> StandardisedRows:
        """The same rows without the standardisation."""
        return StandardisedRows(self.rows, None, None)

    def __repr__(self) -> str:
        return f"StandardisedRows({self.rows.path}, shape={list(self.shape)})"
