import numpy as np
import pytest

from endd.data.shifts import SHIFTS, make_shift


def _reference(seed=0, shape=(30, 3, 8, 8)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("name", SHIFTS)
def test_shape_range_and_determinism(name):
    reference = _reference()
    first = make_shift(name, reference, 12, seed=3)
    assert first.shape == (12, 3, 8, 8) and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(make_shift(name, reference, 12, seed=3), first)
    assert not np.array_equal(make_shift(name, reference, 12, seed=4), first)


def test_flips_and_inversion_are_exact_transforms_of_reference_images():
    reference = _reference(1)
    scaled = reference / np.float32(255)
    for name, undo in (
        ("hflip", lambda x: x[..., ::-1]),
        ("vflip", lambda x: x[..., ::-1, :]),
        ("inverted", lambda x: 1 - x),
    ):
        for image in make_shift(name, reference, 10, seed=0):
            matches = np.isclose(undo(image)[None], scaled, atol=1e-6).all(axis=(1, 2, 3))
            assert matches.any(), name


def test_flips_do_not_repeat_images_while_the_reference_suffices():
    reference = (
        np.arange(30, dtype=np.uint8).reshape(30, 1, 1, 1).repeat(4, axis=2).repeat(4, axis=3)
    )
    values = make_shift("vflip", reference, 30, seed=0)[:, 0, 0, 0]
    assert len(np.unique(values)) == 30
    assert make_shift("vflip", reference, 45, seed=0).shape[0] == 45  # then with replacement


def test_gaussian_noise_follows_the_reference_channel_statistics():
    reference = np.zeros((50, 2, 16, 16), dtype=np.float32)
    reference[:, 0] = np.random.default_rng(0).normal(0.3, 0.05, size=(50, 16, 16))
    reference[:, 1] = 0.8
    noise = make_shift("gaussian_noise", reference, 200, seed=1)
    assert abs(noise[:, 0].mean() - 0.3) < 0.01 and abs(noise[:, 0].std() - 0.05) < 0.01
    np.testing.assert_allclose(noise[:, 1], 0.8, atol=1e-6)  # zero-variance channel stays put


def test_constant_images_are_constant_and_uniform_noise_is_spread():
    constant = make_shift("constant", _reference(), 40, seed=0)
    assert (constant == constant[:, :, :1, :1]).all()
    assert constant[:, :, 0, 0].std() > 0.2  # different colours across images
    uniform = make_shift("uniform_noise", _reference(), 40, seed=0)
    assert abs(uniform.mean() - 0.5) < 0.02 and uniform.std() > 0.25


def test_float_reference_is_used_as_is():
    reference = np.full((4, 1, 3, 3), 0.25, dtype=np.float32)
    np.testing.assert_allclose(make_shift("inverted", reference, 2, seed=0), 0.75)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown shift"):
        make_shift("rotate", _reference(), 3, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        make_shift("constant", _reference(), 0, seed=0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        make_shift("constant", np.zeros((3, 8, 8), np.uint8), 3, seed=0)
