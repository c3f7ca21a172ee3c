"""Fetch public datasets from their canonical addresses, verify them, and move them into place.

Everything is written inside ``root`` under a hidden staging folder first; only a download whose
every file passed its checksum (and whose archives unpacked cleanly) is moved to its final folder
with one ``os.replace``, so an interrupted or corrupt download never leaves a half-written dataset
where the readers look.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from endd.data.images.cifar import CIFAR10_FOLDER, CIFAR100_FOLDER
from endd.data.images.folder import OOD_FOLDERS, TINYIMAGENET_FOLDER
from endd.data.images.idx import FASHION_MNIST_FOLDER, KMNIST_FOLDER, MNIST_FOLDER
from endd.data.images.svhn import SVHN_FOLDER
from endd.errors import DataError

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60


class DownloadError(DataError):
    """A download failed: unreachable address, HTTP error, checksum mismatch, or bad archive."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    Attributes:
        urls: addresses to try in order (mirrors).
        filename: the name it is saved (or served, under ``base_url``) as.
        md5, sha256: expected hex digest; at least one should be set, None skips that check.
        size: expected size in bytes, or None.
        extract: unpack the archive (.tar.gz, .tgz, .tar, .zip, .gz) instead of keeping it.
    """

    urls: tuple[str, ...]
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract: bool = False


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from and which folder of the data root it ends up in.

    Attributes:
        name: the name ``endd data download`` takes.
        folder: final folder relative to the data root; the readers look there. An archive whose
            top level is this folder is unpacked as is; otherwise its whole content becomes it.
        files: the files to fetch.
        homepage: where people read about the dataset and its licence.
    """

    name: str
    folder: str
    files: tuple[RemoteFile, ...]
    homepage: str = ""


def _idx_files(mirrors: tuple[str, ...], md5s: dict[str, str]) -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(tuple(m + name for m in mirrors), name, md5=md5) for name, md5 in md5s.items()
    )


# MD5s are those the dataset authors publish (also in torchvision's and ODIN-derived sources);
# the CIFAR and TinyImageNet sizes are those of the published archives.
DATASET_SOURCES: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource(
            "mnist",
            MNIST_FOLDER,
            _idx_files(
                (
                    "https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "http://yann.lecun.com/exdb/mnist/",
                ),
                {
                    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
                },
            ),
            "http://yann.lecun.com/exdb/mnist/",
        ),
        DatasetSource(
            "fashion_mnist",
            FASHION_MNIST_FOLDER,
            _idx_files(
                ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
                {
                    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
                },
            ),
            "https://github.com/zalandoresearch/fashion-mnist",
        ),
        DatasetSource(
            "kmnist",
            KMNIST_FOLDER,
            _idx_files(
                ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
                {
                    "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
                    "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
                    "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
                    "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
                },
            ),
            "https://github.com/rois-codh/kmnist",
        ),
        DatasetSource(
            "cifar10",
            CIFAR10_FOLDER,
            (
                RemoteFile(
                    ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
                    "cifar-10-binary.tar.gz",
                    md5="c32a1d4ab5d03f1284b67883e8d87530",
                    size=170_052_171,
                    extract=True,
                ),
            ),
            "https://www.cs.toronto.edu/~kriz/cifar.html",
        ),
        DatasetSource(
            "cifar100",
            CIFAR100_FOLDER,
            (
                RemoteFile(
                    ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",),
                    "cifar-100-binary.tar.gz",
                    md5="03b5dce01913d631647c71ecec9e9cb8",
                    size=168_513_733,
                    extract=True,
                ),
            ),
            "https://www.cs.toronto.edu/~kriz/cifar.html",
        ),
        DatasetSource(
            "svhn",
            SVHN_FOLDER,
            (
                RemoteFile(
                    ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                    "train_32x32.mat",
                    md5="e26dedcc434d2e4c54c9b2d4a06d8373",
                ),
                RemoteFile(
                    ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                    "test_32x32.mat",
                    md5="eb5a983be6a315427106f1b164d9cef3",
                ),
            ),
            "http://ufldl.stanford.edu/housenumbers/",
        ),
        DatasetSource(
            "tinyimagenet",
            TINYIMAGENET_FOLDER,
            (
                RemoteFile(
                    ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
                    "tiny-imagenet-200.zip",
                    md5="90528d7ca1a48142e341f4ef8d21d0de",
                    size=248_100_043,
                    extract=True,
                ),
            ),
            "https://www.kaggle.com/c/tiny-imagenet",
        ),
        # The 10 000-image OOD sets of ODIN (Liang et al., 2018), hosted on Dropbox.
        *(
            DatasetSource(
                name,
                OOD_FOLDERS[name],
                (
                    RemoteFile(
                        (f"https://www.dropbox.com/s/{key}/{archive}?dl=1",),
                        archive,
                        md5=md5,
                        extract=True,
                    ),
                ),
                "https://github.com/facebookresearch/odin",
            )
            for name, key, archive, md5 in (
                ("lsun_crop", "fhtsw1m3qxlwj6h", "LSUN.tar.gz", "458a0a0ab8e5f1cb4516d7400568e460"),
                (
                    "lsun_resize",
                    "moqh2wh8696c3yl",
                    "LSUN_resize.tar.gz",
                    "278b7b31c8cb7e804a1465a8ce03a2dc",
                ),
                (
                    "tim_crop",
                    "avgm2u562itwpkl",
                    "Imagenet.tar.gz",
                    "7c0827e4246c3718a5ee076e999e52e5",
                ),
                (
                    "tim_resize",
                    "kp3my3412u5k9rl",
                    "Imagenet_resize.tar.gz",
                    "0f9ff11d45babf2eff5fe12281d1ac31",
                ),
            )
        ),
    )
}


def _progress_bar(total: int | None, description: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # installed with lightning; imported only when shown

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description)


def _fetch(url: str, destination: Path, remote: RemoteFile, progress: bool) -> None:
    """Stream ``url`` into ``destination`` and check its size and digests."""
    md5, sha256, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    request = urllib.request.Request(url, headers={"User-Agent": "endd"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        bar = _progress_bar(int(length) if length else remote.size, remote.filename, progress)
        try:
            with open(destination, "wb") as file:
                while chunk := response.read(_CHUNK_BYTES):
                    file.write(chunk)
                    md5.update(chunk)
                    sha256.update(chunk)
                    size += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if remote.size is not None and size != remote.size:
        raise DownloadError(
            f"{url} gave {size} bytes, expected {remote.size}: incomplete download or a changed "
            "file; nothing was installed"
        )
    for algorithm, expected, digest in (
        ("md5", remote.md5, md5),
        ("sha256", remote.sha256, sha256),
    ):
        if expected is not None and digest.hexdigest() != expected.lower():
            raise DownloadError(
                f"{algorithm} checksum mismatch for {url}: expected {expected}, got "
                f"{digest.hexdigest()}; nothing was installed (a damaged download or a changed "
                "file: retry, or fetch it yourself from the dataset's homepage)"
            )


def _safe_member(name: str, archive: Path) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DownloadError(f"{archive} holds an unsafe path {name!r}; refusing to unpack it")


def _extract(archive: Path, destination: Path) -> None:
    """Unpack a .tar(.gz|.bz2|.xz), .tgz, .zip or single-file .gz archive into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                for member in bundle.namelist():
                    _safe_member(member, archive)
                bundle.extractall(destination)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                for member in bundle.getmembers():
                    _safe_member(member.name, archive)
                bundle.extractall(destination, filter="data")
        elif name.endswith(".gz"):
            with gzip.open(archive, "rb") as source, open(destination / archive.stem, "wb") as out:
                shutil.copyfileobj(source, out, _CHUNK_BYTES)
        else:
            raise DownloadError(f"{archive} is not a zip, tar or gzip archive")
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as err:
        raise DownloadError(f"cannot unpack {archive}: {err}") from None


def dataset_path(name: str, root: str | Path) -> Path:
    """The folder ``download(name, root)`` fills and the readers look in."""
    if name not in DATASET_SOURCES:
        raise ValueError(f"unknown dataset {name!r}; downloadable: {', '.join(DATASET_SOURCES)}")
    return Path(root).expanduser() / DATASET_SOURCES[name].folder


def download(
    name: str | DatasetSource,
    root: str | Path,
    *,
    base_url: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Download a dataset into ``root/<folder>``, verified and moved into place atomically.

    Args:
        name: a key of :data:`DATASET_SOURCES`, or a DatasetSource (tests, private mirrors).
        root: the data root; created if missing.
        base_url: fetch every file from ``base_url/<filename>`` instead of its canonical address
            (a local mirror, or a test server).
        progress: show a tqdm progress bar per file.
        force: replace an existing folder instead of leaving it alone.

    Returns:
        The dataset folder.

    Raises:
        DownloadError: unreachable address, HTTP error, checksum or size mismatch, bad archive;
            nothing is left behind under ``root`` in that case.
    """
    if isinstance(name, DatasetSource):
        source = name
    elif name in DATASET_SOURCES:
        source = DATASET_SOURCES[name]
    else:
        raise ValueError(f"unknown dataset {name!r}; downloadable: {', '.join(DATASET_SOURCES)}")
    root = Path(root).expanduser()
    target = root / source.folder
    if target.exists() and not force:
        return target
    if root.exists() and not root.is_dir():
        raise DownloadError(f"data root {root} is a file, not a folder; give a folder for the data")
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Staging inside root keeps the final os.replace on one file system (atomic).
        staging = Path(tempfile.mkdtemp(prefix=f".endd-download-{source.name}-", dir=root))
    except OSError as err:
        raise DownloadError(f"cannot create {root}: {err.strerror or err}") from None
    try:
        unpacked = staging / "unpacked"
        plain = unpacked / source.folder  # where files that are not archives go
        for remote in source.files:
            urls = (f"{base_url.rstrip('/')}/{remote.filename}",) if base_url else remote.urls
            fetched = staging / remote.filename
            errors = []
            for url in urls:
                try:
                    _fetch(url, fetched, remote, progress)
                    break
                except urllib.error.HTTPError as err:  # try the next mirror
                    errors.append(f"{url}: HTTP {err.code} {err.reason}")
                except (urllib.error.URLError, OSError) as err:
                    errors.append(f"{url}: {getattr(err, 'reason', err)}")
            else:
                raise DownloadError(
                    f"cannot download {remote.filename} for {source.name}: {'; '.join(errors)}"
                )
            if remote.extract:
                _extract(fetched, unpacked)
                fetched.unlink()
            else:
                plain.mkdir(parents=True, exist_ok=True)
                os.replace(fetched, plain / remote.filename)
        result = unpacked / source.folder if (unpacked / source.folder).is_dir() else unpacked
        if target.exists():  # force: the old copy leaves with the staging folder
            os.replace(target, staging / "replaced")
        os.replace(result, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
