"""Distill your own ensemble in your own Lightning training loop: :class:`Distiller`.

``Distiller`` is a ``LightningModule``: give it the student network (any ``nn.Module`` that maps a
batch of inputs to logits [B, K]) and your trained ensemble, and fit it with your own
``lightning.Trainer`` and ``DataModule``::

    import lightning as L
    import endd
    from endd.lightning import Distiller

    distiller = Distiller(
        student,                          # nn.Module: x -> logits [B, K]
        teacher=[member_1, member_2, member_3],  # each x -> [B, K]; or one module x -> [B, M, K]
        loss="endd",                      # "endd" (EnD²), "proxy" (Proxy-EnD²), "end" or a callable
        temperature={"initial": 2.5, "final": 1.0},  # annealed over the fit's optimiser steps
    )
    L.Trainer(max_epochs=30).fit(distiller, datamodule=my_datamodule)  # batches (x, y) or x

    prior_network = endd.PriorNetwork(distiller.student)  # proxy: PriorNetwork(..., proxy=True)
    out = prior_network.predict(x_test)  # probs, alphas, total, data, knowledge, epkl, ...
    torch.save(distiller.student.state_dict(), "student.pt")  # the student's weights alone

**Batches.** Each batch is one of

- ``x``, or ``[x]`` (a ``TensorDataset`` of inputs): the teacher is run on ``x``;
- ``(x, y)`` with integer class labels ``y`` [B]: the labels are ignored, the teacher is run on
  ``x`` (so a classification DataModule works unchanged);
- ``(x, teacher_logits)`` with floating-point member logits [B, M, K] computed beforehand (a cached
  teacher: the ensemble is not run during distillation, and ``teacher`` may be ``None``).

Whatever the DataModule does to ``x`` (augmentation included) the teacher sees too. Any other
batch, or a batch without cached logits when there is no teacher, raises ``ValueError``.

**Teacher.** One ``nn.Module`` returning the members' logits [B, M, K] (a batched ensemble), or a
list of member modules each returning [B, K], stacked to [B, M, K]. It is frozen (``eval()`` mode,
``requires_grad_(False)``: the modules you pass are changed in place), moved to the student's
device at fit start, and is not a submodule: it is never saved in the Distiller's checkpoints or
``state_dict``, and never trained.

**Temperature.** A number is a constant temperature; a :class:`~endd.schedules.TemperatureSchedule`
is used as it is (called with the optimiser step); a mapping with keys ``initial`` and optionally
``final``, ``hold_fraction``, ``decay_end_fraction`` becomes a ``TemperatureSchedule`` over the
fit's total optimiser steps (``trainer.estimated_stepping_batches``), built at fit start. The
schedule is saved in every checkpoint (Lightning's ``ModelCheckpoint``,
``trainer.save_checkpoint``), so ``trainer.fit(distiller, ..., ckpt_path=...)`` anneals exactly
as the uninterrupted fit would have; checkpoints hold only tensors and plain numbers and load
with ``weights_only=True``.

**Logging.** ``train_loss`` and ``temperature`` are logged with ``self.log`` on every step and
per epoch (the epoch mean), so they reach the Trainer's logger, its progress bar and
``trainer.callback_metrics`` (``ModelCheckpoint(monitor="train_loss")`` works). The per-epoch
values are also kept in ``distiller.epoch_losses`` and ``distiller.epoch_temperatures``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from endd import losses
from endd.engine.modules import StudentModule
from endd.schedules import TemperatureSchedule

__all__ = ["Distiller"]

_BATCH_FORMS = (
    "x, (x, y) with integer labels y [B], or (x, teacher_logits) with float member logits [B, M, K]"
)


class _Members(nn.Module):
    """A list of member networks as one teacher: each returns [B, K]; stacked to [B, M, K]."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        outputs = [member(x) for member in self.members]
        for index, output in enumerate(outputs):
            if not isinstance(output, Tensor) or output.ndim != 2:
                shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise ValueError(
                    f"teacher member {index} must return logits [B, K], got {shape} "
                    "(a module returning all members' logits [B, M, K] is passed on its own, "
                    "not in a list)"
                )
        return torch.stack(outputs, dim=1)


def _teacher_module(teacher: nn.Module | Sequence[nn.Module] | None) -> nn.Module | None:
    if teacher is None or isinstance(teacher, nn.Module):
        return teacher
    if isinstance(teacher, Sequence) and not isinstance(teacher, str):
        members = list(teacher)
        if not members:
            raise ValueError("teacher is an empty list: pass at least one member module")
        for index, member in enumerate(members):
            if not isinstance(member, nn.Module):
                raise TypeError(
                    f"teacher[{index}] must be an nn.Module, got {type(member).__name__}"
                )
        return _Members(members)
    raise TypeError(
        "teacher must be None, an nn.Module returning member logits [B, M, K], or a list of "
        f"member modules each returning [B, K]; got {type(teacher).__name__}"
    )


def _loss_function(loss: str | Callable[..., Tensor]) -> Callable[..., Tensor]:
    if isinstance(loss, str):
        return losses.get_loss(loss)
    if callable(loss):
        return loss
    raise TypeError(f"loss must be 'endd', 'end', 'proxy' or a callable, got {type(loss).__name__}")


def _takes_smoothing(loss_fn: Callable[..., Tensor]) -> bool:
    try:
        return "smoothing" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins): pass nothing extra
        return False


def _initial_schedule(
    temperature: float | TemperatureSchedule | Mapping[str, float],
) -> tuple[TemperatureSchedule, dict[str, float] | None]:
    """The schedule to start with, and the mapping to rebuild it from at fit start (if any)."""
    if isinstance(temperature, TemperatureSchedule):
        return temperature, None
    if isinstance(temperature, Mapping):
        config = dict(temperature)
        # Built now over one step only to check the keys and values before any training; the
        # real length is known at fit start.
        return TemperatureSchedule.from_config(config, total_steps=1), config
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(
            "temperature must be a number, a TemperatureSchedule or a mapping with keys "
            "initial, final, hold_fraction, decay_end_fraction; got "
            f"{type(temperature).__name__}"
        )
    return TemperatureSchedule(temperature, temperature, total_steps=1), None


class Distiller(StudentModule):
    """A LightningModule that distills an ensemble into ``student`` (see the module docstring).

    Args:
        student: the network to train, mapping inputs to logits [B, K]. Available after (and
            during) training as :attr:`student`.
        loss: ``"endd"`` (EnD², the student becomes a Prior Network, α = exp(z)), ``"proxy"``
            (Proxy-EnD², α = exp(z) + 1), ``"end"`` (distillation to the ensemble mean, the
            student is an ordinary classifier), or a callable
            ``loss(student_logits [B, K], teacher_logits [B, M, K], *, temperature, ...)`` →
            scalar.
        temperature: a constant, a :class:`~endd.schedules.TemperatureSchedule`, or a mapping
            ``{initial, final, hold_fraction, decay_end_fraction}`` (only ``initial`` required)
            made into a schedule over the fit's optimiser steps at fit start.
        smoothing: central smoothing ε of the teacher's probabilities, passed to every loss
            whose signature takes ``smoothing`` (EnD², Proxy-EnD²; EnD has none).
        teacher: ``None`` (every batch carries cached teacher logits), one module returning
            member logits [B, M, K], or a list of member modules each returning [B, K]. Frozen,
            never saved with the student.
        lr, weight_decay: Adam's settings.

    Raises:
        ValueError: an unknown loss name, a bad temperature or schedule mapping (unknown key,
            missing ``initial``, out-of-range value), an empty teacher list; during training, a
            batch of none of the accepted forms, a batch without cached logits and no teacher,
            or teacher output of the wrong shape.
        TypeError: a student or teacher that is not an ``nn.Module``, a loss that is neither a
            name nor callable.

    After training, ``endd.PriorNetwork(distiller.student)`` (``proxy=True`` for ``"proxy"``)
    gives probabilities and uncertainty with ``.predict(x)``; an ``"end"`` student is read with
    ``endd.Predictor(distiller.student, kind="categorical")``. Checkpoints are not hyperparameter
    snapshots: to resume, build the Distiller with the same arguments and pass ``ckpt_path`` to
    ``trainer.fit``.
    """

    def __init__(
        self,
        student: nn.Module,
        *,
        loss: str | Callable[..., Tensor] = "endd",
        temperature: float | TemperatureSchedule | Mapping[str, float] = 1.0,
        smoothing: float = 1e-4,
        teacher: nn.Module | Sequence[nn.Module] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be an nn.Module, got {type(student).__name__}")
        loss_fn = _loss_function(loss)
        schedule, schedule_config = _initial_schedule(temperature)
        if isinstance(smoothing, bool) or not isinstance(smoothing, int | float):
            raise TypeError(f"smoothing must be a number, got {type(smoothing).__name__}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        super().__init__(
            student,
            loss=loss_fn,
            schedule=schedule,
            loss_kwargs={"smoothing": float(smoothing)} if _takes_smoothing(loss_fn) else {},
            lr=lr,
            weight_decay=weight_decay,
            teacher=_teacher_module(teacher),
        )
        self._temperature_config = schedule_config
        self._schedule_restored = False

    @property
    def student(self) -> nn.Module:
        """The student network (trained in place)."""
        return self.model

    def forward(self, x: Tensor) -> Tensor:
        """The student's logits [B, K]."""
        return self.model(x)

    # --- batches and teacher -------------------------------------------------------------

    def _split_batch(self, batch: Any) -> tuple[Tensor, Tensor | None, None]:
        if isinstance(batch, Tensor):
            return batch, None, None
        if not isinstance(batch, list | tuple) or not 1 <= len(batch) <= 2:
            what = f"a {type(batch).__name__}"
            if isinstance(batch, list | tuple):
                what += f" of {len(batch)} elements"
            raise ValueError(f"Distiller batches must be {_BATCH_FORMS}; got {what}")
        x = batch[0]
        if not isinstance(x, Tensor):
            raise ValueError(
                f"Distiller batches must be {_BATCH_FORMS}; the inputs x are a "
                f"{type(x).__name__}, not a tensor"
            )
        if len(batch) == 1:
            return x, None, None
        second = batch[1]
        if isinstance(second, Tensor) and len(second) == len(x):
            if second.is_floating_point() and second.ndim == 3:
                return x, second.float(), None  # cached teacher logits
            is_integer = not second.is_floating_point() and not second.is_complex()
            if is_integer and second.dtype != torch.bool and second.ndim == 1:
                return x, None, None  # class labels: not needed, the teacher is run
        described = (
            f"dtype {second.dtype}, shape {list(second.shape)}"
            if isinstance(second, Tensor)
            else type(second).__name__
        )
        raise ValueError(
            f"Distiller batches must be {_BATCH_FORMS}; the second element ({described}) is "
            f"neither, for inputs x of shape {list(x.shape)}"
        )

    def _run_teacher(self, x: Tensor) -> Tensor:
        if not self._teacher:
            raise ValueError(
                "this batch has no cached teacher logits and the Distiller has no teacher: pass "
                "teacher= (a module returning [B, M, K] or a list of member modules), or make "
                "the batches (x, teacher_logits [B, M, K])"
            )
        logits = super()._run_teacher(x)
        if logits.ndim != 3 or logits.shape[0] != len(x):
            raise ValueError(
                f"the teacher must return member logits [B, M, K] for inputs of batch size "
                f"{len(x)}, got shape {list(logits.shape)} (for one network per member pass a "
                "list: teacher=[member_1, member_2, ...])"
            )
        return logits

    # --- schedule, logging, checkpoints ----------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._schedule_restored = False  # set again if this fit restores a checkpoint

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # restores the schedule saved with it
        self._schedule_restored = True

    def on_fit_start(self) -> None:
        super().on_fit_start()  # moves the teacher to the student's device
        # Strategies restore checkpoints before this hook (or, for some, just after it: the
        # checkpoint's schedule then replaces the one built here). Either way a resumed fit
        # anneals over the original fit's length.
        if self._temperature_config is not None and not self._schedule_restored:
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total) or total < 1:
                raise ValueError(
                    "a temperature mapping is annealed over the fit's optimiser steps, but the "
                    f"Trainer estimates {total}: set max_epochs or max_steps, or pass a "
                    "TemperatureSchedule"
                )
            self.schedule = TemperatureSchedule.from_config(
                self._temperature_config, total_steps=int(total)
            )

    def _record(self, loss: Tensor, batch_size: int) -> None:
        super()._record(loss, batch_size)
        if self._trainer is not None and not self.trainer.barebones:
            log = {"on_step": True, "on_epoch": True, "batch_size": batch_size}
            self.log("train_loss", loss.detach(), prog_bar=True, **log)
            self.log("temperature", self.temperature(), **log)

    def _show(self, name: str, value: float) -> None:
        """StudentModule's epoch-end progress-bar entries: replaced by the logged metrics."""
