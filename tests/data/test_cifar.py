import numpy as np
import pytest

from endd.data.images import (
    CorruptDatasetError,
    DatasetNotFoundError,
    load_cifar10,
    load_cifar100,
    read_cifar_binary,
    write_cifar_binary,
)
from endd.data.images.cifar import CIFAR10_TRAIN_FILES


def test_record_layout_is_label_then_red_green_blue_planes(tmp_path):
    # One handwritten record: label 7, red plane all 1, green all 2, blue counts 0..255 (×4).
    record = bytes([7]) + bytes([1]) * 1024 + bytes([2]) * 1024 + bytes(range(256)) * 4
    (tmp_path / "one.bin").write_bytes(record)
    arrays = read_cifar_binary(tmp_path / "one.bin", label_bytes=1, label_index=0, num_classes=10)
    assert arrays.images.shape == (1, 3, 32, 32)
    assert arrays.labels.tolist() == [7]
    assert (arrays.images[0, 0] == 1).all() and (arrays.images[0, 1] == 2).all()
    assert arrays.images[0, 2, 0, :].tolist() == list(range(32))  # row-major within a plane
    assert arrays.images[0, 2, 1, 0] == 32


def test_cifar10_train_concatenates_the_five_batches_in_order(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    batches = []
    for name in CIFAR10_TRAIN_FILES:
        images = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=3)
        write_cifar_binary(folder / name, images, labels)
        batches.append((images, labels))
    arrays = load_cifar10(tmp_path, "train")
    np.testing.assert_array_equal(arrays.images, np.concatenate([b[0] for b in batches]))
    np.testing.assert_array_equal(arrays.labels, np.concatenate([b[1] for b in batches]))
    assert arrays.class_names[0] == "airplane" and len(arrays.class_names) == 10


def test_cifar100_fine_by_default_coarse_on_request(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    fine, coarse = np.array([99, 0, 57, 12]), np.array([19, 4, 2, 3])
    write_cifar_binary(tmp_path / "cifar-100-binary" / "test.bin", images, coarse, fine)
    arrays = load_cifar100(tmp_path, "test")
    np.testing.assert_array_equal(arrays.labels, fine)
    np.testing.assert_array_equal(arrays.images, images)
    np.testing.assert_array_equal(load_cifar100(tmp_path, "test", labels="coarse").labels, coarse)
    with pytest.raises(ValueError, match="fine' or 'coarse"):
        load_cifar100(tmp_path, "test", labels="both")


def test_cifar100_class_names_come_from_the_names_file(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    write_cifar_binary(folder / "test.bin", np.zeros((1, 3, 32, 32), np.uint8), [0], [1])
    (folder / "fine_label_names.txt").write_text("apple\naquarium_fish\n\n")
    assert load_cifar100(folder, "test").class_names == ("apple", "aquarium_fish")


def test_truncated_file_and_out_of_range_label_are_corrupt(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar_binary(folder / "test_batch.bin", np.zeros((2, 3, 32, 32), np.uint8), [1, 2])
    data = (folder / "test_batch.bin").read_bytes()
    (folder / "test_batch.bin").write_bytes(data[:-1])
    with pytest.raises(CorruptDatasetError, match="whole number of 3073-byte"):
        load_cifar10(tmp_path, "test")
    write_cifar_binary(folder / "test_batch.bin", np.zeros((1, 3, 32, 32), np.uint8), [10])
    with pytest.raises(CorruptDatasetError, match="label 10"):
        load_cifar10(tmp_path, "test")


def test_missing_cifar_names_the_download_command_and_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_cifar10(tmp_path, "test")
    message = str(error.value)
    assert f"endd data download cifar10 --root {tmp_path}" in message
    assert "cifar-10-batches-bin/" in message
    with pytest.raises(DatasetNotFoundError, match="cifar100"):
        load_cifar100(tmp_path, "train")


def test_partial_cifar10_train_set_is_not_found(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar_binary(folder / "data_batch_1.bin", np.zeros((1, 3, 32, 32), np.uint8), [0])
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_5\.bin"):
        load_cifar10(tmp_path, "train")
