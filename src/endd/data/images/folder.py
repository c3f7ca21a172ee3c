"""Folders of image files: TinyImageNet, class-per-folder sets, unlabelled OOD crops (LSUN, TIM).

JPEG and PNG are decoded with Pillow; every image is converted to grey or RGB and resized
(bilinear) to one size, so a folder becomes one uint8 array [N, C, H, W].

:func:`open_ood_folder` and :func:`open_tinyimagenet` decode a folder once, a chunk of files at a
time, into the image cache (:mod:`endd.data.images.cache`), at the size and channel count asked
for; later runs read the cached ``.npy`` a batch at a time. (Decoding once beats decoding every
batch of every epoch in DataLoader workers on a CPU; the cache holds raw pixels, 12 KB a 64×64
RGB image.)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from endd.data.images.cache import SetCache, stamp_of
from endd.data.images.common import (
    CorruptDatasetError,
    DatasetNotFoundError,
    ImageArrays,
    check_split,
    locate,
    not_found,
    read_text,
)
from endd.data.images.sets import ImageSet

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".webp")
TINYIMAGENET_FOLDER = "tiny-imagenet-200"
TINYIMAGENET_SPLITS = ("train", "val", "test")
#: Folders the ODIN OOD archives (Liang et al., 2018) unpack to, by dataset name.
OOD_FOLDERS = {
    "lsun_crop": "LSUN",
    "lsun_resize": "LSUN_resize",
    "tim_crop": "Imagenet",
    "tim_resize": "Imagenet_resize",
}


def _pillow():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib
        raise ImportError("reading JPEG/PNG folders needs Pillow: pip install pillow") from None
    return Image


def _size_pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    return height, width


def read_image(
    path: str | Path, *, size: int | tuple[int, int] | None = None, channels: int = 3
) -> np.ndarray:
    """Decode one image file to uint8 [C, H, W].

    Args:
        path: a PNG, JPEG or other Pillow-readable file.
        size: resize (bilinear) to this side or (height, width); None keeps the file's size.
        channels: 1 (grey) or 3 (RGB); the file is converted as needed.

    Raises:
        CorruptDatasetError: Pillow cannot decode the file.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image_module = _pillow()
    target = _size_pair(size)
    try:
        with warnings.catch_warnings():
            # a header promising 89-179 M pixels warns (a second line on the CLI's stderr);
            # read it, as Pillow would; above that it raises DecompressionBombError, refused below
            warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
            with image_module.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                if target is not None and image.size != (target[1], target[0]):
                    image = image.resize((target[1], target[0]), image_module.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
    except image_module.DecompressionBombError as err:
        raise CorruptDatasetError(f"cannot decode image {path}: {err}") from None
    except Exception as err:  # a damaged file makes Pillow's decoders raise
        # OSError, SyntaxError, ValueError, but also struct.error, IndexError, TypeError...
        detail = " ".join(str(err).split())[:200] or type(err).__name__
        raise CorruptDatasetError(f"cannot decode image {path}: {detail}") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def read_images(
    paths: Sequence[Path], *, size: int | tuple[int, int] | None = None, channels: int = 3
) -> np.ndarray:
    """Decode many files to one uint8 array [N, C, H, W]; without ``size`` all must agree."""
    first, chunks = decode_chunks(paths, size=size, channels=channels)
    out = np.empty((len(paths), *first), dtype=np.uint8)
    start = 0
    for chunk in chunks:
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    return out


def decode_chunks(
    paths: Sequence[Path],
    *,
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
    chunk: int = 1024,
) -> tuple[tuple[int, int, int], Iterator[np.ndarray]]:
    """The shape [C, H, W] of the decoded images (from the first file) and an iterator of uint8
    chunks [≤ chunk, C, H, W] of all of them, decoded as the iterator advances; without
    ``size`` all must agree."""
    if not paths:
        raise ValueError("no image files to read")
    first = read_image(paths[0], size=size, channels=channels)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(paths), chunk):
            out = np.empty((min(chunk, len(paths) - start), *first.shape), dtype=np.uint8)
            for i, path in enumerate(paths[start : start + len(out)]):
                pixels = first if start + i == 0 else read_image(path, size=size, channels=channels)
                if pixels.shape != first.shape:
                    raise CorruptDatasetError(
                        f"{path} is {pixels.shape[1]}×{pixels.shape[2]} but {paths[0]} is "
                        f"{first.shape[1]}×{first.shape[2]}; pass size= to resize them to one size"
                    )
                out[i] = pixels
            yield out

    return first.shape, chunks()


def _image_files(directory: Path, *, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(
        p
        for p in directory.glob(pattern)
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def load_image_folder(
    root: str | Path, *, size: int | tuple[int, int] | None = None, channels: int = 3
) -> ImageArrays:
    """A labelled folder ``root/<class>/*.png|jpg`` (searched recursively inside each class).

    Classes are the sub-folder names in sorted order, so labels are 0..K-1 in that order.

    Returns:
        ImageArrays with images uint8 [N, C, H, W], labels int64 [N] and the class names.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    class_names = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    files, labels = [], []
    for label, name in enumerate(class_names):
        found = _image_files(root / name, recursive=True)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetNotFoundError(
            f"no images under {root}: expected one sub-folder per class holding "
            f"{'/'.join(IMAGE_EXTENSIONS)} files"
        )
    images = read_images(files, size=size, channels=channels)
    return ImageArrays(images, np.asarray(labels, dtype=np.int64), tuple(class_names))


def load_unlabelled_folder(
    root: str | Path, *, size: int | tuple[int, int] | None = None, channels: int = 3
) -> ImageArrays:
    """Every image anywhere under ``root``, in sorted path order, without labels.

    Returns:
        ImageArrays with images uint8 [N, C, H, W] and labels None.
    """
    root = Path(root).expanduser()
    files = _image_files(root, recursive=True) if root.is_dir() else []
    if not files:
        raise DatasetNotFoundError(f"no image files ({'/'.join(IMAGE_EXTENSIONS)}) under {root}")
    return ImageArrays(read_images(files, size=size, channels=channels))


def load_ood_folder(
    name: str,
    root: str | Path,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
) -> ImageArrays:
    """One of the ODIN OOD sets (LSUN / TinyImageNet, cropped or resized to 32×32), unlabelled.

    Args:
        name: "lsun_crop", "lsun_resize", "tim_crop" or "tim_resize".
        root: data root holding the unpacked folder (``LSUN/``, ``LSUN_resize/``, ``Imagenet/``,
            ``Imagenet_resize/``), or that folder itself.
        size, channels: as in :func:`read_image`.

    References:
        Liang, Li & Srikant, "Enhancing the reliability of out-of-distribution image detection in
        neural networks" (ODIN), ICLR 2018 — the source of these four sets.
    """
    return ImageArrays(read_images(ood_folder_files(name, root), size=size, channels=channels))


def ood_folder_files(name: str, root: str | Path) -> list[Path]:
    """The image files of one of the ODIN OOD sets (see :func:`load_ood_folder`), sorted."""
    if name not in OOD_FOLDERS:
        raise ValueError(f"name must be one of {', '.join(OOD_FOLDERS)}, got {name!r}")
    folder = OOD_FOLDERS[name]
    root = Path(root).expanduser()
    directory = root / folder if (root / folder).is_dir() else root
    files = _image_files(directory, recursive=True)
    if not files:
        raise not_found(name, name, root, folder, [f"{folder}/**/*.jpg|png"])
    return files


def load_tinyimagenet(
    root: str | Path,
    split: str = "train",
    *,
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
) -> ImageArrays:
    """TinyImageNet-200 (64×64 RGB, 200 classes; 100 000 train, 10 000 val, 10 000 unlabelled test).

    Layout: ``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` with
    ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box…``), ``test/images/*.JPEG``.

    Args:
        root: data root holding ``tiny-imagenet-200/`` (or that folder itself).
        split: "train", "val" (labelled; the usual test set) or "test" (no labels).
        size, channels: as in :func:`read_image`; None keeps 64×64.

    Returns:
        ImageArrays; labels index the sorted wnids (None for "test"); class_names are the wnids.
    """
    files, labels, wnids = tinyimagenet_files(root, split)
    images = read_images(files, size=size, channels=channels)
    return ImageArrays(images, labels, wnids)


def tinyimagenet_files(
    root: str | Path, split: str
) -> tuple[list[Path], np.ndarray | None, tuple[str, ...]]:
    """The files of a TinyImageNet split (see :func:`load_tinyimagenet`), their labels (int64,
    None for "test") and the sorted wnids, checked as that function checks them."""
    check_split(split, TINYIMAGENET_SPLITS)
    directory = locate(root, TINYIMAGENET_FOLDER, "wnids.txt")
    if directory is None:
        raise not_found(
            "TinyImageNet", "tinyimagenet", Path(root), TINYIMAGENET_FOLDER, ["wnids.txt"]
        )
    wnids_file = directory / "wnids.txt"
    wnids = sorted({line.strip() for line in read_text(wnids_file).splitlines()})
    wnids = [w for w in wnids if w]
    if not wnids:
        raise CorruptDatasetError(f"{wnids_file} lists no class ids (wnids), one per line")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    if split == "train":
        files, labels = [], []
        for wnid in wnids:
            found = _image_files(directory / "train" / wnid / "images", recursive=False)
            files += found
            labels += [index[wnid]] * len(found)
    elif split == "val":
        annotations = directory / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise not_found(
                "TinyImageNet val annotations",
                "tinyimagenet",
                Path(root),
                TINYIMAGENET_FOLDER,
                ["val/val_annotations.txt"],
            )
        files, labels = [], []
        for number, line in enumerate(read_text(annotations).splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise CorruptDatasetError(
                    f"{annotations}:{number}: expected 'file<TAB>wnid…' with a wnid from "
                    f"wnids.txt, got {line[:80]!r}"
                )
            files.append(directory / "val" / "images" / fields[0])
            labels.append(index[fields[1]])
        files, labels = (
            zip(*sorted(zip(files, labels, strict=True)), strict=True) if files else ((), ())
        )
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise CorruptDatasetError(
                f"{len(missing)} images listed in {annotations} are missing, e.g. {missing[0]}"
            )
    else:
        files, labels = _image_files(directory / "test" / "images", recursive=False), None
    if not files:
        raise not_found(
            f"TinyImageNet {split} images",
            "tinyimagenet",
            Path(root),
            TINYIMAGENET_FOLDER,
            [f"{split}/…/*.JPEG"],
        )
    label_array = None if labels is None else np.asarray(labels, dtype=np.int64)
    return list(files), label_array, tuple(wnids)


def _decoded_set(
    label: str,
    files: Sequence[Path],
    labels: np.ndarray | None,
    class_names: tuple[str, ...] | None,
    definition: dict,
    cache: SetCache,
    *,
    size: int | tuple[int, int] | None,
    channels: int,
) -> ImageSet:
    target = _size_pair(size)
    definition = {**definition, "size": target and list(target), "channels": channels}
    stamp = stamp_of(files)

    def build():
        shape, chunks = decode_chunks(files, size=size, channels=channels)
        return {"images": ((len(files), *shape), np.dtype(np.uint8), lambda: chunks)}

    rows = cache.prepare(label, definition, stamp, build)["images"]
    return ImageSet(rows, labels, class_names, definition, stamp)


def open_ood_folder(
    name: str,
    root: str | Path,
    *,
    cache: SetCache,
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
) -> ImageSet:
    """:func:`load_ood_folder`'s images, decoded once into ``cache``."""
    files = ood_folder_files(name, root)
    root = Path(root).expanduser().resolve()
    definition = {"format": "folder", "set": name, "root": str(root)}
    return _decoded_set(name, files, None, None, definition, cache, size=size, channels=channels)


def open_tinyimagenet(
    root: str | Path,
    split: str = "train",
    *,
    cache: SetCache,
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
) -> ImageSet:
    """:func:`load_tinyimagenet`'s split, decoded once into ``cache``."""
    files, labels, wnids = tinyimagenet_files(root, split)
    root_folder = str(Path(root).expanduser().resolve())
    definition = {"format": "tinyimagenet", "root": root_folder, "split": split}
    label = f"tinyimagenet-{split}"
    return _decoded_set(
        label, files, labels, wnids, definition, cache, size=size, channels=channels
    )
