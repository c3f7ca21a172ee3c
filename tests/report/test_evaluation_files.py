"""``evaluation/`` holds what it claims: the models' measures, the ROC curves, the 2-D data."""

from __future__ import annotations

import json

import numpy as np
import torch

from endd import metrics
from endd.methods import get_method
from endd.models.kinds import get_kind, outputs_from_logits
from endd.store import artifacts
from endd.store import evaluation as saved


def _splits(run):
    ood = list(json.loads(run.metrics.read_text())["models"]["ensemble"]["ood"])
    return ood, ["test", *(f"ood_{name}" for name in ood), "grid"]


def test_measures_are_the_models_outputs(npz_run):
    run = npz_run
    ood, splits = _splits(run)
    assert ood == ["far", "near"]
    methods = run.read_config()["students"]["methods"]
    assert methods == ["end", "endd_aux", "proxy"]  # one student of each kind
    for split in splits:
        expected = outputs_from_logits("ensemble", run.teacher_logits(split))
        measures = saved.read_arrays(run, saved.measures_path(run, "ensemble", split))
        assert list(measures) == list(get_kind("ensemble").measures)
        for name, values in measures.items():
            assert values.dtype == np.float64
            np.testing.assert_array_equal(values, expected[name].numpy())
        for method in methods:
            kind = get_method(method).kind
            logits = artifacts.read_array(run.predictions(method) / f"{split}.npy")
            expected = outputs_from_logits(kind, torch.from_numpy(np.array(logits)))
            measures = saved.read_arrays(run, saved.measures_path(run, method, split))
            assert list(measures) == list(get_kind(kind).measures)
            for name, values in measures.items():
                np.testing.assert_array_equal(values, expected[name].numpy())


def test_roc_points_are_the_drawn_curves(npz_run):
    run = npz_run
    result = json.loads(run.metrics.read_text())
    ood, _ = _splits(run)
    order = ["ensemble/total", "ensemble/knowledge", "end/total"]
    order += ["endd_aux/knowledge", "proxy/knowledge"]
    for name in ood:
        curves = saved.read_arrays(run, saved.roc_path(run, name))
        assert list(curves) == order
        for key, points in curves.items():
            model, measure = key.split("/")
            test = saved.read_arrays(run, saved.measures_path(run, model, "test"))[measure]
            other = saved.read_arrays(run, saved.measures_path(run, model, f"ood_{name}"))[measure]
            fpr, tpr = metrics.roc_curve_points(torch.from_numpy(test), torch.from_numpy(other))
            np.testing.assert_array_equal(points, np.stack([fpr, tpr]))
            auroc = result["models"][model]["ood"][name]["auroc"][measure]
            assert abs(np.trapezoid(points[1], points[0]) - auroc) < 1e-6  # float32 AUROC


def test_data_is_the_raw_2d_data(npz_run):
    run = npz_run
    with np.load(run.root.parent / "data.npz") as source:
        raw = {key: source[key] for key in source.files}
    data = saved.read_arrays(run, saved.data_path(run))
    assert list(data) == [
        "x_train",
        "y_train",
        "x_aux",
        "ood_far",
        "ood_near",
        "grid",
        "grid_shape",
    ]
    for key in ("x_train", "x_aux"):
        np.testing.assert_allclose(data[key], raw[key], rtol=1e-5, atol=1e-5)
    for name in ("far", "near"):
        np.testing.assert_allclose(data[f"ood_{name}"], raw[f"x_ood_{name}"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data["y_train"], raw["y_train"])
    assert data["grid_shape"].tolist() == [8, 8] and data["grid"].shape == (64, 2)
    points = np.concatenate([raw["x_train"], raw["x_aux"]])
    assert (data["grid"].min(axis=0) < points.min(axis=0)).all()
    assert (data["grid"].max(axis=0) > points.max(axis=0)).all()


def test_metrics_json_is_written_after_the_evaluation_files(npz_run):
    written = [p.stat().st_mtime_ns for p in npz_run.evaluation.rglob("*.npz")]
    assert written and max(written) <= npz_run.metrics.stat().st_mtime_ns
    assert not list(npz_run.evaluation.rglob("*.tmp"))
