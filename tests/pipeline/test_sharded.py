"""Arrays written in shards by every rank of a process group (endd.pipeline.sharded), in two
gloo processes on the CPU: the assembled file equals one process's, byte for byte."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from endd.pipeline.sharded import shard_rows, write_sharded

SHAPE = (1003, 3, 5)


def _values(start: int, stop: int, chunk: int = 64):
    """Rows start..stop−1 of a fixed array, in chunks (what a rank computes)."""
    whole = np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE) / 7.0
    for first in range(start, stop, chunk):
        yield torch.from_numpy(whole[first : min(stop, first + chunk)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        path = Path(folder) / "train.npy"
        records = write_sharded(path, SHAPE, np.float32, _values, reuse=True, quantum=64)
        if rank == 0:
            (Path(folder) / "records.json").write_text(json.dumps([r.as_json() for r in records]))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_two(folder: Path) -> list[dict]:
    mp.start_processes(
        _rank, args=(2, _free_port(), str(folder)), nprocs=2, join=True, start_method="spawn"
    )
    return json.loads((folder / "records.json").read_text())


def test_slices_cover_every_row_once_in_whole_batches():
    for rows in (0, 1, 63, 64, 65, 1003, 4096):
        for world in (1, 2, 3, 8):
            for quantum in (1, 64, 256):
                slices = [shard_rows(rows, r, world, quantum) for r in range(world)]
                assert slices[0][0] == 0 and slices[-1][1] == rows
                assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
                assert all(start % quantum == 0 or start == rows for start, _ in slices)
    with pytest.raises(ValueError):
        shard_rows(10, 2, 2)


def test_one_process_writes_the_file_directly(tmp_path):
    stale = tmp_path / ".shards" / "a.0-512.npy"  # left by a killed 2-rank attempt
    stale.parent.mkdir()
    np.save(stale, np.zeros((512, 3, 5), np.float32))
    records = write_sharded(tmp_path / "a.npy", SHAPE, np.float32, _values)
    assert [r.as_json()["rows"] for r in records] == [[0, SHAPE[0]]]
    expected = np.concatenate([c.numpy() for c in _values(0, SHAPE[0])]).astype(np.float32)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), expected)
    assert not (tmp_path / ".shards").exists()


@pytest.mark.slow
def test_two_ranks_write_shards_that_assemble_to_one_processs_file(tmp_path):
    single = tmp_path / "single"
    write_sharded(single / "train.npy", SHAPE, np.float32, _values)
    two = tmp_path / "two"
    records = _run_two(two)
    assert [r["rank"] for r in records] == [0, 1]
    assert [r["rows"] for r in records] == [[0, 512], [512, SHAPE[0]]]
    assert not any(r["reused"] for r in records)
    assert (two / "train.npy").read_bytes() == (single / "train.npy").read_bytes()
    assert not list((two).rglob("*.tmp")) and not (two / ".shards").exists()

    # A killed attempt that finished rank 1's shard: the next attempt keeps it.
    again = tmp_path / "again"
    shard = again / ".shards" / "train.512-1003.npy"
    shard.parent.mkdir(parents=True)
    part = np.concatenate([c.numpy() for c in _values(512, SHAPE[0])]).astype(np.float32)
    np.save(shard, part)
    stale = again / ".shards" / "train.0-334.npy"  # from an attempt with three ranks
    np.save(stale, np.zeros((334, 3, 5), np.float32))
    records = _run_two(again)
    assert [r["reused"] for r in records] == [False, True]
    assert (again / "train.npy").read_bytes() == (single / "train.npy").read_bytes()
    assert not (again / ".shards").exists()
