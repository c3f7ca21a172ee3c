"""The stages of a run, each declared with what it reads and writes in the run directory.

```
ensemble ─► teacher ─► student:<method> (one per method) ─► evaluate ─► report
```

A stage is done when its marker exists in the run store (:meth:`endd.store.RunDir.marker`);
:func:`endd.pipeline.run.run_stages` runs the stages of a plan in order, skips the done ones, and
refuses a stage whose inputs are neither done nor planned before it. The CLI's stage commands
(``endd ensemble|distill|evaluate|report RUN``) each select the stages that name them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from endd.data import DataBundle, load_data
from endd.methods import get_method
from endd.store import RunDir
from endd.store.run_dir import STUDENT_PREFIX

log = logging.getLogger("endd")

#: The CLI's stage commands, in run order.
COMMANDS = ("ensemble", "distill", "evaluate", "report")


@dataclass
class StageContext:
    """What a stage runs with: the run store, the resolved config, whether to draw progress
    bars, and the dataset (loaded on first use: the report never needs it)."""

    run: RunDir
    config: dict[str, Any]
    progress: bool = False
    _data: DataBundle | None = field(default=None, repr=False)
    #: what a stage's ``check`` prepared for its ``run`` (by stage name)
    prepared: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def data(self) -> DataBundle:
        if self._data is None:
            self._data = load_data(self.config["data"], self.config["seed"])
        return self._data


@dataclass(frozen=True)
class Stage:
    """One step of a run.

    Attributes:
        name: ``ensemble``, ``teacher``, ``student:<method>``, ``evaluate`` or ``report``; the
            run store knows its marker by this name.
        title: what it produces, for messages ("the trained ensemble").
        commands: the CLI stage commands that run it.
        inputs: the stages whose outputs it reads.
        outputs: the paths it writes, relative to the run directory (its marker among them).
        run: does the work; called only when the stage is not done (or ``recompute`` and
            ``--force``).
        needs_data: reads the dataset.
        recompute: ``--force`` redoes it (scoring and reporting; training is never redone:
            delete its folder to retrain).
        parallel: may run in a worker process beside the other parallel stages next to it.
        trains: a training stage: with several devices every rank runs it (Lightning DDP).
        every_rank: with several processes every rank runs it, each writing its shard of the
            rows (:mod:`endd.pipeline.sharded`: the teacher cache, the predictions). A stage
            that neither trains nor shards runs on global rank 0 alone while the others wait.
        check: validates the stage's own inputs from outside the run (a teacher's files) before
            anything is written; it may leave what it prepared in ``ctx.prepared[name]``.
    """

    name: str
    title: str
    commands: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[StageContext], None]
    needs_data: bool = True
    recompute: bool = False
    parallel: bool = False
    trains: bool = False
    every_rank: bool = False
    check: Callable[[StageContext], None] | None = None


def trainable_students(config: dict[str, Any], data: DataBundle) -> list[str]:
    """The configured student methods this dataset can train (+AUX methods need auxiliary
    data; they are skipped, with a warning, when it has none)."""
    methods = list(config["students"]["methods"])
    if data.x_aux is None:
        skipped = [m for m in methods if get_method(m).needs_aux]
        if skipped:
            log.warning("no auxiliary data: skipping %s", ", ".join(skipped))
        methods = [m for m in methods if not get_method(m).needs_aux]
    return methods


def _train_ensemble(ctx: StageContext) -> None:
    from endd.pipeline.distributed import is_rank_zero
    from endd.pipeline.training import train_ensemble

    members = ctx.config["ensemble"]["members"]
    if is_rank_zero(ctx.config["trainer"]):
        log.info("[ensemble] %d members on %s", members, ctx.data.name)
    train_ensemble(ctx.run, ctx.config, ctx.data, progress=ctx.progress)


def _check_teacher(ctx: StageContext) -> None:
    from endd.pipeline.teacher import prepare_teacher
    from endd.store.models import check_model

    if ctx.config["teacher"]["source"] == "train" and ctx.run.is_done("ensemble"):
        check_model(ctx.run.ensemble)  # the teacher stage runs it

    ctx.prepared["teacher"] = prepare_teacher(ctx.run, ctx.config, ctx.data)


def _cache_teacher(ctx: StageContext) -> None:
    from endd.pipeline.teacher import cache_teacher

    cache_teacher(ctx.run, ctx.config, ctx.data, ctx.prepared.get("teacher"))


def _student(method: str) -> Callable[[StageContext], None]:
    def train(ctx: StageContext) -> None:
        from endd.pipeline.training import train_student

        train_student(ctx.run, ctx.config, ctx.data, method, progress=ctx.progress)

    return train


def _check_training(method: str | None) -> Callable[[StageContext], None]:
    """Before anything is written: the checkpoint a killed run resumes from, and what a student
    reads (the ensemble when distilled online, else the teacher cache), match their sidecars."""

    def check(ctx: StageContext) -> None:
        from endd.engine.trainer import check_checkpoints
        from endd.store.models import check_model

        folder = ctx.run.ensemble if method is None else ctx.run.student(method)
        if method is not None:
            online = ctx.config["students"]["teacher"] == "online"
            if online and ctx.run.is_done("ensemble"):
                check_model(ctx.run.ensemble)
            if not online and ctx.run.is_done("teacher"):  # the files this student reads
                student = get_method(method)
                splits = ("train", "aux") if student.needs_aux else ("train",)
                reduced = ctx.config["students"]["teacher"] == "reduced"
                if reduced and student.statistic_loss is not None:
                    ctx.run.teacher_statistics(*splits)
                else:
                    ctx.run.teacher_rows(*splits)
        check_checkpoints(folder / "checkpoints")

    return check


def _check_students(methods: list[str]) -> Callable[[StageContext], None]:
    """Before evaluate deletes the old results: the finished students' weights and the teacher
    cache are intact."""

    def check(ctx: StageContext) -> None:
        from endd.store.models import check_model

        if ctx.run.is_done("teacher"):
            ctx.run.check_teacher()
        for method in methods:
            if ctx.run.is_done(f"{STUDENT_PREFIX}{method}"):
                check_model(ctx.run.student(method))

    return check


def _evaluate(methods: list[str]) -> Callable[[StageContext], None]:
    def evaluate(ctx: StageContext) -> None:
        from endd.pipeline.evaluate import evaluate

        evaluate(ctx.run, ctx.config, ctx.data, methods)

    return evaluate


def _report(ctx: StageContext) -> None:
    from endd.report import write_report

    write_report(ctx.run)


def plan(config: dict[str, Any], students: list[str]) -> list[Stage]:
    """Every stage of a run with these ``students``, in order. A teacher from outside
    (``teacher.source`` logits or checkpoints) replaces the ensemble stage."""
    student_input = "teacher" if config["students"]["teacher"] == "cached" else "ensemble"
    student_stages = [f"{STUDENT_PREFIX}{m}" for m in students]
    trains_ensemble = config["teacher"]["source"] == "train"
    ensemble = Stage(
        "ensemble",
        "trained ensemble",
        ("ensemble",),
        (),
        ("ensemble",),
        _train_ensemble,
        trains=True,
        check=_check_training(None),
    )
    return [
        *([ensemble] if trains_ensemble else []),
        Stage(
            "teacher",
            "cached teacher logits",
            ("ensemble", "distill"),
            ("ensemble",) if trains_ensemble else (),
            ("teacher",),
            _cache_teacher,
            every_rank=True,
            check=_check_teacher,
        ),
        *(
            Stage(
                f"{STUDENT_PREFIX}{m}",
                f"student '{m}'",
                ("distill",),
                (student_input,),
                (f"students/{m}",),
                _student(m),
                parallel=True,
                trains=True,
                check=_check_training(m),
            )
            for m in students
        ),
        Stage(
            "evaluate",
            "metrics.json",
            ("evaluate",),
            ("teacher", *student_stages),
            ("predictions", "evaluation", "metrics.json"),
            _evaluate(students),
            recompute=True,
            every_rank=True,
            check=_check_students(students),
        ),
        Stage(
            "report",
            "report",
            ("report",),
            ("evaluate",),
            ("report.md", "figures"),
            _report,
            needs_data=False,
            recompute=True,
        ),
    ]


def default_progress() -> bool:
    """Progress bars only on a terminal, and only when the ``endd`` logger shows INFO: a bar
    redrawn into a log file or CI output is thousands of lines of noise."""
    return sys.stderr.isatty() and log.isEnabledFor(logging.INFO)
