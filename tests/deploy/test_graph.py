"""The exported measures' building blocks: a digamma from elementary operators, and every kind's
float32 graph against endd's float64 outputs over a wide range of logits."""

from __future__ import annotations

import pytest
import torch

from endd.deploy.graph import (
    digamma,
    digamma_difference,
    digamma_plus_one_minus_log,
    expm1,
    graph_outputs,
    log1p,
    measures_from_logits,
    outputs_of_kind,
)
from endd.models.kinds import outputs_from_logits

FLOAT32_MAX = torch.finfo(torch.float32).max


def test_digamma_from_elementary_ops_matches_torch_over_1e_minus_3_to_1e8():
    x = torch.logspace(-3, 8, 100_001, dtype=torch.float64).float()
    reference = torch.digamma(x.double())
    error = (digamma(x).double() - reference).abs() / reference.abs().clamp(min=1.0)
    # relative error (absolute where |ψ| < 1): below torch's own float32 digamma's
    torch_error = (torch.digamma(x).double() - reference).abs() / reference.abs().clamp(min=1.0)
    assert error.max() < 1e-6
    assert error.max() <= torch_error.max()
    assert torch.isfinite(digamma(torch.tensor([1e-30, 1e30, 3e38]))).all()


def test_helpers_keep_relative_accuracy():
    x = torch.logspace(-12, 2, 1001).double()  # float32 arguments, references in float64
    assert ((log1p(x.float()).double() - torch.log1p(x)).abs() / torch.log1p(x)).max() < 3e-7
    y = torch.cat([-x, x]).clamp(max=80.0)
    assert ((expm1(y.float()).double() - torch.expm1(y)).abs() / torch.expm1(y).abs()).max() < 3e-7
    x32 = torch.logspace(-4, 1, 300).float()
    gaps = torch.logspace(-9, 1, 300).float()
    exact = torch.digamma(1.0 + x32.double() + gaps.double()) - torch.digamma(1.0 + x32.double())
    got = digamma_difference(x32, gaps).double()
    assert ((got - exact).abs() / exact).max() < 1e-5  # exact digamma itself is the limit here
    log_x = torch.linspace(-50, 700, 2001).double()
    g = digamma_plus_one_minus_log(log_x.float()).double()
    small = log_x < 30  # where float64 itself still resolves ψ(x + 1) − ln x
    exact = torch.digamma(torch.exp(log_x[small]) + 1) - log_x[small]
    assert ((g[small] - exact).abs() / exact.abs().clamp(min=1.0)).max() < 1e-6
    assert torch.isfinite(g).all() and (g >= 0).all()


def _logits(kind: str, num_classes: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(num_classes)
    shape = (8, 5, num_classes) if kind == "ensemble" else (8, num_classes)
    rows = []
    for shift in (-80.0, 0.0, 30.0, 88.0, 300.0, 699.0, 2000.0):
        for scale in (0.01, 1.0, 20.0):
            z = shift + scale * torch.randn(shape, generator=generator, dtype=torch.float64)
            z[..., 0] += 15.0
            rows.append(z)
    return torch.cat(rows).float()


@pytest.mark.parametrize("kind", ["ensemble", "categorical", "dirichlet", "proxy_dirichlet"])
@pytest.mark.parametrize("num_classes", [3, 100])
def test_float32_graph_matches_float64_measures(kind, num_classes):
    logits = _logits(kind, num_classes)
    got = measures_from_logits(kind, logits)
    reference = outputs_from_logits(kind, logits)
    assert tuple(got) == graph_outputs(kind) == outputs_of_kind(kind)
    for name, value in got.items():
        assert value.dtype == torch.float32
        expected = reference[name]
        representable = expected.abs() <= FLOAT32_MAX  # alphas, epkl: inf beyond float32
        assert torch.isinf(value[~representable]).all(), name
        value, expected = value[representable].double(), expected[representable]
        assert torch.isfinite(value).all(), name
        error = (value - expected).abs()
        # ≤ 1e-5 relative above 1e-6, and 1e-10 absolute below (float32 cannot do much better)
        assert (error <= 1e-5 * expected.abs() + 1e-10).all(), (name, error.max())


def test_unexportable_kinds_are_refused_by_name():
    with pytest.raises(ValueError, match="model kind 'nope'"):
        graph_outputs("nope")
