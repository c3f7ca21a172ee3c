"""The teacher-cache stage: member logits [N, M, K] on every split, as ``teacher/<split>.npy``.

Everything downstream (students with a cached teacher, evaluation, the report) reads the teacher
from ``teacher/``, never from where it came from. ``teacher.source`` names the source:

- ``train``: the ensemble this run trained (``ensemble/``), run over every split;
- ``logits``: a folder laid out like a run's ``teacher/`` (``train.npy``, ``test.npy``,
  ``aux.npy``, ``ood_<name>.npy``, ``grid.npy``), each [N, M, K] member logits or
  log-probabilities, float16/32/64, checked and copied in chunks (read memory-mapped);
- ``checkpoints``: the user's member models (``teacher.members``), each built from its
  backbone and weights and run once, in batches, over every split's *raw* inputs (the inputs as
  the data files hold them: the members were trained on those, not on endd's standardisation).

Every check is a one-line :class:`~endd.errors.DataError` naming the file and the fix, raised
before anything is written to ``teacher/``; ``done.json`` is written last.
"""

from __future__ import annotations

import functools
import logging
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from endd.data import DataBundle
from endd.data.ondisk import READ_ERRORS
from endd.engine import inference_device, predict_in_batches
from endd.errors import ConfigError, DataError
from endd.losses.statistic import table_chunk_rows, teacher_statistic_table
from endd.methods import get_method
from endd.models.registry import BACKBONES, build_model, resolve_import_path
from endd.pipeline.sharded import world, write_sharded
from endd.store import RunDir, TeacherRows, artifacts
from endd.store.integrity import file_record
from endd.store.models import build_with_weights, load_model
from endd.store.run_dir import statistic_file

log = logging.getLogger("endd")

#: Splits a teacher may lack: without ``grid.npy`` the report shows no ensemble map.
OPTIONAL_SPLITS = ("grid",)
_FLOAT_DTYPES = (np.float16, np.float32, np.float64)
_CHUNK_ROWS = 8192  # rows per chunk when checking and copying logits: memory stays bounded


#: ``rows(split, start, stop)``: the member logits of rows ``start..stop−1`` of ``split``, as
#: consecutive chunks [b, M, K].
SplitRows = Callable[[str, int, int], Iterator[np.ndarray | Tensor]]


@dataclass
class TeacherSource:
    """A checked teacher source. ``open()`` (called when the cache is written, on every rank)
    returns the shape [N, M, K] of each split and the function that computes any slice of its
    rows; ``details`` go into ``done.json``."""

    name: str
    open: Callable[[], tuple[dict[str, tuple[int, ...]], SplitRows]]
    details: dict[str, Any] = field(default_factory=dict)


def prepare_teacher(run: RunDir, config: dict[str, Any], data: DataBundle) -> TeacherSource:
    """Check ``teacher.source`` against the data (files, shapes, values, weights) without
    writing anything; the pipeline calls this before a new run writes its first file."""
    source, section = config["teacher"]["source"], config["teacher"]
    splits = data.unlabelled_splits()
    batch_size = config["trainer"]["eval_batch_size"]
    device = inference_device(config["trainer"])
    if source == "train":  # the ensemble is trained by then: read it when writing

        def open_ensemble() -> tuple[dict[str, tuple[int, ...]], SplitRows]:
            network = load_model(run.ensemble).network.to(device)
            members = config["ensemble"]["members"]
            shapes = {s: (len(x), members, data.num_classes) for s, x in splits.items()}
            return shapes, _member_rows([network], splits, batch_size, stacked=True)

        return TeacherSource("train", open_ensemble)
    if source == "logits":
        folder = Path(section["path"]).expanduser()
        arrays = _checked_folder(folder, data, _needs_members(config))

        def open_folder() -> tuple[dict[str, tuple[int, ...]], SplitRows]:
            def rows(split: str, start: int, stop: int) -> Iterator[np.ndarray]:
                for first in range(start, stop, _CHUNK_ROWS):
                    yield arrays[split][first : min(stop, first + _CHUNK_ROWS)]

            return {split: tuple(a.shape) for split, a in arrays.items()}, rows

        return TeacherSource("logits", open_folder, {"path": str(folder.resolve())})
    networks = [
        _load_member(i, member, data).to(device) for i, member in enumerate(section["members"])
    ]
    raw = data.raw_splits()
    _probe(networks, raw["train"], data.num_classes, "teacher.members")

    def open_members() -> tuple[dict[str, tuple[int, ...]], SplitRows]:
        shapes = {s: (len(x), len(networks), data.num_classes) for s, x in raw.items()}
        return shapes, _member_rows(networks, raw, batch_size, stacked=False)

    details = {"members": [m["weights"] for m in section["members"]]}
    return TeacherSource("checkpoints", open_members, details)


#: From this many classes on, ``teacher.cache_dtype: auto`` stores float16: the cache is
#: N·M·K numbers (ImageNet: 1.28 M × 10 × 1000 is 25.6 GB in float16, twice that in float32).
FLOAT16_FROM_CLASSES = 100


def cache_dtype(setting: str, classes: int) -> np.dtype:
    """The teacher cache's dtype for ``teacher.cache_dtype`` and K classes."""
    if setting == "auto":
        setting = "float16" if classes >= FLOAT16_FROM_CLASSES else "float32"
    return np.dtype(setting)


def cache_teacher(
    run: RunDir, config: dict[str, Any], data: DataBundle, source: TeacherSource | None = None
) -> None:
    """Fill ``teacher/`` from ``teacher.source`` (``source``: already prepared); ``done.json``
    last, with each file's size and checksum.

    Every rank of a process group calls this: each computes its slice of every split's rows
    and writes it as a shard, global rank 0 assembles the files (:mod:`endd.pipeline.sharded`)
    and writes ``done.json``, which lists who wrote which rows. Slices start at multiples of
    ``trainer.eval_batch_size``, so every rank runs the very batches one process would: the
    cache is bit for bit the same for any number of ranks."""
    start = time.perf_counter()
    source = source or prepare_teacher(run, config, data)
    shapes, rows = source.open()
    dtype = cache_dtype(config["teacher"]["cache_dtype"], data.num_classes)
    quantum = config["trainer"]["eval_batch_size"]
    shards: dict[str, list[dict[str, Any]]] = {}
    for split, shape in shapes.items():
        path = run.teacher / f"{split}.npy"
        written = write_sharded(
            path, shape, dtype, functools.partial(rows, split), reuse=True, quantum=quantum
        )
        shards[split] = [r.as_json() for r in written]
    statistic = _write_reduced(run, config, shapes)
    if world()[0] != 0:
        return  # global rank 0 writes done.json
    done: dict[str, Any] = {"source": source.name, **source.details}
    done["splits"] = {split: list(shape) for split, shape in shapes.items()}
    done["dtype"] = dtype.name
    files = [f"{s}.npy" for s in shapes]
    if statistic is not None:
        done["statistic"] = statistic
        files += statistic["files"]
    done["files"] = {name: file_record(run.teacher / name) for name in files}
    if world()[1] > 1:
        done["shards"] = shards
    done["seconds"] = time.perf_counter() - start
    artifacts.write_json(run.marker("teacher"), done)


def reduced_levels(students: dict[str, Any]) -> list[float]:
    """The temperatures at which ``students.teacher: reduced`` stores the teacher statistic:
    ``students.reduced_temperatures``, or 5 levels evenly spaced over the annealing schedule's
    range (its two ends, where the schedule holds, among them)."""
    if students["reduced_temperatures"] is not None:
        return sorted({float(t) for t in students["reduced_temperatures"]})
    ends = sorted((students["temperature"]["final"], students["temperature"]["initial"]))
    return sorted({float(t) for t in np.linspace(ends[0], ends[1], 5)})


def _write_reduced(
    run: RunDir, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]
) -> dict[str, Any] | None:
    """``students.teacher: reduced`` with a student that has a statistic form (EnD²): the
    statistic mean_m ln π_mc of the training (and auxiliary) rows at each level, [N, K] per
    level, as ``teacher/statistic/<split>.T<level>.npy``, computed from the cache just written
    (read a chunk at a time; every rank its slice). Returns what ``done.json`` records."""
    students = config["students"]
    wanted = any(get_method(m).statistic_loss is not None for m in students["methods"])
    if students["teacher"] != "reduced" or not wanted:
        return None
    smoothing, levels = float(students["smoothing"]), reduced_levels(students)
    files = []
    for split in [s for s in ("train", "aux") if s in shapes]:
        logits = TeacherRows([run.teacher / f"{split}.npy"])
        rows, members, classes = shapes[split]
        chunk = table_chunk_rows(members, classes)
        for level in levels:
            name = statistic_file(split, level)

            table = functools.partial(_statistic_rows, logits, level, smoothing, chunk)
            path = run.teacher / name
            write_sharded(path, (rows, classes), np.float32, table, reuse=True, quantum=chunk)
            files.append(name)
    return {"temperatures": levels, "smoothing": smoothing, "files": files}


def _statistic_rows(
    logits: TeacherRows, level: float, smoothing: float, chunk: int, start: int, stop: int
) -> Iterator[Tensor]:
    """The statistic at ``level`` of rows ``start..stop−1``, ``chunk`` rows at a time (``start``
    a multiple of ``chunk``: the values are those of the whole table)."""
    for first in range(start, stop, chunk):
        part = logits[first : min(stop, first + chunk)]
        yield teacher_statistic_table(part, level, smoothing=smoothing)[level]


def _needs_members(config: dict[str, Any]) -> int:
    """The smallest M the configured students can learn from: students that model the
    members' disagreement (Prior Networks) need at least two."""
    methods = config["students"]["methods"]
    return 2 if any(get_method(m).model_kind.prior_network for m in methods) else 1


# ---- source: a folder of logits --------------------------------------------------------------
def _checked_folder(folder: Path, data: DataBundle, min_members: int) -> dict[str, np.ndarray]:
    """Every split file of ``folder``, memory-mapped, after checking it against the data."""
    if not folder.is_dir():
        raise DataError(
            f"teacher.path {folder} is not a folder; point it at a folder of <split>.npy files "
            "(train.npy, test.npy, ...) laid out like a run's teacher/"
        )
    arrays: dict[str, np.ndarray] = {}
    for split, x in data.unlabelled_splits().items():
        path = folder / f"{split}.npy"
        if not path.is_file():
            if split in OPTIONAL_SPLITS:
                log.warning("%s missing: the report will have no ensemble map", path)
                continue
            raise DataError(
                f"teacher logits missing: {path}; write the members' logits on the {split} "
                f"split there as an array [{len(x)}, M, {data.num_classes}]"
            )
        arrays[split] = _checked_logits(path, split, len(x), data.num_classes)
    members = {split: a.shape[1] for split, a in arrays.items()}
    if len(set(members.values())) > 1:
        listing = ", ".join(f"{s}.npy {m}" for s, m in members.items())
        raise DataError(
            f"teacher logits in {folder} disagree on the number of members M ({listing}); every "
            "split must hold the same members"
        )
    m = next(iter(members.values()))
    if m < min_members:
        raise DataError(
            f"teacher logits in {folder} hold M={m} member; EnD² and Proxy students model the "
            "members' disagreement and need M ≥ 2 (or train only end/end_aux students)"
        )
    return arrays


def _checked_logits(path: Path, split: str, rows: int, classes: int) -> np.ndarray:
    """``path`` memory-mapped, after checking its format, shape and values."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except READ_ERRORS as error:
        detail = " ".join(str(error).split())
        raise DataError(
            f"cannot read {path} as a .npy array ({detail}); write it with numpy.save"
        ) from None
    if not isinstance(array, np.ndarray) or array.dtype not in _FLOAT_DTYPES:
        raise DataError(
            f"{path} holds {getattr(array, 'dtype', type(array).__name__)}; teacher logits must "
            "be float16, float32 or float64"
        )
    if array.ndim != 3:
        raise DataError(
            f"{path} has shape {list(array.shape)}; teacher logits must be [N, M, K] "
            "(inputs, members, classes)"
        )
    if array.shape[0] != rows:
        raise DataError(
            f"{path} holds {array.shape[0]} rows but the data's {split} split has {rows}; the "
            "logits must be computed on the same inputs, in the same order"
        )
    if array.shape[2] != classes:
        raise DataError(
            f"{path} has K={array.shape[2]} classes but the data has {classes}; the last axis "
            "must hold one logit per class"
        )
    for start in range(0, rows, _CHUNK_ROWS):
        if not np.isfinite(array[start : start + _CHUNK_ROWS]).all():
            raise DataError(
                f"{path} holds NaN or infinite values (first in rows {start}.."
                f"{min(rows, start + _CHUNK_ROWS) - 1}); teacher logits must be finite"
            )
    return array


# ---- sources that run networks -----------------------------------------------------------------
def _member_rows(
    networks: Sequence[nn.Module], splits: dict[str, Tensor], batch_size: int, *, stacked: bool
) -> SplitRows:
    """``rows(split, start, stop)``: ``networks`` run over rows ``start..stop−1`` of a split,
    a batch at a time (memory does not grow with N), [b, M, K] per batch.

    Args:
        stacked: one batched ensemble returning [B, M, K]; otherwise one network per member,
            each returning [B, K].
    """

    def rows(split: str, start: int, stop: int) -> Iterator[Tensor]:
        x = splits[split]
        for first in range(start, stop, batch_size):
            chunk = x[first : min(stop, first + batch_size)]
            if stacked:
                yield predict_in_batches(networks[0], chunk, batch_size)
            else:
                yield torch.stack(
                    [predict_in_batches(n, chunk, batch_size) for n in networks], dim=1
                )

    return rows


def write_member_logits(
    folder: Path, members: Sequence[nn.Module], data: DataBundle, batch_size: int
) -> dict[str, list[int]]:
    """The members' logits on every split of ``data`` (their *raw* inputs) into ``folder``,
    laid out as ``teacher.source: logits`` reads it (float32: the run picks its own dtype)."""
    raw = data.raw_splits()
    _probe(list(members), raw["train"], data.num_classes, "teacher_members")
    rows = _member_rows(list(members), raw, batch_size, stacked=False)
    shapes = {}
    for split, x in raw.items():
        shape = (len(x), len(members), data.num_classes)
        artifacts.write_array_chunks(
            folder / f"{split}.npy", shape, np.float32, rows(split, 0, len(x))
        )
        shapes[split] = list(shape)
    return shapes


@torch.no_grad()
def _probe(networks: Sequence[nn.Module], x: Tensor, classes: int, what: str) -> None:
    """Each member maps two inputs to [2, K] finite logits, or a one-line error says which."""
    for index, network in enumerate(networks):
        try:
            out = network.eval()(x[:2].to(next(network.parameters()).device))
        except (RuntimeError, TypeError, ValueError, StopIteration) as error:
            detail = " ".join(str(error).split())[:200]
            raise DataError(
                f"{what}[{index}] fails on the data's inputs {list(x.shape[1:])} ({detail}); "
                "members get the raw inputs as the data files hold them"
            ) from None
        if not isinstance(out, Tensor) or tuple(out.shape) != (len(x[:2]), classes):
            shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise DataError(
                f"{what}[{index}] outputs {shape} for a batch of {len(x[:2])}; each member must "
                f"return logits [B, K] with K={classes}, the data's number of classes"
            )


def _load_member(index: int, member: dict[str, Any], data: DataBundle) -> nn.Module:
    """Build ``teacher.members[index]`` and load its weights."""
    key = f"teacher.members[{index}]"
    name, kwargs = member["backbone"], dict(member["kwargs"])
    build: Callable[[], nn.Module]
    if name in BACKBONES:

        def build() -> nn.Module:
            return build_model(
                name, num_classes=data.num_classes, input_shape=data.input_shape, **kwargs
            )

    else:
        factory = resolve_import_path(name)

        def build() -> nn.Module:
            return factory(**kwargs)

    state = _read_weights(key, Path(member["weights"]).expanduser())
    try:
        network = build_with_weights(build, state)
    except (TypeError, ValueError, ConfigError) as error:
        detail = " ".join(str(error).split())
        raise ConfigError(f"{key}: cannot build {name!r} with kwargs {kwargs} ({detail})") from None
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise DataError(
            f"{member['weights']} does not fit {key} ({name}, kwargs {kwargs}): {detail}; check "
            f"the member's backbone and kwargs"
        ) from None
    if not isinstance(network, nn.Module):
        raise ConfigError(f"{key}: {name!r} built a {type(network).__name__}, not an nn.Module")
    return network.eval()


def _read_weights(key: str, path: Path) -> dict[str, Tensor]:
    """A state dict from a safetensors file or a torch file read with ``weights_only=True``
    (nothing in it can run code); a Lightning checkpoint's ``state_dict`` is taken as is."""
    if not path.is_file():
        raise DataError(f"{key}.weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, SafetensorError, pickle.UnpicklingError):
        kind = "safetensors" if path.suffix == ".safetensors" else "torch state dict"
        raise DataError(
            f"cannot read {path} ({key}.weights) as a {kind}: damaged, or a pickle that holds "
            "more than tensors (only weights are loaded, nothing that can run code)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"{path} ({key}.weights) is not a state dict of tensors")
    return state
