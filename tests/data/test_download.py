import functools
import gzip
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from endd.data.download import (
    DATASET_SOURCES,
    DatasetSource,
    DownloadError,
    RemoteFile,
    dataset_path,
    download,
)
from endd.data.images import (
    load_cifar10,
    load_mnist,
    load_ood_folder,
    load_tinyimagenet,
    write_fake_dataset,
)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/served on 127.0.0.1 (ephemeral port); yields (folder, base_url)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _tar_gz(source_folder, archive, arcname):
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(source_folder, arcname=arcname)
    return archive


def _only_entries(root):
    return sorted(p.name for p in root.iterdir())


def test_cifar10_archive_is_downloaded_verified_and_unpacked(tmp_path, server):
    served, base_url = server
    fake = write_fake_dataset("cifar10", tmp_path / "fake", num_images=2, seed=5)
    archive = _tar_gz(fake, served / "cifar-10-binary.tar.gz", "cifar-10-batches-bin")
    real = DATASET_SOURCES["cifar10"]
    source = replace(
        real, files=(replace(real.files[0], md5=_md5(archive), size=archive.stat().st_size),)
    )
    root = tmp_path / "data"
    folder = download(source, root, base_url=base_url, progress=True)
    assert folder == root / "cifar-10-batches-bin" == dataset_path("cifar10", root)
    assert _only_entries(root) == ["cifar-10-batches-bin"]  # no staging, no archive left
    expected = load_cifar10(tmp_path / "fake", "train")
    got = load_cifar10(root, "train")
    np.testing.assert_array_equal(got.images, expected.images)
    np.testing.assert_array_equal(got.labels, expected.labels)


def test_checksum_mismatch_is_clear_and_leaves_nothing(tmp_path, server):
    served, base_url = server
    write_fake_dataset("mnist", served / "tmp", num_images=2)
    for file in (served / "tmp" / "mnist").iterdir():
        file.rename(served / file.name)  # tiny files under the real names, real MD5s expected
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"md5 checksum mismatch.*nothing was installed"):
        download("mnist", root, base_url=base_url, progress=False)
    assert _only_entries(root) == []


def test_plain_files_land_in_the_dataset_folder(tmp_path, server):
    served, base_url = server
    write_fake_dataset("mnist", served / "tmp", num_images=3, seed=2)
    files = []
    for file in sorted((served / "tmp" / "mnist").iterdir()):
        file.rename(served / file.name)
        digest = hashlib.sha256((served / file.name).read_bytes()).hexdigest()
        files.append(RemoteFile(("http://unused.invalid/",), file.name, sha256=digest))
    source = DatasetSource("mnist", "mnist", tuple(files))
    download(source, tmp_path / "data", base_url=base_url + "/", progress=False)
    expected = load_mnist(served, "test")  # the served files themselves
    np.testing.assert_array_equal(load_mnist(tmp_path / "data", "test").images, expected.images)


def test_sha256_is_checked_too(tmp_path, server):
    served, base_url = server
    (served / "x.bin").write_bytes(b"payload")
    source = DatasetSource("x", "x", (RemoteFile((), "x.bin", sha256="0" * 64),))
    with pytest.raises(DownloadError, match="sha256 checksum mismatch"):
        download(source, tmp_path / "data", base_url=base_url, progress=False)
    assert _only_entries(tmp_path / "data") == []


def test_size_mismatch_is_reported(tmp_path, server):
    served, base_url = server
    (served / "x.bin").write_bytes(b"payload")
    source = DatasetSource("x", "x", (RemoteFile((), "x.bin", size=8),))
    with pytest.raises(DownloadError, match="gave 7 bytes, expected 8"):
        download(source, tmp_path / "data", base_url=base_url, progress=False)


def test_zip_is_unpacked_into_place(tmp_path, server):
    served, base_url = server
    fake = write_fake_dataset("tinyimagenet", tmp_path / "fake", num_images=3)
    archive = served / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(fake.rglob("*")):
            bundle.write(path, path.relative_to(fake.parent).as_posix())
    real = DATASET_SOURCES["tinyimagenet"]
    source = replace(real, files=(replace(real.files[0], md5=_md5(archive), size=None),))
    download(source, tmp_path / "data", base_url=base_url, progress=False)
    val = load_tinyimagenet(tmp_path / "data", "val")
    np.testing.assert_array_equal(val.labels, load_tinyimagenet(tmp_path / "fake", "val").labels)


def test_archive_without_the_folder_becomes_the_folder(tmp_path, server):
    served, base_url = server
    fake = write_fake_dataset("lsun_resize", tmp_path / "fake", num_images=2)
    archive = _tar_gz(fake / "test", served / "LSUN_resize.tar.gz", "test")  # no LSUN_resize/
    real = DATASET_SOURCES["lsun_resize"]
    source = replace(real, files=(replace(real.files[0], md5=_md5(archive)),))
    download(source, tmp_path / "data", base_url=base_url, progress=False)
    assert (tmp_path / "data" / "LSUN_resize" / "test").is_dir()
    assert len(load_ood_folder("lsun_resize", tmp_path / "data")) == 2


def test_single_gzip_file_is_decompressed(tmp_path, server):
    served, base_url = server
    (served / "notes.txt.gz").write_bytes(gzip.compress(b"hello"))
    source = DatasetSource("n", "n", (RemoteFile((), "notes.txt.gz", extract=True),))
    folder = download(source, tmp_path / "data", base_url=base_url, progress=False)
    assert (folder / "notes.txt").read_bytes() == b"hello"


def test_unsafe_archive_paths_are_refused(tmp_path, server):
    served, base_url = server
    with tarfile.open(served / "evil.tar.gz", "w:gz") as bundle:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        bundle.addfile(info, io.BytesIO(b"bad"))
    source = DatasetSource("e", "e", (RemoteFile((), "evil.tar.gz", extract=True),))
    with pytest.raises(DownloadError, match="unsafe path"):
        download(source, tmp_path / "data", base_url=base_url, progress=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert _only_entries(tmp_path / "data") == []


def test_unreachable_file_names_the_address_and_leaves_nothing(tmp_path, server):
    _, base_url = server
    with pytest.raises(
        DownloadError, match=r"cannot download train_32x32\.mat for svhn: .*HTTP 404"
    ):
        download("svhn", tmp_path / "data", base_url=base_url, progress=False)
    assert _only_entries(tmp_path / "data") == []


def test_mirrors_are_tried_in_order(tmp_path, server):
    served, base_url = server
    (served / "x.bin").write_bytes(b"payload")
    remote = RemoteFile((f"{base_url}/missing.bin", f"{base_url}/x.bin"), "x.bin")
    folder = download(DatasetSource("x", "x", (remote,)), tmp_path / "data", progress=False)
    assert (folder / "x.bin").read_bytes() == b"payload"


def test_existing_folder_is_kept_unless_forced(tmp_path, server):
    served, base_url = server
    (served / "x.bin").write_bytes(b"new")
    source = DatasetSource("x", "x", (RemoteFile((), "x.bin"),))
    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "data" / "x" / "x.bin").write_bytes(b"old")
    download(source, tmp_path / "data", base_url=base_url, progress=False)
    assert (tmp_path / "data" / "x" / "x.bin").read_bytes() == b"old"
    download(source, tmp_path / "data", base_url=base_url, progress=False, force=True)
    assert (tmp_path / "data" / "x" / "x.bin").read_bytes() == b"new"
    assert _only_entries(tmp_path / "data") == ["x"]


def test_registry_is_complete_and_checksummed():
    expected = {"mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn", "tinyimagenet"}
    assert expected <= set(DATASET_SOURCES)
    folders = [source.folder for source in DATASET_SOURCES.values()]
    assert len(set(folders)) == len(folders)
    for source in DATASET_SOURCES.values():
        for remote in source.files:
            assert remote.md5 is not None and len(remote.md5) == 32, remote
            assert all(url.startswith(("http://", "https://")) for url in remote.urls)
    with pytest.raises(ValueError, match="unknown dataset"):
        download("imagenet", "/nonexistent")


def test_cli_download_reports_a_bad_checksum_in_one_line(tmp_path, server, capsys):
    from endd.cli import main

    served, base_url = server
    write_fake_dataset("mnist", served / "tmp", num_images=2)
    for file in (served / "tmp" / "mnist").iterdir():
        file.rename(served / file.name)
    root = tmp_path / "data"
    code = main(["data", "download", "mnist", "--root", str(root), "--base-url", base_url, "-q"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("endd: error:") and "checksum mismatch" in err and "\n" not in err
    assert _only_entries(root) == []
