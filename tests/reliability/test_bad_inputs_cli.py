"""Bad input everywhere a user can give it, through the command line: data files (``.npz``, the
``.npy`` folder form, image datasets), teacher files, run directories, ``--out``, and the inputs
of ``endd predict`` / ``endd export``. Each is exit status 2, exactly one line on stderr that
starts ``endd: error:`` and names the file or key, no traceback, and the run directory (or its
absence) byte-for-byte unchanged. Config values are covered by tests/config."""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from endd.cli import main
from endd.config import load_yaml
from endd.data.images import write_fake_dataset, write_idx
from endd.pipeline.run import run_config
from tiny import TINY_SPIRAL

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SPIRAL = CONFIGS / "spiral.yaml"
FASHION = CONFIGS / "fashion_mnist.yaml"

#: The tiny spiral overrides that are not data keys (an npz config has no spiral data keys).
TINY_TRAINING = [o for o in TINY_SPIRAL if not o.startswith("data.")]
#: Image runs: no OOD dataset to read, no auxiliary set, small sizes (they fail while reading).
TINY_IMAGES = [
    "data.ood=[gaussian_noise]",
    "data.ood_size=8",
    "data.aux=null",
    "data.train_size=null",
    "data.channels=3",
    "data.size=12",
    "ensemble.members=2",
    "ensemble.epochs=1",
    "students.epochs=1",
    "students.methods=[endd]",
    "trainer.workers=1",
]


# ---- helpers ---------------------------------------------------------------------------------
def tree_hash(path: Path) -> str:
    """Names and bytes of everything under ``path`` (or "absent")."""
    if not path.exists():
        return "absent"
    digest = hashlib.sha256()
    items = [path] if path.is_file() else sorted(p for p in path.rglob("*"))
    for item in items:
        digest.update(str(item.relative_to(path) if item != path else ".").encode())
        if item.is_file():
            digest.update(item.read_bytes())
        else:
            digest.update(b"<dir>")
    return digest.hexdigest()


def spiral_arrays(n: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid 3-class 2-D dataset in the npz layout."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.normal(size=(n, 2)).astype(np.float32),
        "y_train": np.arange(n) % 3,
        "x_test": rng.normal(size=(n // 2, 2)).astype(np.float32),
        "y_test": np.arange(n // 2) % 3,
        "x_ood_far": rng.normal(loc=10.0, size=(10, 2)).astype(np.float32),
    }


def npy_bytes(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value)
    return buffer.getvalue()


def untokenizable(valid: bytes) -> bytes:
    """A .npy whose header numpy cannot parse (it raises tokenize.TokenError)."""
    return b"\x93NUMPY\x01\x00\x01" + valid[9:]


def encrypted_zip(path: Path) -> None:
    """Mark every member of the zip at ``path`` as encrypted (zipfile raises RuntimeError)."""
    data = bytearray(path.read_bytes())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + flag_offset] |= 1
            start += 4
    path.write_bytes(bytes(data))


def npz_config(tmp: Path) -> Path:
    """A config whose data kind is npz already (no data-kind switch, no notice)."""
    config = load_yaml(SPIRAL)
    config["data"] = {"name": "npz", "path": "unset.npz"}
    config["students"]["methods"] = ["end", "endd"]
    path = tmp / "npz.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


def run_npz(tmp: Path, data_path: Path, *extra: str) -> list[str]:
    argv = ["run", str(npz_config(tmp)), "--out", str(tmp / "run"), f"--set=data.path={data_path}"]
    return argv + [f"--set={o}" for o in [*TINY_TRAINING, *extra]]


def run_images(tmp: Path, name: str, root: Path, *extra: str) -> list[str]:
    argv = ["run", str(FASHION), "--out", str(tmp / "run")]
    overrides = [f"data.name={name}", f"data.path={root}", *TINY_IMAGES, *extra]
    return argv + [f"--set={o}" for o in overrides]


@dataclass
class Case:
    """``make(tmp, finished_run) -> (argv, watched, what the message must name)``."""

    id: str
    make: Callable[[Path, Path], tuple[list[str], Path, str]]
    #: a known failure outside src/endd/data/ (where it must be fixed), or None
    known: str | None = None


CASES: list[Case] = []


def case(id_: str, known: str | None = None):
    def register(make):
        CASES.append(Case(id_, make, known))
        return make

    return register


# ---- endd run: the .npz form -----------------------------------------------------------------
def _npz_case(id_: str, change: Callable[[dict], None], names: str, *, compress: bool = False):
    def make(tmp: Path, _run: Path):
        arrays = spiral_arrays()
        change(arrays)
        path = tmp / "data.npz"
        (np.savez_compressed if compress else np.savez)(path, **arrays)
        return run_npz(tmp, path), tmp / "run", names

    CASES.append(Case(id_, make))


def _set(key: str, value) -> Callable[[dict], None]:
    def change(arrays: dict) -> None:
        arrays[key] = value(arrays) if callable(value) else value

    return change


def _with_nan(key: str, row: int = 3, value: float = np.nan) -> Callable[[dict], None]:
    def change(arrays: dict) -> None:
        x = arrays[key].astype(np.float64)
        x[row, 0] = value
        arrays[key] = x

    return change


_npz_case("npz: NaN in x_train", _with_nan("x_train"), "'x_train'")
_npz_case("npz: inf in x_test", _with_nan("x_test", value=np.inf), "'x_test'")
_npz_case("npz: -inf in x_ood", _with_nan("x_ood_far", value=-np.inf), "'x_ood_far'")
_npz_case("npz: float64 overflowing float32", _with_nan("x_train", value=1e300), "'x_train'")
_npz_case("npz: NaN in x_aux", _set("x_aux", np.full((5, 2), np.nan)), "'x_aux'")
_npz_case(
    "npz: label outside 0..K-1 in y_test", _set("y_test", lambda a: a["y_test"] + 3), "y_test"
)
_npz_case("npz: negative label", _set("y_train", lambda a: a["y_train"] - 1), "'y_train'")
_npz_case("npz: fractional labels", _set("y_train", lambda a: a["y_train"] + 0.5), "'y_train'")
_npz_case(
    "npz: NaN label", _set("y_test", lambda a: np.where(a["y_test"] == 0, np.nan, 1.0)), "'y_test'"
)
_npz_case("npz: string labels", _set("y_train", lambda a: a["y_train"].astype(str)), "'y_train'")
_npz_case("npz: string inputs", _set("x_train", lambda a: a["x_train"].astype(str)), "'x_train'")
_npz_case("npz: complex inputs", _set("x_test", lambda a: a["x_test"] + 1j), "'x_test'")
_npz_case("npz: 2-D labels", _set("y_train", lambda a: a["y_train"][:, None]), "'y_train'")
_npz_case("npz: one label too few", _set("y_test", lambda a: a["y_test"][:-1]), "'y_test'")
_npz_case("npz: 1-D inputs", _set("x_train", lambda a: a["x_train"][:, 0]), "'x_train'")
_npz_case("npz: feature shapes differ", _set("x_test", np.zeros((30, 3), np.float32)), "'x_test'")
_npz_case(
    "npz: ood feature shape differs", _set("x_ood_far", np.zeros((4, 5), np.float32)), "'x_ood_far'"
)
_npz_case(
    "npz: empty test split",
    lambda a: a.update(x_test=np.zeros((0, 2), np.float32), y_test=np.zeros(0, np.int64)),
    "x_test",
)
_npz_case(
    "npz: empty training split",
    lambda a: a.update(x_train=np.zeros((0, 2), np.float32), y_train=np.zeros(0, np.int64)),
    "'x_train'",
)
_npz_case("npz: empty ood split", _set("x_ood_far", np.zeros((0, 2), np.float32)), "x_ood_far")
_npz_case("npz: a single class", _set("y_train", lambda a: np.zeros_like(a["y_train"])), "y_train")
_npz_case("npz: a class never used", _set("y_train", lambda a: a["y_train"] * 2), "y_train")
_npz_case("npz: missing x_test", lambda a: a.pop("x_test"), "x_test")
_npz_case("npz: a typo in a name", lambda a: a.update(x_tset=a["x_test"]), "x_tset")
_npz_case("npz: objects (pickle)", _set("x_aux", np.array([{}, 1], dtype=object)), "data.npz")
_npz_case("npz: compressed, NaN", _with_nan("x_train"), "'x_train'", compress=True)
_npz_case("npz: labels too large", _set("y_test", lambda a: a["y_test"] * 1e30), "'y_test'")
_npz_case(
    "npz: uint64 labels of 2**40",
    _set("y_train", lambda a: (a["y_train"] * 2**40).astype(np.uint64)),
    "'y_train'",
)


@case("npz: members marked encrypted")
def _(tmp, _run):
    path = tmp / "data.npz"
    np.savez(path, **spiral_arrays())
    encrypted_zip(path)
    return run_npz(tmp, path), tmp / "run", str(path)


@case("npz: a member whose header does not parse")
def _(tmp, _run):
    path = tmp / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in spiral_arrays().items():
            payload = npy_bytes(value)
            archive.writestr(f"{key}.npy", untokenizable(payload) if key == "y_test" else payload)
    return run_npz(tmp, path), tmp / "run", str(path)


@case("npz: a member that is not a .npy")
def _(tmp, _run):
    path = tmp / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in spiral_arrays().items():
            archive.writestr(f"{key}.npy", b"" if key == "x_test" else npy_bytes(value))
    return run_npz(tmp, path), tmp / "run", str(path)


@case("npz: with --set data.name=npz on the spiral config")
def _(tmp, _run):
    path = tmp / "nowhere.npz"
    argv = ["run", str(SPIRAL), "--out", str(tmp / "run"), "--set=data.name=npz"]
    return [*argv, f"--set=data.path={path}"], tmp / "run", str(path)


@case("npz: truncated file")
def _(tmp, _run):
    path = tmp / "data.npz"
    np.savez(path, **spiral_arrays())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return run_npz(tmp, path), tmp / "run", str(path)


@case("npz: a member cut short inside the zip")
def _(tmp, _run):
    path = tmp / "data.npz"
    arrays = spiral_arrays()
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            buffer = tmp / f"{key}.npy"
            np.save(buffer, value)
            data = buffer.read_bytes()
            archive.writestr(f"{key}.npy", data[:-16] if key == "x_train" else data)
    return run_npz(tmp, path), tmp / "run", str(path)


@case("npz: not a zip")
def _(tmp, _run):
    path = tmp / "data.npz"
    path.write_text("x_train,y_train\n1,2\n")
    return run_npz(tmp, path), tmp / "run", str(path)


@case("npz: empty file")
def _(tmp, _run):
    path = tmp / "data.npz"
    path.write_bytes(b"")
    return run_npz(tmp, path), tmp / "run", str(path)


@case("npz: missing file")
def _(tmp, _run):
    path = tmp / "nowhere.npz"
    return run_npz(tmp, path), tmp / "run", str(path)


@case("npz: data.path names a .npy file")
def _(tmp, _run):
    path = tmp / "x_train.npy"
    np.save(path, spiral_arrays()["x_train"])
    return run_npz(tmp, path), tmp / "run", str(path)


# ---- endd run: the folder of .npy files ------------------------------------------------------
def _folder_case(id_: str, change: Callable[[Path], None], names: str):
    def make(tmp: Path, _run: Path):
        folder = tmp / "arrays"
        folder.mkdir()
        for key, value in spiral_arrays().items():
            np.save(folder / f"{key}.npy", value)
        change(folder)
        return run_npz(tmp, folder), tmp / "run", names.format(folder=folder)

    CASES.append(Case(id_, make))


def _save(name: str, value) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        old = np.load(folder / f"{name}.npy") if (folder / f"{name}.npy").exists() else None
        np.save(folder / f"{name}.npy", value(old) if callable(value) else value, allow_pickle=True)

    return change


def _nan_rows(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[7, 1] = np.nan
    return x


def _write(name: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / f"{name}.npy"
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)

    return change


_folder_case("npy folder: NaN in x_train", _save("x_train", _nan_rows), "'x_train'")
_folder_case(
    "npy folder: float64 overflowing float32",
    _save("x_test", lambda x: x.astype(np.float64) * 1e300),
    "'x_test'",
)
_folder_case("npy folder: inf in x_ood", _save("x_ood_far", lambda x: x * np.inf), "'x_ood_far'")
_folder_case("npy folder: label outside 0..K-1", _save("y_test", lambda y: y + 5), "y_test")
_folder_case("npy folder: fractional labels", _save("y_train", lambda y: y / 2), "'y_train'")
_folder_case("npy folder: string labels", _save("y_test", lambda y: y.astype(str)), "'y_test'")
_folder_case("npy folder: string inputs", _save("x_test", lambda x: x.astype(str)), "'x_test'")
_folder_case(
    "npy folder: object inputs", _save("x_aux", np.array([[{}]] * 3, dtype=object)), "x_aux.npy"
)
_folder_case(
    "npy folder: object labels", _save("y_train", np.array([{}] * 60, dtype=object)), "y_train.npy"
)
_folder_case("npy folder: Fortran order", _save("x_train", np.asfortranarray), "x_train.npy")
_folder_case(
    "npy folder: feature shapes differ", _save("x_test", np.zeros((30, 4), np.float32)), "'x_test'"
)
_folder_case("npy folder: 0-d input array", _save("x_test", np.float32(1.0)), "x_test.npy")
_folder_case(
    "npy folder: empty test split",
    lambda f: (
        _save("x_test", np.zeros((0, 2), np.float32))(f),
        _save("y_test", np.zeros(0, np.int64))(f),
    ),
    "x_test",
)
_folder_case(
    "npy folder: empty training split",
    lambda f: (
        _save("x_train", np.zeros((0, 2), np.float32))(f),
        _save("y_train", np.zeros(0, np.int64))(f),
    ),
    "'x_train'",
)
_folder_case("npy folder: a single class", _save("y_train", lambda y: y * 0), "y_train")
_folder_case("npy folder: one label too few", _save("y_train", lambda y: y[:-1]), "'y_train'")
_folder_case("npy folder: truncated x_train", _write("x_train", lambda b: b[:-40]), "x_train.npy")
_folder_case("npy folder: truncated y_train", _write("y_train", lambda b: b[:-8]), "y_train.npy")
_folder_case("npy folder: header only", _write("x_test", lambda b: b[:20]), "x_test.npy")
_folder_case("npy folder: not a .npy", _write("x_train", b"1.0,2.0\n3.0,4.0\n"), "x_train.npy")
_folder_case("npy folder: empty file", _write("y_test", b""), "y_test.npy")
_folder_case("npy folder: missing y_test", lambda f: (f / "y_test.npy").unlink(), "y_test.npy")
_folder_case("npy folder: a typo in a name", _save("x_tset", np.zeros((3, 2))), "x_tset.npy")
_folder_case(
    "npy folder: x_train header does not parse", _write("x_train", untokenizable), "x_train.npy"
)
_folder_case(
    "npy folder: y_train header does not parse", _write("y_train", untokenizable), "y_train.npy"
)
_folder_case(
    "npy folder: y_test is a zip",
    _write("y_test", lambda b: b"PK\x05\x06" + bytes(18)),
    "y_test.npy",
)


@case("npy folder: an x_train.npy that is a folder")
def _(tmp, _run):
    folder = tmp / "arrays"
    folder.mkdir()
    for key, value in spiral_arrays().items():
        np.save(folder / f"{key}.npy", value)
    (folder / "x_train.npy").unlink()
    (folder / "x_train.npy").mkdir()
    return run_npz(tmp, folder), tmp / "run", "x_train.npy"


@case("npy folder: empty folder")
def _(tmp, _run):
    (tmp / "arrays").mkdir()
    return run_npz(tmp, tmp / "arrays"), tmp / "run", "x_train.npy"


# ---- endd run: image datasets ----------------------------------------------------------------
def _image_case(id_: str, name: str, change: Callable[[Path], object], names: str, *extra: str):
    def make(tmp: Path, _run: Path):
        root = tmp / "data"
        write_fake_dataset(
            name, root, num_images=6, num_classes=3 if name == "tinyimagenet" else None
        )
        named = change(root)
        argv = run_images(tmp, name, root, *extra)
        return argv, tmp / "run", names.format(root=root, named=named)

    CASES.append(Case(id_, make))


def _garbage_image(path_in_root: str, data: bytes = b"not an image at all"):
    def change(root: Path) -> Path:
        matches = sorted(root.glob(path_in_root))
        target = matches[0]
        target.write_bytes(data(target.read_bytes()) if callable(data) else data)
        return target

    return change


_image_case(
    "tinyimagenet: a train JPEG that does not decode",
    "tinyimagenet",
    _garbage_image("tiny-imagenet-200/train/*/images/*.JPEG"),
    "{named}",
)
_image_case(
    "tinyimagenet: a truncated val JPEG",
    "tinyimagenet",
    _garbage_image("tiny-imagenet-200/val/images/*.JPEG", lambda b: b[:40]),
    "{named}",
)
_image_case(
    "tinyimagenet: an empty image file",
    "tinyimagenet",
    _garbage_image("tiny-imagenet-200/train/*/images/*.JPEG", b""),
    "{named}",
)
_image_case(
    "tinyimagenet: a bad val_annotations line",
    "tinyimagenet",
    lambda root: (root / "tiny-imagenet-200/val/val_annotations.txt").write_text("val_0.JPEG\n"),
    "val_annotations.txt",
)
_image_case(
    "tinyimagenet: an annotated image missing",
    "tinyimagenet",
    lambda root: (root / "tiny-imagenet-200/val/images/val_0.JPEG").unlink(),
    "val_0.JPEG",
)
_image_case(
    "lsun_crop OOD: a PNG that does not decode",
    "cifar10",
    lambda root: (
        write_fake_dataset("lsun_crop", root, num_images=3),
        _garbage_image("LSUN/test/*.png", b"\x89PNG\r\n\x1a\n garbage")(root),
    )[-1],
    "{named}",
    "data.ood=[lsun_crop]",
)
_image_case(
    "lsun_crop OOD: folder missing",
    "cifar10",
    lambda root: None,
    "lsun_crop",
    "data.ood=[lsun_crop]",
)
_image_case(
    "tim_crop OOD: a text file named .jpg",
    "cifar10",
    lambda root: (
        write_fake_dataset("tim_crop", root, num_images=3),
        (root / "Imagenet/test/0.png").rename(root / "Imagenet/test/0.jpg"),
        (root / "Imagenet/test/1.png").write_text("hello"),
    )[-1],
    "Imagenet/test/1.png",
    "data.ood=[tim_crop]",
)
_image_case(
    "cifar10: truncated data_batch_1.bin",
    "cifar10",
    _garbage_image("cifar-10-batches-bin/data_batch_1.bin", lambda b: b[:-100]),
    "{named}",
)
_image_case(
    "cifar10: label byte out of range",
    "cifar10",
    _garbage_image("cifar-10-batches-bin/test_batch.bin", lambda b: b"\xff" + b[1:]),
    "{named}",
)
_image_case(
    "cifar10: a batch file missing",
    "cifar10",
    lambda root: (root / "cifar-10-batches-bin/data_batch_3.bin").unlink(),
    "data_batch_3.bin",
)
_image_case(
    "cifar100: the python version instead of the binary one",
    "cifar100",
    _garbage_image("cifar-100-binary/train.bin", b"\x80\x04\x95 pickle"),
    "{named}",
)
_image_case(
    "mnist: a garbage gzip",
    "mnist",
    _garbage_image("mnist/train-images-idx3-ubyte.gz", lambda b: b[:30]),
    "{named}",
)
_image_case(
    "mnist: not an IDX file",
    "mnist",
    _garbage_image("mnist/t10k-labels-idx1-ubyte.gz", b"\x00\x01\x02\x03\x04"),
    "{named}",
)
_image_case(
    "mnist: images and labels disagree in count",
    "mnist",
    lambda root: write_idx(root / "mnist/train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8)),
    "train-labels-idx1-ubyte.gz",
)
_image_case(
    "mnist: labels of 2 dimensions",
    "mnist",
    lambda root: write_idx(root / "mnist/t10k-labels-idx1-ubyte.gz", np.zeros((6, 2), np.uint8)),
    "t10k-labels-idx1-ubyte.gz",
)
_image_case(
    "mnist: labels above 9",
    "mnist",
    lambda root: write_idx(root / "mnist/t10k-labels-idx1-ubyte.gz", np.full(6, 12, np.uint8)),
    "MNIST",
)
_image_case(
    "svhn: not a .mat file",
    "svhn",
    _garbage_image("svhn/train_32x32.mat", b"MATLAB 5.0 MAT-file, garbage"),
    "{named}",
)
_image_case(
    "svhn: X of the wrong shape",
    "svhn",
    lambda root: scipy.io.savemat(
        root / "svhn/test_32x32.mat",
        {"X": np.zeros((28, 28, 6), np.uint8), "y": np.ones((6, 1), np.uint8)},
    ),
    "test_32x32.mat",
)
_image_case(
    "svhn: labels above 10",
    "svhn",
    lambda root: scipy.io.savemat(
        root / "svhn/test_32x32.mat",
        {"X": np.zeros((32, 32, 3, 6), np.uint8), "y": np.full((6, 1), 11, np.uint8)},
    ),
    "test_32x32.mat",
)


def _dir_instead(relative: str) -> Callable[[Path], Path]:
    def change(root: Path) -> Path:
        path = root / relative
        path.unlink()
        path.mkdir()
        return path

    return change


_image_case(
    "cifar100: train.bin is a folder",
    "cifar100",
    _dir_instead("cifar-100-binary/train.bin"),
    "{named}",
)
_image_case(
    "cifar100: label names not UTF-8",
    "cifar100",
    lambda root: (root / "cifar-100-binary/fine_label_names.txt").write_bytes(b"\xff\xfeap"),
    "fine_label_names.txt",
)
_image_case(
    "tinyimagenet: wnids.txt not UTF-8",
    "tinyimagenet",
    lambda root: (root / "tiny-imagenet-200/wnids.txt").write_bytes(b"\xff\xfe\x00n0"),
    "wnids.txt",
)
_image_case(
    "tinyimagenet: wnids.txt is a folder",
    "tinyimagenet",
    _dir_instead("tiny-imagenet-200/wnids.txt"),
    "{named}",
)
_image_case(
    "tinyimagenet: wnids.txt empty",
    "tinyimagenet",
    lambda root: (root / "tiny-imagenet-200/wnids.txt").write_text("\n"),
    "wnids.txt",
)
_image_case(
    "tinyimagenet: val_annotations.txt not UTF-8",
    "tinyimagenet",
    lambda root: (root / "tiny-imagenet-200/val/val_annotations.txt").write_bytes(b"\xff\x00"),
    "val_annotations.txt",
)


@case("image data root missing")
def _(tmp, _run):
    return run_images(tmp, "cifar10", tmp / "nowhere"), tmp / "run", "nowhere"


# ---- endd run: teacher files and --out -------------------------------------------------------
def _teacher_case(id_: str, change: Callable[[Path], None], names: str):
    def make(tmp: Path, run: Path):
        folder = tmp / "logits"
        shutil.copytree(run / "teacher", folder)
        (folder / "done.json").unlink()
        change(folder)
        argv = ["run", str(SPIRAL), "--out", str(tmp / "out")]
        overrides = [*TINY_SPIRAL, "students.methods=[end, endd]", "teacher.source=logits"]
        argv += [f"--set={o}" for o in [*overrides, f"teacher.path={folder}"]]
        return argv, tmp / "out", names.format(folder=folder)

    CASES.append(Case(id_, make))


_teacher_case(
    "teacher: truncated test.npy",
    lambda f: (f / "test.npy").write_bytes((f / "test.npy").read_bytes()[:-20]),
    "{folder}/test.npy",
)
_teacher_case(
    "teacher: NaN logits in aux.npy",
    lambda f: np.save(f / "aux.npy", np.load(f / "aux.npy") * np.nan),
    "{folder}/aux.npy",
)
_teacher_case(
    "teacher: ood_far.npy is a zip",
    lambda f: zipfile.ZipFile(f / "ood_far.npy", "w").close(),
    "{folder}/ood_far.npy",
)
_teacher_case(
    "teacher: train.npy is a folder",
    lambda f: ((f / "train.npy").unlink(), (f / "train.npy").mkdir()),
    "{folder}/train.npy",
)


@case("teacher: train.npy header does not parse")
def _(tmp, run):
    folder = tmp / "logits"
    shutil.copytree(run / "teacher", folder)
    (folder / "done.json").unlink()
    (folder / "train.npy").write_bytes(untokenizable((folder / "train.npy").read_bytes()))
    argv = ["run", str(SPIRAL), "--out", str(tmp / "out")]
    overrides = [*TINY_SPIRAL, "students.methods=[end, endd]", "teacher.source=logits"]
    argv += [f"--set={o}" for o in [*overrides, f"teacher.path={folder}"]]
    return argv, tmp / "out", "train.npy"


@case("teacher: teacher.path is a file")
def _(tmp, run):
    argv = ["run", str(SPIRAL), "--out", str(tmp / "out")]
    overrides = [*TINY_SPIRAL, "teacher.source=logits", f"teacher.path={run / 'config.yaml'}"]
    return argv + [f"--set={o}" for o in overrides], tmp / "out", "config.yaml"


@case("run: --out is an existing file")
def _(tmp, _run):
    out = tmp / "out.txt"
    out.write_text("my notes\n")
    argv = ["run", str(SPIRAL), "--out", str(out), *[f"--set={o}" for o in TINY_SPIRAL]]
    return argv, out, str(out)


@case("run: --out inside an existing file")
def _(tmp, _run):
    out = tmp / "out.txt"
    out.write_text("my notes\n")
    argv = ["run", str(SPIRAL), "--out", str(out / "run"), *[f"--set={o}" for o in TINY_SPIRAL]]
    return argv, out, str(out)


@case("run: --out holds another run's config")
def _(tmp, run):
    out = tmp / "other"
    shutil.copytree(run, out)
    argv = ["run", str(SPIRAL), "--out", str(out), "--set=seed=7"]
    return argv + [f"--set={o}" for o in TINY_SPIRAL], out, str(out)


@case("run: --out holds a garbage config.yaml")
def _(tmp, _run):
    out = tmp / "out"
    out.mkdir()
    (out / "config.yaml").write_text("{{{ not: yaml")
    argv = ["run", str(SPIRAL), "--out", str(out), *[f"--set={o}" for o in TINY_SPIRAL]]
    return argv, out, "config.yaml"


@case("run: config file missing")
def _(tmp, _run):
    return ["run", str(tmp / "none.yaml"), "--out", str(tmp / "run")], tmp / "run", "none.yaml"


@case("run: config file is not YAML")
def _(tmp, _run):
    config = tmp / "bad.yaml"
    config.write_text("data: [unclosed\n  - x: {\n")
    return ["run", str(config), "--out", str(tmp / "run")], tmp / "run", "bad.yaml"


@case("run: config file is a list")
def _(tmp, _run):
    config = tmp / "list.yaml"
    config.write_text("- a\n- b\n")
    return ["run", str(config), "--out", str(tmp / "run")], tmp / "run", "list.yaml"


@case("run: config file is binary")
def _(tmp, _run):
    config = tmp / "binary.yaml"
    config.write_bytes(bytes(range(256)))
    return ["run", str(config), "--out", str(tmp / "run")], tmp / "run", "binary.yaml"


# ---- stage commands on folders that are not runs ---------------------------------------------
def _stage_case(id_: str, command: str, make_folder: Callable[[Path, Path], Path], names: str):
    def make(tmp: Path, run: Path):
        folder = make_folder(tmp, run)
        return [command, str(folder)], folder, names.format(folder=folder)

    CASES.append(Case(id_, make))


def _empty_dir(tmp: Path, _run: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _a_file(tmp: Path, _run: Path) -> Path:
    (tmp / "file.txt").write_text("hello")
    return tmp / "file.txt"


def _garbage_config(tmp: Path, _run: Path) -> Path:
    (tmp / "r").mkdir()
    (tmp / "r" / "config.yaml").write_text("students: {epochs: [[[\n")
    return tmp / "r"


def _wrong_config(tmp: Path, _run: Path) -> Path:
    (tmp / "r").mkdir()
    (tmp / "r" / "config.yaml").write_text("students: {epochs: -3}\n")
    return tmp / "r"


def _no_ensemble(tmp: Path, run: Path) -> Path:
    shutil.copytree(run, tmp / "r")
    for folder in ("ensemble", "teacher", "students"):
        shutil.rmtree(tmp / "r" / folder)
    return tmp / "r"


_stage_case("distill: an empty folder", "distill", _empty_dir, "{folder}")
_stage_case("evaluate: a file", "evaluate", _a_file, "{folder}")
_stage_case("report: a missing folder", "report", lambda t, r: t / "nowhere", "{folder}")
_stage_case("ensemble: a garbage config.yaml", "ensemble", _garbage_config, "config.yaml")
_stage_case(
    "evaluate: a config.yaml with a bad value", "evaluate", _wrong_config, "students.epochs"
)
_stage_case("distill: no ensemble yet", "distill", _no_ensemble, "{folder}")
_stage_case("report: an empty folder", "report", _empty_dir, "{folder}")


# ---- endd predict / endd export --------------------------------------------------------------
def _predict_case(id_: str, make_input: Callable[[Path], Path], names: str, *args: str):
    def make(tmp: Path, run: Path):
        path = make_input(tmp)
        out = tmp / "p.npz"
        argv = ["predict", str(run), "--model", "endd", "--input", str(path), "--out", str(out)]
        return [*argv, *args], run, names.format(input=path, run=run)

    CASES.append(Case(id_, make))


def _npy(values, name: str = "x.npy"):
    def make(tmp: Path) -> Path:
        np.save(tmp / name, values, allow_pickle=True)
        return tmp / name

    return make


def _bytes(data: bytes, name: str):
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    return make


_predict_case("predict: NaN input", _npy(np.array([[0.0, 1.0], [np.nan, 2.0]])), "{input}")
_predict_case("predict: wrong shape", _npy(np.zeros((3, 5), np.float32)), "{input}")
_predict_case("predict: strings", _npy(np.array([["1", "2"]])), "{input}")
_predict_case(
    "predict: truncated .npy",
    lambda t: _bytes(np.lib.format.magic(1, 0) + b"\x10\x00{'descr'", "x.npy")(t),
    "{input}",
)
_predict_case("predict: .npz of garbage", _bytes(b"PK\x03\x04 not really", "x.npz"), "{input}")
_predict_case("predict: missing input", lambda t: t / "none.npy", "{input}")
_predict_case(
    "predict: unknown model", _npy(np.zeros((3, 2), np.float32)), "endx", "--model", "endx"
)
_predict_case(
    "predict: batch size 0", _npy(np.zeros((3, 2), np.float32)), "batch", "--batch-size", "0"
)


@case("predict: .npy header does not parse")
def _(tmp, run):
    path = tmp / "x.npy"
    path.write_bytes(untokenizable(npy_bytes(np.zeros((3, 2), np.float32))))
    argv = ["predict", str(run), "--model", "endd", "--input", str(path)]
    return [*argv, "--out", str(tmp / "p.npz")], run, str(path)


@case("predict: .npz member marked encrypted")
def _(tmp, run):
    path = tmp / "x.npz"
    np.savez(path, x=np.zeros((3, 2), np.float32))
    encrypted_zip(path)
    argv = ["predict", str(run), "--model", "endd", "--input", str(path)]
    return [*argv, "--out", str(tmp / "p.npz")], run, str(path)


@case("predict: missing run")
def _(tmp, _run):
    np.save(tmp / "x.npy", np.zeros((3, 2), np.float32))
    argv = ["predict", str(tmp / "norun"), "--model", "endd", "--input", str(tmp / "x.npy")]
    return [*argv, "--out", str(tmp / "p.npz")], tmp / "norun", "norun"


@case("predict: a folder that is not a run")
def _(tmp, _run):
    np.save(tmp / "x.npy", np.zeros((3, 2), np.float32))
    (tmp / "norun").mkdir()
    argv = ["predict", str(tmp / "norun"), "--model", "endd", "--input", str(tmp / "x.npy")]
    return [*argv, "--out", str(tmp / "p.npz")], tmp / "norun", "norun"


@case("predict: --out is a folder")
def _(tmp, run):
    np.save(tmp / "x.npy", np.zeros((3, 2), np.float32))
    (tmp / "outdir").mkdir()
    argv = ["predict", str(run), "--model", "endd", "--input", str(tmp / "x.npy")]
    return [*argv, "--out", str(tmp / "outdir")], tmp / "outdir", "outdir"


def _export_case(id_: str, args: list[str], names: str):
    def make(tmp: Path, run: Path):
        argv = ["export", str(run), *args]
        out = tmp / "model.pt"
        argv = [a.replace("OUT", str(out)) for a in argv]
        return argv, run, names

    CASES.append(Case(id_, make))


_export_case(
    "export: unknown model", ["--model", "endx", "--format", "torchscript", "--out", "OUT"], "endx"
)
_export_case(
    "export: unknown format", ["--model", "endd", "--format", "tflite", "--out", "OUT"], "tflite"
)
_export_case(
    "export: --out in a missing folder",
    ["--model", "endd", "--format", "torchscript", "--out", "/nonexistent/dir/m.pt"],
    "/nonexistent/dir",
)


@case("export: missing run")
def _(tmp, _run):
    argv = ["export", str(tmp / "norun"), "--model", "endd", "--format", "torchscript"]
    return [*argv, "--out", str(tmp / "m.pt")], tmp / "norun", "norun"


@case("export: a student that is not trained")
def _(tmp, run):
    argv = ["export", str(run), "--model", "proxy", "--format", "torchscript"]
    return [*argv, "--out", str(tmp / "m.pt")], run, "proxy"


# ---- endd data download (no network: a missing local mirror) --------------------------------
@case("data download: unknown dataset")
def _(tmp, _run):
    return ["data", "download", "cifar", "--root", str(tmp / "data")], tmp / "data", "'cifar'"


@case("data download: --root is a file")
def _(tmp, _run):
    (tmp / "data").write_text("not a folder")
    argv = ["data", "download", "mnist", "--root", str(tmp / "data")]
    return [*argv, "--base-url", (tmp / "mirror").as_uri()], tmp / "data", str(tmp / "data")


@case("data download: the mirror does not have it")
def _(tmp, _run):
    (tmp / "data").mkdir()  # (a --root it had to create is left behind, empty)
    argv = ["data", "download", "mnist", "--root", str(tmp / "data")]
    return [*argv, "--base-url", (tmp / "mirror").as_uri()], tmp / "data", "mnist"


# ---- the test --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny spiral run with the EnD and EnD² students."""
    out = tmp_path_factory.mktemp("finished") / "run"
    overrides = [*TINY_SPIRAL, "students.methods=[end, endd]", "students.epochs=1"]
    run_config(load_yaml(SPIRAL), out, overrides, quiet=True)
    return out


def test_the_table_is_big_enough():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def _param(bad: Case):
    if bad.known is None:
        return pytest.param(bad, id=bad.id)
    return pytest.param(bad, id=bad.id, marks=pytest.mark.xfail(strict=True, reason=bad.known))


@pytest.mark.parametrize("bad", [_param(c) for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, finished_run, capsys, bad):
    argv, watched, names = bad.make(tmp_path, finished_run)
    run_before = tree_hash(finished_run)
    before = tree_hash(watched)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else watched
    out_before = tree_hash(out)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("endd: error: "), err
    assert "Traceback" not in err
    assert names in err, err
    assert tree_hash(watched) == before
    assert tree_hash(out) == out_before  # --out of run, predict and export: nothing written
    assert tree_hash(finished_run) == run_before
