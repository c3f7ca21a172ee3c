"""Whole-batch feeding of in-memory tensors.

Per-sample ``__getitem__`` + collate costs more than a small model's step (DESIGN.md measured 1.5 vs
0.6 ms/step), so batches are gathered by one index operation. The shuffle of epoch ``e`` is a pure
function of ``(seed, e)``: a run resumed at epoch ``e`` sees exactly the batches an uninterrupted
run would, which is what makes a killed run's final metrics equal an uninterrupted one's.

A loader may mix *groups* of data in every batch: with training data (the primary group) and
auxiliary data, each batch is ``batch_size`` training samples plus an equal share of the auxiliary
set, so one epoch passes once over each group and the number of steps is set by the training set;
such a batch ends with a boolean mask of its auxiliary rows, so the loss can weight them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


class TensorBatches(Dataset):
    """Groups of tensors; within a group they share the first dimension. ``__getitems__`` takes
    one index tensor per group and returns the concatenated batch, one tensor per position."""

    def __init__(self, groups: Sequence[Sequence[Tensor]]) -> None:
        if not groups or not groups[0]:
            raise ValueError("TensorBatches needs at least one group of tensors")
        arity = len(groups[0])
        for group in groups:
            if len(group) != arity:
                raise ValueError("every group must hold the same number of tensors")
            if any(len(t) != len(group[0]) for t in group):
                raise ValueError("tensors of a group must have the same first dimension")
        self.groups = [tuple(group) for group in groups]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(group[0]) for group in self.groups)

    def __len__(self) -> int:
        return self.sizes[0]

    def __getitems__(self, indices: Sequence[Tensor]) -> tuple[Tensor, ...]:
        parts = [
            [t[index] for t in group] for group, index in zip(self.groups, indices, strict=True)
        ]
        if len(parts) == 1:
            return tuple(parts[0])
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))


class EpochSeededBatchSampler(Sampler[list[Tensor]]):
    """Shuffled batches whose order depends only on ``(seed, epoch)``; one index tensor per group.

    The first group sets the number of batches (``ceil(size / batch_size)``); every other group
    is split evenly across those batches. Lightning calls :meth:`set_epoch` at the start of every
    epoch (also after a resume).

    Under data-parallel training (:meth:`shard`), every rank draws the same batches and takes
    its own contiguous slice of each: rank ``r`` of ``n`` takes rows ``[r·b/n, (r+1)·b/n)`` of
    a batch of ``b`` (of every group). ``batch_size`` stays the global batch: each rank takes
    as many steps as one process would, and DDP's average of the ranks' gradients is the
    gradient of the whole batch (exactly so, up to rounding, when ``n`` divides every batch's
    rows). A primary slice is never empty: a batch of fewer than ``n`` rows gives rank ``r``
    its row ``r mod b``.
    """

    def __init__(
        self, sizes: Sequence[int], batch_size: int, *, seed: int, shuffle: bool = True
    ) -> None:
        if not sizes or min(sizes) <= 0 or batch_size <= 0:
            raise ValueError("group sizes and batch_size must be positive")
        self.sizes, self.batch_size, self.seed, self.shuffle = (
            tuple(sizes),
            batch_size,
            seed,
            shuffle,
        )
        self.epoch = 0
        self.rank, self.world = 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world: int) -> None:
        """Yield only rank ``rank``'s slice of every batch, of ``world`` ranks (0, 1: all)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of {world} ranks")
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return -(-self.sizes[0] // self.batch_size)

    def __iter__(self) -> Iterator[list[Tensor]]:
        orders = []
        for group, size in enumerate(self.sizes):
            if self.shuffle:
                seed = (self.seed * 1_000_003 + self.epoch) * 7 + group
                orders.append(torch.randperm(size, generator=torch.Generator().manual_seed(seed)))
            else:
                orders.append(torch.arange(size))
        batches = len(self)
        for b in range(batches):
            batch = [
                order[b * len(order) // batches : (b + 1) * len(order) // batches]
                if g
                else order[b * self.batch_size : (b + 1) * self.batch_size]
                for g, order in enumerate(orders)
            ]
            if self.world > 1:
                batch = [self._slice(index, primary=not g) for g, index in enumerate(batch)]
            yield batch

    def _slice(self, index: Tensor, *, primary: bool) -> Tensor:
        rows, rank, world = len(index), self.rank, self.world
        if primary and rows < world:
            return index[rank % rows : rank % rows + 1]
        return index[rank * rows // world : (rank + 1) * rows // world]


def _keep_batch(batch):
    return batch


def batch_loader(
    *tensors: Tensor,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    extra: Sequence[Tensor] | None = None,
) -> DataLoader:
    """A DataLoader over in-memory tensors that yields whole-batch tuples.

    Args:
        tensors: the primary group (e.g. inputs and labels or teacher logits).
        batch_size: primary samples per batch.
        seed: with the epoch, fixes the shuffle.
        extra: an optional second group of the same arity (e.g. auxiliary inputs and their
            teacher logits), split evenly across the batches and appended to each. With it,
            every batch gets one more tensor, last: a bool mask [B] that is True on the rows
            from ``extra``.
    """
    if not tensors:
        raise ValueError("batch_loader needs at least one tensor")
    if extra is None:
        groups = [tensors]
    else:
        extra = tuple(extra)
        primary_mask = torch.zeros(len(tensors[0]), dtype=torch.bool)
        extra_mask = torch.ones(len(extra[0]) if extra else 0, dtype=torch.bool)
        groups = [(*tensors, primary_mask), (*extra, extra_mask)]
    dataset = TensorBatches(groups)
    sampler = EpochSeededBatchSampler(dataset.sizes, batch_size, seed=seed, shuffle=shuffle)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_keep_batch, num_workers=0)
