"""Several processes on one run: which one this is, and the barriers between stages.

With ``trainer.devices × trainer.num_nodes`` above 1 every process runs the same stage loop
(:func:`endd.pipeline.run.run_stages`); the training stages train together under Lightning DDP,
everything else (config.yaml, markers, saved models, teacher cache, evaluation, report) is
written by global rank 0 alone while the others wait at the stage's closing barrier. See
docs/distributed.md.

The processes come from one of three launchers:

- ``endd run`` itself: Lightning's subprocess launcher re-executes the command for local ranks
  1.. when rank 0 reaches its first training ``fit``; until then rank 0 is alone (no process
  group), and the others start with every stage before that fit already done;
- ``torchrun``: every process starts at once (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``);
- SLURM ``srun``: one task per device (``SLURM_PROCID``, ``SLURM_NTASKS``).

In the last two cases, and in a process that Lightning's launcher started, the process group is
initialised when the loop starts (:func:`join_process_group`), so every rank agrees from the first
stage on; Lightning's DDP strategy then finds it initialised and uses it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist

from endd.engine.trainer import DDP_TIMEOUT, lightning_quiet, process_count

log = logging.getLogger("endd")


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


def _backend(trainer: dict[str, Any]) -> str:
    on_gpu = trainer.get("accelerator", "cpu") in ("gpu", "cuda", "auto")
    return "nccl" if on_gpu and torch.cuda.is_available() else "gloo"


def join_process_group(trainer: dict[str, Any]) -> bool:
    """Initialise the process group now when an outside launcher started this process (torchrun,
    SLURM) or Lightning's launcher did (a local rank above 0). The process that launches the
    others (Lightning's subprocess launcher, local rank 0) waits for its first ``fit``: its
    ranks do not exist before.

    Returns whether every rank joined at the start of its loop (torchrun, SLURM): then the
    ranks may meet at a barrier before the first stage. A rank that Lightning's launcher
    started joins while rank 0 is already inside its first ``fit``, past that point."""
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
        dist.init_process_group(
            backend,
            rank=global_rank(trainer),
            world_size=int(os.environ["WORLD_SIZE"]),
            timeout=DDP_TIMEOUT,
        )
    else:
        with lightning_quiet():  # no start-up banner, as inside fit
            _init_dist_connection(environment, backend, timeout=DDP_TIMEOUT)
    log.debug("rank %d of %d joined the process group", dist.get_rank(), dist.get_world_size())
    return environment is not None
