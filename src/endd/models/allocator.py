"""CPU allocator settings that batched convolutional ensembles need to pay off.

A batched ensemble's activations are M times larger than one member's (128 MB instead of 13 MB
for the first feature map of 10 small CNNs at batch 128). glibc serves blocks that large with
``mmap`` and unmaps them on free, so every training step page-faults its activations in afresh:
measured here, the batched 10-member small-CNN step took 0.54× the speed of training the members
one after another with glibc's defaults and 0.96–1.09× with freed memory kept (sequential
training barely changed). Call :func:`keep_freed_memory` once at process start-up on CPU runs.

Kept memory has a cost: a heap that fragments (batch buffers of varying lifetimes) grows with every
step and never shrinks, by a different amount each run. :func:`release_freed_memory`
(``malloc_trim``) hands the free pages back; the training loop calls it every so often
(:class:`endd.engine.trainer.ReleaseFreedMemory`: after 32 steps and 1 s), so the steps in between
keep the speed of kept memory. ``benchmarks/bench_release_memory.py`` measures both (peaks and
times in docs/benchmarks.md, "Image datasets on disk").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

__all__ = ["keep_freed_memory", "release_freed_memory"]

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    Sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, not from fresh ``mmap`` pages) and
    ``M_TRIM_THRESHOLD = trim_threshold`` (up to that much free heap is kept). The process's
    resident memory then stays at its peak; the same effect as starting Python with
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824``. Process-wide and not undone.

    Args:
        trim_threshold: Bytes of free memory at the top of the heap to keep.

    Returns:
        True if the setting was applied (Linux with glibc), False otherwise (a no-op).
    """
    if trim_threshold < 0:
        raise ValueError(f"trim_threshold must be >= 0, got {trim_threshold}")
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1))
    )


def release_freed_memory() -> bool:
    """Return the free pages of every malloc arena to the kernel (glibc's ``malloc_trim(0)``).

    Unlike the trim glibc does on its own, this also releases whole free pages in the middle of a
    fragmented heap, and it ignores the threshold :func:`keep_freed_memory` sets. Nothing live is
    touched; memory used again afterwards is faulted back in (the cost the kept memory avoids), so
    call it every so many steps, not every step.

    Returns:
        True if memory was returned to the kernel, False if there was none to return or the
        platform is not glibc (a no-op).
    """
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    return None if name is None else ctypes.CDLL(name)
