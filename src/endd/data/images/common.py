"""What every image reader shares: the arrays it returns, its errors, and where it looks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from endd.errors import DataError


class DatasetNotFoundError(DataError):
    """A dataset's files are not where the reader looked; the message says what to fetch."""


class CorruptDatasetError(DataError):
    """A dataset file exists but its header, size or contents are not what the format promises."""


@dataclass(frozen=True)
class ImageArrays:
    """One split of an image dataset, as read from disk.

    Attributes:
        images: uint8 pixels [N, C, H, W] (C = 1 for grey, 3 for RGB).
        labels: int64 class indices [N], or None for an unlabelled set (LSUN, TIM crops).
        class_names: names of the K classes in label order, where the format stores them.
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} {self.images.shape}"
            )
        if self.labels is not None and (
            self.labels.dtype != np.int64 or self.labels.shape != (len(self.images),)
        ):
            raise ValueError(
                f"labels must be int64 [{len(self.images)}], "
                f"got {self.labels.dtype} {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.images)


def read_text(path: Path) -> str:
    """A dataset's text file (class names, annotations) as UTF-8, or a one-line
    :class:`CorruptDatasetError` naming it (not a file, unreadable, not UTF-8 text)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CorruptDatasetError(
            f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); damaged download?"
        ) from None
    except OSError as err:
        raise CorruptDatasetError(f"cannot read {path}: {err.strerror or err}") from None


def not_found(
    title: str, download_name: str | None, root: Path, folder: str, expected: Sequence[str]
) -> DatasetNotFoundError:
    """The error for a dataset whose files are missing, with the command that fetches them."""
    fetch = (
        f"run `endd data download {download_name} --root {root}` or put {folder}/ there"
        if download_name
        else f"put {folder}/ there"
    )
    return DatasetNotFoundError(
        f"{title} not found under {root}: {fetch} (looked for {', '.join(expected)})"
    )


def locate(root: str | Path, folder: str, marker: str) -> Path | None:
    """The directory holding ``marker``: ``root/folder`` (the download layout) or ``root`` itself.

    Returns:
        The first candidate directory in which ``marker`` (a file or folder name) exists, or None.
    """
    root = Path(root).expanduser()
    for candidate in (root / folder, root):
        if (candidate / marker).exists():
            return candidate
    return None


def check_split(split: str, splits: Sequence[str]) -> None:
    """Raise ValueError unless ``split`` is one of ``splits``."""
    if split not in splits:
        raise ValueError(f"split must be one of {', '.join(splits)}, got {split!r}")
