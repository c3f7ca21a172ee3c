"""Under torchrun (every rank starts at once) each node's local rank 0 prepares the image cache
before the other ranks read it; a failure there stops every rank with one line, no hang."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from endd.data.images import write_idx
from endd.errors import DataError
from endd.pipeline.distributed import local_rank_first

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "spiral.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, folder: str, fail: bool) -> None:
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    marker, outcome = Path(folder) / "prepared", Path(folder) / f"rank{rank}.txt"

    def work() -> str:
        if rank == 0:
            time.sleep(0.5)  # a slow first rank: the other must wait for it
            if fail:
                raise DataError("the data are bad")
            marker.write_text("done")
        return f"ran, prepared before: {marker.exists()}"

    try:
        outcome.write_text(local_rank_first(work, "load the data"))
    except Exception as error:
        outcome.write_text(f"{type(error).__name__}: {error}")
    finally:
        dist.destroy_process_group()


def _outcomes(folder: Path, fail: bool) -> list[str]:
    args = (_free_port(), str(folder), fail)
    mp.start_processes(_rank, args=args, nprocs=2, join=True, start_method="spawn")
    return [(folder / f"rank{r}.txt").read_text() for r in range(2)]


@pytest.mark.slow
def test_local_rank_zero_first_then_the_others(tmp_path):
    assert _outcomes(tmp_path, fail=False) == [
        "ran, prepared before: True",  # its own marker: it ran first and alone
        "ran, prepared before: True",
    ]


@pytest.mark.slow
def test_a_failure_on_local_rank_zero_stops_every_rank(tmp_path):
    first, other = _outcomes(tmp_path, fail=True)
    assert first == "DataError: the data are bad"
    assert other == (
        "EnddError: stopped: another rank could not load the data (its message says why)"
    )


def _write_mnist_gz(root: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 80)):
        write_idx(
            root / "mnist" / f"{prefix}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(
            root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz",
            (np.arange(n) % 10).astype(np.uint8),
        )


@pytest.mark.slow
def test_torchrun_prepares_the_image_cache_once(tmp_path, tiny_spiral):
    """Two ranks started at once by torchrun on gzip'd IDX files (prepared into the image cache):
    each cache entry is prepared by one rank, and the run finishes."""
    _write_mnist_gz(tmp_path)
    cache, out = tmp_path / "cache", tmp_path / "run"
    overrides = [
        *tiny_spiral,
        "data.name=mnist",
        f"data.path={tmp_path}",
        f"data.cache={cache}",
        "data.ood=[gaussian_noise]",
        "data.ood_size=40",
        "data.aux=null",
        "model.hidden=[16]",
        "students.methods=[endd]",
        "trainer.devices=2",
        "trainer.eval_batch_size=32",
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "endd.cli", "run", str(CONFIG), "--out", str(out)]
    command += [f"--set={o}" for o in overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    # sets this small are held in memory: every rank's process sends them to the disk cache
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import endd.data.images.cache as cache\ncache.IN_MEMORY_BYTES = 0\n"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    prepared = [line for line in result.stderr.splitlines() if "preparing" in line]
    entries = list((cache / "images").glob("*.json"))
    assert len(entries) == 3  # train, test, the noise set
    assert len(prepared) == len(entries), prepared
    assert (out / "metrics.json").is_file()
