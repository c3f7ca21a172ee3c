"""scikit-learn's bundled 8×8 handwritten digits (UCI optdigits test set, 1 797 images, K = 10).

Read straight from ``sklearn/datasets/data/digits.csv.gz`` inside the installed scikit-learn,
without importing it: each row is 64 pixel counts in 0..16 followed by the digit.
Upsampled to 28×28 it serves as an out-of-distribution set for Fashion-MNIST.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from endd.data.images.common import CorruptDatasetError, DatasetNotFoundError, ImageArrays
from endd.data.images.transforms import resize_images

DIGITS_CLASSES = tuple(str(d) for d in range(10))
_MAX_COUNT = 16  # each pixel counts set bits in a 4×4 block of the 32×32 original


def sklearn_digits_path() -> Path:
    """Where the installed scikit-learn keeps ``digits.csv.gz``.

    Raises:
        DatasetNotFoundError: scikit-learn is not installed, or its data file is missing.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            "the 'digits' dataset is read from scikit-learn's bundled copy, but scikit-learn is "
            "not installed: pip install scikit-learn"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    raise DatasetNotFoundError(
        f"scikit-learn is installed but sklearn/datasets/data/digits.csv.gz is missing "
        f"(looked in {', '.join(spec.submodule_search_locations)}); reinstall scikit-learn"
    )


def load_sklearn_digits(
    size: int | tuple[int, int] | None = None, *, path: str | Path | None = None
) -> ImageArrays:
    """The 1 797 8×8 digits as uint8 grey images, optionally upsampled.

    Pixel counts 0..16 are scaled to 0..255 (white digit on black, like MNIST).

    Args:
        size: None keeps 8×8; a side or (height, width) upsamples bilinearly (e.g. 28 for
            Fashion-MNIST, 32 for CIFAR-sized models).
        path: the ``digits.csv.gz`` file; None finds scikit-learn's copy.

    Returns:
        ImageArrays with images uint8 [1797, 1, H, W], labels int64 [1797], class names "0".."9".
    """
    path = sklearn_digits_path() if path is None else Path(path)
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise CorruptDatasetError(f"cannot read digits from {path}: {err}") from None
    if table.shape[1] != 65:
        raise CorruptDatasetError(
            f"{path}: expected 64 pixels + 1 label per row, got {table.shape}"
        )
    counts, labels = table[:, :64], table[:, 64]
    if counts.min() < 0 or counts.max() > _MAX_COUNT or not np.all(np.isin(labels, range(10))):
        raise CorruptDatasetError(f"{path}: pixels must be 0..16 and labels 0..9")
    images = np.rint(counts * (255.0 / _MAX_COUNT)).astype(np.uint8).reshape(-1, 1, 8, 8)
    if size is not None:
        images = resize_images(images, size)
    return ImageArrays(images, labels.astype(np.int64), DIGITS_CLASSES)
