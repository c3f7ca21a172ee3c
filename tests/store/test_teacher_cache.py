"""TeacherRows: the teacher cache read a batch of rows at a time, across the train and aux files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endd.store import TeacherRows


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(37, 4, 3)).astype(np.float16)
    aux = rng.normal(size=(11, 4, 3)).astype(np.float16)
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "aux.npy", aux)
    whole = torch.from_numpy(np.concatenate([train, aux])).float()
    return [tmp_path / "train.npy", tmp_path / "aux.npy"], whole


@pytest.mark.parametrize("hold_below", [0, 1 << 20], ids=["from disk", "held"])
def test_rows_equal_the_whole_array_held_in_memory(files, hold_below):
    paths, whole = files
    rows = TeacherRows(paths, hold_below=hold_below)
    assert (rows.held is None) == (hold_below == 0)
    assert rows.shape == whole.shape and len(rows) == 48 and rows.dtype == torch.float32
    assert torch.equal(rows[0:48], whole)
    assert torch.equal(rows[30:45], whole[30:45])  # across the two files
    assert torch.equal(rows[40:40], whole[40:40])
    assert torch.equal(rows[::5], whole[::5])
    assert torch.equal(rows[-1], whole[-1]) and torch.equal(rows[3], whole[3])
    index = torch.tensor([47, 0, 36, 37, 5, 5, 20])
    assert torch.equal(rows[index], whole[index])
    assert torch.equal(rows[index.numpy()], whole[index])
    with pytest.raises(IndexError):
        rows[torch.tensor([48])]


def test_files_must_agree_on_members_and_classes(tmp_path, files):
    paths, _ = files
    np.save(tmp_path / "other.npy", np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match="but for their rows"):
        TeacherRows([paths[0], tmp_path / "other.npy"])


def test_the_statistic_table_from_rows_on_disk_equals_the_one_from_memory(files):
    from endd.losses import teacher_statistic_table

    paths, whole = files
    from_disk = teacher_statistic_table(
        TeacherRows(paths, hold_below=0), [1.0, 2.5], smoothing=1e-4
    )
    in_memory = teacher_statistic_table(whole, [1.0, 2.5], smoothing=1e-4)
    for level, table in in_memory.items():
        assert torch.equal(from_disk[level], table)


def test_a_damaged_cache_file_is_refused_before_it_is_read(tmp_path):
    import json

    from endd.errors import DamagedArtifactError
    from endd.store import RunDir, file_record

    run = RunDir(tmp_path)
    run.teacher.mkdir()
    path = run.teacher / "train.npy"
    np.save(path, np.arange(48, dtype=np.float32).reshape(8, 2, 3))
    done = {"files": {"train.npy": file_record(path)}}
    (run.teacher / "done.json").write_text(json.dumps(done))
    assert run.teacher_rows("train").shape == (8, 2, 3)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedArtifactError, match="contents differ") as error:
        run.teacher_rows("train")
    assert str(path) in str(error.value) and "endd ensemble" in str(error.value)
    (run.teacher / "done.json").write_text("{not json")
    with pytest.raises(DamagedArtifactError, match=r"done\.json: not a JSON object"):
        run.teacher_rows("train")
