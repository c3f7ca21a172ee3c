"""Arrays that stay on disk: .npy rows read on demand, standardised per batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from endd.config import load_yaml
from endd.data.ondisk import NpyRows, StandardisedRows
from endd.errors import DataError
from endd.pipeline.run import run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8, np.int64, np.float64])
def test_rows_read_exactly_what_numpy_wrote(tmp_path, dtype):
    array = (np.arange(7 * 3 * 2) % 200).reshape(7, 3, 2).astype(dtype)
    np.save(tmp_path / "a.npy", array)
    rows = NpyRows(tmp_path / "a.npy")
    assert rows.shape == (7, 3, 2) and len(rows) == 7
    np.testing.assert_array_equal(rows.read(2, 5), array[2:5])
    np.testing.assert_array_equal(rows.read(5, 99), array[5:])
    order = np.array([6, 0, 1, 2, 5, 3, 3])
    np.testing.assert_array_equal(rows.take(order), array[order])


@settings(max_examples=40, deadline=None)
@given(
    indices=st.lists(st.integers(0, 49), max_size=30),
    start=st.integers(0, 60),
    stop=st.integers(0, 60),
)
def test_take_and_slices_match_numpy(tmp_path_factory, indices, start, stop):
    path = tmp_path_factory.mktemp("rows") / "x.npy"
    array = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.save(path, array)
    mean, std = torch.tensor([1.0, 0, 0, 2]), torch.tensor([2.0, 1, 3, 1])
    lazy = StandardisedRows(NpyRows(path), mean, std)
    expected = (torch.from_numpy(array) - mean) / std
    assert torch.equal(lazy[torch.tensor(indices, dtype=torch.long)], expected[indices])
    assert torch.equal(lazy[start:stop], expected[start:stop])
    assert torch.equal(lazy.raw()[start:stop], torch.from_numpy(array[start:stop]))


def test_damaged_npy_files_are_one_line_errors(tmp_path):
    np.save(tmp_path / "ok.npy", np.zeros((10, 3), dtype=np.float32))
    data = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-8])
    (tmp_path / "noise.npy").write_bytes(b"hello, not numpy")
    np.save(tmp_path / "objects.npy", np.array([{}, {}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.zeros((4, 3))))
    for name, message in [
        ("short", "truncated"),
        ("noise", "cannot read"),
        ("objects", "numeric array in C order"),
        ("fortran", "numeric array in C order"),
    ]:
        with pytest.raises(DataError, match=message):
            NpyRows(tmp_path / f"{name}.npy")


def _write_folder(folder: Path, rng: np.random.Generator, n: int = 150) -> dict[str, np.ndarray]:
    folder.mkdir()
    y = np.arange(n) % 3
    x = (np.eye(3)[y] @ rng.normal(size=(3, 6)) * 3 + rng.normal(size=(n, 6))).astype(np.float32)
    arrays = {
        "x_train": x[:100],
        "y_train": y[:100],
        "x_test": x[100:],
        "y_test": y[100:],
        "x_aux": (x[:40] * 2).astype(np.float32),
        "x_ood_far": (x[:30] + 8).astype(np.float32),
    }
    for key, value in arrays.items():
        np.save(folder / f"{key}.npy", value)
    return arrays


def test_folder_form_runs_like_the_npz_form(tmp_path, tiny_spiral):
    rng = np.random.default_rng(0)
    arrays = _write_folder(tmp_path / "folder", rng)
    np.savez(tmp_path / "same.npz", **arrays)
    overrides = [*tiny_spiral, "students.methods=[end, endd_aux]", "data.name=npz"]
    config = load_yaml(CONFIGS / "spiral.yaml")
    results = {}
    for name, path in (("folder", tmp_path / "folder"), ("npz", tmp_path / "same.npz")):
        run = run_config(config, tmp_path / f"run_{name}", [*overrides, f"data.path={path}"])
        results[name] = json.loads(run.metrics.read_text())
    # the same data and training; the statistics differ only in summation order (float64
    # chunks on disk, float32 in memory), so the numbers agree closely but not bit for bit
    for model in ("ensemble", "end", "endd_aux"):
        a, b = results["folder"]["models"][model], results["npz"]["models"][model]
        assert a["error"] == pytest.approx(b["error"], abs=0.04), model
    assert set(results["folder"]["models"]["endd_aux"]["ood"]) == {"far"}


def test_folder_form_errors_name_the_file(tmp_path, tiny_spiral):
    from endd.config import resolve_config
    from endd.data import load_data

    rng = np.random.default_rng(1)
    folder = tmp_path / "folder"
    _write_folder(folder, rng)
    config = resolve_config({}, ["data.name=npz", f"data.path={folder}"])
    bad = np.load(folder / "x_test.npy")
    bad[3, 1] = np.inf
    np.save(folder / "x_test.npy", bad)
    with pytest.raises(DataError, match="'x_test' contains NaN or infinite"):
        load_data(config["data"], 0)
    np.save(folder / "x_test.npy", bad[:, :4])
    with pytest.raises(DataError, match="feature shape"):
        load_data(config["data"], 0)
    (folder / "x_test.npy").unlink()
    with pytest.raises(DataError, match=r"lacks x_test\.npy"):
        load_data(config["data"], 0)
    np.save(folder / "x_tset.npy", bad)
    with pytest.raises(DataError, match="unexpected array"):
        load_data(config["data"], 0)
