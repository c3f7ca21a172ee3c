"""Numeric building blocks shared by the distillation losses (private).

The losses run every training step, so the CPU paths here are written against two costs that
dominate at the sizes distillation uses (B = 512, M = 10, K = 10 … 1000):

- Per-op overhead. A torch op on a small tensor costs ~1–2 µs of dispatch, and ~2 µs more when
  an argument is a Python number (torch wraps it into a tensor and converts it every call), so
  fixed constants are cached zero-dimensional tensors (``constant``) and the fast paths are
  counted in ops. torch's fused CPU softmax / log_softmax pays ~180 ns per row when the class
  axis is short (K = 10: 5× slower than four plain tensor ops); below ``_SMALL_CLASS_AXIS``
  classes the composite form is used on CPU.
- Transcendental functions. On this project's CPUs torch's float32 ``exp`` costs ~1 ns per
  element, ``exp2`` ~0.4 ns, ``log`` ~1.4 ns, ``lgamma`` ~6–9 ns and ``digamma`` ~20 ns (a scalar
  loop). The teacher statistic therefore uses ``exp2`` with ln 2 folded into the temperature
  scale, takes one ``log`` of a product over members instead of M logs (``teacher_statistics``),
  and in float32 on CPU digamma is a shifted asymptotic series (``digamma``).

Teacher tensors [B, M, K] are reduced to [B, K] a batch chunk at a time on CPU, so the passes
over the members run on data that stays in cache instead of streaming several [B, M, K]
temporaries through memory. On other devices, and whenever the teacher needs a gradient, the
plain differentiable formulas are used.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

import torch

_SMALL_CLASS_AXIS = 32
# Teacher elements per chunk on CPU: 4 MiB of float32. With a dozen ops per chunk, fewer larger
# chunks beat L2-sized ones (B=512, M=10, K=1000, best of 7: 5.4–5.7 ms at 4 MiB, 6.1–6.3 ms at
# 1 MiB, 8.4–9.2 ms unchunked).
_CPU_CHUNK_ELEMENTS = 1 << 20
# A statistic computed on a CPU tensor of a multiple of this many rows, unchunked and with no
# kernel split over threads, is the same row for row whichever rows share the tensor (see
# ``statistic_is_row_independent``).
_ROW_QUANTUM = 32
# torch splits a CPU kernel over threads only above this many elements (at::internal::GRAIN_SIZE).
_TORCH_GRAIN_SIZE = 32768
_LOG2_E = 1.0 / math.log(2.0)
_LN_2 = math.log(2.0)
# Largest |log2| the teacher statistic lets a value or a product of values reach: inside the
# normal range of the dtype with room to spare (float32 normals span 2^-126 … 2^128).
_MAX_LOG2 = {torch.float32: 120, torch.float64: 1000}


@functools.lru_cache(maxsize=1024)
def constant(value: float, dtype: torch.dtype) -> torch.Tensor:
    """A cached zero-dimensional CPU tensor holding ``value`` in ``dtype``; never modify it.

    Ops take it as a scalar operand (on any device) without the per-call cost of converting a
    Python number.
    """
    return torch.tensor(value, dtype=dtype)


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A context that switches autocast off, so the losses run in the dtype they choose.

    Under ``torch.autocast`` matmul-like ops would silently drop to bf16/fp16; the losses need
    float32 at least for lgamma/digamma and log-probabilities. A no-op context (no dispatcher
    state touched) when autocast is off for the device already.
    """
    try:
        if not torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to switch off
        return contextlib.nullcontext()


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (16-bit inputs are upcast)."""
    if any(tensor.dtype == torch.float64 for tensor in tensors):
        return torch.float64
    return torch.float32


def _use_composite(logits: torch.Tensor) -> bool:
    return logits.device.type == "cpu" and logits.shape[-1] < _SMALL_CLASS_AXIS


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """softmax over the last axis."""
    if not _use_composite(logits):
        return torch.softmax(logits, dim=-1)
    shifted = logits - logits.amax(dim=-1, keepdim=True).detach()
    exps = torch.exp(shifted)
    return exps / exps.sum(dim=-1, keepdim=True)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last axis."""
    if not _use_composite(logits):
        return torch.log_softmax(logits, dim=-1)
    shifted = logits - logits.amax(dim=-1, keepdim=True).detach()
    return shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))


def teacher_log_probs(
    teacher_logits: torch.Tensor, temperature: float, smoothing: float, dtype: torch.dtype
) -> torch.Tensor:
    """ln π_mc of the heated members, smoothed as π ← (1 − ε)π + ε/K; shape [B, M, K].

    No argument checks (callers validate). When ``teacher_logits`` needs no gradient the work is
    done in place on fresh buffers; the input is never modified.
    """
    with autocast_disabled(teacher_logits.device.type):
        logits = teacher_logits.to(dtype)
        if temperature != 1.0:
            logits = logits / temperature
        if smoothing == 0.0:
            return log_softmax(logits)
        num_classes = logits.shape[-1]
        # (1 − ε)π + ε/K ≥ ε/K, so its logarithm never meets log(0), whatever the logits.
        probs = softmax(logits)
        if probs.requires_grad:
            return torch.log(probs * (1.0 - smoothing) + smoothing / num_classes)
        return probs.mul_(1.0 - smoothing).add_(smoothing / num_classes).log_()


def teacher_statistics(
    teacher_logits: torch.Tensor,
    temperature: float,
    smoothing: float,
    dtype: torch.dtype,
    *,
    with_mean_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """mean_m ln π_mc and, if asked, mean_m π_mc of the heated, smoothed members; [B, K] each.

    No argument checks and no chunking (callers do both). The input is never modified. Through
    ``teacher_log_probs`` (differentiable) when the teacher needs a gradient or is not on the
    CPU; otherwise by ``_teacher_statistics_cpu``, the same values to rounding.
    """
    if teacher_logits.requires_grad or teacher_logits.device.type != "cpu":
        with autocast_disabled(teacher_logits.device.type):
            log_probs = teacher_log_probs(teacher_logits, temperature, smoothing, dtype)
            mean_log_probs = log_probs.mean(dim=1)
            if not with_mean_probs:
                return mean_log_probs, None
            return mean_log_probs, torch.exp(log_probs).mean(dim=1)
    if teacher_logits.dtype != dtype:
        teacher_logits = teacher_logits.to(dtype)
    with autocast_disabled("cpu"):
        return _teacher_statistics_cpu(teacher_logits, temperature, smoothing, with_mean_probs)


def _teacher_statistics_cpu(
    logits: torch.Tensor, temperature: float, smoothing: float, with_mean_probs: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``teacher_statistics`` in few passes over [B, M, K], for CPU tensors without gradient.

    With y = log2(e) · (t − max_c t_c) / T, e = 2^y and s_m = Σ_c e_mc (so π_mc = e_mc / s_m;
    exp2 is 2.5× cheaper than exp on CPU):

    - ε = 0: ln π_mc = y_mc ln 2 − ln s_m, so mean_m ln π_mc needs no elementwise log at all.
    - ε > 0: a_mc = κ π'_mc = e_mc · κ(1 − ε)/s_m + κ ε/K (two in-place passes) and
      mean_m ln π'_mc = ln(Π_m a_mc) / M − ln κ: one log per [B, K] element instead of M. The
      power of two κ centres a ∈ [κ ε/K, κ] on 1 in log space, and members are multiplied in
      groups small enough that no partial product leaves the normal range.

    For a short class axis the work runs on a [K, M, B] copy: reductions over classes and the
    per-member broadcasts then run along contiguous batch rows (one transposing copy costs less
    than the slow inner-axis reductions it replaces); results come back as [B, K] views.
    """
    batch_size, num_members, num_classes = logits.shape
    dtype = logits.dtype
    scale = constant(_LOG2_E / temperature, dtype)
    if num_classes < _SMALL_CLASS_AXIS:
        class_dim = 0
        exponents = torch.empty((num_classes, num_members, batch_size), dtype=dtype)
        exponents.copy_(logits.permute(2, 1, 0))
        exponents.sub_(exponents.amax(dim=0, keepdim=True)).mul_(scale)
    else:
        class_dim = -1
        exponents = torch.sub(logits, logits.amax(dim=-1, keepdim=True)).mul_(scale)
    if smoothing == 0.0:
        exponent_sums = exponents.sum(dim=1)  # Σ_m y_mc, before exp2 overwrites y
    exps = exponents.exp2_()
    sums = exps.sum(dim=class_dim, keepdim=True)  # s_m ∈ [1, K]
    mean_probs = None
    if smoothing == 0.0:
        if with_mean_probs:
            mean_probs = exps.div_(sums).sum(dim=1).mul_(constant(1.0 / num_members, dtype))
        log_sums = sums.log_().sum(dim=1)
        mean_log_probs = exponent_sums.mul_(constant(_LN_2, dtype)).sub_(log_sums)
        mean_log_probs.mul_(constant(1.0 / num_members, dtype))
    else:
        # log2(K/ε) is the spread of π' in log2 units; κ = 2^round(half of it) centres it on 1.
        spread = math.log2(num_classes / smoothing)
        group = max(1, min(num_members, int(_MAX_LOG2[dtype] // (spread / 2 + 0.5))))
        log2_kappa = round(spread / 2) if group > 1 else 0
        kappa = 2.0**log2_kappa
        scaled = exps.mul_(torch.div(constant((1.0 - smoothing) * kappa, dtype), sums))
        scaled.add_(constant(smoothing * kappa / num_classes, dtype))  # κ π'
        if with_mean_probs:
            mean_probs = scaled.sum(dim=1).mul_(constant(1.0 / (kappa * num_members), dtype))
        if group == 1:
            log_sum = scaled.log_().sum(dim=1)
        elif group == num_members:
            log_sum = scaled.prod(dim=1).log_()
        else:
            log_sum = scaled.narrow(1, 0, group).prod(dim=1).log_()
            for start in range(group, num_members, group):
                length = min(group, num_members - start)
                log_sum.add_(scaled.narrow(1, start, length).prod(dim=1).log_())
        mean_log_probs = torch.addcmul(
            constant(-log2_kappa * _LN_2, dtype),
            log_sum,
            constant(1.0 / num_members, dtype),
            out=log_sum,
        )
    if class_dim == 0:
        return mean_log_probs.t(), None if mean_probs is None else mean_probs.t()
    return mean_log_probs, mean_probs


def digamma(x: torch.Tensor) -> torch.Tensor:
    """ψ(x) for x > 0 (no autograd); a fast series for float32 on CPU, torch.digamma otherwise.

    ψ(x) = ψ(x + 4) − Σ_{k=0}^{3} 1/(x + k), where the pairs k, 3 − k give
    1/(x + k) + 1/(x + 3 − k) = (2x + 3)/(u + k(3 − k)) with u = x(x + 3), and with
    v = x + 4 − 1/2 ≥ 3.5 the series ψ(v + 1/2) ≈ ln v + 1/(24v²) − 7/(960v⁴) + 31/(8064v⁶)
    − 127/(30720v⁸) (truncation < 3e-8). Fourteen tensor ops on four buffers: per-op overhead
    dominates small tensors, and fresh buffers cost page faults on large ones. For x > 1.8e19,
    u = inf makes the reciprocal sum 0, its value to float32 precision there. Accurate to
    ~3e-7 (relative, or absolute where |ψ| < 1).
    """
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return torch.digamma(x)
    f32 = torch.float32
    shifted = torch.add(x, constant(3.0, f32))
    pair_products = torch.mul(x, shifted)  # u
    pair_sums = torch.add(x, shifted)  # 2x + 3
    shifted.add_(constant(0.5, f32))  # v
    inverse_squared = torch.mul(shifted, shifted).reciprocal_()
    result = shifted.log_()
    result.addcdiv_(pair_sums, pair_products, value=-1.0)
    result.addcdiv_(pair_sums, pair_products.add_(constant(2.0, f32)), value=-1.0)
    series = torch.addcmul(
        constant(31 / 8064, f32), inverse_squared, constant(-127 / 30720, f32), out=pair_sums
    )
    for coefficient in (-7 / 960, 1 / 24):
        torch.addcmul(constant(coefficient, f32), inverse_squared, series, out=series)
    return result.addcmul_(inverse_squared, series)


def trigamma(x: torch.Tensor) -> torch.Tensor:
    """ψ'(x) for x > 0 (no autograd): torch.polygamma(1, x).

    torch's CPU trigamma is already ~8 ns per element; a float32 series in the style of
    ``digamma`` (19 ops) measured slower at both K = 10 and K = 1000.
    """
    return torch.polygamma(1, x)


def concentration_buffer(batch_size: int, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """An empty flat buffer [c (B·K, row-major) | c₀ (B)] for concentrations and their sums.

    Both parts are contiguous (elementwise ops on them are vectorised) and one call of lgamma,
    digamma or trigamma covers both. See ``class_part`` and ``total_part`` for the views.
    """
    return torch.empty(batch_size * (num_classes + 1), dtype=like.dtype, device=like.device)


def exp_concentrations(
    student_logits: torch.Tensor,
    temperature: float,
    low: float | None,
    high: float,
    offset: float = 0.0,
) -> torch.Tensor:
    """A ``concentration_buffer`` of α = exp(clamp(z / T, low, high)) + offset and α₀ = Σ_c α_c.

    exp is computed as 2^(z · log2(e) / T) (exp2 is 2.5× cheaper than exp on CPU). ``low`` may be
    None (no lower bound).
    """
    batch_size, num_classes = student_logits.shape
    dtype = student_logits.dtype
    buffer = concentration_buffer(batch_size, num_classes, student_logits)
    alphas = class_part(buffer, batch_size, num_classes)
    torch.mul(student_logits, constant(_LOG2_E / temperature, dtype), out=alphas)
    alphas.clamp_(None if low is None else low * _LOG2_E, high * _LOG2_E).exp2_()
    if offset:
        alphas.add_(constant(offset, dtype))
    torch.sum(alphas, dim=-1, out=total_part(buffer, batch_size, num_classes))
    return buffer


def class_part(buffer: torch.Tensor, batch_size: int, num_classes: int) -> torch.Tensor:
    """The [B, K] view of a ``concentration_buffer`` (as_strided: the cheapest view, ~1 µs)."""
    return buffer.as_strided((batch_size, num_classes), (num_classes, 1))


def total_part(buffer: torch.Tensor, batch_size: int, num_classes: int) -> torch.Tensor:
    """The [B] view of the sums in a ``concentration_buffer``."""
    offset = buffer.storage_offset() + batch_size * num_classes
    return buffer.as_strided((batch_size,), (1,), offset)


def reduce_teacher_in_chunks(reduce: Callable, teacher_logits: torch.Tensor):
    """``reduce(teacher_logits)`` for a row-wise ``reduce`` ([b, M, K] → [b, ...]), chunked on CPU.

    ``reduce`` returns a tensor or a tuple of tensors (or None entries); chunk results are
    concatenated along the batch. Chunks only when no gradient is needed, on CPU, and when the
    batch spans several chunks; otherwise calls ``reduce`` once.
    """
    batch_size, num_members, num_classes = teacher_logits.shape
    chunk = rows_per_chunk(num_members, num_classes)
    if teacher_logits.requires_grad or teacher_logits.device.type != "cpu" or batch_size <= chunk:
        return reduce(teacher_logits)
    parts = [reduce(teacher_logits[start : start + chunk]) for start in range(0, batch_size, chunk)]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return tuple(
        None if column[0] is None else torch.cat(column) for column in zip(*parts, strict=True)
    )


def rows_per_chunk(num_members: int, num_classes: int) -> int:
    """Rows of a [B, M, K] teacher that ``reduce_teacher_in_chunks`` reduces at a time on CPU."""
    return max(1, _CPU_CHUNK_ELEMENTS // max(1, num_members * num_classes))


def statistic_is_row_independent(
    num_rows: int, num_members: int, num_classes: int, device: torch.device | str
) -> bool:
    """Whether ``teacher_statistics`` of a [num_rows, M, K] tensor (through
    ``reduce_teacher_in_chunks``) gives every row, bit for bit, the value it gets in any other
    such tensor: then a statistic computed once for a whole dataset equals, row for row, what
    any batch of this size would compute.

    In general it does not: torch's CPU loops run a vectorised body over 2 × (vector width)
    elements at a time and finish the remainder with scalar code, whose ``exp2`` differs from
    the vectorised one in the last bit for ~6 % of inputs, and sums over the member axis add
    the remainder's columns in another order; the rows that land in a remainder, or at the
    edge of a thread's share, get different last bits. No remainder and no split exist when
    (all four):

    - the tensor is on the CPU (other devices: not examined, so False);
    - ``num_rows`` is a multiple of 32: every pass covers num_rows × (a product of M and K)
      elements, and no CPU vector is wider than 16 float32 lanes;
    - it is reduced in one piece (at most ``rows_per_chunk`` rows);
    - no kernel is split over threads: torch runs one thread, or the tensor has at most
      32768 elements (torch's grain size for CPU kernels).
    """
    if torch.device(device).type != "cpu" or num_rows <= 0 or num_rows % _ROW_QUANTUM:
        return False
    if num_rows > rows_per_chunk(num_members, num_classes):
        return False
    elements = num_rows * num_members * num_classes
    return torch.get_num_threads() == 1 or elements <= _TORCH_GRAIN_SIZE


def row_independent_chunk(num_members: int, num_classes: int) -> int:
    """The most rows, a multiple of 32, for which ``statistic_is_row_independent`` holds on the
    CPU now; 0 if none does (several threads and more than 1024 = 32768 / 32 elements a row)."""
    limit = rows_per_chunk(num_members, num_classes)
    if torch.get_num_threads() != 1:
        limit = min(limit, _TORCH_GRAIN_SIZE // max(1, num_members * num_classes))
    return limit // _ROW_QUANTUM * _ROW_QUANTUM
