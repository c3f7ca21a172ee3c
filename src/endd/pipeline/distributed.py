"""Several processes on one run: which one this is, and the barriers between stages.

With ``trainer.devices × trainer.num_nodes`` above 1 every process runs the same stage loop
(:func:`endd.pipeline.run.run_stages`); the training stages train together under Lightning DDP,
everything else (config.yaml, markers, saved models, teacher cache, evaluation, report) is
written by global rank 0 alone while the others wait at the stage's closing barrier. See
docs/distributed.md.

The processes come from one of three launchers:

- ``endd run`` itself: once rank 0 knows that a stage runs on every rank (training, the teacher
  cache, evaluation) it starts local ranks 1.. with Lightning's subprocess launcher, which
  re-executes the command (:func:`launch_local_ranks`), before it writes anything;
- ``torchrun``: every process starts at once (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``);
- SLURM ``srun``: one task per device (``SLURM_PROCID``, ``SLURM_NTASKS``).

Every process other than the launching one initialises the process group when its loop starts
(:func:`join_process_group`), the launching one right after it has started the others, so every
rank agrees from the first stage on; Lightning's DDP strategy then finds the group initialised
and uses it (and, ``LOCAL_RANK`` being set, launches nothing itself).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from endd.engine.trainer import DDP_TIMEOUT, lightning_quiet, process_count
from endd.errors import EnddError

log = logging.getLogger("endd")
T = TypeVar("T")
#: The launchers :func:`launch_local_ranks` used in this process (their processes).
_LAUNCHED: list[Any] = []


def is_distributed(trainer: dict[str, Any]) -> bool:
    return process_count(trainer) > 1


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def global_rank(trainer: dict[str, Any]) -> int:
    """This process's global rank: 0 for a single-process config (whatever the environment
    says), else the process group's rank, else what the launcher's environment says (torchrun's
    ``RANK``, SLURM's ``SLURM_PROCID``, Lightning's ``NODE_RANK``/``LOCAL_RANK``), else 0: the
    process that launches the others."""
    if not is_distributed(trainer):
        return 0
    if _initialised():
        return dist.get_rank()
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if _slurm_launched():
        return int(os.environ["SLURM_PROCID"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return node * (process_count(trainer) // int(trainer.get("num_nodes", 1))) + local


def is_rank_zero(trainer: dict[str, Any]) -> bool:
    return global_rank(trainer) == 0


def barrier(trainer: dict[str, Any]) -> None:
    """Wait for every rank (once the process group exists; before, rank 0 is alone)."""
    if is_distributed(trainer) and _initialised():
        dist.barrier()


def _slurm_launched() -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return "SLURM_PROCID" in os.environ and SLURMEnvironment.detect()


def outside_launcher() -> bool:
    """Whether torchrun or SLURM started this process (every rank at once), not ``endd``."""
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    return TorchElasticEnvironment.detect() or _slurm_launched()


def _backend(trainer: dict[str, Any]) -> str:
    on_gpu = trainer.get("accelerator", "cpu") in ("gpu", "cuda", "auto")
    return "nccl" if on_gpu and torch.cuda.is_available() else "gloo"


def join_process_group(trainer: dict[str, Any]) -> bool:
    """Initialise the process group now when an outside launcher started this process (torchrun,
    SLURM) or the launching ``endd`` process did (a local rank above 0,
    :func:`launch_local_ranks`). The launching process itself joins when it launches.

    Returns whether this process joined: the ranks then meet at a barrier before the first
    stage."""
    if not is_distributed(trainer) or _initialised():
        return False
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
    from lightning.fabric.utilities.distributed import _init_dist_connection

    backend = _backend(trainer)
    if TorchElasticEnvironment.detect():
        environment: Any = TorchElasticEnvironment()
    elif _slurm_launched():
        environment = SLURMEnvironment()
    elif int(os.environ.get("LOCAL_RANK", 0)) > 0 and "MASTER_ADDR" in os.environ:
        environment = None  # a process that Lightning's subprocess launcher started
    else:
        return False
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if environment is None:
        _init_from_launcher_environment(trainer, backend)
    else:
        with lightning_quiet():  # no start-up banner, as inside fit
            _init_dist_connection(environment, backend, timeout=DDP_TIMEOUT)
    log.debug("rank %d of %d joined the process group", dist.get_rank(), dist.get_world_size())
    return True


def launch_local_ranks(trainer: dict[str, Any]) -> bool:
    """In the process ``endd`` was started as, with several devices and no outside launcher:
    start local ranks 1..N−1 now (Lightning's subprocess launcher re-executes this command with
    ``LOCAL_RANK``, ``MASTER_ADDR``, … set, as it would at the first ``fit``) and join the
    process group with them. Returns whether it did; False for a single process, under
    torchrun or SLURM, and in a process that was itself launched."""
    if not is_distributed(trainer) or _initialised() or "LOCAL_RANK" in os.environ:
        return False
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
    from lightning.fabric.strategies.launchers.subprocess_script import (
        _SubprocessScriptLauncher,
    )

    # inside a SLURM job but not started by srun: left to Lightning, as before
    if outside_launcher() or SLURMEnvironment.detect():
        return False
    nodes = int(trainer.get("num_nodes", 1))
    launcher = _SubprocessScriptLauncher(
        LightningEnvironment(), num_processes=process_count(trainer) // nodes, num_nodes=nodes
    )
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    _LAUNCHED.append(launcher)
    launcher.launch(lambda: None)  # sets MASTER_ADDR, MASTER_PORT, NODE_RANK, LOCAL_RANK=0, …
    # ... and shares the cores between the ranks (OMP_NUM_THREADS): left to each fit, as on the
    # ranks it started, so every rank trains with the same number of threads
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    _init_from_launcher_environment(trainer, _backend(trainer))
    log.debug("started %d local ranks", len(launcher.procs))
    return True


def stop_launched_ranks(grace: float = 3.0) -> None:
    """Stop the ranks :func:`launch_local_ranks` started that are still running: for the
    launching process when it stops early (an error, Ctrl-C, SIGTERM), so that no rank is left
    waiting at a collective. SIGTERM first (a rank unwinds as on Ctrl-C), SIGKILL for any still
    running ``grace`` seconds later: a rank blocked inside a collective (DDP's gradient
    all-reduce) runs no signal handler until it returns, which it may never do. The ranks it
    started write nothing but their teacher and prediction shards, which a rerun redoes."""
    processes = [p for launcher in _LAUNCHED for p in launcher.procs if p.poll() is None]
    if not processes:
        return
    for process in processes:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _init_from_launcher_environment(trainer: dict[str, Any], backend: str) -> None:
    """Join the group whose address, world size and ranks Lightning's launcher put in the
    environment (``MASTER_ADDR``/``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``/``LOCAL_RANK``)."""
    dist.init_process_group(
        backend,
        rank=global_rank(trainer),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=DDP_TIMEOUT,
    )


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``: torchrun, Lightning's launcher;
    ``SLURM_LOCALID``: srun), 0 without a launcher."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def local_rank_first(work: Callable[[], T], what: str) -> T:
    """``work()`` on each node's local rank 0 first, then, once it has succeeded on all of them,
    on the other ranks: for work whose first run leaves something behind for the others (the
    image cache ``data.cache``: one decode per node, not one per rank, when it is node-local;
    one per node at most, atomic writes, when it is shared). Every rank must call it. Without a
    process group (one process, or the launching ``endd`` before it starts the others, which
    therefore find the work done): ``work()``.

    If it fails on a local rank 0, that rank raises its error and every other rank a one-line
    :class:`~endd.errors.EnddError` pointing at it (instead of waiting at a barrier)."""
    if not _initialised():
        return work()
    first = local_rank() == 0
    result: Any = None
    error: Exception | None = None
    if first:
        try:
            result = work()
        except Exception as failure:  # re-raised below, once every rank knows
            error = failure
    succeeded = torch.tensor([int(error is None)], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        succeeded = succeeded.cuda()
    dist.all_reduce(succeeded, op=dist.ReduceOp.MIN)
    if error is not None:
        raise error
    if not int(succeeded.item()):
        raise EnddError(f"stopped: another rank could not {what} (its message says why)")
    return result if first else work()
