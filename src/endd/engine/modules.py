"""Lightning modules: one trains an ensemble (all members in one batched module), one distills it.

Both keep their own state plain (numbers, tensors) so checkpoints load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from endd import losses
from endd.schedules import TemperatureSchedule

Augment = Callable[[Tensor], Tensor]


class _TrainingModule(L.LightningModule):
    """Shared optimiser set-up and per-epoch loss bookkeeping."""

    def __init__(self, lr: float, weight_decay: float, augment: Augment | None) -> None:
        super().__init__()
        self.lr, self.weight_decay, self.augment = lr, weight_decay, augment
        self.epoch_losses: list[float] = []
        self._loss_sum, self._loss_count = 0.0, 0
        self._closed_epoch = -1

    def configure_optimizers(self):
        # The fused Adam kernel halves the step time of small models on the CPU (measured
        # 1.8 → 1.0 ms/step for the spiral MLP); not every device/dtype has it.
        try:
            return torch.optim.Adam(
                self.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True
            )
        except (RuntimeError, ValueError):
            return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _record(self, loss: Tensor, batch_size: int) -> None:
        self._loss_sum += float(loss.detach()) * batch_size
        self._loss_count += batch_size

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    def on_train_epoch_end(self) -> None:
        self.close_epoch()
        self._show_epoch()  # here, not in close_epoch: Lightning forbids logging while saving

    def close_epoch(self) -> None:
        """Record the finished epoch (its mean loss), once per epoch. Lightning runs callbacks'
        epoch-end hooks, checkpoint callbacks among them, before the module's: a checkpoint
        saved at an epoch's end closes the epoch first, so a resumed run keeps every finished
        epoch's record."""
        if self._closed_epoch == self.current_epoch:
            return
        self._closed_epoch = self.current_epoch
        self._close_epoch()

    def _close_epoch(self) -> None:
        self.epoch_losses.append(self._loss_sum / max(self._loss_count, 1))

    def _show_epoch(self) -> None:
        self._show("loss", self.epoch_losses[-1])

    def _checkpoint_state(self) -> dict[str, Any]:
        """Plain state saved in checkpoints beside the weights (subclasses extend it)."""
        return {"epoch_losses": list(self.epoch_losses)}

    def _restore_state(self, state: dict[str, Any]) -> None:
        self.epoch_losses = list(state["epoch_losses"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self._epoch_finished():
            self.close_epoch()
        checkpoint["endd"] = self._checkpoint_state()

    def _epoch_finished(self) -> bool:
        return bool(self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restore_state(checkpoint["endd"])

    def _show(self, name: str, value: float) -> None:
        """Put a value on the progress bar (a barebones Trainer, used when no bar is shown, has
        no logging at all)."""
        if not self.trainer.barebones:
            self.log(name, value, prog_bar=True)

    def _inputs(self, x: Tensor) -> Tensor:
        return self.augment(x) if self.augment is not None else x


class EnsembleModule(_TrainingModule):
    """Trains M members together: ``model(x)`` is [B, M, K]; the loss is the sum over members of
    each member's mean cross-entropy, so every member gets the gradient it would get alone."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        augment: Augment | None = None,
    ) -> None:
        super().__init__(lr, weight_decay, augment)
        self.model = model

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.model(self._inputs(x))  # [B, M, K]
        batch_size, members, classes = logits.shape
        per_member = F.cross_entropy(
            logits.reshape(batch_size * members, classes).float(),
            y.repeat_interleave(members),
            reduction="none",
        )
        loss = per_member.view(batch_size, members).mean(dim=0).sum()
        self._record(loss / members, batch_size)
        return loss


class StudentModule(_TrainingModule):
    """Distills an ensemble into ``model`` (``[B, K]`` logits) with a distillation loss.

    ``loss`` is a loss function ``loss(student_logits, teacher_logits, *, temperature, **kw)`` or
    the name of one in :data:`endd.losses.LOSSES`; ``loss_kwargs`` are its other keyword
    arguments (e.g. ``{"smoothing": 1e-4}``), passed on every step.

    The teacher comes in one of four ways:

    - in the batch: ``(x, teacher_logits [B, M, K])``, a cached teacher;
    - held here: ``teacher_logits=`` the cached logits of every input [N, M, K] (a tensor,
      or a :class:`endd.store.TeacherRows` that reads them from disk a batch at a time), and batches
      ``(x, rows)`` with int64 row indices [B] into it (:func:`endd.engine.batch_loader` over
      ``torch.arange(N)``). With a ``statistic_loss`` (the loss again, taking the teacher's
      statistic mean_m ln π_mc [B, K] in place of the logits, see
      :attr:`endd.methods.StudentMethod.statistic_loss`), the statistic is computed once per
      temperature for all N inputs while the schedule holds T (an [N, K] table, in chunks:
      :func:`endd.losses.teacher_statistic_table`) and each step takes its rows; while T
      changes every step it is computed per batch. A table row is used only where it is bit for
      bit what the batch's own computation gives (:func:`endd.losses.table_is_exact_for`: on
      the CPU, a part of a multiple of 32 rows, its kernels not split over threads); any other
      part computes per batch. So the numbers are exactly those of computing every step;
    - stored tables: ``teacher_statistics=`` {T: [N, K]} from
      :func:`endd.losses.teacher_statistic_table` (the reduced cache, for large M · K), batches
      ``(x, rows)``; every step uses :func:`endd.losses.statistic_at` (linear in T between the
      stored temperatures) and ``statistic_loss``; the tables carry their own smoothing;
    - online: a ``teacher`` module, batches ``(x,)``, run on the same (augmented) inputs the
      student sees.

    ``statistic_loss`` is called as ``statistic_loss(student_logits, mean_log_probs, *,
    temperature, **loss_kwargs without "smoothing")``; the statistic uses
    ``loss_kwargs["smoothing"]`` (0 without it).

    A batch that mixes in auxiliary inputs (see :func:`endd.engine.batch_loader`) ends with a
    bool mask [B] of the auxiliary rows; the loss is then the weighted mean over the batch, each
    auxiliary input weighted ``aux_weight`` against 1 for a training input:

        loss = (n_train · L_train + aux_weight · n_aux · L_aux) / (n_train + aux_weight · n_aux),

    with L_train, L_aux the loss averaged over each part (``aux_weight`` = 1 is the plain mean).
    The temperature follows ``schedule`` by optimiser step; the schedule's state is saved in the
    checkpoint, so a resumed run anneals exactly as an uninterrupted one. Held logits and tables
    are not saved (the table is rebuilt from the logits when needed).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: str | Callable[..., Tensor],
        schedule: TemperatureSchedule,
        loss_kwargs: Mapping[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        augment: Augment | None = None,
        teacher: nn.Module | None = None,
        teacher_logits: Tensor | None = None,
        teacher_statistics: Mapping[float, Tensor] | None = None,
        statistic_loss: Callable[..., Tensor] | None = None,
        aux_weight: float = 1.0,
    ) -> None:
        super().__init__(lr, weight_decay, augment)
        if not 0 < aux_weight < float("inf"):
            raise ValueError(f"aux_weight must be positive and finite, got {aux_weight}")
        sources = [teacher is not None, teacher_logits is not None, teacher_statistics is not None]
        if sum(sources) > 1:
            raise ValueError("pass at most one of teacher, teacher_logits and teacher_statistics")
        if teacher_logits is not None and (
            not hasattr(teacher_logits, "__getitem__")
            or not teacher_logits.is_floating_point()
            or teacher_logits.ndim != 3
        ):
            raise ValueError(
                "teacher_logits must be a floating-point tensor [N, M, K] (or a TeacherRows)"
            )
        if teacher_statistics is not None and (not teacher_statistics or statistic_loss is None):
            raise ValueError("teacher_statistics needs at least one table and a statistic_loss")
        self.model = model
        self.aux_weight = float(aux_weight)
        self.loss_fn = losses.get_loss(loss) if isinstance(loss, str) else loss
        self.loss_kwargs = dict(loss_kwargs or {})
        if "temperature" in self.loss_kwargs:
            raise ValueError("loss_kwargs must not set 'temperature': the schedule sets it")
        self.statistic_loss = statistic_loss
        self._smoothing = float(self.loss_kwargs.get("smoothing", 0.0))
        self._statistic_kwargs = {k: v for k, v in self.loss_kwargs.items() if k != "smoothing"}
        self.schedule = schedule
        # Not submodules or buffers: the teacher is frozen and never saved with the student.
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else []
        self._held = [teacher_logits.detach().float()] if teacher_logits is not None else []
        self._statistic_tables = dict(teacher_statistics) if teacher_statistics else None
        self._table: tuple[float, Tensor] | None = None  # (T, [N, K]) of the held logits
        self.epoch_temperatures: list[float] = []

    def temperature(self) -> float:
        return float(self.schedule(self.global_step))

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x, teacher_logits, is_aux = self._split_batch(batch)
        x = self._inputs(x)
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = self._run_teacher(x)
        kwargs = {**self.loss_kwargs, "temperature": self.temperature()}
        student_logits = self.model(x).float()  # one forward pass over training and aux rows
        loss = self._weighted_loss(student_logits, teacher_logits, is_aux, kwargs)
        self._record(loss, len(x))
        return loss

    def _split_batch(self, batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(inputs, the teacher or None, auxiliary-row mask or None)``; the teacher is cached
        logits [B, M, K] or int64 row indices [B] into the held logits or tables.

        The pipeline's batches are ``(x, teacher_logits)``, ``(x, rows)`` or ``(x,)``, each
        optionally followed by a bool mask of the auxiliary rows
        (:class:`endd.lightning.Distiller` reads other forms)."""
        is_aux = None
        if batch[-1].dtype == torch.bool:
            batch, is_aux = batch[:-1], batch[-1]
        teacher = batch[1] if len(batch) > 1 else None
        if teacher is not None:
            if teacher.is_floating_point():
                teacher = teacher.float()
            elif not self._held and self._statistic_tables is None:
                raise ValueError(
                    "the batch carries row indices, but the module holds no teacher_logits or "
                    "teacher_statistics"
                )
        return batch[0], teacher, is_aux

    def _run_teacher(self, x: Tensor) -> Tensor:
        """The online teacher's member logits [B, M, K] for the inputs the student sees (called
        under ``torch.no_grad``)."""
        return self._teacher[0](x).float()

    def _weighted_loss(
        self, student: Tensor, teacher: Tensor, is_aux: Tensor | None, kwargs: dict[str, Any]
    ) -> Tensor:
        """The loss over the batch, auxiliary rows weighted ``aux_weight`` (see the class doc)."""
        if is_aux is None or self.aux_weight == 1.0:
            return self._part_loss(student, teacher, kwargs)
        is_aux = is_aux.to(student.device)
        n_aux = int(is_aux.sum())
        n_train = len(is_aux) - n_aux
        if n_aux == 0 or n_train == 0:  # one part only: its plain mean
            return self._part_loss(student, teacher, kwargs)
        is_train = ~is_aux
        train_loss = self._part_loss(student[is_train], teacher[is_train], kwargs)
        aux_loss = self._part_loss(student[is_aux], teacher[is_aux], kwargs)
        weighted_aux = self.aux_weight * n_aux
        return (n_train * train_loss + weighted_aux * aux_loss) / (n_train + weighted_aux)

    def _part_loss(self, student: Tensor, teacher: Tensor, kwargs: dict[str, Any]) -> Tensor:
        """The loss over some rows of a batch; ``teacher`` is their member logits [b, M, K] or
        their row indices [b] into the held logits or tables."""
        if teacher.is_floating_point():
            return self.loss_fn(student, teacher, **kwargs)
        temperature = kwargs["temperature"]
        statistic = self._statistic(teacher, temperature, student.device)
        if statistic is None:
            held = self._held[0]
            logits = held[teacher.to(held.device)].to(student.device)
            return self.loss_fn(student, logits, **kwargs)
        assert self.statistic_loss is not None
        return self.statistic_loss(
            student, statistic, temperature=temperature, **self._statistic_kwargs
        )

    def _statistic(self, rows: Tensor, temperature: float, device: torch.device) -> Tensor | None:
        """The teacher statistic of ``rows`` at ``temperature`` from a table, or None where it
        is to be computed from the logits per batch (see the class doc)."""
        if self._statistic_tables is not None:
            table_device = next(iter(self._statistic_tables.values())).device
            statistic = losses.statistic_at(
                self._statistic_tables, temperature, rows.to(table_device)
            )
            return statistic.to(device)
        if self.statistic_loss is None or not self._held:
            return None
        held = self._held[0]
        num_rows, members, classes = held.shape
        if not losses.table_is_exact_for(len(rows), members, classes, device):
            return None
        if self._table is None or self._table[0] != temperature:
            # Worth a table over all N rows only if T stays for as many steps as it takes the
            # batches to cover N rows (the schedule is monotone: equal ends, equal in between).
            lookahead = math.ceil(num_rows / len(rows))
            if float(self.schedule(self.global_step + lookahead)) != temperature:
                return None
            self._table = None  # free the previous temperature's table first
            tables = losses.teacher_statistic_table(held, temperature, smoothing=self._smoothing)
            self._table = (temperature, tables[temperature])
        return losses.statistic_rows(self._table[1], rows.to(held.device)).to(device)

    def _close_epoch(self) -> None:
        self.epoch_temperatures.append(self.temperature())
        super()._close_epoch()

    def _show_epoch(self) -> None:
        self._show("temperature", self.epoch_temperatures[-1])
        super()._show_epoch()

    def on_fit_start(self) -> None:
        if self._teacher:
            self._teacher[0].to(self.device)

    def _checkpoint_state(self) -> dict[str, Any]:
        return super()._checkpoint_state() | {
            "schedule": self.schedule.state_dict(),
            "epoch_temperatures": list(self.epoch_temperatures),
        }

    def _restore_state(self, state: dict[str, Any]) -> None:
        super()._restore_state(state)
        self.schedule.load_state_dict(state["schedule"])
        self.epoch_temperatures = list(state["epoch_temperatures"])
