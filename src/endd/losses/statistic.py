"""The EnD² teacher statistic of a whole dataset, one table per temperature, and its look-ups.

EnD² needs the teacher only through S_c = mean_m ln π_mc, with π_m the smoothed softmax(t_m / T)
(``mean_teacher_log_probs``): a function of the teacher, T and ε alone. A training loop that holds
T fixed for many steps can compute it once for all N inputs, an [N, K] table M times smaller than
the logits [N, M, K], and take each batch's rows from it; the loss is then
``endd_loss_from_mean_log_probs(student_logits, rows, temperature=T)``.

- ``teacher_statistic_table(logits, temperatures, smoothing=ε)``: {T: [N, K]}, computed a chunk
  of rows at a time (memory stays at one chunk's temporaries besides the tables).
- ``statistic_rows(table, rows)``: a batch's rows, in the layout the per-batch computation gives.
- ``statistic_at(tables, T, rows)``: the rows at T; between two stored temperatures, linear
  interpolation in T (or in 1/T). At a stored temperature nothing is interpolated.

Exactness: a table row equals, bit for bit, the statistic the per-batch computation
(``mean_teacher_log_probs`` / ``endd_loss``) gives that row in a batch of B rows whenever
``table_is_exact_for(B, M, K, device)``: on the CPU, B a multiple of 32, and no kernel split over
threads. Elsewhere they agree to float32 rounding (last bits), not bit for bit: torch's CPU loops
finish the elements past the last full vector block with scalar code, whose ``exp2`` differs from
the vectorised one in the last bit, so a row's statistic can depend on where it sits in its batch.

Reduced cache: for large M · K, store ``teacher_statistic_table(logits, levels, smoothing=ε)``
for a few temperature levels instead of the logits ([N, K] per level), and feed
``StudentModule(..., teacher_statistics=tables, statistic_loss=endd_loss_from_mean_log_probs)``
batches of row indices (``batch_loader(x, torch.arange(N), ...)``): each step then uses
``statistic_at(tables, T, rows)``. At a stored level it is the statistic itself (bit for bit
the per-batch one where ``table_is_exact_for``); between levels, see ``statistic_at``
(benchmarks/statistic_interpolation.py measures the loss error).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Literal

import torch

from endd.losses._ops import (
    _ROW_QUANTUM,
    compute_dtype,
    row_independent_chunk,
    rows_per_chunk,
    statistic_is_row_independent,
)
from endd.losses._validation import check_smoothing, check_temperature
from endd.losses.endd import _mean_teacher_log_probs

__all__ = [
    "statistic_at",
    "statistic_rows",
    "table_chunk_rows",
    "table_is_exact_for",
    "teacher_statistic_table",
]

Interpolation = Literal["temperature", "inverse_temperature"]


def teacher_statistic_table(
    teacher_logits: torch.Tensor,
    temperatures: float | Iterable[float],
    *,
    smoothing: float = 0.0,
    chunk_rows: int | None = None,
) -> dict[float, torch.Tensor]:
    """mean_m ln π_mc of every input at each temperature: {T: [N, K]}.

    Args:
        teacher_logits: Member logits (or log-probabilities) of the whole set, [N, M, K]: a
            tensor, or rows read from disk a slice at a time (``endd.store.TeacherRows``).
        temperatures: One temperature or several (each finite and > 0); the keys of the result
            are ``float(T)``.
        smoothing: Central smoothing ε ∈ [0, 1) of the member probabilities, as in
            ``endd_loss``.
        chunk_rows: Rows computed at a time (rounded down to a multiple of 32, at least 32; at
            most what the per-batch computation takes in one piece). Default: the most rows for
            which the result is row for row exact (see the module docstring), else as many as
            the per-batch computation takes in one piece (≈ 4 MiB of logits).

    Returns:
        {float(T): table [N, K]} in float32 (float64 for float64 logits), detached, on the
        logits' device. For K < 32 on the CPU a table is the transposed view of a [K, N]
        tensor, as the per-batch statistic is; ``statistic_rows`` keeps that layout.

    Raises:
        ValueError: If the logits are not a floating-point [N, M, K] tensor with N, M ≥ 1 and
            K ≥ 2, or on no temperature, a bad temperature, smoothing or chunk_rows.
    """
    if not _rows_like(teacher_logits) or not teacher_logits.is_floating_point():
        raise ValueError(
            "teacher_logits must be a floating-point torch.Tensor (or rows read on demand, "
            "like endd.store.TeacherRows)"
        )
    if teacher_logits.ndim != 3 or min(teacher_logits.shape[:2]) < 1 or teacher_logits.shape[2] < 2:
        raise ValueError(
            "teacher_logits must have shape [N, M, K] with N, M >= 1 and K >= 2, "
            f"got shape {tuple(teacher_logits.shape)}"
        )
    if isinstance(temperatures, int | float):
        temperatures = [temperatures]
    levels = sorted({check_temperature(t) for t in temperatures})
    if not levels:
        raise ValueError("temperatures must hold at least one temperature")
    smoothing = check_smoothing(smoothing)
    if chunk_rows is not None and (
        isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1
    ):
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    return {
        level: _statistic_table(teacher_logits, level, smoothing, chunk_rows) for level in levels
    }


def _rows_like(value: object) -> bool:
    """A tensor, or an object that gives one for a slice of rows (``TeacherRows``)."""
    if isinstance(value, torch.Tensor):
        return True
    return all(hasattr(value, a) for a in ("shape", "dtype", "ndim", "__getitem__"))


def statistic_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``table[rows]``, [B, K], in the layout the per-batch statistic of those rows has.

    A table stored as the transposed view of a [K, N] tensor (K < 32 on the CPU) gives the
    transposed view of a [K, B] tensor, as ``mean_teacher_log_probs`` of a batch does there. A
    table read from disk (``endd.store.TeacherRows`` over an [N, K] file, row-major) gives its
    rows in that same layout.
    """
    if not isinstance(table, torch.Tensor):
        taken = table[rows]
        if _per_batch_layout_is_transposed(taken.shape[1]) and taken.device.type == "cpu":
            taken = taken.t().contiguous().t()
        return taken
    if table.stride(0) == 1 and table.stride(1) != 1:
        return table.t().index_select(1, rows).t()
    return table.index_select(0, rows)


def statistic_at(
    tables: Mapping[float, torch.Tensor],
    temperature: float,
    rows: torch.Tensor | None = None,
    *,
    interpolation: Interpolation = "temperature",
) -> torch.Tensor:
    """The statistic at ``temperature`` from tables at stored temperatures (rows ``rows``).

    At a stored temperature: that table's rows, untouched (bit for bit the table). Between the
    stored T_lo < T < T_hi: (1 − w) · S(T_lo) + w · S(T_hi), with w = (T − T_lo) / (T_hi − T_lo)
    (``interpolation="temperature"``) or w = (1/T − 1/T_lo) / (1/T_hi − 1/T_lo)
    (``"inverse_temperature"``). Without smoothing S = β · mean_m t_m − mean_m lse(β t_m) in
    β = 1/T, its first term linear in β; with smoothing, ln π_mc flattens at ln(ε/K) wherever
    (t_mc − max_c t_mc)/T falls below it, a kink that moves with T. Which is the more accurate
    depends on the logits: on the spiral run (ε = 1e-4, 5 → 1) linear in T, by 1.1–1.7× in the
    loss (benchmarks/statistic_interpolation.py); on tests/test_statistic_table.py's synthetic
    ensemble linear in 1/T, by 2.7–3.6×. Measure on your own logits before choosing levels.

    Args:
        tables: {T: [N, K]} as from ``teacher_statistic_table``.
        temperature: T > 0, within [min(tables), max(tables)]: no extrapolation.
        rows: Row indices [B] (int64, on the tables' device), or None for all rows.
        interpolation: "temperature" or "inverse_temperature".

    Returns:
        [B, K] (or [N, K]).

    Raises:
        ValueError: On no tables, a bad temperature, one outside the stored range, or an unknown
            interpolation.
    """
    if not tables:
        raise ValueError("tables is empty: store at least one temperature")
    if interpolation not in ("temperature", "inverse_temperature"):
        raise ValueError(
            f"interpolation must be 'temperature' or 'inverse_temperature', got {interpolation!r}"
        )
    temperature = check_temperature(temperature)

    def take(table: torch.Tensor) -> torch.Tensor:
        return table if rows is None else statistic_rows(table, rows)

    if temperature in tables:
        return take(tables[temperature])
    lower = max((level for level in tables if level < temperature), default=None)
    upper = min((level for level in tables if level > temperature), default=None)
    if lower is None or upper is None:
        raise ValueError(
            f"temperature {temperature} is outside the stored range "
            f"[{min(tables)}, {max(tables)}]: tables are not extrapolated"
        )
    if interpolation == "temperature":
        weight = (temperature - lower) / (upper - lower)
    else:
        weight = (1.0 / temperature - 1.0 / lower) / (1.0 / upper - 1.0 / lower)
    return torch.lerp(take(tables[lower]), take(tables[upper]), weight)


def table_is_exact_for(
    batch_rows: int, num_members: int, num_classes: int, device: torch.device | str
) -> bool:
    """Whether a table row equals, bit for bit, the statistic a batch of ``batch_rows`` rows of
    [batch_rows, M, K] logits on ``device`` computes for it (``endd_loss``,
    ``mean_teacher_log_probs``), with the torch thread count now and the table computed with
    the default ``chunk_rows``. See the module docstring."""
    # The default chunk is then at least batch_rows rows, so the table is row-independent too.
    return statistic_is_row_independent(batch_rows, num_members, num_classes, device)


@functools.cache
def _per_batch_layout_is_transposed(num_classes: int) -> bool:
    """Whether the per-batch statistic on the CPU is the transposed view of a [K, B] tensor."""
    like = _mean_teacher_log_probs(
        torch.zeros(_ROW_QUANTUM, 1, num_classes), 1.0, 0.0, torch.float32
    )
    return like.stride(0) == 1 and like.stride(1) != 1


def table_chunk_rows(num_members: int, num_classes: int) -> int:
    """The rows ``teacher_statistic_table`` computes at a time by default (a multiple of 32):
    a table computed in slices that start at multiples of it equals the whole table."""
    return _chunk(num_members, num_classes, None)


def _chunk(num_members: int, num_classes: int, requested: int | None) -> int:
    """Rows per chunk of a table: a multiple of 32, unchunked by the per-batch computation."""
    whole = rows_per_chunk(num_members, num_classes) // _ROW_QUANTUM * _ROW_QUANTUM
    whole = max(_ROW_QUANTUM, whole)
    if requested is None:
        return row_independent_chunk(num_members, num_classes) or whole
    return min(max(_ROW_QUANTUM, requested // _ROW_QUANTUM * _ROW_QUANTUM), whole)


@torch.no_grad()
def _statistic_table(
    teacher_logits: torch.Tensor, temperature: float, smoothing: float, chunk_rows: int | None
) -> torch.Tensor:
    """One [N, K] table (arguments checked). Every chunk is computed as a batch of a multiple of
    32 rows (the last one padded with zero logits), by the per-batch code itself."""
    num_rows, num_members, num_classes = teacher_logits.shape
    dtype = compute_dtype(teacher_logits)
    chunk = _chunk(num_members, num_classes, chunk_rows)
    teacher_logits = teacher_logits.detach()
    table = None
    for start in range(0, num_rows, chunk):
        part = teacher_logits[start : start + chunk]
        rows = len(part)
        padded = math.ceil(rows / _ROW_QUANTUM) * _ROW_QUANTUM
        if padded != rows:
            part = torch.cat([part, part.new_zeros(padded - rows, num_members, num_classes)])
        statistic = _mean_teacher_log_probs(part, temperature, smoothing, dtype)
        if table is None:
            table = _empty_table(statistic, num_rows)
        table[start : start + rows] = statistic[:rows]
    return table


def _empty_table(like: torch.Tensor, num_rows: int) -> torch.Tensor:
    """An uninitialised [num_rows, K] table in the layout of the per-batch statistic ``like``."""
    num_classes = like.shape[1]
    if like.stride(0) == 1 and like.stride(1) != 1:  # transposed view of [K, b]
        return torch.empty(num_classes, num_rows, dtype=like.dtype, device=like.device).t()
    return torch.empty(num_rows, num_classes, dtype=like.dtype, device=like.device)
