import gzip

import numpy as np
import pytest

from endd.data.images import (
    CorruptDatasetError,
    DatasetNotFoundError,
    load_fashion_mnist,
    load_idx_dataset,
    load_mnist,
    read_idx,
    write_idx,
)
from endd.data.images.idx import DEBIAN_DATASETS_ROOT, FASHION_MNIST_FOLDER


def test_read_idx_parses_a_handwritten_header(tmp_path):
    # 00 00 08 03, dims 2 × 2 × 3 big-endian, then 12 pixel bytes.
    raw = (
        bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") * 2 + (3).to_bytes(4, "big") + bytes(range(12))
    )
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(raw)
    values = read_idx(path)
    assert values.dtype == np.uint8
    np.testing.assert_array_equal(values, np.arange(12).reshape(2, 2, 3))


def test_read_idx_decodes_big_endian_int32(tmp_path):
    raw = bytes([0, 0, 0x0C, 1]) + (2).to_bytes(4, "big") + (258).to_bytes(4, "big")
    raw += (-5).to_bytes(4, "big", signed=True)
    (tmp_path / "v.idx").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "v.idx"), [258, -5])


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz", "a.idx"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_write_then_read_round_trips(tmp_path, name, dtype):
    values = (np.random.default_rng(0).integers(0, 100, size=(4, 5, 3))).astype(dtype)
    read = read_idx(write_idx(tmp_path / name, values))
    assert read.dtype == dtype
    np.testing.assert_array_equal(read, values)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    values = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_idx(tmp_path / "a.gz", values)
    (tmp_path / "a.gz").rename(tmp_path / "renamed-idx2-ubyte")
    np.testing.assert_array_equal(read_idx(tmp_path / "renamed-idx2-ubyte"), values)


def test_bad_magic_truncated_data_and_bad_gzip_are_reported(tmp_path):
    (tmp_path / "magic").write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(CorruptDatasetError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    good = bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big")
    (tmp_path / "short").write_bytes(good + b"abc")
    with pytest.raises(CorruptDatasetError, match="promises 4"):
        read_idx(tmp_path / "short")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(good + b"abcd")[:-6])
    with pytest.raises(CorruptDatasetError, match="gzip"):
        read_idx(tmp_path / "broken.gz")


def _write_split(folder, prefix, images, labels, suffix=".gz"):
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


def test_load_idx_dataset_reads_pixels_and_labels_exactly(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    _write_split(tmp_path / "mnist", "t10k", images, labels, suffix="")
    arrays = load_mnist(tmp_path, "test")
    assert arrays.images.shape == (7, 1, 28, 28) and arrays.labels.dtype == np.int64
    np.testing.assert_array_equal(arrays.images[:, 0], images)
    np.testing.assert_array_equal(arrays.labels, labels)


def test_files_directly_in_root_and_dotted_names_are_found(tmp_path):
    images = np.zeros((2, 3, 3), dtype=np.uint8)
    write_idx(tmp_path / "train-images.idx3-ubyte", images)
    write_idx(tmp_path / "train-labels.idx1-ubyte", np.array([3, 4], dtype=np.uint8))
    np.testing.assert_array_equal(load_idx_dataset(tmp_path, "train").labels, [3, 4])


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"endd data download mnist --root"):
        load_mnist(tmp_path, "train")


def test_image_and_label_counts_must_agree(tmp_path):
    _write_split(tmp_path, "train", np.zeros((3, 2, 2), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(CorruptDatasetError, match="3 images but"):
        load_idx_dataset(tmp_path, "train")


def test_unknown_split_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist(tmp_path, "validation")


@pytest.mark.skipif(
    not (DEBIAN_DATASETS_ROOT / FASHION_MNIST_FOLDER).is_dir(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_debian_fashion_mnist_test_split_is_the_real_one():
    arrays = load_fashion_mnist(split="test")
    assert arrays.images.shape == (10_000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(arrays.labels), [1000] * 10)
    np.testing.assert_array_equal(arrays.labels[:5], [9, 2, 1, 1, 6])  # published first labels
