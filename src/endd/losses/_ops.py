"""Numeric building blocks shared by the distillation losses (private).

Two CPU fast paths live here because the losses run every training step:

- torch's fused CPU softmax / log_softmax pays ~180 ns per row when the class axis is short
  (K = 10: 5× slower than four plain tensor ops); below ``_SMALL_CLASS_AXIS`` classes the
  composite form is used on CPU.
- torch's CPU digamma is a scalar loop (~20 ns per element for arguments below 10); in float32
  on CPU the shifted asymptotic series below is 4× faster at the same accuracy (~1e-6).
- Teacher tensors [B, M, K] are reduced to [B, K] a batch chunk at a time on CPU, so softmax,
  smoothing, log and the mean over members run on data that stays in cache instead of streaming
  several [B, M, K] temporaries through memory (2–3× faster at B=512, M=10, K=1000 when other
  processes compete for memory bandwidth).
On other devices the fused kernels are used unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

_SMALL_CLASS_AXIS = 32
# Teacher elements per chunk on CPU: 1 MiB of float32, comfortably inside L2.
_CPU_CHUNK_ELEMENTS = 1 << 18


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A context that switches autocast off, so the losses run in the dtype they choose.

    Under ``torch.autocast`` matmul-like ops would silently drop to bf16/fp16; the losses need
    float32 at least for lgamma/digamma and log-probabilities.
    """
    try:
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


def digamma(x: torch.Tensor) -> torch.Tensor:
    """ψ(x) for x > 0 (no autograd); a fast series for float32 on CPU, torch.digamma otherwise.

    ψ(x) = ψ(x + 6) − Σ_{k=0}^{5} 1/(x + k) and, for y = x + 6 ≥ 6,
    ψ(y) ≈ ln y − 1/(2y) − 1/(12y²) + 1/(120y⁴) − 1/(252y⁶) (truncation < 3e-9).
    """
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return torch.digamma(x)
    reciprocal_sum = torch.reciprocal(x)
    shifted = x.clone()
    for _ in range(5):
        shifted.add_(1.0)
        reciprocal_sum.add_(torch.reciprocal(shifted))
    shifted.add_(1.0)
    inverse = torch.reciprocal(shifted)
    inverse_squared = inverse * inverse
    series = (
        inverse_squared.mul(-1.0 / 252.0)
        .add_(1.0 / 120.0)
        .mul_(inverse_squared)
        .sub_(1.0 / 12.0)
        .mul_(inverse_squared)
    )
    return shifted.log_().sub_(inverse.mul_(0.5)).add_(series).sub_(reciprocal_sum)


def reduce_teacher_in_chunks(
    reduce: Callable[[torch.Tensor], torch.Tensor], teacher_logits: torch.Tensor
) -> torch.Tensor:
    """``reduce(teacher_logits)`` for a row-wise ``reduce`` ([b, M, K] → [b, ...]), chunked on CPU.

    Chunks only when no gradient is needed, on CPU, and when the batch spans several chunks;
    otherwise calls ``reduce`` once.
    """
    batch_size, num_members, num_classes = teacher_logits.shape
    rows_per_chunk = max(1, _CPU_CHUNK_ELEMENTS // max(1, num_members * num_classes))
    if (
        teacher_logits.requires_grad
        or teacher_logits.device.type != "cpu"
        or batch_size <= rows_per_chunk
    ):
        return reduce(teacher_logits)
    return torch.cat(
        [
            reduce(teacher_logits[start : start + rows_per_chunk])
            for start in range(0, batch_size, rows_per_chunk)
        ]
    )
