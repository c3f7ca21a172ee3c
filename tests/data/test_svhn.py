import numpy as np
import pytest
import scipy.io

from endd.data.images import CorruptDatasetError, DatasetNotFoundError, load_svhn, write_svhn_mat


def test_svhn_transposes_pixels_and_maps_label_ten_to_zero(tmp_path):
    # Written by hand in the .mat layout: X [H, W, C, N], y [N, 1] with 10 for the digit 0.
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3, 3), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": pixels, "y": np.array([[10], [1], [9]])})
    arrays = load_svhn(tmp_path, "test")
    assert arrays.images.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(arrays.labels, [0, 1, 9])
    # sample 2, channel 1 (green), row 5, column 7
    assert arrays.images[2, 1, 5, 7] == pixels[5, 7, 1, 2]
    np.testing.assert_array_equal(arrays.images[1], pixels[..., 1].transpose(2, 0, 1))


def test_writer_round_trips_through_the_reader(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(5, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 3, 9, 0, 5])
    write_svhn_mat(tmp_path / "svhn" / "train_32x32.mat", images, labels)
    arrays = load_svhn(tmp_path, "train")
    np.testing.assert_array_equal(arrays.images, images)
    np.testing.assert_array_equal(arrays.labels, labels)


def test_missing_damaged_and_malformed_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="endd data download svhn"):
        load_svhn(tmp_path, "train")
    (tmp_path / "train_32x32.mat").write_bytes(b"not a matlab file at all" * 10)
    with pytest.raises(CorruptDatasetError, match=r"not a readable \.mat"):
        load_svhn(tmp_path, "train")
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((28, 28, 1, 2), np.uint8)})
    with pytest.raises(CorruptDatasetError, match="lacks the variables"):
        load_svhn(tmp_path, "train")
    scipy.io.savemat(
        tmp_path / "train_32x32.mat", {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": [[1], [2]]}
    )
    with pytest.raises(CorruptDatasetError, match=r"\[32, 32, 3, N\]"):
        load_svhn(tmp_path, "train")
