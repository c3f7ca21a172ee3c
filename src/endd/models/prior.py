"""Trained models as users call them: raw inputs in, probabilities and uncertainty out.

A model's *kind* (:mod:`endd.models.kinds`) says how its logits are read: ``ensemble``,
``categorical`` (EnD students), ``dirichlet`` (EnD² students) or ``proxy_dirichlet``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from endd.models.kinds import get_kind, outputs_from_logits

__all__ = ["Predictor", "PriorNetwork", "outputs_from_logits", "predict_in_batches"]


@torch.no_grad()
def predict_in_batches(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Run ``model`` in eval mode over ``x`` in chunks on the model's device; float32 logits on
    the CPU. The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        outputs = [
            model(x[start : start + batch_size].to(device)).float().cpu()
            for start in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(outputs)


class Predictor(nn.Module):
    """A trained network plus what it needs to be used on raw inputs.

    Args:
        network: maps standardised inputs [B, *input_shape] to logits ([B, K] or [B, M, K]).
        kind: a registered model kind (:data:`endd.models.kinds.KINDS`).
        mean, std: the training standardisation (raw inputs are mapped to (x − mean) / std).
        spec: the JSON sidecar the model was saved with (architecture, classes, seed).
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        kind: str,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        spec: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        get_kind(kind)  # an unknown kind fails here, naming the known ones
        self.network, self.kind, self.spec = network, kind, dict(spec or {})
        self.register_buffer("mean", None if mean is None else mean.float())
        self.register_buffer("std", None if std is None else std.float())

    @property
    def measures(self) -> tuple[str, ...]:
        return get_kind(self.kind).measures

    def forward(self, x: Tensor) -> Tensor:
        """Logits of raw inputs (standardised here)."""
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.network(x)

    @torch.no_grad()
    def predict(self, x: Tensor, *, batch_size: int = 4096) -> dict[str, Tensor]:
        """Probabilities and uncertainty measures for raw inputs ``x`` [N, *input_shape].

        Returns:
            dict with ``probs`` [N, K] and each measure in :attr:`measures` as [N] (float64),
            plus ``alphas`` for Prior Networks and ``member_probs`` for ensembles.
        """
        x = torch.as_tensor(x, dtype=torch.float32)
        expected = tuple(self.spec.get("input_shape", x.shape[1:]))
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"inputs must be [N, {', '.join(map(str, expected))}], got {list(x.shape)}"
            )
        return outputs_from_logits(self.kind, predict_in_batches(self, x, batch_size))


class PriorNetwork(Predictor):
    """A network whose output parametrises a Dirichlet over class probabilities (EnD² student).

    Args:
        proxy: a Proxy-Dirichlet student (α = exp(z) + 1) instead of α = exp(z).
        kind: the model kind, for Prior Network kinds registered beyond these two.
    """

    def __init__(
        self, network: nn.Module, *, proxy: bool = False, kind: str | None = None, **kwargs: Any
    ) -> None:
        kind = kind or ("proxy_dirichlet" if proxy else "dirichlet")
        if not get_kind(kind).prior_network:
            raise ValueError(f"model kind '{kind}' is not a Prior Network kind")
        super().__init__(network, kind=kind, **kwargs)
