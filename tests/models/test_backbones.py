"""Backbone architectures: output shapes, sizes and argument checks."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_BACKBONES
from torch import nn

from endd.errors import ConfigError
from endd.models import MLP, VGG16, ResNet18, SmallCNN, WideResNet, build_model, is_batched


def parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("config", TINY_BACKBONES.values(), ids=TINY_BACKBONES.keys())
def test_output_shape(config, members):
    name, input_shape, options = config
    model = build_model(
        name, num_classes=5, input_shape=input_shape, members=members, seed=0, **options
    )
    logits = model(torch.randn(2, *input_shape))
    expected = [2, 5] if members == 1 else [2, members, 5]
    assert list(logits.shape) == expected
    assert torch.isfinite(logits).all()
    assert is_batched(model) == (members > 1)


def test_small_cnn_default_size():
    # conv 1→32 (+BN), conv 32→64 (+BN), fc 64·7·7→128, fc 128→10.
    expected = (9 * 32 + 2 * 32) + (9 * 32 * 64 + 2 * 64) + (3136 * 128 + 128) + (128 * 10 + 10)
    assert parameter_count(SmallCNN((1, 28, 28), 10)) == expected


def test_mlp_layers_follow_hidden_widths():
    model = MLP((1, 4, 4), num_classes=3, hidden=(7, 5), activation="tanh")
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(7, 16), (7,), (5, 7), (5,), (3, 5), (3,)]
    assert any(isinstance(m, nn.Tanh) for m in model.modules())
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_resnet18_has_the_reference_size():
    # The CIFAR ResNet-18 (bias-free convolutions, 10 classes) has 11,173,962 parameters.
    assert parameter_count(ResNet18((3, 32, 32), 10)) == 11_173_962


def test_vgg16_has_thirteen_convolutions_and_the_reference_size():
    model = VGG16((3, 32, 32), 10)
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convolutions) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    # CIFAR VGG-16-BN with one 512→10 classifier: 14,728,266 parameters with conv biases,
    # minus the 4,224 biases that batch norm makes redundant.
    assert parameter_count(model) == 14_728_266 - 4_224


def test_wrn28_10_has_the_reference_size():
    # WRN-28-10 on CIFAR-10: 36,479,194 parameters (Zagoruyko & Komodakis' PyTorch code).
    assert parameter_count(WideResNet((3, 32, 32), 10)) == 36_479_194


def test_wrn_depth_sets_the_number_of_blocks():
    model = WideResNet((3, 32, 32), 10, depth=16, width=1)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 1 + 3 * 2 * 2 + 2


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "wrn28_10"])
@pytest.mark.parametrize("size", [28, 64])
def test_image_backbones_accept_other_sizes(name, size):
    options = {"wrn28_10": {"depth": 10, "width": 1}}.get(name, {"width": 4})
    model = build_model(name, num_classes=3, input_shape=(1, size, size), **options)
    assert list(model(torch.randn(2, 1, size, size)).shape) == [2, 3]


def test_channels_last_only_changes_the_activation_layout():
    x = torch.randn(3, 1, 28, 28)
    fast = build_model("small_cnn", num_classes=4, input_shape=(1, 28, 28), seed=3)
    plain = build_model(
        "small_cnn", num_classes=4, input_shape=(1, 28, 28), seed=3, channels_last=False
    )
    torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-5)
    assert all(p.is_contiguous() for p in fast.parameters())
    assert fast.state_dict().keys() == plain.state_dict().keys()  # checkpoints interchange
    assert fast.features(x).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: SmallCNN((28, 28), 10), "input_shape"),
        (lambda: SmallCNN((1, 2, 2), 10), "4×4"),
        (lambda: SmallCNN((1, 28, 28), 10, channels=(8,)), "channels"),
        (lambda: VGG16((3, 32, 32), 10, width=0), "width"),
        (lambda: WideResNet((3, 32, 32), 10, depth=27), "depth"),
        (lambda: MLP((2,), 3, hidden=(0,)), "hidden"),
        (lambda: MLP((2,), 3, activation="softmax"), "activation"),
        (lambda: MLP((2,), 3, dropout=1.0), "dropout"),
        (lambda: ResNet18((3, 32, 32), 10, dropout=-0.1), "dropout"),
    ],
)
def test_bad_arguments_raise(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_dropout_is_off_by_default_and_available():
    name, input_shape, options = TINY_BACKBONES["small_cnn"]
    plain = build_model(name, num_classes=3, input_shape=input_shape, **options)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    with_dropout = build_model(name, num_classes=3, input_shape=input_shape, dropout=0.5, **options)
    assert any(isinstance(m, nn.Dropout) for m in with_dropout.modules())


def test_bad_registry_arguments_raise():
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("mlp", num_classes=1, input_shape=(2,))
    with pytest.raises(ConfigError, match="members"):
        build_model("mlp", num_classes=3, input_shape=(2,), members=0)
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("mlp", num_classes=3, input_shape=(2, -1))
