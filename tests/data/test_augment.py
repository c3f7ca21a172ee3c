import pytest
import torch
import torch.nn.functional as F

from endd.data.augment import apply_crop_flip, random_crop_flip, sample_crop_flip


def _loop_reference(images, offset_y, offset_x, flipped, padding):
    """The per-sample definition: pad, slice the window, mirror."""
    padded = F.pad(images, (padding,) * 4)
    height, width = images.shape[2:]
    out = []
    for image, dy, dx, flip in zip(padded, offset_y, offset_x, flipped, strict=True):
        crop = image[:, dy : dy + height, dx : dx + width]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def test_vectorised_gather_equals_the_per_sample_definition():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 9, 7, generator=generator)
    params = sample_crop_flip(64, padding=3, generator=generator)
    expected = _loop_reference(images, *params, padding=3)
    torch.testing.assert_close(apply_crop_flip(images, *params, padding=3), expected)


def test_a_crop_is_a_shift_with_zeros_shifted_in():
    images = torch.arange(1, 26, dtype=torch.float32).reshape(1, 1, 5, 5)
    # offset (padding + 1, padding − 2): content moves up by 1 and right by 2
    out = apply_crop_flip(
        images, torch.tensor([5]), torch.tensor([2]), torch.tensor([False]), padding=4
    )
    expected = torch.zeros_like(images)
    expected[0, 0, :4, 2:] = images[0, 0, 1:, :3]
    torch.testing.assert_close(out, expected)


def test_centre_offset_without_flip_is_identity_and_flip_mirrors():
    images = torch.randn(4, 2, 6, 6)
    centre = torch.full((4,), 2)
    same = apply_crop_flip(images, centre, centre, torch.zeros(4, dtype=torch.bool), padding=2)
    torch.testing.assert_close(same, images)
    mirrored = apply_crop_flip(images, centre, centre, torch.ones(4, dtype=torch.bool), padding=2)
    torch.testing.assert_close(mirrored, images.flip(-1))


def test_seeded_generator_repeats_and_draws_cover_the_range():
    images = torch.randn(2000, 1, 4, 4)
    first = random_crop_flip(images, generator=torch.Generator().manual_seed(7))
    again = random_crop_flip(images, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, again)
    assert first.shape == images.shape and first.dtype == images.dtype
    offset_y, offset_x, flipped = sample_crop_flip(
        2000, padding=4, generator=torch.Generator().manual_seed(7)
    )
    assert set(offset_y.tolist()) == set(range(9)) == set(offset_x.tolist())
    assert 0.45 < flipped.float().mean() < 0.55
    assert not sample_crop_flip(10, flip=False)[2].any()


def test_integer_images_and_zero_padding():
    images = torch.randint(0, 256, (3, 3, 5, 5), dtype=torch.uint8)
    out = random_crop_flip(images, padding=0, flip=False)
    torch.testing.assert_close(out, images)


def test_bad_arguments():
    images = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        random_crop_flip(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="padding"):
        sample_crop_flip(2, padding=-1)
    with pytest.raises(ValueError, match="offsets must lie"):
        apply_crop_flip(
            images, torch.tensor([0, 9]), torch.tensor([0, 0]), torch.zeros(2, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="must be"):
        apply_crop_flip(
            images, torch.tensor([0]), torch.tensor([0, 0]), torch.zeros(2, dtype=torch.bool)
        )
