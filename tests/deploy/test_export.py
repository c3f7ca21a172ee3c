"""`endd export`: ONNX and TorchScript files that run without endd and agree with `endd predict`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from endd.cli import main
from endd.deploy import export_model
from endd.deploy.export import PARITY_TOLERANCE, ParityError, parity_errors

# torch 2.13 deprecates torch.jit (still supported); the TorchScript format is what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

SPIRAL_MODELS = {
    "ensemble": ("probs", "total", "data", "knowledge", "epkl", "confidence"),
    "end": ("probs", "total", "confidence"),
    "endd": ("probs", "alphas", "total", "data", "knowledge", "epkl", "confidence"),
    "proxy": ("probs", "alphas", "total", "data", "knowledge", "epkl", "confidence"),
}

# Runs the exported files in a fresh interpreter from which endd has been removed: every sys.path
# entry holding an `endd` package is dropped (the editable install's .pth adds src/), and the
# script proves `import endd` fails before loading anything.
RUNNER = textwrap.dedent(
    """
    import json, os, sys
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "endd"))]
    try:
        import endd
    except ImportError:
        pass
    else:
        raise SystemExit("endd is importable in the deployment interpreter")
    import numpy as np

    for job in json.loads(sys.argv[1]):
        x = np.load(job["x"]).astype(np.float32)
        if job["format"] == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(job["file"], providers=["CPUExecutionProvider"])
            assert session.get_inputs()[0].name == "x"
            assert isinstance(session.get_inputs()[0].shape[0], str), "batch axis not dynamic"
            names = [o.name for o in session.get_outputs()]
            out = dict(zip(names, session.run(names, {"x": x})))
            assert "torch" not in sys.modules, "onnxruntime pulled in torch"
        else:
            import torch

            module = torch.jit.load(job["file"])
            result = module(torch.from_numpy(x))
            assert isinstance(result, dict), type(result)
            out = {name: value.numpy() for name, value in result.items()}
        np.savez(job["out"], **out)
    print("ok")
    """
)


def _run_without_endd(jobs: list[dict]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        [sys.executable, "-I", "-c", RUNNER, json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(jobs[0]["out"]).parent,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def _formats() -> list[str]:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return ["torchscript"]  # the extra is missing: the ONNX half is skipped
    return ["onnx", "torchscript"]


@pytest.mark.slow
def test_exports_run_without_endd_and_agree_with_predict(
    spiral_run, image_run, spiral_inputs, tmp_path
):
    image_x = tmp_path / "images.npy"
    np.save(image_x, np.random.default_rng(1).random((9, 3, 12, 12), dtype=np.float32))
    cases = [(spiral_run, name, spiral_inputs) for name in SPIRAL_MODELS]
    cases.append((image_run, "endd", image_x))
    jobs, expected = [], {}
    for run, name, x in cases:
        tag = f"{run.name}-{name}"
        prediction = tmp_path / f"{tag}-predict.npz"
        assert main(["predict", str(run), "--model", name, "--input", str(x), "--out",
                     str(prediction), "-q"]) == 0  # fmt: skip
        for fmt in _formats():
            exported = tmp_path / f"{tag}.{fmt}"
            result = export_model(run, name, fmt, exported)
            assert result.path == exported and exported.is_file()
            assert max(result.parity_error.values()) <= PARITY_TOLERANCE
            out = tmp_path / f"{tag}-{fmt}.npz"
            jobs.append({"format": fmt, "file": str(exported), "x": str(x), "out": str(out)})
            expected[out] = (prediction, result.outputs)
    _run_without_endd(sorted(jobs, key=lambda job: job["format"] != "onnx"))  # onnx before torch
    for out, (prediction, outputs) in expected.items():
        with np.load(out) as got, np.load(prediction) as want:
            assert list(got.files) == list(outputs)
            reference = {k: want[k] for k in want.files}
            assert set(outputs) == set(reference), out.name  # every output predict writes
            errors = parity_errors({k: got[k] for k in got.files}, reference)
            assert max(errors.values()) <= PARITY_TOLERANCE, (out.name, errors)
    for name, outputs in SPIRAL_MODELS.items():
        assert expected[tmp_path / f"spiral-{name}-torchscript.npz"][1] == outputs


def test_export_cli_prints_a_summary_and_writes_one_readable_file(spiral_run, tmp_path, capsys):
    out = tmp_path / "endd.pt"
    assert main(["export", str(spiral_run), "--model", "endd", "--format", "torchscript",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.startswith(f"exported: {out} (torchscript): x [N, 2] → probs, alphas, total")
    assert "parity with endd on 16 inputs" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["endd.pt"]  # no temporary left
    extra = {"endd.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    metadata = json.loads(extra["endd.json"])
    assert metadata["kind"] == "dirichlet" and metadata["input_shape"] == ["N", 2]
    assert metadata["outputs"][:2] == ["probs", "alphas"]
    for rows in (1, 5):  # any batch size, not only the traced one
        assert module(torch.zeros(rows, 2))["probs"].shape == (rows, 3)


def test_onnx_metadata_and_operators(spiral_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "proxy.onnx"
    export_model(spiral_run, "proxy", "onnx", out)
    model = onnx.load(str(out))
    metadata = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert metadata["endd.kind"] == "proxy_dirichlet" and metadata["endd.model"] == "proxy"
    assert [o.name for o in model.graph.output] == list(SPIRAL_MODELS["proxy"])
    operators = {node.op_type for node in model.graph.node}
    assert not operators & {"Lgamma", "Digamma"}  # ONNX has neither; built from elementary ops
    assert {node.domain for node in model.graph.node} <= {""}  # standard operators only


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("endd: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "endx", "--format", "torchscript"], "unknown model 'endx'"),
        (["--model", "endd", "--format", "tflite"], "unknown export format 'tflite'"),
    ],
)
def test_export_errors_are_one_line(spiral_run, tmp_path, capsys, args, message):
    out = tmp_path / "m.out"
    assert main(["export", str(spiral_run), *args, "--out", str(out)]) == 2
    assert message in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_bad_out_paths(spiral_run, tmp_path, capsys):
    base = ["export", str(spiral_run), "--model", "endd", "--format", "torchscript", "--out"]
    assert main([*base, str(tmp_path)]) == 2
    assert "is a directory" in _one_line_error(capsys)
    assert main([*base, str(tmp_path / "missing" / "m.pt")]) == 2
    assert "does not exist" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_the_extra_names_the_install_command(
    spiral_run, tmp_path, capsys, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real(name, *a),
    )
    out = tmp_path / "m.onnx"
    assert main(["export", str(spiral_run), "--model", "endd", "--format", "onnx", "--out",
                 str(out)]) == 2  # fmt: skip
    assert "pip install 'endd[export]'" in _one_line_error(capsys)
    assert not out.exists()


def test_a_failed_parity_check_writes_nothing(spiral_run, tmp_path, capsys, monkeypatch):
    import endd.deploy.export as export

    real = export.run_exported

    def off_by_a_little(path, fmt, x):
        out = real(path, fmt, x)
        out["knowledge"] = out["knowledge"] + 1e-3
        return out

    monkeypatch.setattr(export, "run_exported", off_by_a_little)
    out = tmp_path / "m.pt"
    with pytest.raises(ParityError, match=r"knowledge 1\.0e-03"):
        export_model(spiral_run, "endd", "torchscript", out)
    assert list(tmp_path.iterdir()) == []
    assert main(["export", str(spiral_run), "--model", "endd", "--format", "torchscript",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "disagrees with endd" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_exporter_failure_is_one_line(spiral_run, tmp_path, capsys, monkeypatch):
    def untraceable(*args, **kwargs):
        raise RuntimeError("Tracer cannot infer type of output\n(many more lines)")

    monkeypatch.setattr(torch.jit, "trace", untraceable)
    out = tmp_path / "m.pt"
    assert main(["export", str(spiral_run), "--model", "end", "--format", "torchscript",
                 "--out", str(out)]) == 2  # fmt: skip
    err = _one_line_error(capsys)
    assert "torch could not export model 'end' to torchscript: RuntimeError: Tracer" in err
    assert list(tmp_path.iterdir()) == []
