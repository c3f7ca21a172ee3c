"""The run configuration as typed models: one pydantic model per section, every key's type,
default and allowed range in one place.

A config is validated by :class:`Config`; :mod:`endd.config.loading` turns the user's YAML and
overrides into the input, the first validation error into a one-line :class:`ConfigError`, and the
result into the plain nested dict the pipeline reads.

The ``data`` section is one of three kinds, chosen by ``data.name``: ``spiral`` (the paper's
artificial data), ``npz`` (the user's arrays) and the labelled image datasets
(:data:`endd.data.image_bundle.IN_DOMAIN_DATASETS`). Each kind has only its own keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from endd.data.image_bundle import IN_DOMAIN_DATASETS, check_image_data
from endd.data.spiral import OOD_SETS
from endd.errors import ConfigError, did_you_mean

__all__ = [
    "ACCELERATORS",
    "DATA_KINDS",
    "DATA_NAMES",
    "DEFAULT_METHODS",
    "PRECISIONS",
    "Config",
    "EnsembleConfig",
    "ImageData",
    "ModelConfig",
    "NpzData",
    "SpiralData",
    "StudentsConfig",
    "TemperatureConfig",
    "TrainerConfig",
    "data_kind",
]

#: ``students.methods`` by default: the paper's students (see :mod:`endd.methods`).
DEFAULT_METHODS = ("end", "endd", "end_aux", "endd_aux", "proxy")
#: ``trainer.accelerator``: Lightning's accelerator names.
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
#: ``trainer.precision``: every value Lightning 2 accepts (strings, their aliases and ints).
PRECISIONS: tuple[str | int, ...] = (
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "32",
    "16",
    "bf16",
    "64",
    32,
    16,
    64,
)
#: Every ``data.name`` a run accepts.
DATA_NAMES = ("spiral", "npz", *IN_DOMAIN_DATASETS)

_SEED_MAX = 2**32 - 1
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*"
#: A built-in backbone name, ``pkg.module.ClassName``, ``pkg.module:attr`` or ``import:…:…``.
_BACKBONE = re.compile(
    rf"^(?:{_IDENTIFIER}|{_DOTTED}\.{_IDENTIFIER}|(?:import:)?{_DOTTED}:{_DOTTED})$"
)


def _listing(values: Iterable[object]) -> str:
    values = list(values)
    if all(isinstance(v, str) for v in values):
        return ", ".join(values)  # type: ignore[arg-type]
    return ", ".join(repr(v) for v in values)  # '32' and 32 told apart


def _same(value: object, choice: object) -> bool:
    return type(value) is type(choice) and value == choice


def _one_of(*choices: Any, nullable: bool = False) -> Any:
    """A field whose value is one of ``choices`` exactly (``True`` is not ``1``), with a
    "did you mean" hint for near misses."""

    def check(value: Any) -> Any:
        if (value is None and nullable) or any(_same(value, c) for c in choices):
            return value
        allowed = _listing(choices) + (" or null" if nullable else "")
        raise ValueError(f"must be one of {allowed}, got {value!r}{did_you_mean(value, choices)}")

    enum = [*choices, *([None] if nullable else [])]
    return Annotated[Any, PlainValidator(check), WithJsonSchema({"enum": enum})]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_hidden(value: Any) -> Any:
    if value is None or (_is_int(value) and value > 0):
        return value
    if isinstance(value, list) and all(_is_int(v) and v > 0 for v in value):
        return list(value)
    raise ValueError(
        f"must be a positive integer, a list of positive integers or null, got {value!r}"
    )


def _check_devices(value: Any) -> Any:
    if (isinstance(value, str) and value == "auto") or (_is_int(value) and value > 0):
        return value
    raise ValueError(f"must be a positive integer or 'auto', got {value!r}")


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]  # finite: every model sets allow_inf_nan=False
Fraction = Annotated[float, Field(ge=0, le=1)]
OptionalPositiveInt = Annotated[int | None, Field(gt=0)]
Hidden = Annotated[
    Any,
    PlainValidator(_check_hidden),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "exclusiveMinimum": 0},
                {"type": "array", "items": {"type": "integer", "exclusiveMinimum": 0}},
                {"type": "null"},
            ]
        }
    ),
]
Devices = Annotated[
    Any,
    PlainValidator(_check_devices),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"const": "auto", "type": "string"}]}
    ),
]


class _Section(BaseModel):
    """Unknown keys are errors; no bool where a number is wanted, no string for a number (an int
    is fine for a float); no infinite or NaN floats."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _SetsData(_Section):
    """Data kinds with an auxiliary set and OOD sets chosen by name."""

    @model_validator(mode="after")
    def _aux_is_not_an_ood_set(self) -> _SetsData:
        aux, ood = getattr(self, "aux", None), getattr(self, "ood", [])
        if aux is not None and aux in ood:
            raise ConfigError(
                f"config key 'data.aux': the auxiliary set '{aux}' is also an OOD evaluation set "
                "(data.ood): evaluating OOD detection on the data used for distillation would be "
                "optimistic"
            )
        return self


class SpiralData(_SetsData):
    """The paper's artificial data: three interleaved spirals, a ring of auxiliary inputs."""

    name: Literal["spiral"] = "spiral"
    points_per_class: PositiveInt = 1000
    noise: Annotated[float, Field(ge=0)] = Field(
        0.25, description="spiral noise; see configs/spiral.yaml for why not the authors' 0.1"
    )
    aux: Literal["ring"] | None = Field("ring", description="auxiliary inputs: ring or null")
    aux_size: PositiveInt = 3000
    ood: list[Literal[OOD_SETS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["far", "uniform"], description="OOD evaluation sets"
    )
    ood_size: PositiveInt = 1000
    grid_resolution: PositiveInt = Field(
        100, description="uncertainty maps over the input plane: points per side"
    )


class NpzData(_Section):
    """The user's arrays: an ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``,
    optionally ``x_aux``; every ``x_ood_<name>`` array is an OOD set."""

    name: Literal["npz"]
    path: str | None = Field(None, description="the .npz file (required)")
    aux: Literal["x_aux"] | None = Field(
        "x_aux", description="x_aux: the file's auxiliary inputs; null = none"
    )
    grid_resolution: PositiveInt = Field(
        100, description="2-D data only: uncertainty maps over the input plane, points per side"
    )

    @model_validator(mode="after")
    def _path_is_set(self) -> NpzData:
        if not self.path:
            raise ConfigError(
                "config key 'data.path': data.name is 'npz' but data.path is not set "
                "(use --set data.path=FILE)"
            )
        return self


class ImageData(_SetsData):
    """A labelled image dataset; OOD and auxiliary sets are other datasets or synthetic shifts
    of the in-domain images (see :mod:`endd.data.image_bundle`)."""

    name: _one_of(*IN_DOMAIN_DATASETS)  # type: ignore[valid-type]
    path: str | None = Field(
        None, description="root folder of the datasets (null = the default location)"
    )
    aux: str | None = Field(None, description="auxiliary set: a dataset or a shift; null = none")
    aux_size: PositiveInt = 3000
    ood: list[str] = Field(
        default_factory=list, description="OOD evaluation sets: datasets or shifts"
    )
    ood_size: PositiveInt = 1000
    train_size: OptionalPositiveInt = Field(
        None, description="subsample the training set (null = all)"
    )
    test_size: OptionalPositiveInt = Field(None, description="subsample the test set (null = all)")
    augment: bool = Field(False, description="random crop + horizontal flip on training batches")
    channels: _one_of(1, 3, nullable=True) = Field(  # type: ignore[valid-type]
        None, description="convert to 1 (grey) or 3 (RGB) channels (null = native)"
    )
    size: OptionalPositiveInt = Field(
        None, description="resize to this side in pixels (null = native)"
    )
    cache: str | None = Field(
        None,
        description="folder where image sets that cannot be read in place are prepared once "
        "(null = $XDG_CACHE_HOME/endd, else ~/.cache/endd)",
    )

    @model_validator(mode="after")
    def _sets_are_usable(self) -> ImageData:
        data = self.model_dump()
        try:  # the OOD sets alone first, to name the key at fault
            check_image_data({**data, "aux": None})
        except ConfigError as error:
            raise ConfigError(f"config key 'data.ood': {error}") from None
        try:
            check_image_data(data)
        except ConfigError as error:
            raise ConfigError(f"config key 'data.aux': {error}") from None
        return self


#: The ``data`` section's models by kind (the discriminator's tags).
DATA_KINDS: dict[str, type[_Section]] = {"spiral": SpiralData, "npz": NpzData, "image": ImageData}


def data_kind(name: object) -> str | None:
    """The kind of data ``data.name`` names (``spiral``, ``npz`` or ``image``), None if none."""
    if not isinstance(name, str):
        return None
    if name in IN_DOMAIN_DATASETS:
        return "image"
    return name if name in DATA_KINDS else None


def _data_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        name = value.get("name", "spiral")
        return data_kind(name) or (name if isinstance(name, str) else None)
    if isinstance(value, BaseModel):
        return data_kind(getattr(value, "name", None))
    return None


DataConfig = Annotated[
    Annotated[SpiralData, Tag("spiral")]
    | Annotated[NpzData, Tag("npz")]
    | Annotated[ImageData, Tag("image")],
    Discriminator(_data_tag),
]


class ModelConfig(_Section):
    backbone: str = Field(
        "mlp",
        description="a built-in backbone (mlp, small_cnn, vgg16, resnet18, wrn28_10) or an import "
        "path 'pkg.module.ClassName' / 'import:pkg.module:callable'",
    )
    hidden: Hidden = Field(
        default_factory=lambda: [100, 100],
        description="hidden widths (mlp: a list; small_cnn: an int); null = the backbone's own",
    )
    width: OptionalPositiveInt = Field(None, description="backbone width (vgg16: 64)")

    @field_validator("backbone")
    @classmethod
    def _backbone_form(cls, value: str) -> str:
        from endd.models.registry import BACKBONES, is_import_path

        names = ", ".join(BACKBONES)
        if not _BACKBONE.match(value) or not (value in BACKBONES or is_import_path(value)):
            raise ValueError(
                f"must be a backbone name ({names}) or an import path 'pkg.module.ClassName' / "
                f"'import:pkg.module:callable', got {value!r}{did_you_mean(value, BACKBONES)}"
            )
        return value


class EnsembleConfig(_Section):
    members: Annotated[int, Field(ge=2)] = Field(
        10, description="ensemble size (one member has no disagreement)"
    )
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    gradient_clip: Annotated[float | None, Field(gt=0)] = None


class TemperatureConfig(_Section):
    """The annealed distillation temperature: ``initial`` for the first ``hold_fraction`` of the
    steps, then down to ``final`` by ``decay_end_fraction``."""

    initial: PositiveFloat = 5.0
    final: PositiveFloat = 1.0
    hold_fraction: Fraction = 0.3
    decay_end_fraction: Fraction = 0.7

    @model_validator(mode="after")
    def _hold_before_decay_end(self) -> TemperatureConfig:
        if self.hold_fraction > self.decay_end_fraction:
            raise ConfigError(
                "config key 'students.temperature.hold_fraction' must be at most "
                f"'students.temperature.decay_end_fraction' ({self.decay_end_fraction!r}), "
                f"got {self.hold_fraction!r}"
            )
        return self


class StudentsConfig(_Section):
    methods: list[str] = Field(
        default_factory=lambda: list(DEFAULT_METHODS),
        description="student methods to train: names registered in endd.methods.METHODS",
    )
    epochs: PositiveInt = 300
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    gradient_clip: Annotated[float | None, Field(gt=0)] = 10.0
    smoothing: Annotated[float, Field(ge=0, lt=1)] = 1e-4
    teacher: _one_of("cached", "online", "reduced") = Field(  # type: ignore[valid-type]
        "cached",
        description="cached: teacher logits computed once; online: the ensemble runs on each "
        "(augmented) batch; reduced: as cached, but EnD² students read the teacher statistic "
        "mean_m ln π_mc stored at students.reduced_temperatures ([N, K] each instead of the "
        "[N, M, K] logits), interpolated in T between them",
    )
    reduced_temperatures: list[PositiveFloat] | None = Field(
        None,
        description="students.teacher reduced: the temperatures at which the statistic is "
        "stored (exact there, interpolated between); null: 5 levels evenly spaced from "
        "temperature.final to temperature.initial",
    )
    temperature: TemperatureConfig = Field(default_factory=TemperatureConfig)
    end_temperature: PositiveFloat = Field(1.0, description="EnD's fixed distillation temperature")
    aux_weight: PositiveFloat = Field(
        1.0,
        description="+AUX students: weight of each auxiliary input in the loss relative to a "
        "training input",
    )

    @model_validator(mode="after")
    def _reduced_levels_cover_the_schedule(self) -> StudentsConfig:
        levels = self.reduced_temperatures
        if levels is None:
            return self
        if self.teacher != "reduced":
            raise ConfigError(
                "config key 'students.reduced_temperatures' applies to students.teacher "
                f"'reduced' only, got {levels!r} with teacher {self.teacher!r}"
            )
        low = min(self.temperature.initial, self.temperature.final)
        high = max(self.temperature.initial, self.temperature.final)
        if not levels or min(levels) > low or max(levels) < high:
            raise ConfigError(
                "config key 'students.reduced_temperatures' must span the schedule's "
                f"temperatures {low:g}..{high:g} (nothing is extrapolated), got {levels!r}"
            )
        return self

    @field_validator("methods")
    @classmethod
    def _registered_methods(cls, methods: list[str]) -> list[str]:
        from endd.methods import METHODS  # at validation time: methods registered later count

        for method in methods:
            if method not in METHODS:
                raise ValueError(
                    f"names unknown student method '{method}'{did_you_mean(method, METHODS)}; "
                    f"choose from {_listing(METHODS)}"
                )
        twice = sorted({m for m in methods if methods.count(m) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(repr(m) for m in twice)} twice, got {methods!r}")
        return methods


class TeacherMember(_Section):
    """One member of a teacher ensemble brought as a checkpoint of the user's own model."""

    backbone: Annotated[str, Field(min_length=1)] = Field(
        description="a built-in backbone name or an import path 'pkg.module.Class' / "
        "'import:pkg.module:callable' (called with `kwargs` only)"
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="constructor keyword arguments of the backbone"
    )
    weights: Annotated[str, Field(min_length=1)] = Field(
        description="a .safetensors file, or a torch state dict (read with weights_only=True)"
    )


class TeacherConfig(_Section):
    """Where the teacher's predictions come from (everything downstream reads ``teacher/``)."""

    source: _one_of("train", "logits", "checkpoints") = Field(  # type: ignore[valid-type]
        "train",
        description="train: the ensemble this run trains; logits: a folder of member logits "
        "[N, M, K] per split (teacher.path); checkpoints: the user's member models "
        "(teacher.members), run once over every split",
    )
    path: str | None = Field(
        None, description="source logits: a folder laid out like a run's teacher/ (<split>.npy)"
    )
    members: list[TeacherMember] = Field(
        default_factory=list, description="source checkpoints: the members, at least 2"
    )
    cache_dtype: _one_of("auto", "float32", "float16") = Field(  # type: ignore[valid-type]
        "auto",
        description="dtype of the teacher cache (teacher/<split>.npy); auto: float16 from 100 "
        "classes on (the cache is N·M·K numbers), float32 below",
    )

    @model_validator(mode="after")
    def _source_keys(self) -> TeacherConfig:
        wanted = {"logits": "path", "checkpoints": "members"}.get(self.source)
        if self.source == "logits" and not self.path:
            raise ConfigError(
                "config key 'teacher.path' must name a folder of teacher logits when "
                "teacher.source is 'logits' (use --set teacher.path=DIR)"
            )
        if self.source == "checkpoints" and len(self.members) < 1:
            raise ConfigError(
                "config key 'teacher.members' must list the member checkpoints when "
                "teacher.source is 'checkpoints', got []"
            )
        if wanted != "path" and self.path is not None:
            raise ConfigError(
                f"config key 'teacher.path' applies to teacher.source 'logits' only, got "
                f"{self.path!r} with source {self.source!r}"
            )
        if wanted != "members" and self.members:
            raise ConfigError(
                "config key 'teacher.members' applies to teacher.source 'checkpoints' only, "
                f"got {len(self.members)} member(s) with source {self.source!r}"
            )
        return self


class TrainerConfig(_Section):
    accelerator: _one_of(*ACCELERATORS) = "cpu"  # type: ignore[valid-type]
    devices: Devices = Field(
        1,
        description="devices (processes) per node; above 1, every training stage runs under "
        "Lightning DDP (gloo on the CPU), see docs/distributed.md",
    )
    num_nodes: PositiveInt = Field(
        1, description="nodes of `devices` processes each (launch with torchrun or SLURM srun)"
    )
    precision: _one_of(*PRECISIONS) = Field(  # type: ignore[valid-type]
        "32-true", description="Lightning's precision"
    )
    num_threads: OptionalPositiveInt = Field(
        None,
        description="torch intra-op threads of every process, student workers included (null = "
        "torch's default; a student worker: the cores shared out between the workers)",
    )
    workers: OptionalPositiveInt = Field(
        None, description="students trained at once (null: one per core on CPU, else 1)"
    )
    eval_batch_size: PositiveInt = 4096
    logger: _one_of("none", "csv", "tensorboard") = Field(  # type: ignore[valid-type]
        "none",
        description="training curves through Lightning's loggers, under RUN/logs/ (per-epoch "
        "loss, and the temperature for students)",
    )

    @field_validator("logger")
    @classmethod
    def _logger_installed(cls, value: str) -> str:
        import importlib.util

        if value == "tensorboard" and not any(
            importlib.util.find_spec(p) for p in ("tensorboard", "tensorboardX")
        ):
            raise ValueError(
                "is 'tensorboard' but tensorboard is not installed (pip install tensorboard)"
            )
        return value


class Config(_Section):
    """A whole run: every key a run understands, with its default."""

    name: Annotated[str, Field(min_length=1)] = Field("run", description="the run's name")
    seed: Annotated[int, Field(ge=0, le=_SEED_MAX)] = 0
    data: DataConfig = Field(default_factory=SpiralData)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    students: StudentsConfig = Field(default_factory=StudentsConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)

    @model_validator(mode="after")
    def _teacher_fits_students(self) -> Config:
        from endd.methods import get_method

        if self.students.teacher == "online" and self.teacher.source != "train":
            raise ConfigError(
                "config key 'students.teacher' must be 'cached' when teacher.source is "
                f"{self.teacher.source!r} (an online teacher is the ensemble this run trains)"
            )
        members = len(self.teacher.members)
        if self.teacher.source == "checkpoints" and members < 2:
            dirichlet = [m for m in self.students.methods if get_method(m).model_kind.prior_network]
            if dirichlet:
                raise ConfigError(
                    f"config key 'teacher.members' lists {members} member; the students "
                    f"{', '.join(dirichlet)} model the members' disagreement and need at least 2"
                )
        return self
