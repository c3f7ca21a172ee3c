"""Member-batched layers: M independent copies of a layer evaluated as one operation.

An ensemble of M networks that share an architecture runs as one network whose activations carry
every member at once:

- convolutional activations are ``[B, M·C, H, W]``: member m owns channels ``m·C … (m+1)·C − 1``.
  A convolution over them is one grouped convolution (``groups = M``), and batch norm over the
  ``M·C`` channels is exactly per-member batch norm;
- fully connected activations are ``[M, B, F]`` (contiguous, member first, so that a linear
  layer is one batched matrix product and element-wise layers see dense memory); the network's
  logits come out as ``[M, B, K]`` and :class:`~endd.models.ensemble.BatchedEnsemble` returns
  them as a ``[B, M, K]`` view.

Flattening ``[B, M·C, H, W]`` with ``torch.flatten(x, 1)`` gives ``[B, M·C·H·W]`` in member-major
order, which a :class:`BatchedLinear` reads as ``[B, M, C·H·W]``, so a backbone written for one
model (``flatten(1)`` then ``Linear``) runs batched unchanged. The first batched layer of a network
also accepts the *shared* input ``[B, C, H, W]`` / ``[B, F]`` that every member sees: it tells the
two apart by the feature width (``C`` versus ``M·C``), which cannot coincide for ``M > 1``.

:func:`stack_layer` turns M equal-shaped plain layers into one batched layer; each batched layer's
``member(m)`` gives member m back as a plain ``torch.nn`` layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BatchedBatchNorm1d",
    "BatchedBatchNorm2d",
    "BatchedConv2d",
    "BatchedLinear",
    "NotBatchableError",
    "is_batched_layer",
    "stack_layer",
]


class NotBatchableError(ValueError):
    """A module that cannot be turned into one member-batched module."""


def _check_same(layers: Sequence[nn.Module], attributes: Sequence[str]) -> None:
    first = layers[0]
    for layer in layers[1:]:
        if type(layer) is not type(first):
            raise NotBatchableError(
                f"members differ in layer type: {type(first).__name__} vs {type(layer).__name__}"
            )
        for attribute in attributes:
            if getattr(layer, attribute) != getattr(first, attribute):
                raise NotBatchableError(
                    f"members differ in {type(first).__name__}.{attribute}: "
                    f"{getattr(first, attribute)} vs {getattr(layer, attribute)}"
                )


class BatchedLinear(nn.Module):
    """M independent linear layers applied as one batched matrix product.

    Args:
        members: Number of members M.
        in_features: Input features per member F_in.
        out_features: Output features per member F_out.
        bias: Whether each member has a bias.

    Shapes:
        - input: ``[B, F_in]`` (shared by all members), ``[B, M·F_in]`` (member-major, e.g. a
          flattened batched feature map) or ``[M, B, F_in]`` (the output of a batched layer).
        - output: ``[M, B, F_out]``, contiguous.

    Attributes:
        weight: ``[M, F_out, F_in]``, member m's ``nn.Linear.weight`` at index m.
        bias: ``[M, F_out]`` or ``None``.
    """

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.members = members
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None

    @classmethod
    def from_members(cls, layers: Sequence[nn.Linear]) -> BatchedLinear:
        """Stack M ``nn.Linear`` layers (weights are copied)."""
        _check_same(layers, ("in_features", "out_features"))
        has_bias = layers[0].bias is not None
        if any((layer.bias is not None) != has_bias for layer in layers):
            raise NotBatchableError("members differ in whether nn.Linear has a bias")
        first = layers[0]
        batched = cls(len(layers), first.in_features, first.out_features, bias=has_bias)
        batched.to(device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            batched.weight.copy_(torch.stack([layer.weight for layer in layers]))
            if has_bias:
                batched.bias.copy_(torch.stack([layer.bias for layer in layers]))
        return batched

    def member(self, index: int) -> nn.Linear:
        """Member ``index`` as a plain ``nn.Linear`` holding a copy of its weights."""
        layer = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(self.weight[index])
            if self.bias is not None:
                layer.bias.copy_(self.bias[index])
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        members, width = self.members, self.in_features
        if x.dim() == 2 and x.shape[1] == width:
            per_member = x.expand(members, *x.shape)  # shared input: a view, no copy
        elif x.dim() == 2 and x.shape[1] == members * width:
            per_member = x.view(x.shape[0], members, width).transpose(0, 1)
        elif x.dim() == 3 and x.shape[0] == members and x.shape[2] == width:
            per_member = x
        else:
            raise ValueError(
                f"BatchedLinear expects [B, {width}], [B, {members * width}] or "
                f"[{members}, B, {width}], got {list(x.shape)}"
            )
        weight = self.weight.transpose(1, 2)  # [M, F_in, F_out]
        if self.bias is None:
            return torch.bmm(per_member, weight)
        return torch.baddbmm(self.bias.unsqueeze(1), per_member, weight)

    def extra_repr(self) -> str:
        return (
            f"members={self.members}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )


class BatchedConv2d(nn.Module):
    """M independent 2-D convolutions applied as one grouped convolution.

    Args:
        members: Number of members M.
        conv: A template ``nn.Conv2d`` giving every hyper-parameter of one member (its weights are
            not used).

    Shapes:
        - input: ``[B, C_in, H, W]`` (shared by all members) or ``[B, M·C_in, H, W]``.
        - output: ``[B, M·C_out, H', W']``.

    Attributes:
        weight: ``[M·C_out, C_in / groups, kh, kw]``: member m's ``nn.Conv2d.weight`` is rows
            ``m·C_out … (m+1)·C_out − 1``.
        bias: ``[M·C_out]`` or ``None``.
    """

    _hyper_parameters = (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    )

    def __init__(self, members: int, conv: nn.Conv2d):
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        if conv.padding_mode != "zeros":
            raise NotBatchableError(
                f"only zero-padded convolutions batch, got padding_mode={conv.padding_mode!r}"
            )
        if isinstance(conv.padding, str) and conv.padding != "valid" and conv.stride != (1, 1):
            raise NotBatchableError("padding='same' needs stride 1")
        self.members = members
        for name in self._hyper_parameters:
            setattr(self, name, getattr(conv, name))
        factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        self.weight = nn.Parameter(
            torch.empty(members * conv.out_channels, *conv.weight.shape[1:], **factory)
        )
        has_bias = conv.bias is not None
        self.bias = (
            nn.Parameter(torch.empty(members * conv.out_channels, **factory)) if has_bias else None
        )

    @classmethod
    def from_members(cls, layers: Sequence[nn.Conv2d]) -> BatchedConv2d:
        """Stack M ``nn.Conv2d`` layers (weights are copied)."""
        _check_same(layers, cls._hyper_parameters)
        has_bias = layers[0].bias is not None
        if any((layer.bias is not None) != has_bias for layer in layers):
            raise NotBatchableError("members differ in whether nn.Conv2d has a bias")
        batched = cls(len(layers), layers[0])
        with torch.no_grad():
            batched.weight.copy_(torch.cat([layer.weight for layer in layers]))
            if has_bias:
                batched.bias.copy_(torch.cat([layer.bias for layer in layers]))
        return batched

    def member(self, index: int) -> nn.Conv2d:
        """Member ``index`` as a plain ``nn.Conv2d`` holding a copy of its weights."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        rows = slice(index * self.out_channels, (index + 1) * self.out_channels)
        with torch.no_grad():
            conv.weight.copy_(self.weight[rows])
            if self.bias is not None:
                conv.bias.copy_(self.bias[rows])
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"BatchedConv2d expects [B, C, H, W], got {list(x.shape)}")
        channels = x.shape[1]
        if channels == self.in_channels and self.groups == 1:
            # Shared input: one ordinary convolution with all members' filters stacked.
            groups = 1
        elif channels == self.in_channels:
            x = x.repeat(1, self.members, 1, 1)
            groups = self.members * self.groups
        elif channels == self.members * self.in_channels:
            groups = self.members * self.groups
        else:
            raise ValueError(
                f"BatchedConv2d expects {self.in_channels} (shared) or "
                f"{self.members * self.in_channels} (per-member) input channels, got {channels}"
            )
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, groups)

    def extra_repr(self) -> str:
        return (
            f"members={self.members}, {self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"groups={self.groups}, bias={self.bias is not None}"
        )


class _BatchedBatchNormMixin:
    """Per-member batch norm: one batch norm over the members' concatenated channels."""

    members: int
    features_per_member: int

    @classmethod
    def from_members(cls, layers: Sequence[nn.modules.batchnorm._BatchNorm]):
        _check_same(layers, ("num_features", "eps", "momentum", "affine", "track_running_stats"))
        first = layers[0]
        members = len(layers)
        batched = cls(
            members * first.num_features,
            eps=first.eps,
            momentum=first.momentum,
            affine=first.affine,
            track_running_stats=first.track_running_stats,
            device=(first.weight if first.affine else first.running_mean).device,
            dtype=(first.weight if first.affine else first.running_mean).dtype,
        )
        batched.members = members
        batched.features_per_member = first.num_features
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(batched, name)
                if tensor is not None:
                    tensor.copy_(torch.cat([getattr(layer, name) for layer in layers]))
            if first.track_running_stats:
                # Members are always updated together, so one counter serves all of them.
                batched.num_batches_tracked.copy_(first.num_batches_tracked)
        return batched

    def member(self, index: int):
        plain_type = nn.BatchNorm2d if isinstance(self, nn.BatchNorm2d) else nn.BatchNorm1d
        layer = plain_type(
            self.features_per_member,
            eps=self.eps,
            momentum=self.momentum,
            affine=self.affine,
            track_running_stats=self.track_running_stats,
            device=(self.weight if self.affine else self.running_mean).device,
            dtype=(self.weight if self.affine else self.running_mean).dtype,
        )
        rows = slice(index * self.features_per_member, (index + 1) * self.features_per_member)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(self, name)
                if tensor is not None:
                    getattr(layer, name).copy_(tensor[rows])
            if self.track_running_stats:
                layer.num_batches_tracked.copy_(self.num_batches_tracked)
        return layer

    def extra_repr(self) -> str:
        return f"members={self.members}, " + super().extra_repr()


class BatchedBatchNorm2d(_BatchedBatchNormMixin, nn.BatchNorm2d):
    """M independent ``BatchNorm2d`` layers over ``[B, M·C, H, W]`` (channel-wise, hence exact).

    Parameters and running statistics are ``[M·C]``; member m owns entries ``m·C … (m+1)·C − 1``.
    Build it with :meth:`from_members`.
    """


class BatchedBatchNorm1d(_BatchedBatchNormMixin, nn.BatchNorm1d):
    """M independent ``BatchNorm1d`` layers over ``[M, B, F]`` (or ``[B, M·F]``) features.

    Parameters and running statistics are ``[M·F]``. Build it with :meth:`from_members`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            members, batch, features = x.shape
            flat = x.transpose(0, 1).reshape(batch, members * features)
            return super().forward(flat).view(batch, members, features).transpose(0, 1)
        return super().forward(x)


_BATCHED_TYPES = {
    nn.Linear: BatchedLinear,
    nn.Conv2d: BatchedConv2d,
    nn.BatchNorm2d: BatchedBatchNorm2d,
    nn.BatchNorm1d: BatchedBatchNorm1d,
}


def is_batched_layer(module: nn.Module) -> bool:
    """Whether ``module`` is one of the member-batched layers of this file."""
    return isinstance(module, tuple(_BATCHED_TYPES.values()))


def stack_layer(layers: Sequence[nn.Module]) -> nn.Module:
    """Stack M equal-shaped plain layers into one member-batched layer.

    Args:
        layers: ``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d`` or ``nn.BatchNorm1d`` modules of
            one exact type and the same hyper-parameters.

    Returns:
        The batched layer, holding copies of the members' parameters and buffers.

    Raises:
        NotBatchableError: An unsupported layer type or members that differ in shape.
    """
    if not layers:
        raise ValueError("stack_layer needs at least one layer")
    batched_type = _BATCHED_TYPES.get(type(layers[0]))
    if batched_type is None:
        supported = ", ".join(t.__name__ for t in _BATCHED_TYPES)
        raise NotBatchableError(
            f"cannot batch a {type(layers[0]).__name__} with parameters (supported: {supported})"
        )
    return batched_type.from_members(layers)
