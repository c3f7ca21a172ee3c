import numpy as np
import pytest

from endd.data.images import (
    FAKE_DATASETS,
    IMAGE_DATASETS,
    DatasetNotFoundError,
    ImageArrays,
    load_image_dataset,
    write_fake_dataset,
)


@pytest.mark.parametrize("name", FAKE_DATASETS)
def test_every_fake_dataset_reads_back_with_its_declared_shape(tmp_path, name):
    write_fake_dataset(name, tmp_path, num_images=3, seed=1)
    info = IMAGE_DATASETS[name]
    for split in info.splits:
        if split == "extra":
            continue  # the fake writes only train and test
        arrays = load_image_dataset(name, tmp_path, split)
        assert arrays.images.shape[1:] == (info.channels, *info.size)
        if info.num_classes is None:
            assert arrays.labels is None
        else:
            assert arrays.labels.min() >= 0 and arrays.labels.max() < info.num_classes


def test_default_split_and_conforming_for_ood_use(tmp_path):
    write_fake_dataset("cifar10", tmp_path, num_images=4)
    arrays = load_image_dataset("cifar10", tmp_path, channels=1, size=28)
    assert arrays.images.shape == (4, 1, 28, 28)  # default split is test (4 images)
    digits = load_image_dataset("digits", size=28)
    assert digits.images.shape == (1797, 1, 28, 28)


def test_registry_rejects_bad_names_splits_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match="unknown image dataset"):
        load_image_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_image_dataset("lsun_crop", tmp_path, "train")
    with pytest.raises(ValueError, match="needs a data root"):
        load_image_dataset("cifar10")
    with pytest.raises(DatasetNotFoundError, match="endd data download kmnist"):
        load_image_dataset("kmnist", tmp_path)


def test_image_arrays_validates_its_contents():
    with pytest.raises(ValueError, match="uint8"):
        ImageArrays(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="int64"):
        ImageArrays(np.zeros((2, 1, 2, 2), np.uint8), np.zeros(3, np.int64))
