"""`endd predict`: .npy, .npz and image-folder inputs, batched, the run's standardisation applied,
and every bad input a one-line error that writes nothing."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import endd
from endd.cli import main
from endd.data.images import read_image, write_image_file
from endd.deploy import predict_file
from endd.deploy.inputs import open_input

KEYS = {
    "ensemble": ["probs", "total", "data", "knowledge", "epkl", "confidence"],
    "end": ["probs", "total", "confidence"],
    "endd": ["probs", "alphas", "total", "data", "knowledge", "epkl", "confidence"],
    "proxy": ["probs", "alphas", "total", "data", "knowledge", "epkl", "confidence"],
}


def _assert_matches(written: Path, expected: dict[str, torch.Tensor], keys: list[str]) -> None:
    with np.load(written) as got:
        assert [k for k in got.files if k != "files"] == keys
        for key in keys:
            assert got[key].dtype == np.float64
            np.testing.assert_allclose(got[key], expected[key].numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("model", list(KEYS))
def test_predict_npy_and_npz_match_the_python_api(spiral_run, spiral_inputs, tmp_path, model):
    x = np.load(spiral_inputs)
    expected = endd.load_run(spiral_run).model(model).predict(x)  # raw inputs, standardised inside
    out = tmp_path / "from_npy.npz"
    assert main(["predict", str(spiral_run), "--model", model, "--input", str(spiral_inputs),
                 "--out", str(out), "-q"]) == 0  # fmt: skip
    _assert_matches(out, expected, KEYS[model])
    compressed = tmp_path / "inputs.npz"
    np.savez_compressed(compressed, x=x.astype(np.float64), other=np.zeros(3))
    result = predict_file(spiral_run, model, compressed, tmp_path / "from_npz.npz", batch_size=7)
    _assert_matches(tmp_path / "from_npz.npz", expected, KEYS[model])
    assert list(result) == KEYS[model] and result["probs"].shape == (len(x), 3)


def test_predict_prints_what_it_wrote(spiral_run, spiral_inputs, tmp_path, capsys):
    out = tmp_path / "p.npz"
    assert main(["predict", str(spiral_run), "--model", "end", "--input", str(spiral_inputs),
                 "--out", str(out)]) == 0  # fmt: skip
    assert capsys.readouterr().out == f"predictions: {out} (60 inputs: probs, total, confidence)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]  # no temporary left


def test_npz_inputs_are_streamed_a_batch_at_a_time(tmp_path, monkeypatch):
    x = np.arange(1000 * 2, dtype=np.float32).reshape(1000, 2)
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, x=x)
        reads = []
        real = zipfile.ZipExtFile.read

        def recording(self, n=-1, real=real, reads=reads):
            reads.append(n)
            return real(self, n)

        monkeypatch.setattr(zipfile.ZipExtFile, "read", recording)
        source = open_input(path, (2,))
        batches = list(source.batches(64))
        monkeypatch.undo()
        assert source.count == 1000 and len(batches) == 16
        np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), x)
        assert -1 not in reads and max(reads) <= 64 * 2 * 4  # never the whole array at once


def test_predict_image_folder_reads_like_the_run(image_run, tmp_path):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(1, 28, 28), dtype=np.uint8)
    colour = rng.integers(0, 256, size=(3, 20, 30), dtype=np.uint8)
    write_image_file(folder / "b.png", grey)
    write_image_file(folder / "a" / "c.jpg", colour)
    write_image_file(folder / "a" / "d.png", colour)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "p.npz"
    result = predict_file(image_run, "endd", folder, out, batch_size=2)
    files = ["a/c.jpg", "a/d.png", "b.png"]  # sorted, recursive, images only
    assert result["files"].tolist() == files
    # the run's data: fashion_mnist read as data.channels=3, data.size=12, uint8 / 255
    pixels = np.stack([read_image(folder / f, size=(12, 12), channels=3) for f in files])
    x = pixels.astype(np.float32) / 255.0
    expected = endd.load_run(image_run).model("endd").predict(x)
    _assert_matches(out, expected, KEYS["endd"])
    with np.load(out) as written:
        assert written["files"].tolist() == files
    # a uint8 array for an image model is pixels too
    np.save(tmp_path / "pixels.npy", pixels)
    predict_file(image_run, "endd", tmp_path / "pixels.npy", tmp_path / "q.npz")
    _assert_matches(tmp_path / "q.npz", expected, KEYS["endd"])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("endd: error: ") and "\n" not in err, err
    return err


def _bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir()
    np.save(folder / "wide.npy", np.zeros((4, 3), dtype=np.float32))
    np.save(folder / "flat.npy", np.zeros(4, dtype=np.float32))
    np.save(folder / "nan.npy", np.array([[1.0, 2.0], [np.nan, 0.0]]))
    np.save(folder / "inf.npy", np.array([[1.0, 2.0], [3.0, 1e300]]))  # inf as float32
    np.save(folder / "text.npy", np.array([["a", "b"]]))
    np.save(folder / "objects.npy", np.array([{}, 1], dtype=object), allow_pickle=True)
    np.save(folder / "empty.npy", np.zeros((0, 2), dtype=np.float32))
    np.savez(folder / "nokey.npz", y=np.zeros((3, 2)))
    (folder / "junk.npy").write_text("not numpy")
    (folder / "junk.npz").write_text("not a zip")
    (folder / "x.csv").write_text("1,2\n")
    (folder / "no_images").mkdir()
    return {
        "missing": (folder / "missing.npy", "input not found"),
        "wrong shape": (folder / "wide.npy", "shape [4, 3], but the model takes [N, 2]"),
        "no batch axis": (folder / "flat.npy", "shape [4], but the model takes [N, 2]"),
        "nan": (folder / "nan.npy", "input 1 has NaN or infinite values"),
        "inf": (folder / "inf.npy", "input 1 has NaN or infinite values"),
        "text": (folder / "text.npy", "must be numbers"),
        "pickle": (folder / "objects.npy", "pickled data is never loaded"),
        "empty": (folder / "empty.npy", "holds no inputs"),
        "npz without x": (folder / "nokey.npz", "has no array 'x' (it has: y)"),
        "not npy": (folder / "junk.npy", "not a .npy file"),
        "not npz": (folder / "junk.npz", "as an .npz archive"),
        "csv": (folder / "x.csv", "give a .npy file"),
        "image folder for a 2-D model": (folder / "no_images", "not images"),
    }


def test_every_bad_input_is_one_line_and_writes_nothing(spiral_run, tmp_path, capsys):
    cases = _bad_inputs(tmp_path / "inputs")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name, (path, message) in cases.items():
        code = main(["predict", str(spiral_run), "--model", "endd", "--input", str(path),
                     "--out", str(out_dir / "p.npz")])  # fmt: skip
        assert code == 2, name
        assert message in _one_line_error(capsys), name
        assert list(out_dir.iterdir()) == [], name


def test_bad_model_out_and_batch_size_are_one_line(spiral_run, image_run, spiral_inputs, tmp_path,
                                                   capsys):  # fmt: skip
    def predict(*args: str, run: Path = spiral_run) -> int:
        return main(["predict", str(run), "--input", str(spiral_inputs), *args])

    out = str(tmp_path / "p.npz")
    assert predict("--model", "endx", "--out", out) == 2
    err = _one_line_error(capsys)
    assert "unknown model 'endx'" in err and "available: ensemble, end, endd, proxy" in err
    assert predict("--model", "endd", "--out", str(tmp_path)) == 2
    assert "is a directory" in _one_line_error(capsys)
    assert predict("--model", "endd", "--out", str(tmp_path / "nowhere" / "p.npz")) == 2
    assert "does not exist" in _one_line_error(capsys)
    assert predict("--model", "endd", "--out", out, "--batch-size", "0") == 2
    assert "batch size must be a positive integer" in _one_line_error(capsys)
    assert main(["predict", str(tmp_path / "norun"), "--model", "endd", "--input",
                 str(spiral_inputs), "--out", out]) == 2  # fmt: skip
    assert "run directory not found" in _one_line_error(capsys)
    assert predict("--model", "endd", "--out", out, run=image_run) == 2  # [N, 2] for [N, 3, 12, 12]
    assert "but the model takes [N, 3, 12, 12]" in _one_line_error(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(image_run), "--model", "endd", "--input", str(empty), "--out",
                 out]) == 2  # fmt: skip
    assert "no image files" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
