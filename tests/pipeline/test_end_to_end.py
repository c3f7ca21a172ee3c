"""The whole pipeline on tiny configs: artifacts, the metrics.json contract, skipping, the CLI."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from endd.cli import EXAMPLES, build_parser, main
from endd.config import load_yaml
from endd.pipeline.run import run_config, run_stages

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL_KEYS = {"error", "nll", "ece", "brier", "prr", "misclassification", "ood"}


def _check_metrics_contract(metrics: dict, ood_sets: set[str], students: set[str]) -> None:
    assert set(metrics) >= {"dataset", "seed", "num_classes", "ensemble_size", "models", "timing"}
    assert set(metrics["models"]) == {"individual", "ensemble"} | students
    for name, model in metrics["models"].items():
        assert set(model) >= MODEL_KEYS, name
        for key in ("error", "ece"):
            assert 0.0 <= model[key] <= 1.0
        assert set(model["misclassification"]) == {"auroc", "aupr"}
        assert set(model["ood"]) == ood_sets
        for detection in model["ood"].values():
            assert set(detection) == {"auroc", "aupr", "fpr95"}
            for values in detection.values():
                assert all(v is None or 0.0 <= v <= 1.0 for v in values.values())
        if name in students:
            # a correlation is None only when a model's uncertainty is constant: a student that
            # outputs constants fails here
            fidelity = model["fidelity"]["test"]
            assert fidelity and all(v is not None and -1 <= v <= 1 for v in fidelity.values()), name
    ensemble = metrics["models"]["ensemble"]
    assert set(ensemble["prr"]) == {"total", "data", "knowledge", "epkl", "confidence"}
    assert set(metrics["models"]["individual"]["prr"]) == {"total", "confidence"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics["timing"].values())


def test_spiral_pipeline_writes_everything(tmp_path, tiny_spiral):
    run = run_config(load_yaml(CONFIGS / "spiral.yaml"), tmp_path / "run", tiny_spiral, quiet=True)
    metrics = json.loads(run.metrics.read_text())
    students = {"end", "endd", "end_aux", "endd_aux", "proxy"}
    _check_metrics_contract(metrics, {"far", "uniform"}, students)
    assert metrics["dataset"] == "spiral" and metrics["ensemble_size"] == 3
    constant = copy.deepcopy(metrics)  # what a student with constant outputs would score
    constant["models"]["endd"]["fidelity"]["test"]["knowledge"] = None
    with pytest.raises(AssertionError):
        _check_metrics_contract(constant, {"far", "uniform"}, students)
    assert metrics["num_classes"] == 3
    assert set(metrics["models"]["endd"]["prr"]) == {
        "total",
        "data",
        "knowledge",
        "epkl",
        "confidence",
        "differential_entropy",
    }
    assert set(metrics["models"]["end"]["prr"]) == {"total", "confidence"}
    assert set(metrics["models"]["endd_aux"]["fidelity"]) == {"test", "far", "uniform", "grid"}
    for name in ("data", "uncertainty_maps", "ood_roc", "training"):
        assert (run.figures / f"{name}.png").stat().st_size > 1000
    report = run.report.read_text()
    assert "EnD²+AUX" in report and "figures/uncertainty_maps.png" in report
    assert (run.root / "ensemble" / "model.safetensors").is_file()
    teacher = np.load(run.root / "teacher" / "test.npy")
    assert teacher.shape == (180, 3, 3)
    for method in students:
        assert (run.student(method) / "model.safetensors").is_file()
        assert not (run.student(method) / "checkpoints").exists()
    assert not list(run.root.rglob("*.tmp"))


def test_rerun_skips_finished_stages(tmp_path, tiny_spiral, caplog):
    overrides = [*tiny_spiral, "students.methods=[endd]"]
    run = run_config(load_yaml(CONFIGS / "spiral.yaml"), tmp_path / "r", overrides, quiet=True)
    stamps = {p: p.stat().st_mtime_ns for p in run.root.rglob("*") if p.is_file()}
    with caplog.at_level("INFO", logger="endd"):
        run_stages(run.root)
    skipped = {r.getMessage() for r in caplog.records if r.getMessage().endswith("skipped")}
    stages = ("ensemble", "teacher", "student:endd", "evaluate", "report")
    assert skipped == {f"[{stage}] already done, skipped" for stage in stages}
    assert stamps == {p: p.stat().st_mtime_ns for p in run.root.rglob("*") if p.is_file()}


def test_m100_config_runs(tmp_path, tiny_spiral):
    config = load_yaml(CONFIGS / "spiral_m100.yaml")
    assert config["ensemble"]["members"] == 100
    overrides = [*tiny_spiral, "students.methods=[endd_aux]"]
    run = run_config(config, tmp_path / "m100", overrides, quiet=True)
    assert json.loads(run.metrics.read_text())["ensemble_size"] == 3


def test_switch_to_npz_by_override(tmp_path, tiny_spiral):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)
    np.savez(
        tmp_path / "mine.npz",
        x_train=x,
        y_train=y,
        x_test=x[:30],
        y_test=y[:30],
        x_ood_shifted=x[:20] + 5,
    )
    code = main(
        [
            "run",
            str(CONFIGS / "spiral.yaml"),
            "--out",
            str(tmp_path / "npz"),
            "--quiet",
            *[f"--set={o}" for o in tiny_spiral],
            "--set",
            "data.name=npz",
            "--set",
            f"data.path={tmp_path / 'mine.npz'}",
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "npz" / "metrics.json").read_text())
    # no x_aux in the file: the +AUX students are skipped, the rest are there
    _check_metrics_contract(metrics, {"shifted"}, {"end", "endd", "proxy"})
    assert metrics["dataset"] == "npz" and metrics["num_classes"] == 3


def test_stage_commands(tmp_path, tiny_spiral):
    out = tmp_path / "staged"
    overrides = [*tiny_spiral, "students.methods=[end, endd]"]
    run_config(load_yaml(CONFIGS / "spiral.yaml"), out, overrides, quiet=True)
    (out / "metrics.json").unlink()
    (out / "report.md").unlink()
    assert main(["evaluate", str(out), "-q"]) == 0
    assert (out / "metrics.json").is_file() and not (out / "report.md").exists()
    assert main(["report", str(out), "-q"]) == 0
    assert (out / "report.md").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "nope.yaml", "--out", "X"], "config file not found: nope.yaml"),
        (["run", "CONFIG", "--out", "X", "--set", "students.epoch=1"], "unknown config key"),
        (["evaluate", "NOTADIR"], "run directory not found"),
        (["report", "EMPTY"], "not a run directory"),
        (["run", "CONFIG", "--out", "X", "--set", "data.name=npz"], "data.path is not set"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "EMPTY").mkdir()
    argv = [
        str(CONFIGS / "spiral.yaml")
        if a == "CONFIG"
        else str(tmp_path / a)
        if a in ("X", "NOTADIR", "EMPTY")
        else a
        for a in argv
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("endd: error:") and message in err and "\n" not in err
    assert not (tmp_path / "X").exists()  # nothing half-written, not even config.yaml


def test_changed_config_on_existing_run_is_refused(tmp_path, tiny_spiral, capsys):
    out = tmp_path / "r"
    args = [
        "run",
        str(CONFIGS / "spiral.yaml"),
        "--out",
        str(out),
        "-q",
        *[f"--set={o}" for o in tiny_spiral],
        "--set",
        "students.methods=[end]",
    ]
    assert main(args) == 0
    assert main([*args, "--set", "seed=5"]) == 2
    assert "different config (seed differ)" in capsys.readouterr().err


def test_help_lists_every_command_with_its_summary(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for action in commands._choices_actions:  # each subcommand's one-line help
        assert f"{action.dest}" in text and action.help in " ".join(text.split())
    for name, sub in commands.choices.items():
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        sub_text = capsys.readouterr().out
        for option in sub._option_string_actions:
            if option.startswith("--") and option != "--base-url":  # hidden test-only option
                assert option in sub_text, (name, option)


def test_help_examples_are_valid_commands():
    examples = [line.split("#")[0].split() for line in EXAMPLES.splitlines()[1:] if line.strip()]
    assert examples
    for words in examples:
        assert words[0] == "endd"
        build_parser().parse_args(words[1:])  # exits (fails the test) on a wrong example


def test_demo_command_runs_the_builtin_config(tmp_path, tiny_spiral):
    out = tmp_path / "demo"
    overrides = [f"--set={o}" for o in [*tiny_spiral, "students.methods=[endd]"]]
    assert main(["demo", "--out", str(out), "-q", *overrides]) == 0
    assert load_yaml(out / "config.yaml")["name"] == "spiral"
    assert (out / "report.md").is_file()
