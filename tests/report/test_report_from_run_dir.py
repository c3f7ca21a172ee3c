"""``endd report RUN`` needs nothing but the run directory: not the dataset, not the pipeline."""

from __future__ import annotations

import shutil

import pytest

from endd.cli import main
from endd.errors import RunDirError
from endd.report import write_report
from endd.store import RunDir

FIGURES = ("data", "uncertainty_maps", "ood_roc", "training")


def _copy(run: RunDir, tmp_path) -> RunDir:
    return RunDir(shutil.copytree(run.root, tmp_path / "run"))


def test_report_without_the_dataset(npz_run, tmp_path):
    run = _copy(npz_run, tmp_path)
    report = npz_run.report.read_text(encoding="utf-8")
    figures = {name: (npz_run.figures / f"{name}.png").read_bytes() for name in FIGURES}
    dataset = npz_run.root.parent / "data.npz"
    assert run.read_config()["data"]["path"] == str(dataset)
    run.report.unlink()
    shutil.rmtree(run.figures)
    hidden = dataset.rename(dataset.with_name("hidden.npz"))  # the run's dataset is gone
    try:
        assert main(["report", str(run.root), "-q"]) == 0
    finally:
        hidden.rename(dataset)  # the session's run shares it with other tests

    assert run.report.read_text(encoding="utf-8") == report
    for name in FIGURES:
        assert (run.figures / f"{name}.png").read_bytes() == figures[name], name
    for name in ("EnD", "EnD²+AUX", "Proxy-EnD²", "figures/uncertainty_maps.png", "## Data"):
        assert name in report
    assert "figures/ood_roc.png" in report


def test_run_evaluated_by_an_older_endd_is_refused_in_one_line(npz_run, tmp_path, capsys):
    run = _copy(npz_run, tmp_path)
    shutil.rmtree(run.evaluation)
    with pytest.raises(RunDirError, match=r"endd evaluate .* --force"):
        write_report(run)
    assert main(["report", str(run.root), "-q", "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--force" in err and "evaluation/" in err and "\n" not in err
