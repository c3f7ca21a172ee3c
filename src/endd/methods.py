"""Student methods: every way endd distills an ensemble into one model, one registry entry each.

An entry says everything the rest of endd needs to know about a method: the loss it trains with,
the kind of model it produces (and so its uncertainty measures), whether it needs auxiliary
inputs, how its temperature is scheduled, which config keys reach its loss, and its title in
reports. The config accepts the registered names in ``students.methods``; the pipeline, the
evaluation, the report and :func:`endd.load_run` all read this table.

Adding a method is one :func:`register_method` call (see ``docs/architecture.md``)::

    register_method(StudentMethod("end_t2", "EnD (T=2)", end_loss, "categorical",
                                  temperature="fixed", loss_options=lambda s: {}))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from endd.errors import did_you_mean
from endd.losses import end_loss, endd_loss, endd_loss_from_mean_log_probs, proxy_loss
from endd.models.kinds import ModelKind, get_kind
from endd.schedules import TemperatureSchedule

__all__ = ["METHODS", "StudentMethod", "get_method", "register_method"]

#: Config keys of the ``students`` section handed to every loss whose signature takes them.
SHARED_LOSS_OPTIONS = ("smoothing",)


def _no_options(students: Mapping[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class StudentMethod:
    """One student method.

    Attributes:
        name: the name in ``students.methods``, ``students/<name>/`` and ``metrics.json``.
        title: the name in reports ("EnD²+AUX").
        loss: ``loss(student_logits [B, K], teacher_logits [B, M, K], *, temperature, ...)``
            -> scalar.
        kind: the model kind it produces (:mod:`endd.models.kinds`): its measures and how its
            logits are read.
        needs_aux: trains on the auxiliary inputs as well (skipped when the data has none).
        temperature: ``annealed`` follows ``students.temperature``; ``fixed`` holds
            ``students.end_temperature`` (Hinton-style distillation).
        loss_options: more loss keyword arguments from the ``students`` config section, beyond
            the shared ones (``smoothing`` reaches every loss that takes it).
        statistic_loss: for a loss that needs the teacher only through its statistic
            mean_m ln π_mc (``endd.losses.mean_teacher_log_probs`` with the loss's ``smoothing``),
            the same loss taking that statistic [B, K] in place of the logits:
            ``statistic_loss(student_logits, mean_log_probs, *, temperature, ...)``, equal to
            :attr:`loss`. With a cached teacher the statistic is then computed once per held
            temperature (:class:`endd.engine.StudentModule`); None: the logits every step.
    """

    name: str
    title: str
    loss: Callable[..., Any]
    kind: str
    needs_aux: bool = False
    temperature: Literal["annealed", "fixed"] = "annealed"
    loss_options: Callable[[Mapping[str, Any]], dict[str, Any]] = field(default=_no_options)
    statistic_loss: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        get_kind(self.kind)
        if self.temperature not in ("annealed", "fixed"):
            raise ValueError(f"temperature must be 'annealed' or 'fixed', got {self.temperature!r}")

    @property
    def model_kind(self) -> ModelKind:
        return get_kind(self.kind)

    @property
    def measures(self) -> tuple[str, ...]:
        return self.model_kind.measures

    def loss_kwargs(self, students: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for :attr:`loss` (besides the temperature) from the ``students``
        config section."""
        parameters = inspect.signature(self.loss).parameters
        shared = {key: students[key] for key in SHARED_LOSS_OPTIONS if key in parameters}
        return shared | self.loss_options(students)

    def schedule(self, students: Mapping[str, Any], *, total_steps: int) -> TemperatureSchedule:
        """The temperature schedule over ``total_steps`` optimiser steps."""
        if self.temperature == "annealed":
            return TemperatureSchedule.from_config(students["temperature"], total_steps=total_steps)
        fixed = students["end_temperature"]
        return TemperatureSchedule(fixed, fixed, total_steps=total_steps)


METHODS: dict[str, StudentMethod] = {}


def register_method(method: StudentMethod, *, replace: bool = False) -> StudentMethod:
    """Add ``method`` to :data:`METHODS` (``replace=True`` to redefine a name).

    A method registered at run time exists in this process only: student processes that
    ``trainer.workers > 1`` spawns do not see it unless the module that registers it is imported
    there too (register it in a module of your package, or set ``trainer.workers: 1``).
    """
    if method.name in METHODS and not replace:
        raise ValueError(f"student method '{method.name}' is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> StudentMethod:
    """The registered method ``name``; ValueError with a "did you mean" hint otherwise."""
    if name not in METHODS:
        hint = did_you_mean(name, METHODS)
        raise ValueError(f"unknown student method '{name}'{hint}; choose from {', '.join(METHODS)}")
    return METHODS[name]


for _method in (
    StudentMethod("end", "EnD", end_loss, "categorical", temperature="fixed"),
    StudentMethod(
        "endd", "EnD²", endd_loss, "dirichlet", statistic_loss=endd_loss_from_mean_log_probs
    ),
    StudentMethod("end_aux", "EnD+AUX", end_loss, "categorical", True, temperature="fixed"),
    StudentMethod(
        "endd_aux",
        "EnD²+AUX",
        endd_loss,
        "dirichlet",
        True,
        statistic_loss=endd_loss_from_mean_log_probs,
    ),
    StudentMethod("proxy", "Proxy-EnD²", proxy_loss, "proxy_dirichlet"),
):
    register_method(_method)
