"""The Lightning Trainer as endd uses it: per-epoch atomic checkpoints, resume, progress bars.

Nothing here changes process-wide state for longer than a ``fit`` call: Lightning's start-up
banners and known-harmless warnings are silenced inside the call and restored after it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.data import DataLoader

from endd.engine.batches import EpochSeededBatchSampler
from endd.errors import DamagedArtifactError
from endd.models.allocator import release_freed_memory
from endd.store import artifacts
from endd.store.integrity import check_file_any, file_record

CHECKPOINT_NAME = "last.ckpt"
#: The checkpoint's sidecar: its size and SHA-256, and those of the checkpoint before it.
CHECKPOINT_SIDECAR = CHECKPOINT_NAME + ".json"
#: How long a rank of a multi-process run waits at a collective (a stage-end barrier while
#: global rank 0 caches the teacher or evaluates) before failing; Lightning's default is 30 min.
DDP_TIMEOUT = timedelta(hours=2)

log = logging.getLogger("endd")


class AtomicEpochCheckpoint(Callback):
    """Save the full training state at every epoch end: to a temporary file, then rename.

    A run killed at any moment leaves either the previous checkpoint or the new one, never a torn
    file. Lightning's own ModelCheckpoint writes in place.

    Beside the checkpoint, ``last.ckpt.json`` holds its size and SHA-256 (``record``) and those
    of the checkpoint it replaces (``previous``)::

        {"checkpoint": "last.ckpt", "epoch": 3, "record": {"bytes": …, "sha256": …},
         "previous": {"bytes": …, "sha256": …} | null}

    The order is: the new checkpoint to ``last.ckpt.tmp``; the sidecar (atomically), naming the
    temporary file's record as ``record`` and the current ``last.ckpt``'s as ``previous``; then
    the rename. A run killed between the two renames leaves the old checkpoint with the new
    sidecar: the old one is its ``previous``, so it is accepted (:func:`verify_checkpoint`).
    A ``last.ckpt`` that matches neither record is damaged or foreign; one without a sidecar was
    written by an older endd and is resumed unchecked.

    Args:
        record: the record of the ``last.ckpt`` already there (the one a resumed fit starts
            from, as :func:`verify_checkpoint` returned it), or None.
    """

    def __init__(self, directory: Path, record: dict[str, Any] | None = None) -> None:
        self.path = Path(directory) / CHECKPOINT_NAME
        self.sidecar = Path(directory) / CHECKPOINT_SIDECAR
        self.record = record

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            _sum_epoch_loss(trainer, pl_module)
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".ckpt.tmp")
        # Every rank takes part (the checkpoint is gathered collectively); global rank 0 alone
        # writes the file and renames it, and every rank reads it when a killed run resumes.
        try:
            trainer.save_checkpoint(temporary)  # straight there: see DirectCheckpointIO
        except OSError as error:  # a full disk: say which file (torch.save's error names none)
            detail = f"{error.strerror or error} (writing a checkpoint)"
            raise OSError(error.errno, detail, str(self.path)) from error
        if trainer.is_global_zero:
            record = file_record(temporary)
            sidecar = {
                "checkpoint": CHECKPOINT_NAME,
                "epoch": trainer.current_epoch + 1,
                "record": record,
                "previous": self.record,
            }
            artifacts.write_json(self.sidecar, sidecar)
            os.replace(temporary, self.path)
            self.record = record

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, error) -> None:
        """A fit stopped by Ctrl-C or an error leaves no temporary checkpoint behind."""
        if trainer.is_global_zero:
            self.path.with_suffix(".ckpt.tmp").unlink(missing_ok=True)


class DirectCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, minus its staging: ``TorchCheckpointIO`` writes through an
    fsspec transaction that stages the file in the temporary folder (``TMPDIR``) and then moves
    it, so a checkpoint needed room in ``/tmp`` (a small ``/tmp`` failed training although the
    run directory had space) and a SIGKILL left a checkpoint-sized ``/tmp/tmpXXXXXXXX``. Here the
    checkpoint is written straight to the path :class:`AtomicEpochCheckpoint` gives it, a
    temporary name in the run directory that it then renames into place. Loading is
    Lightning's, with ``weights_only=True``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            torch.save(checkpoint, handle)


def checkpoint_rebuild_hint(checkpoint_dir: Path) -> str:
    """What to do about a damaged checkpoint in ``checkpoint_dir``: delete the folder (training
    restarts from its first epoch) and run the model's stage again."""
    from endd.store.models import stage_command

    command = stage_command(Path(checkpoint_dir).parent)
    rerun = f"run `{command}`" if command else "rerun the same command"
    return f"delete {checkpoint_dir} and {rerun} (training restarts from epoch 1)"


def check_checkpoints(checkpoint_dir: Path, *, rebuild: str | None = None) -> None:
    """Check the checkpoint a fit into ``checkpoint_dir`` would resume from, if there is one
    (:func:`verify_checkpoint`): a stage's check calls this before anything is written."""
    resume = Path(checkpoint_dir) / CHECKPOINT_NAME
    if resume.is_file():
        verify_checkpoint(resume, rebuild=rebuild)


def verify_checkpoint(path: Path, *, rebuild: str | None = None) -> dict[str, Any]:
    """Check the checkpoint at ``path`` against its sidecar (see
    :class:`AtomicEpochCheckpoint`) before a fit resumes from it: raises
    :class:`~endd.errors.DamagedArtifactError` (one line: the file, what is wrong, ``rebuild``)
    unless it matches the sidecar's ``record`` or ``previous``. Returns the matching record.

    A checkpoint without a sidecar was written by an older endd: it is resumed unchecked, and
    its record as it is now is returned (the next sidecar names it as ``previous``)."""
    path = Path(path)
    rebuild = rebuild or checkpoint_rebuild_hint(path.parent)
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        log.debug("%s has no sidecar (written by an older endd): resumed unchecked", path)
        return file_record(path)
    try:
        content = artifacts.read_json(sidecar)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DamagedArtifactError(sidecar, "not valid JSON", rebuild) from None
    records = [content.get("record")] if isinstance(content, dict) else [None]
    if isinstance(content, dict) and content.get("previous") is not None:
        records.append(content["previous"])
    return check_file_any(path, records, rebuild=rebuild, sidecar=sidecar)


def _sum_epoch_loss(trainer: L.Trainer, module: L.LightningModule) -> None:
    """Under DDP each rank saw its slice of every batch: add up the epoch's loss sums and row
    counts over the ranks before the epoch is closed (the checkpoint closes it), so the recorded
    epoch loss is the mean over all rows, as in one process."""
    if not hasattr(module, "_loss_sum"):
        return
    totals = torch.tensor(
        [module._loss_sum, module._loss_count], dtype=torch.float64, device=module.device
    )
    totals = trainer.strategy.reduce(totals, reduce_op="sum")
    module._loss_sum, module._loss_count = float(totals[0]), int(totals[1])


class ReleaseFreedMemory(Callback):
    """Hand the heap's free pages back to the kernel every ``every`` training steps, but at most
    once per ``seconds``, and at each epoch's end
    (:func:`endd.models.allocator.release_freed_memory`; a no-op off glibc).

    Without it a long epoch's peak resident memory grows with the number of steps: glibc keeps
    the freed batch buffers (all of them under the CLI's
    :func:`~endd.models.allocator.keep_freed_memory`) in a heap that fragments. With it the
    growth is bounded by one interval's. Each release costs the page faults of the memory the
    next step uses again (3-4 % of a 1.7 ms batched-MLP step when released every 32 steps;
    ``benchmarks/bench_ensemble_training.py --release-seconds 0``): the two bounds keep that
    small for fast steps (the time) and for slow steps of large batched ensembles (the count).
    """

    def __init__(self, every: int = 32, seconds: float = 1.0) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self.every, self.seconds = every, seconds
        self._steps, self._last = 0, time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self._steps += 1
        if self._steps >= self.every and time.monotonic() - self._last >= self.seconds:
            self._release()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._release()

    def _release(self) -> None:
        release_freed_memory()
        self._steps, self._last = 0, time.monotonic()


class _ShardBatches(Callback):
    """Under DDP, give each rank its slice of every batch (see
    :meth:`endd.engine.batches.EpochSeededBatchSampler.shard`). Set when the ranks are known:
    the process that launches the others learns its world only inside ``fit``."""

    def __init__(self, loader: DataLoader) -> None:
        self.sampler = getattr(loader, "batch_sampler", None)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(self.sampler, EpochSeededBatchSampler):
            raise TypeError(
                "training on several devices needs a loader from endd.engine.batch_loader"
            )
        self.sampler.shard(trainer.global_rank, trainer.world_size)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(self.sampler, EpochSeededBatchSampler):
            self.sampler.shard(0, 1)


def process_count(trainer_config: dict[str, Any]) -> int:
    """How many processes a ``trainer`` config section asks for: devices × num_nodes
    (``devices: auto`` counts the CUDA devices when the accelerator may take them, else 1)."""
    devices = trainer_config.get("devices", 1)
    if devices == "auto":
        on_gpu = trainer_config.get("accelerator", "cpu") in ("gpu", "cuda", "auto")
        devices = torch.cuda.device_count() if on_gpu and torch.cuda.is_available() else 1
    return max(1, int(devices)) * int(trainer_config.get("num_nodes", 1))


def _ddp_strategy(trainer_config: dict[str, Any]) -> dict[str, Any]:
    """Trainer arguments for several processes: DDP (gloo on the CPU), the batches sharded by
    endd's own sampler (Lightning's distributed sampler would replace it)."""
    from lightning.pytorch.strategies import DDPStrategy

    on_cpu = trainer_config.get("accelerator", "cpu") == "cpu"
    return dict(
        strategy=DDPStrategy(process_group_backend="gloo" if on_cpu else None, timeout=DDP_TIMEOUT),
        num_nodes=int(trainer_config.get("num_nodes", 1)),
        use_distributed_sampler=False,
    )


_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
_HARMLESS_WARNINGS = (
    ".*does not have many workers.*",  # our batches are whole tensors: no workers needed
    ".*LeafSpec.*",
    ".*`isinstance.*treespec.*",
    ".*smaller than the logging interval.*",  # endd logs per epoch, not per step
)


@contextmanager
def lightning_quiet() -> Iterator[None]:
    """Inside: no Lightning start-up banners (GPU available, model summary, tips) and none of
    the warnings known not to apply (few DataLoader workers: our batches are whole tensors).
    Loggers and warning filters are restored on exit."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for pattern in _HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def fit(
    module: L.LightningModule,
    loader: DataLoader,
    *,
    epochs: int,
    checkpoint_dir: Path,
    trainer_config: dict[str, Any],
    gradient_clip: float | None = None,
    progress: bool = False,
    description: str = "",
    logger: Logger | None = None,
    rebuild: str | None = None,
) -> None:
    """Train ``module`` for ``epochs``, resuming from ``checkpoint_dir/last.ckpt`` if present.

    Checkpoints are loaded with ``weights_only=True``: nothing in them can execute code. Before
    resuming, the checkpoint is checked against its sidecar (:func:`verify_checkpoint`): a
    damaged or foreign one raises :class:`~endd.errors.DamagedArtifactError` before the Trainer
    is built, so nothing is written.

    Args:
        progress: show a progress bar (callers pass False when stderr is not a terminal: a bar
            redrawn into a log file is thousands of lines of noise).
        logger: a Lightning logger for the per-epoch values the module logs (loss,
            temperature); see :func:`make_logger`.
        rebuild: what the message of a damaged checkpoint tells the user to do (default:
            :func:`checkpoint_rebuild_hint`).
    """
    checkpoint_dir = Path(checkpoint_dir)
    resume = checkpoint_dir / CHECKPOINT_NAME
    # Every rank checks the checkpoint it will read (the same file: the same verdict).
    record = verify_checkpoint(resume, rebuild=rebuild) if resume.is_file() else None
    callbacks: list[Callback] = [
        AtomicEpochCheckpoint(checkpoint_dir, record),
        ReleaseFreedMemory(),
    ]
    distributed: dict[str, Any] = {}
    if process_count(trainer_config) > 1:
        distributed = _ddp_strategy(trainer_config)
        callbacks.append(_ShardBatches(loader))
    if progress:
        callbacks.append(_DescribedProgressBar(description))
    if progress or logger is not None:
        features: dict[str, Any] = dict(
            logger=logger if logger is not None else False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
        )
    else:
        # Without a bar nothing needs Lightning's logging machinery: barebones mode skips it
        # and cuts the per-step overhead of small models (measured 3.7 → 2.1 ms/step).
        features = dict(barebones=True)
    with lightning_quiet():
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator=trainer_config.get("accelerator", "cpu"),
            devices=trainer_config.get("devices", 1),
            precision=trainer_config.get("precision", "32-true"),
            gradient_clip_val=gradient_clip,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=callbacks,
            default_root_dir=str(checkpoint_dir),
            plugins=[DirectCheckpointIO()],
            **distributed,
            **features,
        )
        _keep_signal_handlers(trainer)
        trainer.fit(
            module,
            train_dataloaders=loader,
            ckpt_path=str(resume) if resume.is_file() else None,
            weights_only=True,
        )


def _keep_signal_handlers(trainer: L.Trainer) -> None:
    """Keep the process's own SIGTERM handler during the fit (``endd``'s CLI unwinds on SIGTERM
    as on Ctrl-C) instead of Lightning's, which broadcasts from rank 0 inside the signal handler
    and deadlocks when the ranks are at different collectives (seen here: rank 0 at a barrier,
    rank 1 in the handler's broadcast, both for good, when the whole process group got
    SIGTERM). Lightning's other handlers (SLURM's requeue signal) stay. Private API: where it is
    missing, Lightning's handlers stay as they are."""
    connector = getattr(trainer, "_signal_connector", None)
    register = getattr(connector, "register_signal_handlers", None)
    if register is None:
        return

    def register_all_but_sigterm() -> None:
        own = signal.getsignal(signal.SIGTERM)
        register()
        if threading.current_thread() is threading.main_thread() and own is not None:
            signal.signal(signal.SIGTERM, own)

    connector.register_signal_handlers = register_all_but_sigterm


def inference_device(trainer_config: dict[str, Any]) -> torch.device:
    """Where the teacher cache and evaluation run their forward passes: the configured
    accelerator when it is there (``auto`` takes CUDA, then MPS), else the CPU."""
    accelerator = trainer_config.get("accelerator", "cpu")
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def make_logger(kind: str, save_dir: Path, name: str) -> Logger | None:
    """``trainer.logger``: ``none`` (None), ``csv`` or ``tensorboard``, writing into
    ``save_dir/name/``."""
    if kind == "none":
        return None
    if kind == "csv":
        return CSVLogger(save_dir, name=name, version="")
    if kind == "tensorboard":
        return TensorBoardLogger(save_dir, name=name, version="", default_hp_metric=False)
    raise ValueError(f"unknown logger '{kind}'; choose from none, csv, tensorboard")


class _DescribedProgressBar(TQDMProgressBar):
    """Progress bar whose line says which model is training."""

    def __init__(self, description: str) -> None:
        super().__init__(leave=False)
        self.description = description

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        if self.description:
            self.train_progress_bar.set_description(
                f"{self.description} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            )
