"""The training stages: the ensemble (all members as one batched module) and one student.

Each trains with per-epoch checkpoints under its folder, so a killed run resumes from its last
epoch, then saves the model (weights, then the ``model.json`` sidecar that marks it done) and
drops the checkpoints.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from endd.data import DataBundle
from endd.engine import EnsembleModule, StudentModule, batch_loader, fit, seeded
from endd.engine.trainer import make_logger
from endd.errors import RunDirError
from endd.methods import get_method
from endd.models import build_model
from endd.models.prior import Predictor
from endd.pipeline.distributed import is_rank_zero
from endd.store import RunDir
from endd.store.models import load_model, save_model
from endd.store.teacher_cache import TeacherRows

STUDENT_SEED_OFFSET = 10_000  # every student starts from the same initialisation


def backbone_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` section minus ``backbone`` and unset (null) keys, as builder kwargs."""
    return {k: v for k, v in config["model"].items() if k != "backbone" and v is not None}


def _augment(config: dict[str, Any]):
    """Crop + flip seeded per batch from (run seed, batch pixels): the batches are a function of
    (seed, epoch, batch index), so a killed and resumed run augments exactly like an uninterrupted
    one (torch's global generator is not in the checkpoints). See BatchSeededCropFlip."""
    from endd.data.image_bundle import training_augmentation

    return training_augmentation(config["data"], config["seed"])


def _build(config: dict[str, Any], data: DataBundle, *, members: int, seed: int) -> torch.nn.Module:
    return build_model(
        config["model"]["backbone"],
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        members=members,
        seed=seed,
        **backbone_kwargs(config),
    )


def _fit_and_save(
    folder: Path,
    module: EnsembleModule | StudentModule,
    loader: DataLoader,
    config: dict[str, Any],
    section: dict[str, Any],
    data: DataBundle,
    *,
    progress: bool,
    logger: Logger | None,
    start: float,
    description: str,
    kind: str,
    **spec: Any,
) -> None:
    """Train with per-epoch checkpoints in ``folder/checkpoints``, then save the model with its
    sidecar and drop the checkpoints (the finished model supersedes them). Under DDP every rank
    trains; global rank 0 alone writes."""
    checkpoints = folder / "checkpoints"
    fit(
        module,
        loader,
        epochs=section["epochs"],
        checkpoint_dir=checkpoints,
        trainer_config=config["trainer"],
        gradient_clip=section["gradient_clip"],
        progress=progress,
        description=description,
        logger=logger,
    )
    spec = {
        "backbone": config["model"]["backbone"],
        "backbone_kwargs": backbone_kwargs(config),
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "dataset": data.name,
        "kind": kind,
        "epochs": section["epochs"],
        "epoch_losses": module.epoch_losses,
        # read after training: a resumed module restores these lists from its checkpoint
        "epoch_temperatures": getattr(module, "epoch_temperatures", []),
        "train_seconds": time.perf_counter() - start,
        **spec,
    }
    if not is_rank_zero(config["trainer"]):
        return  # under DDP global rank 0 saves the model; the others wait at the stage's end
    network = module.model.cpu()
    predictor = Predictor(network, kind=kind, mean=data.mean, std=data.std, spec=spec)
    save_model(folder, predictor, spec)
    shutil.rmtree(checkpoints, ignore_errors=True)


def train_ensemble(
    run: RunDir, config: dict[str, Any], data: DataBundle, *, progress: bool
) -> None:
    """Train all members as one batched module into ``ensemble/``."""
    start = time.perf_counter()
    section, seed = config["ensemble"], config["seed"]
    with seeded(seed):
        network = _build(config, data, members=section["members"], seed=seed)
        module = EnsembleModule(
            network,
            lr=section["lr"],
            weight_decay=section["weight_decay"],
            augment=_augment(config),
        )
        loader = batch_loader(
            data.x_train, data.y_train, batch_size=section["batch_size"], seed=seed
        )
        _fit_and_save(
            run.ensemble,
            module,
            loader,
            config,
            section,
            data,
            progress=progress,
            logger=make_logger(config["trainer"]["logger"], run.logs, "ensemble"),
            start=start,
            description=f"ensemble ({section['members']} members)",
            kind="ensemble",
            members=section["members"],
            seed=seed,
        )


def train_student(
    run: RunDir, config: dict[str, Any], data: DataBundle, name: str, *, progress: bool
) -> None:
    """Distill the teacher into the student of method ``name``, into ``students/<name>/``."""
    method, section = get_method(name), config["students"]
    if method.needs_aux and data.x_aux is None:
        raise RunDirError(f"student '{name}' needs auxiliary data, but the dataset has none")
    start = time.perf_counter()
    seed = config["seed"] + STUDENT_SEED_OFFSET
    with seeded(seed):
        network = _build(config, data, members=1, seed=seed)
        # +AUX students see, in every batch, batch_size training inputs plus an equal share of
        # the auxiliary set: one epoch passes once over each, in as many steps as the plain
        # students. Each auxiliary input weighs students.aux_weight in the loss (StudentModule).
        extra: tuple[torch.Tensor, ...] | None = None
        teacher: torch.nn.Module | None = None
        held: TeacherRows | None = None  # the cached teacher logits, read a batch at a time
        statistics: dict[float, TeacherRows] | None = None  # students.teacher: reduced
        if section["teacher"] == "online":
            tensors: tuple[torch.Tensor, ...] = (data.x_train,)
            extra = (data.x_aux,) if method.needs_aux else None
            teacher = load_model(run.ensemble).network
        else:
            # The module reads the cached logits (training rows, then auxiliary rows) from disk
            # a batch at a time, and the batches carry row indices into them: a loss with a
            # statistic form (EnD²) then computes its teacher statistic once per held
            # temperature, not every step.
            splits = ("train", "aux") if method.needs_aux else ("train",)
            if section["teacher"] == "reduced" and method.statistic_loss is not None:
                statistics = run.teacher_statistics(*splits)  # [N, K] per stored temperature
                rows = len(next(iter(statistics.values())))
            else:
                held = run.teacher_rows(*splits)
                rows = len(held)
            train_rows = len(data.x_train)
            tensors = (data.x_train, torch.arange(train_rows))
            if method.needs_aux:
                extra = (data.x_aux, torch.arange(train_rows, rows))
        loader = batch_loader(*tensors, batch_size=section["batch_size"], seed=seed, extra=extra)
        module = StudentModule(
            network,
            loss=method.loss,
            loss_kwargs=method.loss_kwargs(section),
            schedule=method.schedule(section, total_steps=section["epochs"] * len(loader)),
            lr=section["lr"],
            weight_decay=section["weight_decay"],
            augment=_augment(config),
            teacher=teacher,
            teacher_logits=held,
            teacher_statistics=statistics,
            statistic_loss=method.statistic_loss,
            aux_weight=section["aux_weight"],
        )
        _fit_and_save(
            run.student(name),
            module,
            loader,
            config,
            section,
            data,
            progress=progress,
            logger=make_logger(config["trainer"]["logger"], run.logs, f"student_{name}"),
            start=start,
            description=f"student {name}",
            kind=method.kind,
            method=name,
            members=1,
            seed=seed,
        )
