import numpy as np
import pytest

from endd.data.images import CorruptDatasetError, load_sklearn_digits


def test_bundled_digits_match_scikit_learn():
    datasets = pytest.importorskip("sklearn.datasets")
    reference = datasets.load_digits()
    arrays = load_sklearn_digits()
    assert arrays.images.shape == (1797, 1, 8, 8) and arrays.images.dtype == np.uint8
    np.testing.assert_array_equal(arrays.labels, reference.target)
    expected = np.rint(reference.images * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(arrays.images[:, 0], expected)


def test_upsampling_keeps_the_picture(tmp_path):
    pytest.importorskip("sklearn")
    small = load_sklearn_digits().images.astype(np.float32)
    large = load_sklearn_digits(size=32).images.astype(np.float32)
    assert large.shape == (1797, 1, 32, 32)
    # bilinear upsampling is a smoothed nearest-neighbour copy: the two agree closely
    nearest = small.repeat(4, axis=2).repeat(4, axis=3)
    assert np.corrcoef(nearest.ravel(), large.ravel())[0, 1] > 0.9
    assert large.max() <= 255 and abs(large.mean() - small.mean()) < 2
    assert load_sklearn_digits(size=(28, 28)).images.shape == (1797, 1, 28, 28)


def test_a_given_csv_is_read_and_validated(tmp_path):
    row = ",".join(["16"] * 64 + ["3"])
    (tmp_path / "d.csv").write_text(row + "\n")
    arrays = load_sklearn_digits(path=tmp_path / "d.csv")
    assert arrays.labels.tolist() == [3] and (arrays.images == 255).all()
    (tmp_path / "bad.csv").write_text(",".join(["17"] * 64 + ["3"]) + "\n")
    with pytest.raises(CorruptDatasetError, match=r"0\.\.16"):
        load_sklearn_digits(path=tmp_path / "bad.csv")
    (tmp_path / "short.csv").write_text("1,2,3\n")
    with pytest.raises(CorruptDatasetError, match="64 pixels"):
        load_sklearn_digits(path=tmp_path / "short.csv")
