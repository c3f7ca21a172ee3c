"""Arrays that stay on disk: files read a batch of rows at a time.

A dataset larger than memory is a folder of ``.npy`` files, or image files that can be read in
place (uncompressed IDX, CIFAR binary) or were prepared once into ``.npy`` files
(:mod:`endd.data.images.cache`). :class:`RecordRows` (and :class:`NpyRows`) reads the rows a
batch asks for with positioned reads (``os.pread``) into fresh memory, instead of a memory map,
so the process's resident memory holds one batch, not every page the run has touched (mapped
file pages count towards the resident set and the address space). :class:`IndexedRows` (a
subset), :class:`ConcatRows` (several files end to end) and :class:`ArrayRows` (a small
in-memory array) offer the same interface. :class:`StandardisedRows` puts the standardisation on
top, per batch, and behaves like the float32 tensor ``(x − mean) / std`` where the pipeline
indexes it: ``len``, ``shape``, ``[i]``, ``[a:b]``, ``[index_tensor]``.
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

__all__ = [
    "READ_ERRORS",
    "ArrayRows",
    "ConcatRows",
    "IndexedRows",
    "NpyRows",
    "RecordRows",
    "Rows",
    "StandardisedRows",
    "iter_chunks",
]

#: What numpy raises on a damaged ``.npy`` file or header: a short file (EOFError), a bad magic
#: string or dtype (ValueError), an unparsable header dict (SyntaxError, and tokenize's
#: TokenError, which numpy lets through), an unreadable file (OSError).
READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, TokenError)


class RecordRows:
    """Rows stored as fixed-size records at a fixed offset in a binary file, read on demand.

    Row ``i`` is the ``row_shape`` values of ``dtype`` that start ``skip`` bytes into record
    ``i``; record ``i`` starts at ``offset + i * record_bytes``. A ``.npy`` file
    (:class:`NpyRows`), an uncompressed IDX image file (records = rows) and a CIFAR binary file
    (records = label byte(s) + pixels) are all read this way, in place.

    Args:
        path: the file.
        offset: bytes before the first record (a header).
        count: number of records.
        row_shape: shape of one row.
        dtype: the values' dtype (as stored; native byte order is assumed for multi-byte types).
        record_bytes: bytes from one record to the next (None: the row's own size).
        skip: bytes of each record before the row's values.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        offset: int,
        count: int,
        row_shape: tuple[int, ...],
        dtype: np.dtype | type,
        record_bytes: int | None = None,
        skip: int = 0,
    ) -> None:
        self.path = Path(path)
        self.offset = int(offset)
        self.dtype = np.dtype(dtype)
        self.shape: tuple[int, ...] = (int(count), *(int(s) for s in row_shape))
        self.row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize  # Python ints
        self.record_bytes = self.row_bytes if record_bytes is None else int(record_bytes)
        self.skip = int(skip)
        if self.skip < 0 or self.skip + self.row_bytes > self.record_bytes:
            raise ValueError(
                f"a row of {self.row_bytes} bytes at {self.skip} does not fit a record of "
                f"{self.record_bytes}"
            )

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (one positioned read), in fresh memory."""
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
        packed = self.record_bytes == self.row_bytes
        target = out if packed else np.empty((len(out), self.record_bytes), dtype=np.uint8)
        view = memoryview(target.reshape(-1).view(np.uint8))
        position = self.offset + first_row * self.record_bytes
        done = 0
        while done < len(view):
            read = os.preadv(fd, [view[done:]], position + done)
            if read <= 0:
                raise DataError(f"{self.path} ended early while reading rows")
            done += read
        if not packed:
            rows = out.reshape(len(out), -1).view(np.uint8)
            rows[:] = target[:, self.skip : self.skip + self.row_bytes]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, shape={list(self.shape)})"


class NpyRows(RecordRows):
    """The rows of a C-ordered ``.npy`` file, read on demand (no pickle, no memory map).

    Args:
        path: the ``.npy`` file.

    Raises:
        DataError: not a readable ``.npy`` array of a plain numeric dtype in C order.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            with open(path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(handle)
                else:
                    header = np.lib.format.read_array_header_2_0(handle)
                shape, fortran, dtype = header
                offset = handle.tell()
            size = path.stat().st_size
        except READ_ERRORS as error:
            detail = " ".join(str(error).split())[:300] or type(error).__name__
            raise DataError(f"cannot read {path} as a .npy array ({detail})") from None
        if dtype.hasobject or fortran or len(shape) == 0:
            raise DataError(
                f"{path} must hold a numeric array in C order (no objects, no Fortran "
                "order, at least one axis); save it with numpy.save(path, np.ascontiguousarray(x))"
            )
        super().__init__(path, offset=offset, count=shape[0], row_shape=shape[1:], dtype=dtype)
        expected = self.offset + self.row_bytes * shape[0]
        if size < expected:
            raise DataError(
                f"{self.path} is truncated: {size} bytes, the header promises {expected}"
            )


class ArrayRows:
    """An in-memory array behind the same interface (``read`` and ``take`` return copies)."""

    def __init__(self, array: np.ndarray, name: str = "memory") -> None:
        self.array = np.ascontiguousarray(array)
        self.path = name
        self.shape: tuple[int, ...] = tuple(self.array.shape)
        self.dtype = self.array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.array[max(0, start) : max(0, stop)].copy()

    def take(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows of {self.path}")
        return self.array[indices]

    def __repr__(self) -> str:
        return f"ArrayRows({self.path}, shape={list(self.shape)})"


class IndexedRows:
    """Rows ``index`` of another row source, in that order (a subset without a copy)."""

    def __init__(self, rows: Rows, index: np.ndarray) -> None:
        self.rows = rows
        self.index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(self.index) and (self.index.min() < 0 or self.index.max() >= len(rows)):
            raise IndexError(f"row index out of range for {len(rows)} rows of {rows.path}")
        self.path = rows.path
        self.shape: tuple[int, ...] = (len(self.index), *rows.shape[1:])
        self.dtype = rows.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.rows.take(self.index[max(0, start) : max(0, stop)])

    def take(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows of {self.path}")
        return self.rows.take(self.index[indices])

    def __repr__(self) -> str:
        return f"IndexedRows({self.rows!r}, rows={len(self)})"


class ConcatRows:
    """Several row sources of one row shape and dtype, end to end (CIFAR-10's five batches)."""

    def __init__(self, parts: list[Rows]) -> None:
        if not parts or any(
            p.shape[1:] != parts[0].shape[1:] or p.dtype != parts[0].dtype for p in parts
        ):
            raise ValueError("ConcatRows needs one or more parts of one row shape and dtype")
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.path = parts[0].path
        self.shape: tuple[int, ...] = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(len(self), stop)
        pieces = [
            part.read(start - int(first), stop - int(first))
            for part, first, end in zip(self.parts, self.starts, self.starts[1:], strict=False)
            if start < end and stop > first
        ]
        if not pieces:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def take(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows of {self.path}")
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        part_of = np.searchsorted(self.starts, indices, side="right") - 1
        for number in np.unique(part_of):
            where = np.flatnonzero(part_of == number)
            out[where] = self.parts[number].take(indices[where] - self.starts[number])
        return out

    def __repr__(self) -> str:
        return f"ConcatRows({len(self.parts)} files from {self.path}, shape={list(self.shape)})"


#: Anything rows are read from: ``path``, ``shape``, ``dtype``, ``len``, ``read``, ``take``.
Rows = RecordRows | ArrayRows | IndexedRows | ConcatRows


def iter_chunks(rows: Rows, chunk_bytes: int = 64 << 20) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` chunks of about ``chunk_bytes`` each, in order."""
    row_bytes = math.prod(rows.shape[1:]) * np.dtype(rows.dtype).itemsize
    step = max(1, chunk_bytes // max(row_bytes, 1))
    for start in range(0, len(rows), step):
        yield start, rows.read(start, start + step)


class StandardisedRows:
    """``(x − mean) / std`` over the rows of a row source, computed per batch, float32.

    Indexing (an int, a slice or an index array/tensor) returns a float32 tensor; ``len`` and
    ``shape`` are those of the array. Each batch is converted to float32, divided by ``divide``
    when given (255 for uint8 pixels: the [0, 1] scale), then standardised. ``mean``/``std``
    None: the raw values (as float32, divided by ``divide``), exactly as the file holds them.

    ``channel_stride`` (single-channel images [N, 1, H, W] only) gives the batches the memory
    layout that indexing a whole in-memory split of that layout gave them: a slice or a row
    gets that stride on its channel axis, a batch of index rows stride 1 if it is 1 (else the
    contiguous one). The values are the same either way, but a channel stride of 1 makes
    PyTorch choose its channels-last convolution kernels, whose float32 sums differ in the last
    bits: single-channel IDX splits were [N, 1, H, W] views of [N, H, W] arrays (channel stride
    0, or 1 once a subset was taken), and keeping that layout keeps runs bit for bit what they
    were when splits were read whole.
    """

    def __init__(
        self,
        rows: Rows,
        mean: Tensor | None,
        std: Tensor | None,
        *,
        divide: float | None = None,
        channel_stride: int | None = None,
    ) -> None:
        self.rows, self.mean, self.std, self.divide = rows, mean, std, divide
        self.shape = torch.Size(rows.shape)
        self.dtype = torch.float32
        single = len(self.shape) == 4 and self.shape[1] == 1
        self.channel_stride = channel_stride if single else None

    def __len__(self) -> int:
        return len(self.rows)

    def _convert(self, array: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)
        if self.divide is not None:
            x = x.div_(self.divide)
        if self.mean is not None and self.std is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x

    def _laid_out(self, x: Tensor, *, view: bool) -> Tensor:
        stride = self.channel_stride
        if stride is None or not (view or stride == 1):
            return x
        return x.as_strided(x.shape, (x.stride(0), stride, x.stride(2), x.stride(3)))

    def __getitem__(self, index: int | slice | np.ndarray | Tensor) -> Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self._convert(self.rows.take(np.arange(start, stop, step)))
            return self._laid_out(self._convert(self.rows.read(start, stop)), view=True)
        if isinstance(index, (int, np.integer)):
            position = int(index) + (len(self) if index < 0 else 0)
            rows = self._convert(self.rows.read(position, position + 1))
            return self._laid_out(rows, view=True)[0]
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        return self._laid_out(self._convert(self.rows.take(np.asarray(index))), view=False)

    def raw(self) -> StandardisedRows:
        """The same rows without the standardisation (still divided by ``divide``)."""
        return StandardisedRows(
            self.rows, None, None, divide=self.divide, channel_stride=self.channel_stride
        )

    def __repr__(self) -> str:
        return f"StandardisedRows({self.rows.path}, shape={list(self.shape)})"
