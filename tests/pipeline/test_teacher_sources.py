"""A teacher from outside: a folder of member logits, or the members' own checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from endd.config import load_yaml
from endd.pipeline.run import run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _metrics(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("timing")
    return metrics


def test_logits_folder_of_a_finished_run_reproduces_its_students(tmp_path, tiny_spiral):
    overrides = [*tiny_spiral, "students.methods=[end, endd, endd_aux, proxy]"]
    config = load_yaml(CONFIGS / "spiral.yaml")
    first = run_config(config, tmp_path / "trained", overrides, quiet=True)
    second = run_config(
        config,
        tmp_path / "from_logits",
        [*overrides, "teacher.source=logits", f"teacher.path={first.teacher}"],
        quiet=True,
    )
    assert _metrics(second.root) == _metrics(first.root)  # every model, exactly
    assert not second.ensemble.exists()  # no ensemble was trained
    done = json.loads((second.teacher / "done.json").read_text())
    assert done["source"] == "logits" and done["path"] == str(first.teacher.resolve())
    assert "teacher: **3** members' logits" in second.report.read_text()
    assert "ensemble" not in json.loads(second.metrics.read_text())["timing"]


# ---- the "must show": members trained with plain PyTorch, no endd ------------------
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "your_ensemble_files.py"


@pytest.fixture(scope="module")
def digits_members(tmp_path_factory):
    """examples/your_ensemble_files.py: three MLPs trained on scikit-learn's digits with a plain
    PyTorch loop (no endd), saved as safetensors, their logits as a teacher folder, the digits
    as an .npz of raw features."""
    root = tmp_path_factory.mktemp("digits")
    subprocess.run([sys.executable, str(EXAMPLE), str(root)], check=True, timeout=300)
    return root


def test_member_checkpoints_distill_to_ensemble_accuracy(tmp_path, digits_members, monkeypatch):
    root = digits_members
    monkeypatch.syspath_prepend(str(root))  # the members' class: digitnets.DigitsMLP
    members = [
        {"backbone": "digitnets.DigitsMLP", "kwargs": {"hidden": 64}, "weights": str(path)}
        for path in sorted((root / "members").glob("*.safetensors"))
    ]
    assert len(members) == 3
    common = {
        "name": "digits",
        "data": {"name": "npz", "path": str(root / "digits.npz")},
        "students": {"methods": ["end", "endd"], "epochs": 60},
        "trainer": {"workers": 1},
    }
    from_checkpoints = run_config(
        common | {"teacher": {"source": "checkpoints", "members": members}},
        tmp_path / "ckpt",
        quiet=True,
    )
    metrics = _metrics(from_checkpoints.root)
    ensemble, endd = metrics["models"]["ensemble"]["error"], metrics["models"]["endd"]["error"]
    assert ensemble < 0.06
    assert endd <= ensemble + 0.02, (endd, ensemble)

    # the same members' logits, computed by the user, as a teacher.path folder
    from_logits = run_config(
        common | {"teacher": {"source": "logits", "path": str(root / "teacher_logits")}},
        tmp_path / "logits_run",
        quiet=True,
    )
    # endd ran the members on the raw inputs exactly as the file holds them: the same logits
    assert _metrics(from_logits.root) == metrics


# ---- bad teacher inputs: one line, exit 2, nothing written --------------------------------
@pytest.fixture(scope="module")
def finished_teacher(tmp_path_factory):
    """The teacher/ folder of a finished tiny spiral run (train, test, aux, ood_*, grid)."""
    from tiny import TINY_SPIRAL

    root = tmp_path_factory.mktemp("teacher")
    overrides = [*TINY_SPIRAL, "students.methods=[end]", "students.epochs=1"]
    run = run_config(load_yaml(CONFIGS / "spiral.yaml"), root / "run", overrides, quiet=True)
    return run.teacher


def _tamper(folder: Path, case: str) -> None:
    train = np.load(folder / "train.npy")
    if case == "missing":
        (folder / "test.npy").unlink()
    elif case == "rows":
        np.save(folder / "train.npy", train[:-1])
    elif case == "classes":
        np.save(folder / "train.npy", train[..., :2])
    elif case == "members":
        for path in folder.glob("*.npy"):
            np.save(path, np.load(path)[:, :1])
    elif case == "nan":
        train[5, 0, 1] = np.nan
        np.save(folder / "train.npy", train)
    elif case == "ints":
        np.save(folder / "train.npy", train.astype(np.int32))
    elif case == "ndim":
        np.save(folder / "train.npy", train[:, 0])
    elif case == "garbage":
        (folder / "train.npy").write_bytes(b"\x93NUMPY not really")
    elif case == "pickle":
        np.save(folder / "train.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    elif case == "disagree":
        np.save(folder / "test.npy", np.load(folder / "test.npy")[:, :2])


BAD_LOGITS = [
    ("missing", "teacher logits missing: {folder}/test.npy"),
    ("rows", "train split has"),
    ("classes", "K=2 classes but the data has 3"),
    ("members", "M=1 member"),
    ("nan", "NaN or infinite"),
    ("ints", "must be float16, float32 or float64"),
    ("ndim", "must be [N, M, K]"),
    ("garbage", "cannot read {folder}/train.npy"),
    ("pickle", "cannot read {folder}/train.npy"),
    ("disagree", "disagree on the number of members"),
]


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    from endd.cli import main

    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(("case", "message"), BAD_LOGITS, ids=[c for c, _ in BAD_LOGITS])
def test_bad_teacher_logits_are_one_line_errors(tmp_path, finished_teacher, capsys, case, message):
    import shutil

    from tiny import TINY_SPIRAL

    folder = tmp_path / "logits"
    shutil.copytree(finished_teacher, folder)
    (folder / "done.json").unlink()
    _tamper(folder, case)
    out = tmp_path / "out"
    overrides = [*TINY_SPIRAL, "students.methods=[end, endd]", "teacher.source=logits"]
    argv = ["run", str(CONFIGS / "spiral.yaml"), "--out", str(out), "-q"]
    argv += [f"--set={o}" for o in [*overrides, f"teacher.path={folder}"]]
    code, err = _run_cli(argv, capsys)
    assert code == 2
    assert err.startswith("endd: error:") and "\n" not in err, err
    assert message.format(folder=folder) in err, err
    assert not out.exists()  # nothing written, not even config.yaml


def test_a_missing_grid_is_allowed_and_reported(tmp_path, finished_teacher):
    import shutil

    from tiny import TINY_SPIRAL

    folder = tmp_path / "logits"
    shutil.copytree(finished_teacher, folder)
    (folder / "grid.npy").unlink()
    overrides = [*TINY_SPIRAL, "students.methods=[endd]", "teacher.source=logits"]
    run = run_config(
        load_yaml(CONFIGS / "spiral.yaml"),
        tmp_path / "out",
        [*overrides, f"teacher.path={folder}"],
        quiet=True,
    )
    assert "The ensemble's map is missing" in run.report.read_text()
    metrics = json.loads(run.metrics.read_text())
    assert "grid" not in metrics["models"]["endd"]["fidelity"]


BAD_MEMBERS = [
    ("no_file", "weights not found"),
    ("garbage", "cannot read"),
    ("wrong_shape", "does not fit teacher.members[1]"),
    ("wrong_classes", "teacher.members[0] outputs [2, 4]"),
    ("one_member", "lists 1 member"),
]


@pytest.mark.parametrize(("case", "message"), BAD_MEMBERS, ids=[c for c, _ in BAD_MEMBERS])
def test_bad_member_checkpoints_are_one_line_errors(tmp_path, capsys, case, message):
    from endd.models import build_model
    from tiny import TINY_SPIRAL

    paths = []
    for index in range(2):
        hidden = [8] if (case == "wrong_shape" and index == 1) else [16]
        net = build_model("mlp", num_classes=3, input_shape=(2,), hidden=[16])
        path = tmp_path / f"m{index}.pt"
        torch.save(net.state_dict(), path)
        paths.append((path, hidden))
    if case == "no_file":
        paths[1][0].unlink()
    if case == "garbage":
        paths[0][0].write_bytes(b"not a state dict")
    members = [{"backbone": "mlp", "kwargs": {"hidden": h}, "weights": str(p)} for p, h in paths]
    if case == "wrong_classes":  # a user's own module, by import path, with 4 outputs
        for member in members:
            torch.save(torch.nn.Linear(2, 4).state_dict(), member["weights"])
            member |= {
                "backbone": "torch.nn.Linear",
                "kwargs": {"in_features": 2, "out_features": 4},
            }
    if case == "one_member":
        members = members[:1]
    out = tmp_path / "out"
    argv = ["run", str(CONFIGS / "spiral.yaml"), "--out", str(out), "-q"]
    argv += [f"--set={o}" for o in [*TINY_SPIRAL, "students.methods=[end, endd]"]]
    argv += ["--set=teacher.source=checkpoints", f"--set=teacher.members={json.dumps(members)}"]
    code, err = _run_cli(argv, capsys)
    assert code == 2
    assert err.startswith("endd: error:") and "\n" not in err, err
    assert message in err, err
    assert not out.exists()
