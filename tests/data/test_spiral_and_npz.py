import numpy as np
import pytest
import torch

from endd.config import resolve_config
from endd.data import load_data
from endd.data.spiral import AUX_RADIUS, SPIRAL_RADIUS, make_spirals
from endd.errors import ConfigError, DataError


def test_spirals_follow_the_authors_generator():
    rng = np.random.default_rng(0)
    x, y = make_spirals(500, 0.0, rng)
    assert x.shape == (1500, 2) and set(np.unique(y)) == {0, 1, 2}
    radius = np.linalg.norm(x, axis=1)
    # noise-free: r = t² with t = √u·6π ≤ 6π, so the radius stays within (6π)²
    assert radius.max() <= SPIRAL_RADIUS + 1e-3
    t = np.sqrt(radius)
    angle = np.arctan2(x[:, 1], -x[:, 0])  # x = −cos(t+offset)t², y = sin(t+offset)t²
    offset = 2 * np.pi * y / 3
    residual = np.angle(np.exp(1j * (angle - t - offset)))
    assert np.abs(residual).max() < 1e-3


def test_spiral_bundle_is_standardised_and_seeded():
    config = resolve_config({}, ["data.points_per_class=200", "data.grid_resolution=20"])
    a = load_data(config["data"], seed=1)
    b = load_data(config["data"], seed=1)
    c = load_data(config["data"], seed=2)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert torch.allclose(a.x_train.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(a.x_train.std(0), torch.ones(2), atol=1e-4)
    assert a.num_classes == 3 and a.input_shape == (2,)
    assert set(a.ood) == {"far", "uniform"} and a.grid.shape == (400, 2)
    aux_radius = np.linalg.norm(a.to_raw(a.x_aux).numpy(), axis=1)
    assert abs(np.median(aux_radius) - AUX_RADIUS) < 5
    far = np.linalg.norm(a.to_raw(a.ood["far"]).numpy(), axis=1)
    assert far.min() >= 500 - 1e-2 and far.max() <= 800 + 1e-2
    assert not torch.equal(a.x_train, a.x_test)  # the test set is a fresh draw


def test_unknown_spiral_ood_set():
    with pytest.raises(ConfigError, match=r"data\.ood\[0\]' must be 'far' or 'uniform'"):
        resolve_config({}, ["data.ood=[moon]"])


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return resolve_config({}, ["data.name=npz", f"data.path={path}"])["data"]


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, size=(60, 4))
    y = np.arange(60) % 3
    data = _npz(
        tmp_path / "d.npz",
        x_train=x,
        y_train=y,
        x_test=x[:10],
        y_test=y[:10],
        x_aux=x[:5],
        x_ood_noise=x[:7] * 10,
    )
    bundle = load_data(data, seed=0)
    assert bundle.num_classes == 3 and bundle.input_shape == (4,)
    assert set(bundle.ood) == {"noise"} and bundle.x_aux.shape == (5, 4)
    assert bundle.grid is None
    assert torch.allclose(
        bundle.to_raw(bundle.x_test), torch.tensor(x[:10], dtype=torch.float32), atol=1e-4
    )


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"y_train": np.array([0, 1, 3, 3])}, r"labels \[2\] never occur"),
        ({"y_train": np.array([0, 1, -1, 1])}, "negative labels"),
        ({"y_train": np.array([0.5, 1, 0, 1])}, "fractional"),
        ({"y_test": np.array([0, 5])}, "y_train never uses"),
        ({"x_extra": np.zeros((2, 2))}, "unexpected array"),
        ({"x_ood_a": np.zeros((2, 3))}, "feature shape"),
        ({"x_train": np.array([[np.nan, 1]] * 4)}, "NaN"),
    ],
)
def test_npz_bad_arrays(tmp_path, arrays, match):
    base = {
        "x_train": np.zeros((4, 2)) + np.arange(4)[:, None],
        "y_train": np.array([0, 1, 0, 1]),
        "x_test": np.zeros((2, 2)),
        "y_test": np.array([0, 1]),
    }
    with pytest.raises(DataError, match=match):
        load_data(_npz(tmp_path / "d.npz", **(base | arrays)), seed=0)


def test_npz_missing_file_and_keys(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(resolve_config({}, ["data.name=npz", f"data.path={tmp_path}/x.npz"])["data"], 0)
    with pytest.raises(DataError, match="lacks the array"):
        load_data(_npz(tmp_path / "d.npz", x_train=np.zeros((2, 2))), seed=0)
    with pytest.raises(ConfigError, match=r"data\.path is not set"):
        resolve_config({}, ["data.name=npz"])
