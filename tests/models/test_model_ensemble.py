"""Batched and sequential ensembles: member equivalence, independence, extraction, saving."""

from __future__ import annotations

import copy

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from tiny_models import TINY_BACKBONES
from torch import nn

from endd.models import (
    MLP,
    BatchedEnsemble,
    NotBatchableError,
    SequentialEnsemble,
    build_model,
    ensemble_size,
    extract_member,
)
from endd.models.layers import BatchedLinear, is_batched_layer

MEMBERS = 3
SEED = 11
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
CONFIGS = pytest.mark.parametrize("config", TINY_BACKBONES.values(), ids=TINY_BACKBONES.keys())


def build(config, members=1, seed=SEED, **extra):
    name, input_shape, options = config
    return build_model(
        name, num_classes=4, input_shape=input_shape, members=members, seed=seed, **options, **extra
    )


def inputs(config, *leading):
    return torch.randn(*leading, *config[1], generator=torch.Generator().manual_seed(5))


@CONFIGS
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batched_member_equals_standalone_model_with_offset_seed(config, mode):
    ensemble = build(config, members=MEMBERS).train(mode == "train")
    x = inputs(config, 4)
    logits = ensemble(x)
    for member in range(MEMBERS):
        standalone = build(config, seed=SEED + member).train(mode == "train")
        torch.testing.assert_close(logits[:, member], standalone(x), **TOLERANCE)


@CONFIGS
def test_members_differ(config):
    logits = build(config, members=MEMBERS).eval()(inputs(config, 4))
    assert not torch.allclose(logits[:, 0], logits[:, 1])


@CONFIGS
def test_per_member_inputs_route_each_batch_to_its_member(config):
    ensemble = build(config, members=MEMBERS)
    x = inputs(config, MEMBERS, 4)
    logits = ensemble(x, per_member_inputs=True)
    assert list(logits.shape) == [4, MEMBERS, 4]
    for member in range(MEMBERS):
        standalone = build(config, seed=SEED + member)
        torch.testing.assert_close(logits[:, member], standalone(x[member]), **TOLERANCE)


@CONFIGS
def test_extract_member_is_a_plain_copy(config):
    ensemble = build(config, members=MEMBERS)
    ensemble(inputs(config, 4))  # update batch-norm statistics, which must be carried over
    ensemble.eval()
    x = inputs(config, 4)
    logits = ensemble(x)
    reference = build(config)
    for member in range(MEMBERS):
        extracted = extract_member(ensemble, member)
        assert type(extracted) is type(reference)
        assert extracted.state_dict().keys() == reference.state_dict().keys()
        assert not extracted.training
        torch.testing.assert_close(extracted(x), logits[:, member], **TOLERANCE)
    # A copy: changing it leaves the ensemble alone.
    with torch.no_grad():
        for parameter in extracted.parameters():
            parameter.add_(1.0)
    torch.testing.assert_close(ensemble(x), logits)


def member_rows(layer: nn.Module, tensor: torch.Tensor, member: int) -> torch.Tensor:
    if isinstance(layer, BatchedLinear):
        return tensor[member]
    rows = tensor.shape[0] // layer.members
    return tensor[member * rows : (member + 1) * rows]


@CONFIGS
def test_gradients_of_one_member_do_not_reach_another(config):
    ensemble = build(config, members=MEMBERS).train()
    ensemble(inputs(config, 4))[:, 0].square().sum().backward()
    layers = [m for m in ensemble.modules() if is_batched_layer(m)]
    assert layers
    for layer in layers:
        for parameter in layer.parameters(recurse=False):
            assert member_rows(layer, parameter.grad, 0).abs().sum() > 0
            assert member_rows(layer, parameter.grad, 1).abs().sum() == 0
            assert member_rows(layer, parameter.grad, 2).abs().sum() == 0


@pytest.mark.parametrize("key", ["mlp", "small_cnn"])
def test_training_together_equals_training_apart(key):
    config = TINY_BACKBONES[key]
    ensemble = build(config, members=MEMBERS)
    members = [build(config, seed=SEED + m) for m in range(MEMBERS)]
    optimiser = torch.optim.Adam(ensemble.parameters(), lr=1e-2)
    optimisers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in members]
    x, y = inputs(config, MEMBERS, 8), torch.randint(0, 4, (MEMBERS, 8))
    for _ in range(3):
        logits = ensemble(x, per_member_inputs=True)  # [B, M, K]
        loss = F.cross_entropy(logits.permute(0, 2, 1), y.T, reduction="none").mean(0).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        for member, member_optimiser, xm, ym in zip(members, optimisers, x, y, strict=True):
            member_optimiser.zero_grad()
            F.cross_entropy(member(xm), ym).backward()
            member_optimiser.step()
    test_x = inputs(config, 5)
    ensemble.eval()
    for index, member in enumerate(members):
        torch.testing.assert_close(
            ensemble(test_x)[:, index], member.eval()(test_x), atol=1e-4, rtol=1e-4
        )


@CONFIGS
@pytest.mark.parametrize("members", [1, MEMBERS])
def test_safetensors_round_trip(config, members, tmp_path):
    model = build(config, members=members)
    model(inputs(config, 4))  # non-trivial batch-norm statistics
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    restored = build(config, members=members, seed=SEED + 100)
    restored.load_state_dict(safetensors.torch.load_file(str(path)))
    x = inputs(config, 4)
    torch.testing.assert_close(restored.eval()(x), model.eval()(x))


def test_state_dict_keys_are_the_batched_network_only():
    ensemble = build(TINY_BACKBONES["mlp"], members=MEMBERS)
    keys = list(ensemble.state_dict())
    assert keys == [f"network.layers.{i}.{kind}" for i in (0, 2, 4) for kind in ("weight", "bias")]
    assert list(ensemble.state_dict()["network.layers.0.weight"].shape) == [MEMBERS, 8, 2]


def test_sequential_ensemble_matches_batched():
    config = TINY_BACKBONES["small_cnn"]
    batched = build(config, members=MEMBERS).eval()
    sequential = build(config, members=MEMBERS, batched=False).eval()
    assert isinstance(sequential, SequentialEnsemble)
    x = inputs(config, 4)
    torch.testing.assert_close(sequential(x), batched(x), **TOLERANCE)
    per_member = inputs(config, MEMBERS, 4)
    torch.testing.assert_close(
        sequential(per_member, per_member_inputs=True),
        batched(per_member, per_member_inputs=True),
        **TOLERANCE,
    )
    extracted = extract_member(sequential, 1)
    assert extracted is not sequential.members[1]
    torch.testing.assert_close(extracted(x), sequential(x)[:, 1])
    assert ensemble_size(sequential) == ensemble_size(batched) == MEMBERS
    assert ensemble_size(extracted) == 1


def test_batched_ensemble_follows_device_and_dtype_moves():
    ensemble = build(TINY_BACKBONES["small_cnn"], members=MEMBERS).double()
    copied = copy.deepcopy(ensemble)
    member = extract_member(copied, 2)
    assert all(p.dtype == torch.float64 for p in member.parameters())
    x = inputs(TINY_BACKBONES["small_cnn"], 2).double()
    torch.testing.assert_close(member.eval()(x), copied.eval()(x)[:, 2])


def test_bad_member_index_and_inputs_raise():
    ensemble = build(TINY_BACKBONES["mlp"], members=MEMBERS)
    with pytest.raises(ValueError, match="member index"):
        extract_member(ensemble, MEMBERS)
    with pytest.raises(ValueError, match="BatchedEnsemble or SequentialEnsemble"):
        extract_member(build(TINY_BACKBONES["mlp"]), 0)
    with pytest.raises(ValueError, match="per_member_inputs"):
        ensemble(torch.randn(MEMBERS + 1, 4, 2), per_member_inputs=True)
    with pytest.raises(ValueError, match="BatchedLinear expects"):
        ensemble(torch.randn(4, 5))


class DirectParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.scale


@pytest.mark.parametrize(
    ("members", "error", "message"),
    [
        ([MLP((2,), 3)], ValueError, "at least 2"),
        ([MLP((2,), 3), MLP((2,), 3, hidden=(5,))], NotBatchableError, "structure"),
        ([MLP((2,), 3), MLP((2,), 3, hidden=(100, 99))], NotBatchableError, "out_features"),
        ([nn.LayerNorm(2), nn.LayerNorm(2)], NotBatchableError, "LayerNorm"),
        ([DirectParameter(), DirectParameter()], NotBatchableError, "directly"),
    ],
)
def test_unbatchable_members_raise(members, error, message):
    with pytest.raises(error, match=message):
        BatchedEnsemble(members)


class HardCodedView(nn.Module):
    """Not batch-safe: reshapes to a fixed feature count."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).view(-1, 2 * 4 * 4))


def test_batch_unsafe_forward_is_detected():
    ensemble = BatchedEnsemble([HardCodedView(), HardCodedView()])
    with pytest.raises((RuntimeError, ValueError), match=r"batch-safe|BatchedLinear"):
        ensemble(torch.randn(2, 1, 4, 4))
