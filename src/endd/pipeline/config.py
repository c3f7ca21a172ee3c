"""Run configuration: defaults, YAML loading, dotted overrides and validation.

A config is a nested dict. Every key a run understands has a default in :data:`DEFAULTS`; a user
file or ``--set key.sub=value`` override may only change existing keys (a typo is an error, not a
silently ignored setting), and the resolved config, every default written out, is saved next to the
run's outputs.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from endd.errors import ConfigError

STUDENT_METHODS = ("end", "endd", "end_aux", "endd_aux", "proxy")

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "data": {
        # spiral | npz | fashion_mnist | mnist | kmnist | digits | cifar10 | cifar100 | tinyimagenet
        "name": "spiral",
        "path": None,  # npz: the file; image datasets: the root folder (None = default location)
        "points_per_class": 1000,  # spiral
        "noise": 0.25,  # spiral; see configs/spiral.yaml for why not the authors' 0.1
        "aux": "ring",  # spiral: ring; images: a shift or dataset name; npz: x_aux; null = none
        "aux_size": 3000,
        "ood": ["far", "uniform"],  # names of OOD evaluation sets (npz: every x_ood_<name>)
        "ood_size": 1000,
        "grid_resolution": 100,  # 2-D data only: uncertainty maps over the input plane
        "train_size": None,  # images: subsample the training set (None = all)
        "test_size": None,
        "augment": False,  # images: random crop + horizontal flip on training batches
        "channels": None,  # images: convert to 1 (grey) or 3 (RGB) channels (None = native)
        "size": None,  # images: resize to this side in pixels (None = native)
    },
    "model": {"backbone": "mlp", "hidden": [100, 100], "width": None},
    "ensemble": {
        "members": 10,
        "epochs": 100,
        "batch_size": 128,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "gradient_clip": None,
    },
    "students": {
        "methods": list(STUDENT_METHODS),
        "epochs": 300,
        "batch_size": 128,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "gradient_clip": 10.0,
        "smoothing": 1e-4,
        "teacher": "cached",  # cached | online (run the ensemble on each augmented batch)
        "temperature": {
            "initial": 5.0,
            "final": 1.0,
            "hold_fraction": 0.3,
            "decay_end_fraction": 0.7,
        },
        "end_temperature": 1.0,  # EnD's fixed distillation temperature
        # +AUX students: weight of each auxiliary input in the loss relative to a training input
        # (the loss is the weighted mean over the batch; 1 = every input counts the same)
        "aux_weight": 1.0,
    },
    "trainer": {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "num_threads": None,  # torch intra-op threads (None = torch's default)
        "workers": None,  # students trained at once (None: one per core on CPU, else 1)
        "eval_batch_size": 4096,
    },
}


def _did_you_mean(key: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key '{dotted}'{_did_you_mean(key, base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{dotted}' must be a mapping, got {value!r}")
            _merge(base[key], value, prefix=f"{dotted}.")
        else:
            base[key] = copy.deepcopy(value)


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``"students.temperature.initial=10"`` into a nested dict; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({err.problem})") from None
    nested: dict[str, Any] = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file with ``safe_load``; an empty file is an empty config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def resolve_config(
    user: Mapping[str, Any] | None = None, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Defaults ← user config ← overrides, then validated. Returns a new dict."""
    config = copy.deepcopy(DEFAULTS)
    _merge(config, user or {})
    for text in overrides:
        _merge(config, parse_override(text))
    validate_config(config)
    return config


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _positive_int(config: dict[str, Any], dotted: str) -> None:
    value = get(config, dotted)
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"config key '{dotted}' must be a positive integer, got {value!r}",
    )


def _positive_number(config: dict[str, Any], dotted: str, *, finite: bool = False) -> None:
    value = get(config, dotted)
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if finite:
        valid = valid and value < math.inf
    kind = "positive finite number" if finite else "positive number"
    _require(valid, f"config key '{dotted}' must be a {kind}, got {value!r}")


def get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate_config(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first invalid setting."""
    _require(
        isinstance(config["seed"], int) and not isinstance(config["seed"], bool),
        f"config key 'seed' must be an integer, got {config['seed']!r}",
    )
    for key in (
        "ensemble.members",
        "ensemble.epochs",
        "ensemble.batch_size",
        "students.epochs",
        "students.batch_size",
        "data.points_per_class",
        "data.grid_resolution",
        "data.aux_size",
        "data.ood_size",
        "trainer.eval_batch_size",
    ):
        _positive_int(config, key)
    for key in ("ensemble.lr", "students.lr"):
        _positive_number(config, key)
    _require(
        config["ensemble"]["members"] >= 2,
        "config key 'ensemble.members' must be at least 2 (one member has no disagreement)",
    )
    methods = config["students"]["methods"]
    _require(isinstance(methods, list), "config key 'students.methods' must be a list")
    for method in methods:
        _require(
            method in STUDENT_METHODS,
            f"unknown student method '{method}'{_did_you_mean(str(method), STUDENT_METHODS)};"
            f" choose from {', '.join(STUDENT_METHODS)}",
        )
    _require(
        len(set(methods)) == len(methods), "config key 'students.methods' lists a method twice"
    )
    temperature = config["students"]["temperature"]
    for key in ("initial", "final"):
        _positive_number(config, f"students.temperature.{key}")
    hold, end = temperature["hold_fraction"], temperature["decay_end_fraction"]
    _require(
        0 <= hold <= end <= 1,
        "config keys 'students.temperature.hold_fraction' ≤ 'decay_end_fraction' must lie "
        "in [0, 1]",
    )
    _positive_number(config, "students.end_temperature")
    _positive_number(config, "students.aux_weight", finite=True)
    smoothing = config["students"]["smoothing"]
    _require(
        isinstance(smoothing, (int, float)) and 0 <= smoothing < 1,
        f"config key 'students.smoothing' must lie in [0, 1), got {smoothing!r}",
    )
    _require(
        config["students"]["teacher"] in ("cached", "online"),
        "config key 'students.teacher' must be 'cached' or 'online'",
    )
    noise = config["data"]["noise"]
    _require(
        isinstance(noise, (int, float)) and noise >= 0,
        f"config key 'data.noise' must be a non-negative number, got {noise!r}",
    )
    ood = config["data"]["ood"]
    _require(
        isinstance(ood, list) and all(isinstance(name, str) for name in ood),
        "config key 'data.ood' must be a list of names",
    )
    for key in ("data.train_size", "data.test_size", "data.size"):
        if get(config, key) is not None:
            _positive_int(config, key)
    _require(
        config["data"]["channels"] in (None, 1, 3),
        f"config key 'data.channels' must be 1, 3 or null, got {config['data']['channels']!r}",
    )
    _require(
        isinstance(config["data"]["augment"], bool),
        f"config key 'data.augment' must be true or false, got {config['data']['augment']!r}",
    )
    _require(
        config["data"]["aux"] not in ood,
        f"the auxiliary set '{config['data']['aux']}' is also an OOD evaluation set: "
        "evaluating OOD detection on the data used for distillation would be optimistic",
    )
    from endd.data.image_bundle import IN_DOMAIN_DATASETS, check_image_data

    if config["data"]["name"] in IN_DOMAIN_DATASETS:
        check_image_data(config["data"])  # OOD/aux names, and sets sharing a source


def dump_config(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)
