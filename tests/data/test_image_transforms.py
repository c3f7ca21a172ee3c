import numpy as np
import pytest
import torch

from endd.data.images import (
    channel_mean_std,
    conform_images,
    convert_channels,
    normalise,
    resize_images,
    to_float,
    transforms,
)


def _images(seed=0, shape=(5, 3, 6, 6)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_to_float_scales_to_unit_interval_for_numpy_and_torch():
    images = np.array([0, 51, 255], dtype=np.uint8).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(to_float(images).ravel(), [0.0, 0.2, 1.0])
    tensor = to_float(torch.from_numpy(images))
    assert tensor.dtype == torch.float32
    torch.testing.assert_close(tensor.ravel(), torch.tensor([0.0, 0.2, 1.0]))
    with pytest.raises(ValueError, match="uint8"):
        to_float(images.astype(np.float32))


def test_channel_stats_match_numpy_across_chunks(monkeypatch):
    monkeypatch.setattr(transforms, "_CHUNK", 2)  # force several chunks
    images = _images(1, (7, 3, 4, 5))
    mean, std = channel_mean_std(images)
    scaled = images / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        channel_mean_std(images[:0])


def test_normalise_gives_zero_mean_unit_std_per_channel():
    images = to_float(_images(2, (50, 3, 8, 8)))
    mean, std = channel_mean_std(images)
    out = normalise(images, mean, std)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-4)
    torch.testing.assert_close(
        normalise(torch.from_numpy(images), mean, std), torch.from_numpy(out)
    )
    constant = np.full((2, 1, 2, 2), 0.5, dtype=np.float32)  # zero std: only centred
    np.testing.assert_array_equal(normalise(constant, [0.25], [0.0]), constant - 0.25)
    with pytest.raises(ValueError, match="one entry per channel"):
        normalise(images, mean[:1], std)


def test_resize_keeps_dtype_and_constant_images():
    images = np.full((3, 1, 8, 8), 77, dtype=np.uint8)
    for size in (28, (4, 6)):
        resized = resize_images(images, size)
        assert resized.dtype == np.uint8 and (resized == 77).all()
    assert resize_images(images, 8) is images
    grown = resize_images(to_float(_images(3)), 12)
    assert grown.dtype == np.float32 and grown.shape == (5, 3, 12, 12)


def test_resize_in_chunks_equals_one_go(monkeypatch):
    images = _images(4, (5, 3, 7, 7))
    whole = resize_images(images, 10)
    monkeypatch.setattr(transforms, "_CHUNK", 2)
    np.testing.assert_array_equal(resize_images(images, 10), whole)


def test_channel_conversion_uses_luma_and_repeats_grey():
    rgb = np.zeros((1, 3, 1, 2), dtype=np.uint8)
    rgb[0, :, 0, 0] = (255, 0, 0)
    rgb[0, :, 0, 1] = (0, 255, 0)
    np.testing.assert_array_equal(convert_channels(rgb, 1).ravel(), [76, 150])  # 0.299, 0.587
    grey = _images(5, (2, 1, 3, 3))
    np.testing.assert_array_equal(convert_channels(grey, 3), np.repeat(grey, 3, axis=1))
    with pytest.raises(ValueError, match="between 1 and 3"):
        convert_channels(grey, 2)


def test_conform_makes_digits_look_like_cifar():
    out = conform_images(_images(6, (4, 1, 8, 8)), channels=3, size=32)
    assert out.shape == (4, 3, 32, 32) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 0], out[:, 2])
