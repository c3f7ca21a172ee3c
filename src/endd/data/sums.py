"""numpy's float64 sums, reproduced over arrays read a chunk at a time.

numpy adds a float64 array's values pairwise: it halves a run of ``n`` values (the first half
rounded down to a multiple of 8) until a piece is small, and adds the halves' sums. So the sum
of the two halves' sums, each computed by numpy on its piece alone, is numpy's sum of the whole
run, bit for bit: :func:`pairwise_sum` computes a run that is never in memory whole from pieces
of at most ``leaf`` values. With those, statistics computed chunk by chunk from disk keep the
float64 numbers that numpy computed on whole in-memory arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["LEAF_VALUES", "pairwise_sum"]

#: The largest piece summed at once (float64: 8 MiB).
LEAF_VALUES = 1 << 20


def pairwise_sum(
    values: Callable[[int, int], np.ndarray], first: int, count: int, leaf: int = LEAF_VALUES
) -> float:
    """``np.add.reduce`` of a contiguous float64 run of ``count`` values from ``first``, where
    ``values(a, b)`` returns values ``a:b`` of the run (float64, 1-D)."""
    if count <= leaf:
        return float(np.add.reduce(values(first, first + count)))
    half = count // 2
    half -= half % 8
    return pairwise_sum(values, first, half, leaf) + pairwise_sum(
        values, first + half, count - half, leaf
    )
