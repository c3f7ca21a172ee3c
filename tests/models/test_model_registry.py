"""build_model / build_ensemble: names, options, import paths, seeds and the batching fallback."""

from __future__ import annotations

import logging
import textwrap

import pytest
import torch

from endd.errors import ConfigError
from endd.models import (
    BatchedEnsemble,
    SequentialEnsemble,
    available_models,
    build_ensemble,
    build_model,
    is_import_path,
)


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """An importable module ``user_models_for_endd`` holding user-defined models."""
    source = """
        import torch
        from torch import nn


        class Tiny(nn.Module):
            def __init__(self, num_classes, input_shape, hidden=4):
                super().__init__()
                self.hidden = hidden
                self.fc = nn.Sequential(
                    nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.Linear(hidden, num_classes)
                )

            def forward(self, x):
                return self.fc(x)


        def make_linear(num_classes, width=2):
            return nn.Linear(width, num_classes)


        def not_a_model(num_classes):
            return "model"
    """
    (tmp_path / "user_models_for_endd.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_models_for_endd"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'vgg19'; valid: mlp, resnet18, small_cnn"):
        build_model("vgg19", num_classes=3, input_shape=(3, 32, 32))
    assert available_models() == ["mlp", "resnet18", "small_cnn", "vgg16", "wrn28_10"]


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"unknown option.*widht.*accepted: hidden, activation"):
        build_model("mlp", num_classes=3, input_shape=(2,), widht=3)


def test_options_reach_the_backbone():
    model = build_model("mlp", num_classes=3, input_shape=(2,), hidden=[16, 16])
    assert tuple(model.layers[0].weight.shape) == (16, 2)


@pytest.mark.parametrize("spelling", ["{m}.Tiny", "import:{m}:Tiny"])
def test_import_path_model(user_models, spelling):
    name = spelling.format(m=user_models)
    assert is_import_path(name)
    model = build_model(name, num_classes=3, input_shape=(5,), hidden=7)
    assert model.hidden == 7
    assert list(model(torch.randn(2, 5)).shape) == [2, 3]


def test_import_path_callable_without_input_shape(user_models):
    model = build_model(f"import:{user_models}:make_linear", num_classes=4, input_shape=(3,))
    assert list(model(torch.randn(2, 2)).shape) == [2, 4]


def test_import_path_ensemble_falls_back_to_sequential(user_models, caplog):
    name = f"{user_models}.Tiny"
    with caplog.at_level(logging.INFO, logger="endd.models.registry"):
        ensemble = build_model(name, num_classes=3, input_shape=(5,), members=3, seed=0)
    assert isinstance(ensemble, SequentialEnsemble)
    assert "one after another" in caplog.text
    assert list(ensemble(torch.randn(2, 5)).shape) == [2, 3, 3]
    with pytest.raises(ConfigError, match="cannot batch"):
        build_ensemble(name, members=3, num_classes=3, input_shape=(5,), batched=True)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_for_endd.Model", "cannot import module 'no_such_module_for_endd'"),
        ("{m}.Missing", "has no attribute 'Missing'"),
        ("import:{m}:not_a_model", "not a torch nn.Module"),
        ("import:{m}", "unknown model"),
    ],
)
def test_bad_import_paths_raise(user_models, name, message):
    with pytest.raises(ConfigError, match=message):
        build_model(name.format(m=user_models), num_classes=3, input_shape=(5,))


def test_wrong_option_for_import_path_model_raises(user_models):
    with pytest.raises(ConfigError, match="cannot build model"):
        build_model(f"{user_models}.Tiny", num_classes=3, input_shape=(5,), depth=3)


def test_seed_fixes_the_weights_without_touching_the_global_generator():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_model("mlp", num_classes=3, input_shape=(2,), seed=4)
    assert torch.rand(1) == expected_next
    second = build_model("mlp", num_classes=3, input_shape=(2,), seed=4)
    other = build_model("mlp", num_classes=3, input_shape=(2,), seed=5)
    for a, b, c in zip(first.parameters(), second.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_unseeded_members_still_differ():
    ensemble = build_model("mlp", num_classes=3, input_shape=(2,), members=2)
    weight = ensemble.network.layers[0].weight
    assert not torch.equal(weight[0], weight[1])


def test_batched_choice():
    options = {"num_classes": 3, "input_shape": (2,), "seed": 0}
    assert isinstance(build_model("mlp", members=2, **options), BatchedEnsemble)
    assert isinstance(build_ensemble("mlp", members=2, **options), BatchedEnsemble)
    sequential = build_ensemble("mlp", members=2, batched=False, **options)
    assert isinstance(sequential, SequentialEnsemble)
    single = build_ensemble("mlp", members=1, **options)
    assert isinstance(single, SequentialEnsemble)
    assert list(single(torch.randn(4, 2)).shape) == [4, 1, 3]
    with pytest.raises(ConfigError, match="batched"):
        build_ensemble("mlp", members=2, batched="yes", **options)
