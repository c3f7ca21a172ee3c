"""Sizes and checksums of artifacts: records, and every way a file can stop matching its record."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest

from endd.errors import DamagedArtifactError, RunDirError
from endd.store import check_file, file_record, integrity
from endd.store.integrity import check_file_any

REBUILD = "delete students/endd and run `endd distill RUN`"


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(range(256)) * 40)
    return path


def test_a_record_is_the_size_and_the_sha256(artifact):
    record = file_record(artifact)
    data = artifact.read_bytes()
    assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert json.loads(json.dumps(record)) == record  # what a JSON sidecar stores
    check_file(artifact, record, rebuild=REBUILD)  # an intact file passes


def test_an_empty_file_has_a_record(tmp_path):
    path = tmp_path / "empty.npy"
    path.write_bytes(b"")
    record = file_record(path)
    assert record == {"bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    check_file(path, record, rebuild=REBUILD)


def _message(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_a_truncated_file_is_named_with_both_sizes_and_the_rebuild_command(artifact):
    record = file_record(artifact)
    artifact.write_bytes(artifact.read_bytes()[:-1])
    with pytest.raises(DamagedArtifactError) as error:
        check_file(artifact, record, rebuild=REBUILD, sidecar="students/endd/model.json")
    assert _message(error) == (
        f"damaged artifact {artifact}: size {record['bytes'] - 1} bytes, "
        f"students/endd/model.json says {record['bytes']}; {REBUILD}"
    )
    assert error.value.path == str(artifact) and error.value.rebuild == REBUILD


def test_an_extended_file_is_a_size_mismatch(artifact):
    record = file_record(artifact)
    with open(artifact, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DamagedArtifactError, match=r"size 10241 bytes, its sidecar says 10240"):
        check_file(artifact, record, rebuild=REBUILD)


@pytest.mark.parametrize("position", [0, 5000, -1])
def test_one_flipped_bit_keeping_the_size_is_a_checksum_mismatch(artifact, position):
    record = file_record(artifact)
    data = bytearray(artifact.read_bytes())
    data[position] ^= 0x01
    artifact.write_bytes(bytes(data))
    assert artifact.stat().st_size == record["bytes"]
    with pytest.raises(DamagedArtifactError) as error:
        check_file(artifact, record, rebuild=REBUILD, sidecar="model.json")
    assert _message(error) == (
        f"damaged artifact {artifact}: contents differ from the checksum in model.json; {REBUILD}"
    )


def test_a_foreign_file_of_the_same_size_is_a_checksum_mismatch(tmp_path, artifact):
    record = file_record(artifact)
    other = tmp_path / "other"
    other.write_bytes(bytes(reversed(range(256))) * 40)
    os.replace(other, artifact)
    with pytest.raises(DamagedArtifactError, match="contents differ from the checksum"):
        check_file(artifact, record, rebuild=REBUILD)


def test_a_missing_file(artifact):
    record = file_record(artifact)
    artifact.unlink()
    with pytest.raises(DamagedArtifactError) as error:
        check_file(artifact, record, rebuild=REBUILD)
    assert _message(error) == f"damaged artifact {artifact}: missing; {REBUILD}"


def test_a_folder_where_the_file_was(artifact):
    record = file_record(artifact)
    artifact.unlink()
    artifact.mkdir()
    with pytest.raises(DamagedArtifactError, match="not a file"):
        check_file(artifact, record, rebuild=REBUILD)


@pytest.mark.parametrize(
    "record",
    [
        None,
        {},
        {"bytes": 10240},
        {"sha256": "0" * 64},
        {"bytes": "10240", "sha256": "0" * 64},
        {"bytes": -1, "sha256": "0" * 64},
        {"bytes": True, "sha256": "0" * 64},
        {"bytes": 10240, "sha256": "abc"},
        [10240, "0" * 64],
    ],
)
def test_a_damaged_record_vouches_for_nothing(artifact, record):
    with pytest.raises(DamagedArtifactError) as error:
        check_file(artifact, record, rebuild=REBUILD, sidecar="model.json")
    assert _message(error) == (
        f"damaged artifact model.json: no valid size and checksum of {artifact.name} in "
        f"model.json; {REBUILD}"
    )


def test_the_error_is_a_run_dir_error_the_cli_prints_as_one_line(artifact, capsys):
    from endd.cli import _one_line

    assert issubclass(DamagedArtifactError, RunDirError)
    record = file_record(artifact)
    artifact.unlink()
    with pytest.raises(RunDirError) as error:
        check_file(artifact, record, rebuild=REBUILD)
    assert _one_line(error.value) == str(error.value)


def test_the_size_is_checked_before_anything_is_read(artifact, monkeypatch):
    record = file_record(artifact)
    artifact.write_bytes(b"short")

    def no_reading(*args, **kwargs):
        raise AssertionError("hashed a file whose size already differs")

    monkeypatch.setattr(integrity, "sha256_of", no_reading)
    with pytest.raises(DamagedArtifactError, match="size 5 bytes"):
        check_file(artifact, record, rebuild=REBUILD)


def test_a_big_file_is_hashed_in_chunks(tmp_path, monkeypatch):
    """Never more than one chunk of the file in memory: every read asks for at most
    CHUNK_BYTES, and the digest equals hashlib's over the whole file."""
    chunk = 1 << 16
    monkeypatch.setattr(integrity, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(integrity.sha256_of, "__kwdefaults__", {"chunk_bytes": chunk})
    path = tmp_path / "big.npy"
    block = os.urandom(chunk)
    with open(path, "wb") as handle:
        for i in range(40):  # 40 chunks and a partial one
            handle.write(block[i:] + block[:i])
        handle.write(b"tail")
    expected = hashlib.sha256(path.read_bytes()).hexdigest()

    reads: list[int] = []
    real_open = open

    class Counting:
        def __init__(self, handle):
            self.handle = handle

        def readinto(self, buffer):
            reads.append(len(buffer))
            return self.handle.readinto(buffer)

        def read(self, size=-1):
            reads.append(size)
            return self.handle.read(size)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(
        integrity, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False
    )
    record = file_record(path)
    assert record == {"bytes": 40 * chunk + 4, "sha256": expected}
    assert len(reads) >= 41
    assert all(0 < size <= chunk for size in reads)


def test_an_unchanged_file_is_not_hashed_twice_but_a_changed_one_is(artifact, monkeypatch):
    record = file_record(artifact)
    calls: list[str] = []
    real = integrity.sha256_of
    monkeypatch.setattr(integrity, "sha256_of", lambda p, **k: calls.append(str(p)) or real(p))
    check_file(artifact, record, rebuild=REBUILD)
    assert calls == []  # file_record hashed it; nothing changed since
    data = bytearray(artifact.read_bytes())
    data[7] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(DamagedArtifactError, match="contents differ"):
        check_file(artifact, record, rebuild=REBUILD)
    assert calls == [str(artifact)]


def test_any_of_several_records_may_match(tmp_path, artifact):
    old = file_record(artifact)
    artifact.write_bytes(b"new contents")
    new = file_record(artifact)
    assert check_file_any(artifact, [new, old], rebuild=REBUILD) == new
    artifact.write_bytes(bytes(range(256)) * 40)
    assert check_file_any(artifact, [new, old], rebuild=REBUILD) == old
    artifact.write_bytes(b"new contentz")
    with pytest.raises(DamagedArtifactError, match="contents differ"):
        check_file_any(artifact, [new, old], rebuild=REBUILD)
    artifact.write_bytes(b"x")
    with pytest.raises(DamagedArtifactError, match=r"size 1 bytes, its sidecar says 12"):
        check_file_any(artifact, [new, old], rebuild=REBUILD)


def test_the_error_survives_a_worker_process(artifact):
    """Students train in worker processes; their errors are pickled back to the parent."""
    record = file_record(artifact)
    artifact.unlink()
    with pytest.raises(DamagedArtifactError) as error:
        check_file(artifact, record, rebuild=REBUILD)
    copy = pickle.loads(pickle.dumps(error.value))
    assert type(copy) is DamagedArtifactError
    assert str(copy) == str(error.value) and copy.path == str(artifact)
    assert copy.rebuild == REBUILD and copy.problem == "missing"


def test_an_array_written_in_chunks_is_recorded_without_reading_it_back(tmp_path, monkeypatch):
    """write_array_chunks hashes as it writes: file_record then needs no second pass, and its
    digest is the file's. A shard written without a checksum is hashed when recorded."""
    import numpy as np

    from endd.store.artifacts import write_array_chunks

    calls: list[str] = []
    real = integrity.sha256_of
    monkeypatch.setattr(integrity, "sha256_of", lambda p, **k: calls.append(str(p)) or real(p))
    chunks = [np.arange(12, dtype=np.float32).reshape(4, 3), np.ones((3, 3), dtype=np.float64)]
    path = tmp_path / "logits.npy"
    write_array_chunks(path, (7, 3), np.float16, iter(chunks))
    record = file_record(path)
    assert calls == []
    data = path.read_bytes()
    assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    np.testing.assert_array_equal(np.load(path), np.concatenate(chunks).astype(np.float16))

    shard = tmp_path / "shard.npy"
    write_array_chunks(shard, (4, 3), np.float32, iter(chunks[:1]), checksum=False)
    assert file_record(shard)["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert calls == [str(shard)]
