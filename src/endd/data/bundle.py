"""The one shape every dataset takes inside a run: standardised splits, each a tensor or rows
read from disk a batch at a time (:class:`~endd.data.ondisk.StandardisedRows`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class DataBundle:
    """The splits of one dataset, standardised with training statistics.

    An input split is a float32 tensor, or a :class:`~endd.data.ondisk.StandardisedRows` that
    reads and standardises the rows a batch asks for (the ``.npy``-folder form and image
    datasets): use only ``len``, ``shape``, ``[i]``, ``[a:b]`` and ``[index_tensor]`` on it
    (``x[:]`` reads a whole split). Labels are always tensors in memory.

    Attributes:
        name: dataset name as in the config.
        num_classes: K; labels are 0..K-1.
        x_train, y_train: training inputs [N, *input_shape] (float32) and labels [N] (int64).
        x_test, y_test: test inputs and labels.
        x_aux: unlabelled auxiliary inputs for EnD²+AUX, or None.
        ood: OOD evaluation sets by name, each [N_ood, *input_shape].
        grid: for 2-D inputs, points covering the input plane [R*R, 2] (row-major, y outer),
            else None.
        grid_shape: (R, R) for ``grid``.
        mean, std: the standardisation applied (raw = x * std + mean), shaped like one input.
        raw: the inputs as the data files hold them, per split name of
            :meth:`unlabelled_splits` (float32; images in [0, 1]), where the loader kept them:
            what a user's own models were trained on. :meth:`raw_splits` falls back to undoing
            the standardisation, which is exact only to float32 rounding.
    """

    name: str
    num_classes: int
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_aux: Tensor | None = None
    ood: dict[str, Tensor] = field(default_factory=dict)
    grid: Tensor | None = None
    grid_shape: tuple[int, int] | None = None
    mean: Tensor | None = None
    std: Tensor | None = None
    raw: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def unlabelled_splits(self) -> dict[str, Tensor]:
        """Every split the teacher and the students are evaluated on, by name."""
        splits = {"train": self.x_train, "test": self.x_test}
        if self.x_aux is not None:
            splits["aux"] = self.x_aux
        for name, x in self.ood.items():
            splits[f"ood_{name}"] = x
        if self.grid is not None:
            splits["grid"] = self.grid
        return splits

    def raw_splits(self) -> dict[str, Tensor]:
        """:meth:`unlabelled_splits` as raw inputs (see ``raw``)."""
        splits = self.unlabelled_splits()
        return {name: self._raw(name, x) for name, x in splits.items()}

    def _raw(self, name: str, x: Tensor) -> Tensor:
        if name not in self.raw:
            return self.to_raw(x)
        raw = self.raw[name]
        return raw.float().div_(255.0) if raw.dtype == torch.uint8 else raw

    def to_raw(self, x: Tensor) -> Tensor:
        """Undo the standardisation (for plots in the data's own coordinates); a split read
        from disk (:class:`~endd.data.ondisk.StandardisedRows`) is read whole first."""
        if not isinstance(x, Tensor):
            x = x[:]
        if self.mean is None or self.std is None:
            return x
        return x * self.std + self.mean


def standardised_bundle(
    name: str,
    num_classes: int,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    x_aux: np.ndarray | None = None,
    ood: dict[str, np.ndarray] | None = None,
    grid: np.ndarray | None = None,
    grid_shape: tuple[int, int] | None = None,
    per_channel: bool = False,
) -> DataBundle:
    """A :class:`DataBundle` from raw arrays, every input set standardised with the mean and
    standard deviation of ``x_train`` (per feature, or per channel for images [N, C, H, W])."""
    train = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    if per_channel:
        dims = [0, *range(2, train.ndim)]
        mean = train.mean(dim=dims, keepdim=True)[0]
        std = train.std(dim=dims, keepdim=True)[0]
    else:
        mean, std = train.mean(dim=0), train.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))

    raw: dict[str, Tensor] = {}

    def scale(x: np.ndarray | None, split: str) -> Tensor | None:
        if x is None:
            return None
        raw[split] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return (raw[split] - mean) / std

    return DataBundle(
        name=name,
        num_classes=num_classes,
        x_train=scale(x_train, "train"),
        y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        x_test=scale(x_test, "test"),
        y_test=torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
        x_aux=scale(x_aux, "aux"),
        ood={key: scale(x, f"ood_{key}") for key, x in (ood or {}).items()},
        grid=scale(grid, "grid"),
        grid_shape=grid_shape,
        mean=mean,
        std=std,
        raw=raw,
    )
