"""Ensembles of M networks as one module: batched (one network carrying every member) or sequential.

Both containers map ``x`` of shape ``[B, *input_shape]`` to member logits ``[B, M, K]``; with
``per_member_inputs=True`` they take ``[M, B, *input_shape]`` so that each member trains on its own
batch. :class:`BatchedEnsemble` runs the members as one network of member-batched layers (see
:mod:`endd.models.layers`), which is much faster for small networks; :class:`SequentialEnsemble`
calls the members one after another and works for any ``nn.Module``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from endd.models.layers import NotBatchableError, stack_layer

__all__ = [
    "BatchedEnsemble",
    "NotBatchableError",
    "SequentialEnsemble",
    "ensemble_size",
    "extract_member",
    "is_batched",
]


def _meta_memo(module: nn.Module) -> dict[int, torch.Tensor]:
    """A ``copy.deepcopy`` memo that replaces every tensor of ``module`` by a storage-less one."""
    memo: dict[int, torch.Tensor] = {}
    for parameter in module.parameters():
        memo[id(parameter)] = nn.Parameter(
            torch.empty_like(parameter, device="meta"), requires_grad=parameter.requires_grad
        )
    for buffer in module.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return memo


def _structure(module: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(sub)) for name, sub in module.named_modules()]


def _has_own_tensors(module: nn.Module) -> bool:
    return any(t is not None for t in module._parameters.values()) or any(
        t is not None for t in module._buffers.values()
    )


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, module)


class BatchedEnsemble(nn.Module):
    """M networks of one architecture run as one network of member-batched layers.

    Every ``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d`` and ``nn.BatchNorm1d`` of the members is
    replaced by its batched counterpart holding all M members' weights; parameter-free modules
    (activations, pooling, dropout, flatten) and the members' ``forward`` code are reused as they
    are. The member architecture must therefore be *batch-safe*: flatten with ``flatten(1)``, never
    hard-code a channel count in ``view``/``reshape``, reduce over no dimension but the spatial
    ones (fully connected activations are ``[M, B, F]`` inside), and keep all parameters in those
    four layer types. The backbones of :mod:`endd.models` are; a forward that breaks the output
    shape raises ``RuntimeError``.

    Args:
        members: M >= 2 networks with identical structure and shapes (their weights are copied;
            the list is not kept).

    Raises:
        NotBatchableError: The members cannot be batched (a layer type with parameters other than
            the four above, parameters held directly by a container, or members that differ).

    Shapes:
        - ``forward(x)``: ``[B, *input_shape]`` -> ``[B, M, K]``.
        - ``forward(x, per_member_inputs=True)``: ``[M, B, *input_shape]`` -> ``[B, M, K]``.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"a BatchedEnsemble needs at least 2 members, got {len(members)}")
        first = members[0]
        structure = _structure(first)
        for index, member in enumerate(members[1:], start=1):
            if _structure(member) != structure:
                raise NotBatchableError(f"member {index} has a different structure than member 0")

        self.num_members = len(members)
        network = copy.deepcopy(first, _meta_memo(first))
        batched_paths = []
        for path, module in first.named_modules():
            if not _has_own_tensors(module):
                continue
            layers = [member.get_submodule(path) for member in members]
            if not path:
                raise NotBatchableError(
                    f"{type(module).__name__} holds parameters directly; put them in layers"
                )
            _set_submodule(network, path, stack_layer(layers))
            batched_paths.append(path)
        self.network = network
        self._batched_paths = tuple(batched_paths)
        # One member's module tree without storage, used to hand single members back out. Kept in
        # a tuple so that it is neither a submodule nor part of the state dict.
        self._member_skeleton = (copy.deepcopy(first, _meta_memo(first)),)

    def forward(self, x: torch.Tensor, per_member_inputs: bool = False) -> torch.Tensor:
        """Logits of every member.

        Args:
            x: ``[B, *input_shape]`` seen by every member, or ``[M, B, *input_shape]`` with
                ``per_member_inputs=True``.
            per_member_inputs: Whether ``x`` holds one batch per member.

        Returns:
            ``[B, M, K]`` logits.
        """
        if per_member_inputs:
            if x.dim() < 3 or x.shape[0] != self.num_members:
                raise ValueError(
                    f"per_member_inputs expects [M={self.num_members}, B, ...], got {list(x.shape)}"
                )
            # [M, B, C, ...] -> [B, M·C, ...]: member-major features, as the batched layers expect.
            x = x.transpose(0, 1).flatten(1, 2)
            if x.dim() == 4:
                # oneDNN's grouped convolution with few channels per group has a pathologically
                # slow NCHW backward on CPU (7.8 s versus 0.2 s channels-last, 10 groups of 1→32).
                x = x.contiguous(memory_format=torch.channels_last)
        logits = self.network(x)
        if logits.dim() != 3 or logits.shape[:2] != (self.num_members, x.shape[0]):
            raise RuntimeError(
                f"batched network returned {list(logits.shape)}, expected "
                f"[{self.num_members}, {x.shape[0]}, K]: the member architecture is not batch-safe"
            )
        return logits.transpose(0, 1)

    def member(self, index: int) -> nn.Module:
        """Member ``index`` as a standalone network (a copy of its weights, same device/dtype)."""
        if not 0 <= index < self.num_members:
            raise ValueError(f"member index must be in [0, {self.num_members}), got {index}")
        member = copy.deepcopy(self._member_skeleton[0])
        for path in self._batched_paths:
            _set_submodule(member, path, self.network.get_submodule(path).member(index))
        member.train(self.training)
        return member

    def extra_repr(self) -> str:
        return f"members={self.num_members}"


class SequentialEnsemble(nn.Module):
    """M arbitrary networks called one after another; the fallback when batching is impossible.

    Args:
        members: M >= 1 networks mapping ``[B, *input_shape]`` to ``[B, K]`` with the same K.

    Shapes:
        - ``forward(x)``: ``[B, *input_shape]`` -> ``[B, M, K]``.
        - ``forward(x, per_member_inputs=True)``: ``[M, B, *input_shape]`` -> ``[B, M, K]``.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("a SequentialEnsemble needs at least 1 member")
        self.members = nn.ModuleList(members)

    @property
    def num_members(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor, per_member_inputs: bool = False) -> torch.Tensor:
        """Logits of every member, ``[B, M, K]`` (see the class docstring for ``x``)."""
        if per_member_inputs:
            if x.shape[0] != self.num_members:
                raise ValueError(
                    f"per_member_inputs expects [M={self.num_members}, B, ...], got {list(x.shape)}"
                )
            return torch.stack(
                [member(xm) for member, xm in zip(self.members, x, strict=True)], dim=1
            )
        return torch.stack([member(x) for member in self.members], dim=1)

    def member(self, index: int) -> nn.Module:
        """A copy of member ``index``."""
        if not 0 <= index < self.num_members:
            raise ValueError(f"member index must be in [0, {self.num_members}), got {index}")
        return copy.deepcopy(self.members[index])


def is_batched(module: nn.Module) -> bool:
    """Whether ``module`` is an ensemble run as one batched network."""
    return isinstance(module, BatchedEnsemble)


def ensemble_size(module: nn.Module) -> int:
    """M for an ensemble container, 1 for a plain network."""
    if isinstance(module, BatchedEnsemble | SequentialEnsemble):
        return module.num_members
    return 1


def extract_member(ensemble: nn.Module, index: int) -> nn.Module:
    """Member ``index`` of an ensemble as a standalone network mapping ``[B, ...]`` to ``[B, K]``.

    The result holds a copy of the member's weights and buffers (batch-norm statistics included),
    so it can be saved, evaluated or trained without touching the ensemble.

    Args:
        ensemble: A :class:`BatchedEnsemble` or :class:`SequentialEnsemble`.
        index: Member index in ``[0, M)``.

    Raises:
        ValueError: ``ensemble`` is not an ensemble container or ``index`` is out of range.
    """
    if not isinstance(ensemble, BatchedEnsemble | SequentialEnsemble):
        raise ValueError(
            f"extract_member needs a BatchedEnsemble or SequentialEnsemble, "
            f"got {type(ensemble).__name__}"
        )
    return ensemble.member(index)
