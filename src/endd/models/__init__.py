"""Backbones and ensembles: every model maps ``[B, *input_shape]`` to logits.

``build_model(name, num_classes=K, input_shape=S, members=M, seed=s)`` gives a ``[B, K]`` classifier
for ``M = 1`` and an ensemble with ``[B, M, K]`` output otherwise, batched into one network of
grouped convolutions and batched matrix products when the backbone allows it.
"""

from endd.models.cnn import SmallCNN
from endd.models.ensemble import (
    BatchedEnsemble,
    NotBatchableError,
    SequentialEnsemble,
    ensemble_size,
    extract_member,
    is_batched,
)
from endd.models.mlp import MLP
from endd.models.registry import (
    BACKBONES,
    available_models,
    build_ensemble,
    build_model,
    is_import_path,
)
from endd.models.resnet import ResNet18
from endd.models.vgg import VGG16
from endd.models.wrn import WideResNet

__all__ = [
    "BACKBONES",
    "MLP",
    "VGG16",
    "BatchedEnsemble",
    "NotBatchableError",
    "ResNet18",
    "SequentialEnsemble",
    "SmallCNN",
    "WideResNet",
    "available_models",
    "build_ensemble",
    "build_model",
    "ensemble_size",
    "extract_member",
    "is_batched",
    "is_import_path",
]
