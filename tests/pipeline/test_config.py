import pytest
import yaml

from endd.errors import ConfigError
from endd.pipeline.config import DEFAULTS, dump_config, load_yaml, parse_override, resolve_config


def test_defaults_resolve_and_round_trip_through_yaml(tmp_path):
    config = resolve_config()
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config))
    assert resolve_config(load_yaml(path)) == config
    assert config == DEFAULTS


def test_overrides_are_dotted_and_read_as_yaml():
    config = resolve_config(
        {"seed": 3},
        ["students.temperature.initial=10", "data.ood=[far]", "model.hidden=[8, 8]", "seed=4"],
    )
    assert config["students"]["temperature"]["initial"] == 10
    assert config["data"]["ood"] == ["far"]
    assert config["model"]["hidden"] == [8, 8]
    assert config["seed"] == 4


def test_override_value_can_be_null():
    assert parse_override("data.aux=null") == {"data": {"aux": None}}


@pytest.mark.parametrize(
    ("user", "overrides", "match"),
    [
        ({"studnets": {}}, [], "unknown config key 'studnets'.*did you mean 'students'"),
        ({}, ["students.epoch=3"], "unknown config key 'students.epoch'.*'epochs'"),
        ({}, ["students.epochs=0"], "students.epochs' must be a positive integer"),
        ({}, ["ensemble.members=1"], "at least 2"),
        ({}, ["students.methods=[endd, foo]"], "unknown student method 'foo'"),
        ({}, ["students.smoothing=1.5"], r"smoothing' must lie in \[0, 1\)"),
        ({}, ["data.ood=[ring]", "data.aux=ring"], "also an OOD evaluation set"),
        ({}, ["seed"], "not of the form key.sub=value"),
        ({"data": 3}, [], "must be a mapping"),
        ({}, ["students.temperature.hold_fraction=0.9"], "hold_fraction"),
        ({}, ["students.aux_weight=0"], "aux_weight' must be a positive finite number"),
        ({}, ["students.aux_weight=-0.5"], "aux_weight' must be a positive finite number"),
        ({}, ["students.aux_weight=.inf"], "aux_weight' must be a positive finite number"),
        ({}, ["students.aux_weight=true"], "aux_weight' must be a positive finite number"),
    ],
)
def test_invalid_configs_name_the_problem(user, overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(user, overrides)


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_yaml(listing)
