"""Rebuilding a saved network: weights land exactly, with or without the meta-device shortcut."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import TINY_BACKBONES
from torch import nn

from endd.errors import RunDirError
from endd.models import build_model
from endd.models.prior import Predictor
from endd.store.models import build_with_weights, load_model, save_model


@pytest.mark.parametrize("backbone_id", sorted(TINY_BACKBONES))
@pytest.mark.parametrize("members", [1, 3])
def test_rebuilt_network_predicts_like_the_saved_one(backbone_id, members):
    name, input_shape, options = TINY_BACKBONES[backbone_id]

    def build():
        return build_model(name, num_classes=5, input_shape=input_shape, members=members, **options)

    torch.manual_seed(0)
    saved = build().eval()
    weights = {key: value.clone() for key, value in saved.state_dict().items()}
    torch.manual_seed(1)  # a different init: only the loaded weights can make outputs agree
    rebuilt = build_with_weights(build, weights).eval()

    tensors = [*rebuilt.parameters(), *rebuilt.buffers()]
    assert not any(tensor.is_meta for tensor in tensors)
    inputs = torch.randn(4, *input_shape)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(inputs), saved(inputs), rtol=0, atol=0)


class _WithHiddenBuffer(nn.Module):
    """A user's module with a tensor outside its state dict (left on meta by the shortcut)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("offset", torch.full((2,), 7.0), persistent=False)

    def forward(self, x):
        return self.fc(x) + self.offset


class _NeedsRealTensorsToBuild(nn.Module):
    """A user's module whose constructor reads a tensor's value (impossible on meta)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.scale = float(torch.ones(()).item())

    def forward(self, x):
        return self.fc(x) * self.scale


@pytest.mark.parametrize("module", [_WithHiddenBuffer, _NeedsRealTensorsToBuild])
def test_modules_the_shortcut_cannot_build_are_built_the_ordinary_way(module):
    saved = module()
    weights = {key: value.clone() for key, value in saved.state_dict().items()}
    rebuilt = build_with_weights(module, weights)

    assert not any(tensor.is_meta for tensor in [*rebuilt.parameters(), *rebuilt.buffers()])
    inputs = torch.randn(4, 3)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(inputs), saved(inputs), rtol=0, atol=0)


def test_mismatched_weights_still_raise():
    with pytest.raises(RuntimeError, match="Missing key"):
        build_with_weights(_WithHiddenBuffer, {"fc.weight": torch.zeros(2, 3)})


def _saved_mlp(folder):
    spec = {
        "backbone": "mlp",
        "num_classes": 3,
        "input_shape": [2],
        "members": 1,
        "backbone_kwargs": {"hidden": [4]},
        "kind": "dirichlet",
    }
    network = build_model("mlp", num_classes=3, input_shape=(2,), members=1, hidden=(4,))
    save_model(folder, Predictor(network, kind="dirichlet", spec=spec), spec)
    return network


def test_load_model_round_trip(tmp_path):
    network = _saved_mlp(tmp_path)
    loaded = load_model(tmp_path)
    inputs = torch.randn(5, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(inputs), network.eval()(inputs))


def _drop_file_records(folder):
    """The sidecar as endd wrote it before sidecars held sizes and checksums."""
    spec = json.loads((folder / "model.json").read_text())
    del spec["files"]
    (folder / "model.json").write_text(json.dumps(spec))


def test_truncated_weights_file_is_a_run_dir_error(tmp_path):
    _saved_mlp(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(RunDirError, match=r"model.safetensors: size 100 bytes.*rerun its stage"):
        load_model(tmp_path)
    _drop_file_records(tmp_path)  # an older sidecar: the reader itself still refuses it
    with pytest.raises(RunDirError, match=r"model.safetensors: cannot be read.*rerun its stage"):
        load_model(tmp_path)


def test_weights_that_do_not_fit_the_sidecar_are_a_run_dir_error(tmp_path):
    _saved_mlp(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    state.pop(next(key for key in state if key.startswith("network.")))
    save_file(state, str(weights))
    with pytest.raises(RunDirError, match=r"model.safetensors: size 340 bytes, .*says 428"):
        load_model(tmp_path)
    _drop_file_records(tmp_path)  # an older sidecar: caught when the weights are assigned
    with pytest.raises(RunDirError, match=r"does not fit the model described in .*Missing key"):
        load_model(tmp_path)
