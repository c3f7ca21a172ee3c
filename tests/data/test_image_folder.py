import numpy as np
import pytest

from endd.data.images import (
    CorruptDatasetError,
    DatasetNotFoundError,
    load_image_folder,
    load_ood_folder,
    load_tinyimagenet,
    load_unlabelled_folder,
    read_image,
    write_fake_dataset,
    write_image_file,
)


def _random_pixels(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_png_round_trips_exactly_in_rgb_and_grey(tmp_path):
    rgb, grey = _random_pixels(0, (3, 5, 7)), _random_pixels(1, (1, 5, 7))
    np.testing.assert_array_equal(read_image(write_image_file(tmp_path / "c.png", rgb)), rgb)
    read_grey = read_image(write_image_file(tmp_path / "g.png", grey), channels=1)
    np.testing.assert_array_equal(read_grey, grey)
    # grey file read as RGB repeats the plane
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(grey, 3, axis=0))


def test_jpeg_is_decoded_and_resized(tmp_path):
    flat = np.full((3, 64, 64), 200, dtype=np.uint8)
    pixels = read_image(write_image_file(tmp_path / "a.JPEG", flat), size=(32, 16))
    assert pixels.shape == (3, 32, 16)
    assert np.abs(pixels.astype(int) - 200).max() <= 2  # JPEG of a flat image is nearly exact


def test_undecodable_file_is_corrupt(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(CorruptDatasetError, match="cannot decode"):
        read_image(tmp_path / "x.png")


def test_class_folders_give_sorted_labels(tmp_path):
    for name, seed in (("zebra", 0), ("ant", 1), ("ant", 2)):
        write_image_file(tmp_path / name / f"{seed}.png", _random_pixels(seed, (3, 4, 4)))
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    arrays = load_image_folder(tmp_path)
    assert arrays.class_names == ("ant", "zebra")
    np.testing.assert_array_equal(arrays.labels, [0, 0, 1])
    np.testing.assert_array_equal(arrays.images[2], _random_pixels(0, (3, 4, 4)))


def test_mixed_sizes_need_a_size(tmp_path):
    write_image_file(tmp_path / "a.png", _random_pixels(0, (3, 4, 4)))
    write_image_file(tmp_path / "sub" / "b.png", _random_pixels(1, (3, 6, 6)))
    with pytest.raises(CorruptDatasetError, match="pass size="):
        load_unlabelled_folder(tmp_path)
    arrays = load_unlabelled_folder(tmp_path, size=5, channels=1)
    assert arrays.images.shape == (2, 1, 5, 5) and arrays.labels is None


def test_empty_folders_are_not_found(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        load_unlabelled_folder(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="one sub-folder per class"):
        load_image_folder(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="endd data download lsun_resize"):
        load_ood_folder("lsun_resize", tmp_path)


def test_ood_folder_reads_every_image_below_it(tmp_path):
    write_fake_dataset("tim_crop", tmp_path, num_images=4, seed=3)
    arrays = load_ood_folder("tim_crop", tmp_path)
    assert arrays.images.shape == (4, 3, 32, 32) and arrays.labels is None
    # the folder itself can be given as root too
    np.testing.assert_array_equal(
        load_ood_folder("tim_crop", tmp_path / "Imagenet").images, arrays.images
    )


def test_tinyimagenet_train_and_val_labels_follow_the_wnids(tmp_path):
    folder = tmp_path / "tiny-imagenet-200"
    folder.mkdir()
    (folder / "wnids.txt").write_text("n02\nn01\n")  # file order is not label order: sorted is
    write_image_file(
        folder / "train" / "n01" / "images" / "n01_0.JPEG", _random_pixels(0, (3, 64, 64))
    )
    write_image_file(
        folder / "train" / "n02" / "images" / "n02_0.JPEG", _random_pixels(1, (3, 64, 64))
    )
    write_image_file(folder / "val" / "images" / "val_0.png", _random_pixels(2, (3, 64, 64)))
    write_image_file(folder / "val" / "images" / "val_1.png", _random_pixels(3, (3, 64, 64)))
    (folder / "val" / "val_annotations.txt").write_text(
        "val_1.png\tn01\t0\t0\t10\t10\nval_0.png\tn02\t1\t1\t5\t5\n"
    )
    train = load_tinyimagenet(tmp_path, "train")
    assert train.class_names == ("n01", "n02")
    np.testing.assert_array_equal(train.labels, [0, 1])
    val = load_tinyimagenet(tmp_path, "val", size=32)
    assert val.images.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(val.labels, [1, 0])  # val_0 is n02, val_1 is n01
    full = load_tinyimagenet(tmp_path, "val")
    np.testing.assert_array_equal(full.images[1], _random_pixels(3, (3, 64, 64)))


def test_tinyimagenet_bad_annotation_and_missing_image(tmp_path):
    write_fake_dataset("tinyimagenet", tmp_path, num_images=3)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(CorruptDatasetError, match=r"wnid from wnids\.txt"):
        load_tinyimagenet(tmp_path, "val")
    annotations.write_text("gone.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(CorruptDatasetError, match="missing"):
        load_tinyimagenet(tmp_path, "val")
    test = load_tinyimagenet(tmp_path, "test")
    assert test.labels is None and len(test) == 3


def test_missing_tinyimagenet_names_the_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="endd data download tinyimagenet"):
        load_tinyimagenet(tmp_path, "train")
