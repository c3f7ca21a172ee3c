"""The typed run config: defaults, YAML loading, both forms of overrides, data kinds, run-directory
configs of older versions and one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from endd.config import (
    DEFAULTS,
    Config,
    config_schema,
    dump_config,
    load_yaml,
    parse_override,
    resolve_config,
)
from endd.errors import ConfigError
from endd.methods import METHODS, StudentMethod, register_method

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))

#: The flat data section every older version wrote into a run directory's config.yaml.
OLD_FLAT_DATA = {
    "name": "spiral",
    "path": None,
    "points_per_class": 1000,
    "noise": 0.25,
    "aux": "ring",
    "aux_size": 3000,
    "ood": ["far", "uniform"],
    "ood_size": 1000,
    "grid_resolution": 100,
    "train_size": None,
    "test_size": None,
    "augment": False,
    "channels": None,
    "size": None,
}


@pytest.fixture
def endd_log(caplog, monkeypatch):
    """Records of the ``endd`` logger, even after the CLI stopped it propagating."""
    monkeypatch.setattr(logging.getLogger("endd"), "propagate", True)
    caplog.set_level(logging.INFO, logger="endd")
    return caplog


def test_shipped_configs_are_there():
    names = {path.stem for path in SHIPPED}
    assert {"spiral", "spiral_m100", "fashion_mnist", "cifar10", "cifar100"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_resolves_and_round_trips(tmp_path, path):
    config = resolve_config(load_yaml(path))
    assert config["name"] == path.stem
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(config))
    assert resolve_config(load_yaml(saved)) == config
    assert resolve_config(load_yaml(saved), from_run_dir=True) == config
    # the file's own values survive, and the data section holds only its kind's keys
    user = load_yaml(path)
    for key, value in user["data"].items():
        assert config["data"][key] == value
    assert set(config["data"]) == set(type(Config.model_validate(config).data).model_fields)


def test_documented_defaults():
    config = resolve_config()
    assert config == DEFAULTS
    assert config["data"] == {
        "name": "spiral",
        "points_per_class": 1000,
        "noise": 0.25,
        "aux": "ring",
        "aux_size": 3000,
        "ood": ["far", "uniform"],
        "ood_size": 1000,
        "grid_resolution": 100,
    }
    assert config["model"] == {"backbone": "mlp", "hidden": [100, 100], "width": None}
    assert config["ensemble"]["members"] == 10 and config["ensemble"]["lr"] == 1e-3
    assert config["ensemble"]["gradient_clip"] is None
    students = config["students"]
    assert students["methods"] == ["end", "endd", "end_aux", "endd_aux", "proxy"]
    assert students["epochs"] == 300 and students["gradient_clip"] == 10.0
    assert students["smoothing"] == 1e-4 and students["teacher"] == "cached"
    assert students["temperature"] == {
        "initial": 5.0,
        "final": 1.0,
        "hold_fraction": 0.3,
        "decay_end_fraction": 0.7,
    }
    assert students["end_temperature"] == 1.0 and students["aux_weight"] == 1.0
    assert config["trainer"] == {
        "accelerator": "cpu",
        "devices": 1,
        "num_nodes": 1,
        "precision": "32-true",
        "num_threads": None,
        "workers": None,
        "eval_batch_size": 4096,
        "logger": "none",
    }
    assert config["teacher"] == {
        "source": "train",
        "path": None,
        "members": [],
        "cache_dtype": "auto",
    }


def test_resolved_configs_are_independent_of_defaults():
    config = resolve_config()
    config["students"]["methods"].append("x")
    config["data"]["ood"].clear()
    assert resolve_config() == DEFAULTS and DEFAULTS["data"]["ood"] == ["far", "uniform"]


def test_kind_defaults():
    npz = resolve_config({}, ["data.name=npz", "data.path=d.npz"])["data"]
    assert npz == {"name": "npz", "path": "d.npz", "aux": "x_aux", "grid_resolution": 100}
    image = resolve_config({}, ["data.name=digits"])["data"]
    assert image == {
        "name": "digits",
        "path": None,
        "aux": None,
        "aux_size": 3000,
        "ood": [],
        "ood_size": 1000,
        "train_size": None,
        "test_size": None,
        "augment": False,
        "channels": None,
        "size": None,
        "cache": None,
    }


def test_overrides_are_dotted_and_read_as_yaml():
    config = resolve_config(
        {"seed": 3},
        ["students.temperature.initial=10", "data.ood=[far]", "model.hidden=[8, 8]", "seed=4"],
    )
    assert config["students"]["temperature"]["initial"] == 10
    assert config["data"]["ood"] == ["far"]
    assert config["model"]["hidden"] == [8, 8]
    assert config["seed"] == 4


def test_override_of_a_mapping_merges_into_it():
    config = resolve_config(
        {"students": {"temperature": {"final": 2.0}}}, ["students.temperature={initial: 9}"]
    )
    assert config["students"]["temperature"]["initial"] == 9
    assert config["students"]["temperature"]["final"] == 2.0  # the file's value is kept


def test_override_value_can_be_null():
    assert parse_override("data.aux=null") == {"data": {"aux": None}}
    assert parse_override("data.aux=") == {"data": {"aux": None}}
    assert resolve_config({}, ["data.aux=null"])["data"]["aux"] is None


def test_mapping_and_string_overrides_agree():
    strings = [
        "seed=7",
        "students.methods=[endd, proxy]",
        "students.temperature.initial=2.5",
        "model.hidden=[4]",
        "data.name=npz",
        "data.path=mine.npz",
        "trainer.precision=bf16-mixed",
    ]
    mapping = {
        "seed": 7,
        "students.methods": ("endd", "proxy"),  # tuples are lists
        "students.temperature.initial": 2.5,
        "model.hidden": [4],
        "data.name": "npz",
        "data.path": Path("mine.npz"),  # paths are strings
        "trainer.precision": "bf16-mixed",
    }
    user = load_yaml(CONFIGS / "spiral.yaml")
    assert resolve_config(user, strings) == resolve_config(user, mapping)
    assert resolve_config(user, mapping)["data"]["path"] == "mine.npz"


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("students.epochs=0", "students.epochs", 0),
        ("students.epoch=3", "students.epoch", 3),
        ("seed=true", "seed", True),
        ("trainer.precision=banana", "trainer.precision", "banana"),
        ("data.noise=x", "data.noise", "x"),
        ("data.aux=svhn", "data.aux", "svhn"),
        ("model.hidden=[0]", "model.hidden", [0]),
        ("students.methods=[endd, endd]", "students.methods", ["endd", "endd"]),
    ],
)
def test_mapping_and_string_overrides_fail_alike(text, key, value):
    user = load_yaml(CONFIGS / "spiral.yaml")
    errors = []
    for overrides in ([text], {key: value}):
        try:
            resolve_config(user, overrides)
        except ConfigError as error:
            errors.append(str(error))
        else:
            errors.append(None)
    assert errors[0] is not None and errors[0] == errors[1]
    assert f"'{key}'" in errors[0]


@pytest.mark.parametrize(
    ("user", "overrides", "match"),
    [
        ({"studnets": {}}, [], "unknown config key 'studnets'.*did you mean 'students'"),
        ({}, ["students.epoch=3"], "unknown config key 'students.epoch'.*'epochs'"),
        ({}, ["students.epochs=0"], "'students.epochs' must be greater than 0, got 0"),
        ({}, ["ensemble.members=1"], "'ensemble.members' must be greater than or equal to 2"),
        ({}, ["students.methods=[endd, foo]"], "unknown student method 'foo'"),
        ({}, ["students.methods=[endd, edd]"], "did you mean 'end"),
        ({}, ["students.methods=[endd, proxy, endd]"], "'endd' twice"),
        ({}, ["students.smoothing=1.5"], "'students.smoothing' must be less than 1, got 1.5"),
        (
            {},
            ["data.name=cifar10", "data.ood=[svhn]", "data.aux=svhn"],
            "'data.aux'.*also an OOD evaluation set",
        ),
        ({}, ["seed"], "not of the form key.sub=value"),
        ({}, ["a..b=1"], "not of the form key.sub=value"),
        ({"data": 3}, [], "config key 'data' must be a mapping, got 3"),
        ({"students": 3}, [], "config key 'students' must be a mapping, got 3"),
        ({"students": 3}, ["students.epochs=2"], "config key 'students' must be a mapping"),
        ({}, ["students.temperature.hold_fraction=0.9"], "hold_fraction' must be at most"),
        ({}, ["students.aux_weight=0"], "'students.aux_weight' must be greater than 0"),
        ({}, ["students.aux_weight=-0.5"], "'students.aux_weight' must be greater than 0"),
        ({}, ["students.aux_weight=.inf"], "'students.aux_weight' must be a finite number"),
        ({}, ["students.aux_weight=true"], "'students.aux_weight' must be a valid number"),
        ({}, ["ensemble.lr=.nan"], "'ensemble.lr' must be a finite number"),
        ({}, ["seed=4294967296"], "'seed' must be less than or equal to 4294967295"),
        ({}, ["name=''"], "'name' must have at least 1 character"),
        ({}, ["data.ood=[moon]"], r"'data.ood\[0\]' must be 'far' or 'uniform', got 'moon'"),
        ({}, ["data.aux=cifar100"], "'data.aux' must be 'ring'"),
        ({}, ["data.name=cifra10"], "'data.name' must be one of spiral, npz, .*did you mean"),
        ({}, ["data.name=[1]"], "'data.name' must be one of spiral, npz"),
        ({}, ["data.augment=true"], "'data.augment' is for image data, not for data.name=spiral"),
        ({}, ["data.path=x"], "'data.path' is for npz and image data, not for data.name=spiral"),
        ({"data": {"name": "cifar10", "noise": 0.1}}, [], "is for spiral data, not for data"),
        ({}, ["data.name=npz"], r"data\.path is not set \(use --set data\.path=FILE\)"),
        ({}, ["data.name=npz", "data.path=f", "data.aux=ring"], "'data.aux' must be 'x_aux'"),
        ({}, ["data.name=npz", "data.path=f", "data.ood=[a]"], "'data.ood' is for spiral and"),
        ({}, ["model.hidden=[8, -1]"], "'model.hidden' must be a positive integer, a list"),
        ({}, ["model.hidden=2.5"], "'model.hidden' must be a positive integer"),
        ({}, ["model.backbone=my model"], "'model.backbone' must be a backbone name"),
        ({}, ["model.backbone=''"], "'model.backbone' must be a backbone name"),
        ({}, ["model.width=0"], "'model.width' must be greater than 0"),
        ({}, ["trainer.devices=0"], "'trainer.devices' must be a positive integer or 'auto'"),
        ({}, ["trainer.devices=true"], "'trainer.devices' must be a positive integer or 'auto'"),
        ({}, ["trainer.accelerator=gpus"], "'trainer.accelerator' must be one of .*'gpu'"),
        ({}, ["trainer.precision=bf17-mixed"], "'trainer.precision' must be one of"),
        ({}, ["trainer.precision=true"], "'trainer.precision' must be one of"),
        ({}, ["trainer.num_threads=0"], "'trainer.num_threads' must be greater than 0"),
        ({}, ["students.teacher=live"], "'students.teacher' must be one of cached, online"),
        ({}, ["ensemble.gradient_clip=0"], "'ensemble.gradient_clip' must be greater than 0"),
        ({}, ["data.name=mnist", "data.channels=2"], "'data.channels' must be one of 1, 3"),
        ({}, ["data.name=mnist", "data.channels=true"], "'data.channels' must be one of 1, 3"),
        ({}, ["data.name=mnist", "data.augment=1"], "'data.augment' must be a valid boolean"),
        ({}, ["data.name=mnist", "data.ood=[mnist]"], "'data.ood': OOD set 'mnist' is drawn"),
    ],
)
def test_invalid_configs_name_the_problem(user, overrides, match):
    with pytest.raises(ConfigError, match=match) as caught:
        resolve_config(user, overrides)
    assert "\n" not in str(caught.value)


def test_unknown_keys_are_reported_before_other_problems():
    with pytest.raises(ConfigError, match=r"unknown config key 'students\.epoch'"):
        resolve_config({"students": {"epochs": -1, "epoch": 3}})


def test_ints_are_fine_for_floats_but_not_the_reverse():
    config = resolve_config({}, ["students.lr=1", "students.temperature.initial=10"])
    assert config["students"]["lr"] == 1.0 and isinstance(config["students"]["lr"], float)
    with pytest.raises(ConfigError, match=r"'students\.epochs' must be a valid integer, got 2\.0"):
        resolve_config({}, ["students.epochs=2.0"])


def test_precision_accepts_what_lightning_accepts():
    for value in ("32-true", "32", 32, "16-mixed", "bf16-mixed", "64-true", 16, 64, "bf16"):
        assert resolve_config({}, {"trainer.precision": value})["trainer"]["precision"] == value


def test_backbone_import_paths_are_accepted_without_importing():
    for name in ("vgg16", "my_pkg.models.Net", "import:my_pkg.models:make", "pkg.mod:Net"):
        assert resolve_config({}, {"model.backbone": name})["model"]["backbone"] == name


def test_methods_are_looked_up_when_validating():
    with pytest.raises(ConfigError, match="unknown student method 'endd_t3'"):
        resolve_config({}, ["students.methods=[endd_t3]"])
    register_method(StudentMethod("endd_t3", "EnD² (T=3)", METHODS["endd"].loss, "dirichlet"))
    try:
        config = resolve_config({}, ["students.methods=[endd, endd_t3]"])
    finally:
        del METHODS["endd_t3"]
    assert config["students"]["methods"] == ["endd", "endd_t3"]


def test_exponent_floats_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("students:\n  lr: 1e-3\n  smoothing: 5E-5\nensemble:\n  lr: 2.5e-4\n")
    config = resolve_config(load_yaml(path), ["students.temperature.initial=5E+1"])
    assert config["students"]["lr"] == 1e-3 and config["students"]["smoothing"] == 5e-5
    assert config["ensemble"]["lr"] == 2.5e-4
    assert config["students"]["temperature"]["initial"] == 50.0
    assert parse_override("a.b=1e3") == {"a": {"b": 1000.0}}
    assert parse_override("a.b=e3") == {"a": {"b": "e3"}}  # still a string
    assert parse_override("a.b=12") == {"a": {"b": 12}}  # still an int


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_yaml(listing)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_config_file_is_an_error(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"config file {path} is empty"):
        load_yaml(path)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: x\nstudents:\n  methods: [endd, proxy\n  epochs: 3\n", "line 4, column 9"),
        ("name: x\nseed: 1\n  epochs: 3\n", "line 3, column 9"),
        ("name: 'x\n", "line 2, column 1"),
    ],
)
def test_yaml_syntax_error_is_one_line(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"config file {path} is not valid YAML: {where}: ")


def test_override_yaml_error_is_one_line():
    with pytest.raises(
        ConfigError, match=r"override 'data.ood=\[far': value is not valid YAML"
    ) as e:
        resolve_config({}, ["data.ood=[far"])
    assert "\n" not in str(e.value)


def test_switching_data_kind_by_override_drops_the_files_data_keys(endd_log):
    user = load_yaml(CONFIGS / "spiral.yaml")
    config = resolve_config(user, ["data.name=npz", "data.path=mine.npz", "data.grid_resolution=7"])
    assert config["data"] == {
        "name": "npz",
        "path": "mine.npz",
        "aux": "x_aux",  # the npz default, not the file's ring
        "grid_resolution": 7,  # set by an override: kept
    }
    notices = [r.getMessage() for r in endd_log.records if r.name == "endd"]
    assert len(notices) == 1
    assert "data.name=npz" in notices[0] and "data.name=spiral" in notices[0]
    for key in ("points_per_class", "noise", "aux", "aux_size", "ood", "ood_size"):
        assert f"data.{key}" in notices[0]


def test_switching_kind_keeps_earlier_overrides_of_the_new_kind(endd_log):
    user = load_yaml(CONFIGS / "spiral.yaml")
    config = resolve_config(user, ["data.path=f.npz", "data.ood_size=40", "data.name=npz"])
    assert config["data"]["path"] == "f.npz"  # an npz key, set before the switch: kept
    (notice,) = [r.getMessage() for r in endd_log.records if r.name == "endd"]
    assert "data.ood_size" in notice and "data.path" not in notice


def test_keys_of_the_old_kind_set_after_the_switch_are_errors():
    user = load_yaml(CONFIGS / "spiral.yaml")
    with pytest.raises(
        ConfigError,
        match=r"config key 'data\.noise' is for spiral data, not for data\.name=cifar10",
    ):
        resolve_config(user, ["data.name=cifar10", "data.noise=0.1"])


def test_same_kind_switch_keeps_the_files_data_keys(endd_log):
    user = load_yaml(CONFIGS / "cifar10.yaml")
    config = resolve_config(user, ["data.name=cifar100", "data.aux=cifar10"])
    assert config["data"]["name"] == "cifar100" and config["data"]["path"] == "datasets"
    assert config["data"]["ood"] == ["lsun_crop", "tim_crop", "svhn"] and config["data"]["augment"]
    with pytest.raises(ConfigError, match="'cifar100' is the in-domain dataset"):  # aux kept
        resolve_config(user, ["data.name=cifar100"])
    assert not [r for r in endd_log.records if r.name == "endd"]


def test_switch_through_a_data_mapping_override(endd_log):
    user = load_yaml(CONFIGS / "cifar10.yaml")
    config = resolve_config(user, {"data": {"name": "spiral", "noise": 0.5}})
    assert config["data"]["noise"] == 0.5 and config["data"]["ood"] == ["far", "uniform"]
    assert len([r for r in endd_log.records if r.name == "endd"]) == 1


def test_data_kind_in_the_file_is_not_switched(endd_log):
    with pytest.raises(ConfigError, match=r"'data\.noise' is for spiral data"):
        resolve_config({"data": {"name": "cifar10", "noise": 0.3}})
    assert not endd_log.records


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("spiral", {}),
        ("npz", {"path": "/data/mine.npz"}),
        ("cifar10", {"ood": ["svhn"], "aux": "cifar100", "path": "datasets", "augment": True}),
    ],
)
def test_old_run_dir_configs_with_a_flat_data_section(tmp_path, endd_log, name, extra):
    old = {**DEFAULTS, "data": {**OLD_FLAT_DATA, "name": name, **extra}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ConfigError, match=r"is for .* data, not for data\.name"):
        resolve_config(load_yaml(path))
    config = resolve_config(load_yaml(path), from_run_dir=True)
    kind = "image" if name == "cifar10" else name
    data = config["data"]
    assert data["name"] == name
    assert set(data) == set(type(Config.model_validate({"data": data}).data).model_fields)
    if kind == "spiral":
        assert data == DEFAULTS["data"]
    elif kind == "npz":
        assert data == {
            "name": "npz",
            "path": "/data/mine.npz",
            "aux": "x_aux",
            "grid_resolution": 100,
        }
    else:
        assert data["ood"] == ["svhn"] and data["aux"] == "cifar100" and data["augment"]
        assert "noise" not in data and "points_per_class" not in data
    assert not endd_log.records  # silently
    # a truly unknown key still fails
    old["data"]["nosie"] = 0.3
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.nosie'"):
        resolve_config(load_yaml(path), from_run_dir=True)


def test_dump_load_resolve_round_trip_of_an_edited_config(tmp_path):
    config = resolve_config(
        load_yaml(CONFIGS / "fashion_mnist.yaml"),
        ["students.smoothing=1e-6", "students.aux_weight=0.1", "trainer.devices=auto"],
    )
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config))
    assert load_yaml(path) == config
    assert resolve_config(load_yaml(path)) == config


def test_config_schema_describes_every_section():
    schema = config_schema()
    assert set(schema["properties"]) == {
        "name",
        "seed",
        "data",
        "model",
        "ensemble",
        "students",
        "teacher",
        "trainer",
    }
    assert schema["additionalProperties"] is False
    kinds = {ref["$ref"].rsplit("/", 1)[-1] for ref in schema["properties"]["data"]["oneOf"]}
    assert kinds == {"SpiralData", "NpzData", "ImageData"}
    trainer = schema["$defs"]["TrainerConfig"]["properties"]
    assert "bf16-mixed" in trainer["precision"]["enum"] and 32 in trainer["precision"]["enum"]
