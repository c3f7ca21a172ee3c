"""Model kinds: how a model's logits are read. One registry entry per kind.

- ``ensemble``: [N, M, K] member logits; measures from
  :func:`endd.uncertainty.ensemble_uncertainty`.
- ``categorical``: [N, K] logits of an ordinary classifier (EnD students); only ``total`` and
  ``confidence`` exist, a single categorical cannot split its uncertainty.
- ``dirichlet``: a Prior Network (EnD² students), α = exp(z).
- ``proxy_dirichlet``: a Prior Network trained with the Proxy-Dirichlet loss, α = exp(z) + 1.

Evaluation scores a model on the measures of its kind, the report picks its detection measure
from them, and :func:`endd.store.models.load_model` decides from the kind whether a saved model
is a :class:`~endd.models.prior.PriorNetwork`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from endd.uncertainty import dirichlet_uncertainty, ensemble_uncertainty

__all__ = ["KINDS", "ModelKind", "get_kind", "outputs_from_logits", "register_kind"]

_CATEGORICAL = ("total", "confidence")
_DECOMPOSED = ("total", "data", "knowledge", "epkl", "confidence")


@dataclass(frozen=True)
class ModelKind:
    """How to read one kind of model.

    Attributes:
        name: the kind's name, as saved in a model's sidecar (``model.json``).
        measures: the uncertainty measures it has, in the order evaluation scores them.
        outputs: float64 logits -> ``probs`` [N, K] and every measure in ``measures`` as [N].
        prior_network: its output parametrises a Dirichlet (loaded as a ``PriorNetwork``).
    """

    name: str
    measures: tuple[str, ...]
    outputs: Callable[[Tensor], dict[str, Tensor]]
    prior_network: bool = False

    @property
    def detection_measure(self) -> str:
        """The measure the report ranks OOD inputs by: knowledge uncertainty where the kind
        separates it, else total uncertainty."""
        return "knowledge" if "knowledge" in self.measures else "total"


def _ensemble(logits: Tensor) -> dict[str, Tensor]:
    member_probs = torch.softmax(logits, dim=-1)
    out = ensemble_uncertainty(member_probs)
    out["probs"] = member_probs.mean(dim=-2)
    out["member_probs"] = member_probs
    return out


def _categorical(logits: Tensor) -> dict[str, Tensor]:
    probs = torch.softmax(logits, dim=-1)
    measures = ensemble_uncertainty(probs.unsqueeze(-2))
    return {"total": measures["total"], "confidence": measures["confidence"], "probs": probs}


def _dirichlet(offset: float) -> Callable[[Tensor], dict[str, Tensor]]:
    def outputs(logits: Tensor) -> dict[str, Tensor]:
        alphas = torch.exp(logits.clamp(max=700.0)) + offset
        out = dirichlet_uncertainty(alphas)
        out.pop("precision", None)
        out["probs"] = alphas / alphas.sum(dim=-1, keepdim=True)
        out["alphas"] = alphas
        return out

    return outputs


KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Add a model kind to :data:`KINDS`; a name can be registered once."""
    if kind.name in KINDS:
        raise ValueError(f"model kind '{kind.name}' is already registered")
    KINDS[kind.name] = kind
    return kind


for _kind in (
    ModelKind("ensemble", _DECOMPOSED, _ensemble),
    ModelKind("categorical", _CATEGORICAL, _categorical),
    ModelKind("dirichlet", (*_DECOMPOSED, "differential_entropy"), _dirichlet(0.0), True),
    ModelKind("proxy_dirichlet", (*_DECOMPOSED, "differential_entropy"), _dirichlet(1.0), True),
):
    register_kind(_kind)


def get_kind(name: str) -> ModelKind:
    """The registered kind called ``name``; ValueError naming the known kinds otherwise."""
    if name not in KINDS:
        raise ValueError(f"unknown model kind '{name}'; choose from {', '.join(KINDS)}")
    return KINDS[name]


def outputs_from_logits(kind: str, logits: Tensor) -> dict[str, Tensor]:
    """Probabilities and every uncertainty measure of a model of ``kind`` from its logits.

    Computed in float64: α = exp(z) overflows float32 for z > 88, and the digammas of the data
    uncertainty lose digits at large α.

    Returns:
        ``probs`` [N, K] (the expected predictive), the measures of the kind as [N] tensors, plus
        ``alphas`` [N, K] for Dirichlet kinds and ``member_probs`` [N, M, K] for ensembles.
    """
    return get_kind(kind).outputs(logits.double())
