"""Run configs from YAML files and dotted overrides, validated by :class:`endd.config.Config`.

Defaults ← user config (a YAML file's mapping) ← overrides (``"key.sub=value"`` strings from the
command line, or a ``{"key.sub": value}`` mapping from Python), then validated. Every problem is
one :class:`~endd.errors.ConfigError` line naming the dotted key, the value given and what is
allowed. The result is a plain nested dict, every default written out; its ``data`` section holds
only the keys of its kind of data (spiral, npz or an image dataset).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from endd.config.schema import DATA_KINDS, DATA_NAMES, Config, data_kind
from endd.errors import ConfigError, did_you_mean

__all__ = [
    "DEFAULTS",
    "config_schema",
    "dump_config",
    "load_yaml",
    "parse_override",
    "resolve_config",
    "validate_config",
]

log = logging.getLogger("endd")

#: The resolved defaults (a spiral run), as a plain nested dict. Changing it changes nothing.
DEFAULTS: dict[str, Any] = Config().model_dump()

#: The keys of each kind of ``data`` section.
_DATA_KEYS: dict[str, tuple[str, ...]] = {
    kind: tuple(model.model_fields) for kind, model in DATA_KINDS.items()
}
_ALL_DATA_KEYS = {key for keys in _DATA_KEYS.values() for key in keys}
_UNSET = object()


class _Loader(yaml.SafeLoader):
    """``safe_load``, plus YAML 1.2 floats: ``1e-3`` and ``5E+2`` are numbers, not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = _one_line(getattr(error, "problem", None) or error)
    context = getattr(error, "context", None)
    if context:
        problem = f"{_one_line(context)}: {problem}"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + problem


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (safe: plain data only) into a dict.

    Raises:
        ConfigError: the file is missing, empty, not YAML or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {_one_line(error)}") from None
    try:
        data = _yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(error)}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _split_key(key: object, source: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in key.split(".")) if isinstance(key, str) else ()
    if not parts or not all(parts):
        raise ConfigError(f"{source} is not of the form key.sub=value")
    return parts


def _parse(text: object) -> tuple[tuple[str, ...], Any]:
    if not isinstance(text, str):
        raise ConfigError(f"override {text!r} is not a 'key.sub=value' string")
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    parts = _split_key(key, f"override '{text}'")
    try:
        value = _yaml(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(
            f"override '{text}': value is not valid YAML ({_yaml_problem(error)})"
        ) from None
    return parts, value


def _nest(parts: tuple[str, ...], value: Any) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return nested


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``"students.temperature.initial=10"`` into a nested dict; the value is read as YAML."""
    return _nest(*_parse(text))


def _override_items(
    overrides: Iterable[str] | Mapping[str, Any],
) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(overrides, Mapping):
        return [(_split_key(k, f"override key {k!r}"), v) for k, v in overrides.items()]
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(
            "overrides must be a list of 'key.sub=value' strings or a {'key.sub': value} mapping, "
            f"got the string {overrides!r}"
        )
    return [_parse(text) for text in overrides]


def _plain(value: Any) -> Any:
    """A deep copy with tuples as lists and paths as strings (what YAML would have given)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return copy.deepcopy(value)


def _dotted(parts: Iterable[object]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text


def _merge_into(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _merge_into(base[key], value)
        else:
            base[key] = value


def _set(tree: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    node = tree
    for depth, part in enumerate(parts[:-1]):
        if part not in node:
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise ConfigError(
                f"config key '{_dotted(parts[: depth + 1])}' must be a mapping, got {node[part]!r}"
            )
        node = node[part]
    _merge_into(node, {parts[-1]: value})


def _data_name_set_by(parts: tuple[str, ...], value: Any) -> Any:
    if parts == ("data", "name"):
        return value
    if parts == ("data",) and isinstance(value, dict) and "name" in value:
        return value["name"]
    return _UNSET


def _data_keys_set_by(parts: tuple[str, ...], value: Any) -> list[str]:
    if parts[0] != "data":
        return []
    if len(parts) > 1:
        return [parts[1]]
    return list(value) if isinstance(value, dict) else []


def _merged(
    user: Mapping[str, Any] | None, overrides: Iterable[str] | Mapping[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """The user config with the overrides applied in order (defaults are validation's job), and
    the notice to give if it is valid.

    An override that sets ``data.name`` to another kind of data than the config's drops the
    config's other ``data`` keys, and the keys earlier overrides set that the new kind lacks;
    keys the overrides set for the new kind are kept.
    """
    if user is not None and not isinstance(user, Mapping):
        raise ConfigError(f"a config must be a mapping, got {user!r}")
    items = _override_items(overrides)
    tree = _plain(user or {})
    data = tree.get("data")
    origin = dict.fromkeys(data, "config") if isinstance(data, dict) else {}
    switched: list[tuple[Any, Any, list[str]]] = []
    for index, (parts, raw) in enumerate(items):
        value = _plain(raw)
        name = _data_name_set_by(parts, value)
        data = tree.get("data")
        if name is not _UNSET and isinstance(data, dict):
            old, new = data.get("name", "spiral"), name
            old_kind, new_kind = data_kind(old), data_kind(new)
            if new_kind is not None and old_kind != new_kind:
                keep = _DATA_KEYS[new_kind]
                dropped = [
                    key
                    for key in data
                    if key != "name" and (origin.get(key) == "config" or key not in keep)
                ]
                for key in dropped:
                    del data[key]
                    origin.pop(key, None)
                if dropped:
                    switched.append((old, new, dropped))
        _set(tree, parts, value)
        for key in _data_keys_set_by(parts, value):
            origin[key] = index
    if not switched:
        return tree, None
    old, new = switched[0][0], switched[-1][1]
    dropped = ", ".join(dict.fromkeys(f"data.{key}" for *_, keys in switched for key in keys))
    return tree, f"data.name={new} is another kind of data than data.name={old}: ignoring {dropped}"


def _upgrade_run_dir_data(tree: dict[str, Any]) -> None:
    """Older run directories saved a flat ``data`` section with every kind's keys: drop the
    other kinds' keys (unknown keys still fail)."""
    data = tree.get("data")
    if not isinstance(data, dict):
        return
    kind = data_kind(data.get("name", "spiral"))
    if kind is None:
        return
    for key in list(data):
        if key in _ALL_DATA_KEYS and key not in _DATA_KEYS[kind]:
            del data[key]
    if kind == "npz" and data.get("aux") not in (None, "x_aux"):
        data["aux"] = "x_aux"  # older versions ignored data.aux for npz and read x_aux


# --- validation errors as one line -------------------------------------------------------------

_SHOULD = re.compile(r"^(?:Input|String|List|Value|Dictionary|Tuple|Number|Object) should ")


def _strip_tag(loc: tuple[Any, ...], error_type: str) -> tuple[Any, ...]:
    if (
        len(loc) >= 2
        and loc[0] == "data"
        and loc[1] in DATA_KINDS
        and not error_type.startswith("union_tag")
    ):
        return (loc[0], *loc[2:])
    return loc


def _model_at(loc: tuple[Any, ...], tree: Mapping[str, Any]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        if model is Config and part == "data":
            data = tree.get("data")
            name = data.get("name", "spiral") if isinstance(data, dict) else None
            kind = data_kind(name)
            if kind is None:
                return None
            model = DATA_KINDS[kind]
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _unknown_key(loc: tuple[Any, ...], tree: Mapping[str, Any]) -> str:
    key, parent = _dotted(loc), loc[:-1]
    if parent == ("data",) and loc[-1] in _ALL_DATA_KEYS:
        kinds = [kind for kind, keys in _DATA_KEYS.items() if loc[-1] in keys]
        name = tree["data"].get("name", "spiral")
        return f"config key '{key}' is for {' and '.join(kinds)} data, not for data.name={name}"
    model = _model_at(parent, tree)
    options = list(model.model_fields) if model is not None else []
    return f"unknown config key '{key}'{did_you_mean(loc[-1], options)}"


def _message(error: Mapping[str, Any], tree: Mapping[str, Any]) -> str:
    error_type = error["type"]
    loc = _strip_tag(tuple(error["loc"]), error_type)
    key, value = _dotted(loc), error.get("input")
    if error_type == "extra_forbidden":
        return _unknown_key(loc, tree)
    if error_type.startswith("union_tag") and loc == ("data",):
        if not isinstance(value, dict):
            return f"config key 'data' must be a mapping, got {value!r}"
        name = value.get("name")
        return (
            f"config key 'data.name' must be one of {', '.join(DATA_NAMES)}, got {name!r}"
            f"{did_you_mean(name, DATA_NAMES)}"
        )
    if error_type in ("model_type", "model_attributes_type", "dict_type"):
        return f"config key '{key}' must be a mapping, got {value!r}"
    if error_type == "missing":
        return f"config key '{key}' is not set"
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return str(cause)
    message = error["msg"]
    if error_type in ("value_error", "assertion_error"):
        return f"config key '{key}' {message.removeprefix('Value error, ')}"
    message = _SHOULD.sub("must ", message)
    return f"config key '{key}' {message}, got {value!r}"


def _config_error(error: ValidationError, tree: Mapping[str, Any]) -> ConfigError:
    errors = error.errors(include_url=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    return ConfigError(_one_line(_message(first, tree)))


def validate_config(config: Mapping[str, Any]) -> Config:
    """Validate a config mapping (missing keys take their defaults) into :class:`Config`.

    Raises:
        ConfigError: one line naming the first invalid key (unknown keys first).
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"a config must be a mapping, got {config!r}")
    try:
        return Config.model_validate(dict(config))
    except ValidationError as error:
        raise _config_error(error, config) from None


def resolve_config(
    user: Mapping[str, Any] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    from_run_dir: bool = False,
    notices: list[str] | None = None,
) -> dict[str, Any]:
    """Defaults ← ``user`` ← ``overrides``, validated; a new plain nested dict.

    Args:
        user: a config mapping (e.g. from :func:`load_yaml`); missing keys take their defaults.
        overrides: ``"key.sub=value"`` strings (the value read as YAML) or a
            ``{"key.sub": value}`` mapping, applied in order. Setting ``data.name`` to another
            kind of data than ``user``'s drops ``user``'s other ``data`` keys (with a notice).
        from_run_dir: ``user`` is a run directory's saved ``config.yaml``: ``data`` keys of other
            kinds of data (older versions saved them all) are dropped silently.
        notices: if given, notices (the data-kind switch) are appended here for the caller to
            show once the run's inputs are known to be good, instead of logged now: the CLI
            keeps a later data error's stderr to its one line.

    Raises:
        ConfigError: one line naming the dotted key, the value given and what is allowed.
    """
    tree, notice = _merged(user, overrides)
    if from_run_dir:
        _upgrade_run_dir_data(tree)
    config = validate_config(tree).model_dump()
    if notice:  # only for a valid config: otherwise the error is all there is to say
        if notices is not None:
            notices.append(notice)
        else:
            log.info("%s", notice)  # INFO: the switch is asked for, not a problem
    return config


def dump_config(config: Mapping[str, Any]) -> str:
    """The config as YAML text (what :func:`load_yaml` reads back)."""
    if isinstance(config, BaseModel):
        config = config.model_dump()
    return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)


def config_schema() -> dict[str, Any]:
    """The JSON schema of a config file."""
    schema = Config.model_json_schema()
    schema["title"] = "endd run config"
    return json.loads(json.dumps(schema))
