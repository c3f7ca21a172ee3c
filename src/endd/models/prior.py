"""Trained models as users call them: raw inputs in, probabilities and uncertainty out.

A model's *kind* says how its logits are read:

- ``ensemble``: [N, M, K] member logits; measures from
  :func:`endd.uncertainty.ensemble_uncertainty`.
- ``categorical``: [N, K] logits of an ordinary classifier (EnD students); only ``total`` and
  ``confidence`` exist, a single categorical cannot split its uncertainty.
- ``dirichlet``: a Prior Network (EnD² students), α = exp(z).
- ``proxy_dirichlet``: a Prior Network trained with the Proxy-Dirichlet loss, α = exp(z) + 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from endd.uncertainty import dirichlet_uncertainty, ensemble_uncertainty

KINDS = ("ensemble", "categorical", "dirichlet", "proxy_dirichlet")

#: The uncertainty measures each kind of model has (what evaluation scores).
MEASURES: dict[str, tuple[str, ...]] = {
    "categorical": ("total", "confidence"),
    "ensemble": ("total", "data", "knowledge", "epkl", "confidence"),
    "dirichlet": ("total", "data", "knowledge", "epkl", "confidence", "differential_entropy"),
    "proxy_dirichlet": (
        "total",
        "data",
        "knowledge",
        "epkl",
        "confidence",
        "differential_entropy",
    ),
}


def outputs_from_logits(kind: str, logits: Tensor) -> dict[str, Tensor]:
    """Probabilities and every uncertainty measure of a model of ``kind`` from its logits.

    Computed in float64: α = exp(z) overflows float32 for z > 88, and the digammas of the data
    uncertainty lose digits at large α.

    Returns:
        ``probs`` [N, K] (the expected predictive), the measures in ``MEASURES[kind]`` as [N]
        tensors, plus ``alphas`` [N, K] for Dirichlet kinds and ``member_probs`` [N, M, K] for
        ensembles.
    """
    logits = logits.double()
    if kind == "ensemble":
        member_probs = torch.softmax(logits, dim=-1)
        out = ensemble_uncertainty(member_probs)
        out["probs"] = member_probs.mean(dim=-2)
        out["member_probs"] = member_probs
    elif kind == "categorical":
        probs = torch.softmax(logits, dim=-1)
        measures = ensemble_uncertainty(probs.unsqueeze(-2))
        out = {"total": measures["total"], "confidence": measures["confidence"], "probs": probs}
    elif kind in ("dirichlet", "proxy_dirichlet"):
        offset = 1.0 if kind == "proxy_dirichlet" else 0.0
        alphas = torch.exp(logits.clamp(max=700.0)) + offset
        out = dirichlet_uncertainty(alphas)
        out.pop("precision", None)
        out["probs"] = alphas / alphas.sum(dim=-1, keepdim=True)
        out["alphas"] = alphas
    else:
        raise ValueError(f"unknown model kind '{kind}'; choose from {', '.join(KINDS)}")
    return out


class Predictor(nn.Module):
    """A trained network plus what it needs to be used on raw inputs.

    Args:
        network: maps standardised inputs [B, *input_shape] to logits ([B, K] or [B, M, K]).
        kind: one of :data:`KINDS`.
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
        if kind not in KINDS:
            raise ValueError(f"unknown model kind '{kind}'; choose from {', '.join(KINDS)}")
        self.network, self.kind, self.spec = network, kind, dict(spec or {})
        self.register_buffer("mean", None if mean is None else mean.float())
        self.register_buffer("std", None if std is None else std.float())

    @property
    def measures(self) -> tuple[str, ...]:
        return MEASURES[self.kind]

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
        was_training = self.training
        self.eval()
        device = next(self.network.parameters()).device
        logits = torch.cat(
            [self(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
        )
        self.train(was_training)
        return outputs_from_logits(self.kind, logits)


class PriorNetwork(Predictor):
    """A network whose output parametrises a Dirichlet over class probabilities (EnD² student)."""

    def __init__(self, network: nn.Module, *, proxy: bool = False, **kwargs: Any) -> None:
        super().__init__(network, kind="proxy_dirichlet" if proxy else "dirichlet", **kwargs)
