"""Build backbones and ensembles from a config name: the one entry point the engine uses.

Names: ``mlp``, ``small_cnn``, ``vgg16``, ``resnet18``, ``wrn28_10``, or any ``nn.Module`` by import
path, ``"pkg.module.ClassName"`` or ``"import:pkg.module:callable"`` (called with
``num_classes=K``, ``input_shape=…`` if it takes that argument, and the extra keyword options).

Every model maps ``[B, *input_shape]`` to ``[B, K]`` logits; an ensemble of M members maps it to
``[B, M, K]``. Member m of an ensemble built with ``seed=s`` is initialised exactly like a single
model built with ``seed=s + m``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from endd.errors import ConfigError
from endd.models.cnn import SmallCNN
from endd.models.ensemble import BatchedEnsemble, NotBatchableError, SequentialEnsemble
from endd.models.mlp import MLP
from endd.models.resnet import ResNet18
from endd.models.vgg import VGG16
from endd.models.wrn import WideResNet

__all__ = [
    "BACKBONES",
    "available_models",
    "build_ensemble",
    "build_model",
    "is_import_path",
    "resolve_import_path",
]

logger = logging.getLogger(__name__)

#: Built-in backbones by config name. Each is batch-safe (see :class:`BatchedEnsemble`).
BACKBONES: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "vgg16": VGG16,
    "resnet18": ResNet18,
    "wrn28_10": WideResNet,
}

_IMPORT_PREFIX = "import:"


def available_models() -> list[str]:
    """Names of the built-in backbones."""
    return sorted(BACKBONES)


def is_import_path(name: str) -> bool:
    """Whether ``name`` refers to a user model by import path rather than a built-in backbone."""
    return name.startswith(_IMPORT_PREFIX) or "." in name or ":" in name


def _unknown_model_message(name: object) -> str:
    return (
        f"unknown model {name!r}; valid: {', '.join(available_models())}, or an import path "
        "'pkg.module.ClassName' / 'import:pkg.module:callable'"
    )


def resolve_import_path(name: str) -> Callable[..., nn.Module]:
    path = name[len(_IMPORT_PREFIX) :] if name.startswith(_IMPORT_PREFIX) else name
    if ":" in path:
        module_name, _, attribute = path.partition(":")
    else:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ConfigError(_unknown_model_message(name))
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"cannot import module {module_name!r} for model {name!r}: {error}"
        ) from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r} ({name!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"model {name!r} is not callable")
    return target


def _check_common(num_classes: int, input_shape: Sequence[int], members: int) -> tuple[int, ...]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ConfigError(f"members must be an int >= 1, got {members!r}")
    shape = tuple(input_shape)
    if not shape or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape
    ):
        raise ConfigError(f"input_shape must be a non-empty tuple of positive ints, got {shape}")
    return shape


def _check_options(name: str, factory: Callable[..., nn.Module], options: dict) -> None:
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in parameters if p not in ("self", "input_shape", "num_classes")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown option(s) for model {name!r}: {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded, leaving the caller's generator untouched."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _build_one(
    name: str, num_classes: int, input_shape: tuple[int, ...], seed: int | None, options: dict
) -> nn.Module:
    if name in BACKBONES:
        factory: Callable[..., nn.Module] = BACKBONES[name]
        _check_options(name, factory, options)
        arguments = {"input_shape": input_shape, "num_classes": num_classes, **options}
    elif is_import_path(name):
        factory = resolve_import_path(name)
        arguments = {"num_classes": num_classes, **options}
        with contextlib.suppress(TypeError, ValueError):  # builtins without a signature
            if "input_shape" in inspect.signature(factory).parameters:
                arguments["input_shape"] = input_shape
    else:
        raise ConfigError(_unknown_model_message(name))
    with _seeded(seed):
        try:
            model = factory(**arguments)
        except TypeError as error:
            raise ConfigError(
                f"cannot build model {name!r} with {sorted(options)}: {error}"
            ) from error
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def build_ensemble(
    name: str,
    *,
    members: int,
    num_classes: int,
    input_shape: Sequence[int],
    seed: int | None = None,
    batched: bool | None = None,
    **options,
) -> BatchedEnsemble | SequentialEnsemble:
    """An ensemble of M independently initialised members of one backbone.

    Args:
        name: Backbone name or import path (see the module docstring).
        members: M >= 1.
        num_classes: K.
        input_shape: Shape of one input, e.g. ``(2,)`` or ``(1, 28, 28)``.
        seed: Member m is initialised with seed ``seed + m``; ``None`` draws from torch's global
            generator.
        batched: ``None`` batches when the backbone allows it and falls back to sequential (with a
            log message) otherwise; ``True`` requires batching; ``False`` forces sequential.
        **options: Backbone options, e.g. ``hidden=(100, 100)`` for ``mlp``.

    Returns:
        A module mapping ``[B, *input_shape]`` to ``[B, M, K]``.

    Raises:
        ConfigError: Unknown name or option, invalid sizes, or ``batched=True`` for a backbone that
            cannot be batched.
    """
    shape = _check_common(num_classes, input_shape, members)
    if not isinstance(name, str):
        raise ConfigError(_unknown_model_message(name))
    if batched not in (None, True, False):
        raise ConfigError(f"batched must be true, false or null, got {batched!r}")
    networks = [
        _build_one(name, num_classes, shape, None if seed is None else seed + index, options)
        for index in range(members)
    ]
    if batched is False or (batched is None and members == 1):
        return SequentialEnsemble(networks)
    if name not in BACKBONES:
        reason = "models given by import path are not batched"
    else:
        try:
            return BatchedEnsemble(networks)
        except (NotBatchableError, ValueError) as error:
            reason = str(error)
    if batched:
        raise ConfigError(f"cannot batch an ensemble of {name!r}: {reason}")
    logger.info("running the %d members of %r one after another: %s", members, name, reason)
    return SequentialEnsemble(networks)


def build_model(
    name: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    members: int = 1,
    seed: int | None = None,
    **options,
) -> nn.Module:
    """A backbone (``members=1``: ``[B, *input_shape]`` -> ``[B, K]``) or an ensemble of them.

    Args:
        name: ``mlp``, ``small_cnn``, ``vgg16``, ``resnet18``, ``wrn28_10`` or an import path.
        num_classes: K.
        input_shape: Shape of one input, e.g. ``(2,)`` or ``(3, 32, 32)``.
        members: M; for M > 1 the result maps ``[B, *input_shape]`` to ``[B, M, K]`` and is batched
            when the backbone allows it (see :func:`build_ensemble`).
        seed: Initialisation seed (member m of an ensemble uses ``seed + m``); ``None`` draws from
            torch's global generator.
        **options: Backbone options (``hidden``, ``channels``, ``width``, ``depth``, ``dropout``…).

    Returns:
        The model, on the CPU in float32.

    Raises:
        ConfigError: Unknown name (the message lists the valid ones) or option, invalid sizes.
    """
    shape = _check_common(num_classes, input_shape, members)
    if members > 1:
        return build_ensemble(
            name, members=members, num_classes=num_classes, input_shape=shape, seed=seed, **options
        )
    if not isinstance(name, str):
        raise ConfigError(_unknown_model_message(name))
    return _build_one(name, num_classes, shape, seed, options)
