"""Bad config values through the command line: each is one line on stderr naming the key, exit
status 2, and nothing written. Also ``endd config show`` and ``endd config schema``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from endd.cli import main
from endd.config import load_yaml, resolve_config

SPIRAL = Path(__file__).resolve().parents[2] / "configs" / "spiral.yaml"

#: (overrides, the dotted key the error must name)
BAD_VALUES = [
    # wrong type
    (["students.temperature.hold_fraction=abc"], "students.temperature.hold_fraction"),
    (["trainer.workers=abc"], "trainer.workers"),
    (["seed=true"], "seed"),
    (["seed=1.5"], "seed"),
    (["data.noise=x"], "data.noise"),
    (["students.epochs=2.0"], "students.epochs"),
    (["ensemble.lr=fast"], "ensemble.lr"),
    (["students.aux_weight=true"], "students.aux_weight"),
    (["students.methods=endd"], "students.methods"),
    (["ensemble=3"], "ensemble"),
    (["name=[a, b]"], "name"),
    # out of range
    (["ensemble.weight_decay=-1"], "ensemble.weight_decay"),
    (["seed=-1"], "seed"),
    (["seed=4294967296"], "seed"),
    (["model.hidden=[0]"], "model.hidden"),
    (["ensemble.members=1"], "ensemble.members"),
    (["students.batch_size=0"], "students.batch_size"),
    (["students.lr=.inf"], "students.lr"),
    (["students.smoothing=1"], "students.smoothing"),
    (["students.temperature.initial=0"], "students.temperature.initial"),
    (["students.temperature.hold_fraction=0.9"], "students.temperature.hold_fraction"),
    (["students.temperature.decay_end_fraction=1.5"], "students.temperature.decay_end_fraction"),
    (["students.end_temperature=-1"], "students.end_temperature"),
    (["students.gradient_clip=0"], "students.gradient_clip"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size"),
    (["trainer.devices=0"], "trainer.devices"),
    (["data.points_per_class=0"], "data.points_per_class"),
    # unknown key
    (["students.epoch=3"], "students.epoch"),
    (["trainer.gpus=1"], "trainer.gpus"),
    (["data.augment=true"], "data.augment"),
    (["data.name=cifar10", "data.noise=0.1"], "data.noise"),
    (["data.name=npz", "data.path=x.npz", "data.points_per_class=5"], "data.points_per_class"),
    # unknown name
    (["students.methods=[endd, endd]"], "students.methods"),
    (["students.methods=[endd, end2]"], "students.methods"),
    (["data.name=cifar"], "data.name"),
    (["data.ood=[far, moon]"], "data.ood"),
    (["data.aux=moon"], "data.aux"),
    (["trainer.accelerator=gpus"], "trainer.accelerator"),
    (["trainer.precision=banana"], "trainer.precision"),
    (["trainer.precision=8"], "trainer.precision"),
    (["students.teacher=live"], "students.teacher"),
    (["model.backbone=not a model"], "model.backbone"),
    (["model.backbone=resnet"], "model.backbone"),
    # cross-field
    (["data.name=npz"], "data.path"),
    (["data.name=cifar10", "data.ood=[svhn]", "data.aux=svhn"], "data.aux"),
    (["data.name=cifar10", "data.ood=[lsun_crop]", "data.aux=lsun_resize"], "data.aux"),
    (["data.name=cifar10", "data.ood=[cifar10]"], "data.ood"),
    (["students.reduced_temperatures=[1, 2]"], "students.reduced_temperatures"),
    (
        ["students.teacher=reduced", "students.reduced_temperatures=[2, 5]"],
        "students.reduced_temperatures",
    ),
    (
        ["students.teacher=reduced", "students.reduced_temperatures=[1, -5]"],
        "students.reduced_temperatures[1]",
    ),
]


def test_the_table_is_big_enough():
    assert len(BAD_VALUES) >= 25
    assert len({tuple(overrides) for overrides, _ in BAD_VALUES}) == len(BAD_VALUES)


@pytest.mark.parametrize(("overrides", "key"), BAD_VALUES, ids=lambda v: " ".join(v))
def test_bad_value_is_one_line_naming_the_key(tmp_path, capsys, overrides, key):
    out = tmp_path / "run"
    argv = ["run", str(SPIRAL), "--out", str(out)]
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("endd: error:"), err
    assert f"'{key}" in err, err
    assert not out.exists()


def test_config_show_prints_the_resolved_config(capsys):
    overrides = ["seed=3", "students.methods=[endd]", "students.lr=5e-4"]
    argv = ["config", "show", str(SPIRAL)]
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == resolve_config(load_yaml(SPIRAL), overrides)
    assert shown["seed"] == 3 and shown["students"]["lr"] == 5e-4
    assert shown["students"]["temperature"]["decay_end_fraction"] == 0.7  # defaults written out


def test_config_show_switches_data_kind_with_a_notice(tmp_path, capsys):
    argv = ["config", "show", str(SPIRAL), "--set", "data.name=npz", "--set", "data.path=my.npz"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["data"] == {
        "name": "npz",
        "path": "my.npz",
        "aux": "x_aux",
        "grid_resolution": 100,
    }
    assert "ignoring data.points_per_class" in captured.err


def test_config_show_refuses_a_bad_value(capsys):
    assert main(["config", "show", str(SPIRAL), "--set", "trainer.precision=banana"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("endd: error: config key 'trainer.precision'")


def test_config_schema_is_json(capsys):
    assert main(["config", "schema"]) == 0
    text = capsys.readouterr().out
    schema = json.loads(text)
    assert text.startswith("{\n  ")  # indented
    assert set(schema["properties"]) >= {"data", "students", "trainer"}
    students = schema["$defs"]["StudentsConfig"]["properties"]
    assert students["epochs"]["default"] == 300
