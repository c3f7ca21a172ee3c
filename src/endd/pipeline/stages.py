"""The stages of a run. Each reads the previous stage's artifacts from the run directory, writes
its own atomically, and is skipped when its final artifact already exists. A stage killed midway
resumes from its last per-epoch checkpoint."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from endd.data import DataBundle
from endd.engine import EnsembleModule, StudentModule, batch_loader, fit, predict_in_batches
from endd.errors import RunDirError
from endd.models import build_model
from endd.models.prior import Predictor
from endd.pipeline import artifacts
from endd.pipeline.run_dir import RunDir, load_model, save_model
from endd.schedules import TemperatureSchedule

log = logging.getLogger("endd")

#: How each student method is trained and read.
STUDENTS: dict[str, dict[str, Any]] = {
    "end": {"loss": "end", "kind": "categorical", "aux": False},
    "endd": {"loss": "endd", "kind": "dirichlet", "aux": False},
    "end_aux": {"loss": "end", "kind": "categorical", "aux": True},
    "endd_aux": {"loss": "endd", "kind": "dirichlet", "aux": True},
    "proxy": {"loss": "proxy", "kind": "proxy_dirichlet", "aux": False},
}
STUDENT_SEED_OFFSET = 10_000  # every student starts from the same initialisation


def backbone_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` section minus ``backbone`` and unset (null) keys, as builder kwargs."""
    return {k: v for k, v in config["model"].items() if k != "backbone" and v is not None}


def _spec(config: dict[str, Any], data: DataBundle, **extra: Any) -> dict[str, Any]:
    return {
        "backbone": config["model"]["backbone"],
        "backbone_kwargs": backbone_kwargs(config),
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "dataset": data.name,
        **extra,
    }


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
    quiet: bool,
    start: float,
    description: str,
    kind: str,
    **spec: Any,
) -> None:
    """Train with per-epoch checkpoints in ``folder/checkpoints``, then save the model with its
    sidecar and drop the checkpoints (the finished model supersedes them)."""
    checkpoints = folder / "checkpoints"
    fit(
        module,
        loader,
        epochs=section["epochs"],
        checkpoint_dir=checkpoints,
        trainer_config=config["trainer"],
        gradient_clip=section["gradient_clip"],
        quiet=quiet,
        description=description,
    )
    spec = _spec(
        config,
        data,
        kind=kind,
        epochs=section["epochs"],
        epoch_losses=module.epoch_losses,
        # read after training: a resumed module restores these lists from its checkpoint
        epoch_temperatures=getattr(module, "epoch_temperatures", []),
        train_seconds=time.perf_counter() - start,
        **spec,
    )
    network = module.model.cpu()
    predictor = Predictor(network, kind=kind, mean=data.mean, std=data.std, spec=spec)
    save_model(folder, predictor, spec)
    shutil.rmtree(checkpoints, ignore_errors=True)


def train_ensemble(run: RunDir, config: dict[str, Any], data: DataBundle, *, quiet: bool) -> bool:
    """Stage 1: train all members as one batched module. Returns False if already done."""
    if (run.ensemble / "model.json").is_file():
        return False
    start = time.perf_counter()
    section, seed = config["ensemble"], config["seed"]
    L.seed_everything(seed, verbose=False)
    network = _build(config, data, members=section["members"], seed=seed)
    module = EnsembleModule(
        network, lr=section["lr"], weight_decay=section["weight_decay"], augment=_augment(config)
    )
    loader = batch_loader(data.x_train, data.y_train, batch_size=section["batch_size"], seed=seed)
    _fit_and_save(
        run.ensemble,
        module,
        loader,
        config,
        section,
        data,
        quiet=quiet,
        start=start,
        description=f"ensemble ({section['members']} members)",
        kind="ensemble",
        members=section["members"],
        seed=seed,
    )
    return True


def cache_teacher(run: RunDir, config: dict[str, Any], data: DataBundle) -> bool:
    """Stage 2: member logits [N, M, K] on every split, computed once and cached as .npy."""
    done = run.teacher / "done.json"
    if done.is_file():
        return False
    start = time.perf_counter()
    ensemble = load_model(run.ensemble)
    shapes = {}
    for split, x in data.unlabelled_splits().items():
        logits = predict_in_batches(ensemble.network, x, config["trainer"]["eval_batch_size"])
        artifacts.write_array(run.teacher / f"{split}.npy", logits.float())
        shapes[split] = list(logits.shape)
    artifacts.write_json(done, {"splits": shapes, "seconds": time.perf_counter() - start})
    return True


def teacher_logits(run: RunDir, split: str) -> torch.Tensor:
    path = run.teacher / f"{split}.npy"
    if not path.is_file():
        raise RunDirError(f"cached teacher logits missing: {path}; run `endd ensemble {run.root}`")
    return torch.from_numpy(np.array(artifacts.read_array(path)))


def is_distilled(run: RunDir, method: str) -> bool:
    return (run.student(method) / "model.json").is_file()


def distill(
    run: RunDir, config: dict[str, Any], data: DataBundle, method: str, *, quiet: bool
) -> bool:
    """Stage 3 for one student method. Returns False if already done."""
    folder = run.student(method)
    if is_distilled(run, method):
        return False
    recipe, section = STUDENTS[method], config["students"]
    if recipe["aux"] and data.x_aux is None:
        raise RunDirError(f"student '{method}' needs auxiliary data, but the dataset has none")
    start = time.perf_counter()
    seed = config["seed"] + STUDENT_SEED_OFFSET
    L.seed_everything(seed, verbose=False)
    network = _build(config, data, members=1, seed=seed)
    online = section["teacher"] == "online"
    # +AUX students see, in every batch, batch_size training inputs plus an equal share of the
    # auxiliary set: one epoch passes once over each, in as many steps as the plain students.
    # Each auxiliary input weighs students.aux_weight in the loss (see StudentModule).
    extra: tuple[torch.Tensor, ...] | None = None
    if online:
        tensors: tuple[torch.Tensor, ...] = (data.x_train,)
        extra = (data.x_aux,) if recipe["aux"] else None
        teacher = load_model(run.ensemble).network
    else:
        tensors, teacher = (data.x_train, teacher_logits(run, "train")), None
        extra = (data.x_aux, teacher_logits(run, "aux")) if recipe["aux"] else None
    loader = batch_loader(*tensors, batch_size=section["batch_size"], seed=seed, extra=extra)
    total_steps = section["epochs"] * len(loader)
    if recipe["loss"] == "end":
        temperature = section["end_temperature"]
        schedule = TemperatureSchedule(temperature, temperature, total_steps=total_steps)
    else:
        schedule = TemperatureSchedule.from_config(section["temperature"], total_steps=total_steps)
    module = StudentModule(
        network,
        loss=recipe["loss"],
        schedule=schedule,
        smoothing=section["smoothing"],
        lr=section["lr"],
        weight_decay=section["weight_decay"],
        augment=_augment(config),
        teacher=teacher,
        aux_weight=section["aux_weight"],
    )
    _fit_and_save(
        folder,
        module,
        loader,
        config,
        section,
        data,
        quiet=quiet,
        start=start,
        description=f"student {method}",
        kind=recipe["kind"],
        method=method,
        members=1,
        seed=seed,
    )
    return True


def student_methods(config: dict[str, Any], data: DataBundle) -> list[str]:
    """The configured methods this dataset can train (aux methods need auxiliary data)."""
    methods = list(config["students"]["methods"])
    if data.x_aux is None:
        skipped = [m for m in methods if STUDENTS[m]["aux"]]
        if skipped:
            log.warning("no auxiliary data: skipping %s", ", ".join(skipped))
        methods = [m for m in methods if not STUDENTS[m]["aux"]]
    return methods
