"""Image sets prepared once, chunk by chunk, into ``.npy`` files that later runs reuse.

A set that cannot be read in place (a gzip-compressed IDX file, an SVHN ``.mat``, a folder of
JPEG/PNG files, a set converted to another channel count or size, a synthetic shift) is prepared
once: its images are made a chunk at a time and written with
:func:`endd.store.artifacts.write_array_chunks` (a temporary file renamed into place), then read
back a batch at a time like any ``.npy`` (:class:`endd.data.ondisk.NpyRows`). A set smaller than
:data:`IN_MEMORY_BYTES` is made the same way but kept in memory: nothing is written for it.

Each entry is ``<folder>/images/<label>-<digest>.<part>.npy`` (``images``, sometimes
``labels``) plus a sidecar ``<label>-<digest>.json`` written last. The digest is a hash of the
set's *definition* (dataset, split, files, conversion, shift, seed, size of a draw: everything
that decides its contents but the files' dates); the sidecar holds the *stamp* of the source
files (their paths, sizes and modification times) and the size and SHA-256 of each part. An
entry is reused only when its stamp is that of today's files and each part matches its size and
checksum; otherwise (a source file changed, a part truncated, edited or missing, a sidecar
damaged) it is rebuilt in place, with a notice in the log. Checking costs one read of each part
per run; two processes preparing the same set at once both write it, and the last rename wins
(the contents are the same). Nothing is evicted: deleting the folder, or any entry, is always
safe and costs the next run only the preparation.

The folder is ``data.cache``; null is ``$XDG_CACHE_HOME/endd`` (``~/.cache/endd`` without it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from endd.data.ondisk import ArrayRows, NpyRows, Rows
from endd.errors import DamagedArtifactError, DataError

__all__ = [
    "CACHE_VERSION",
    "IN_MEMORY_BYTES",
    "Part",
    "SetCache",
    "default_cache_folder",
    "stamp_of",
]

log = logging.getLogger("endd")

#: Bumped whenever the way a set is prepared changes: older entries are then not reused.
CACHE_VERSION = 1
#: Sets smaller than this (all parts together) are prepared in memory, not written.
IN_MEMORY_BYTES = 64 << 20

#: One array of an entry: shape, dtype, and a function that yields its rows chunk by chunk.
Part = tuple[tuple[int, ...], np.dtype, Callable[[], Iterable[np.ndarray]]]


def default_cache_folder() -> Path:
    """``$XDG_CACHE_HOME/endd``, or ``~/.cache/endd`` where XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base).expanduser() / "endd"


def stamp_of(paths: Sequence[Path]) -> str:
    """A digest of the files' resolved paths, sizes and modification times (ns)."""
    entries = []
    for path in paths:
        try:
            stat = Path(path).stat()
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror or err}") from None
        entries.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return _digest(entries)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class SetCache:
    """Where prepared image sets live; ``folder`` None keeps every set in memory."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder).expanduser() / "images"

    def prepare(
        self,
        label: str,
        definition: dict[str, Any],
        stamp: str,
        build: Callable[[], dict[str, Part]],
    ) -> dict[str, Rows]:
        """The parts of the set ``definition`` names: reused from the cache, or built.

        Args:
            label: a readable name for the files (``svhn-test``, ``ood-gaussian_noise``).
            definition: JSON-able; everything that decides the contents except file dates.
            stamp: :func:`stamp_of` the source files (a change rebuilds the entry).
            build: returns the parts by name; its chunk functions are called once, in order.

        Returns:
            Each part as rows: :class:`NpyRows` on the cached file, or :class:`ArrayRows` for a
            set smaller than :data:`IN_MEMORY_BYTES`.
        """
        definition = {"version": CACHE_VERSION, **definition}
        stem = f"{label}-{_digest(definition)[:20]}"
        if self.folder is not None:
            reused = self._reuse(stem, definition, stamp)
            if reused is not None:
                return reused
        parts = build()
        size = sum(
            math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype, _ in parts.values()
        )
        if self.folder is None or size < IN_MEMORY_BYTES:
            return {name: ArrayRows(_filled(*part), label) for name, part in parts.items()}
        return self._write(stem, definition, stamp, parts)

    def _paths(self, stem: str) -> tuple[Path, Callable[[str], Path]]:
        assert self.folder is not None
        return self.folder / f"{stem}.json", lambda part: self.folder / f"{stem}.{part}.npy"

    def _reuse(self, stem: str, definition: dict, stamp: str) -> dict[str, Rows] | None:
        from endd.store.integrity import check_file  # the store's layer: imported when used

        sidecar, part_path = self._paths(stem)
        if not sidecar.is_file():
            return None
        try:
            entry = json.loads(sidecar.read_text(encoding="utf-8"))
            if entry["definition"] != definition:
                raise ValueError("the sidecar describes another set")
            if entry["stamp"] != stamp:
                log.info("rebuilding %s: its source files changed", sidecar.with_suffix(""))
                return None
            rows = {}
            for name, record in entry["parts"].items():
                check_file(part_path(name), record, rebuild="rebuilt", sidecar=sidecar)
                rows[name] = NpyRows(part_path(name))
                if list(rows[name].shape) != entry["shapes"][name]:
                    raise ValueError(f"{part_path(name)} is not shaped as its sidecar says")
            return rows
        except DamagedArtifactError as err:
            log.warning("rebuilding the image cache entry %s: %s", err.path, err.problem)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # DataError too
            log.warning("rebuilding the damaged image cache entry %s (%s)", sidecar, err)
        return None

    def _write(self, stem: str, definition: dict, stamp: str, parts: dict[str, Part]) -> dict:
        # the store's atomic writers and checksums; imported when used (the store imports data)
        from endd.store.artifacts import write_array_chunks, write_json
        from endd.store.integrity import file_record

        sidecar, part_path = self._paths(stem)
        log.info("preparing %s (once; later runs read it from there)", sidecar.with_suffix(""))
        try:
            sidecar.unlink(missing_ok=True)  # no sidecar while the parts are rewritten
            for name, (shape, dtype, chunks) in parts.items():
                write_array_chunks(part_path(name), shape, dtype, chunks())
            entry = {
                "definition": definition,
                "stamp": stamp,
                "shapes": {name: list(shape) for name, (shape, _, _) in parts.items()},
                "parts": {name: file_record(part_path(name)) for name in parts},
            }
            write_json(sidecar, entry)
        except OSError as err:
            raise DataError(
                f"cannot write the image cache {self.folder}: {err.strerror or err}; set "
                "data.cache to a writable folder"
            ) from None
        return {name: NpyRows(part_path(name)) for name in parts}


def _filled(shape: tuple[int, ...], dtype: np.dtype, chunks: Callable[[], Iterable]) -> np.ndarray:
    """The array of a part, in memory, from its chunks."""
    out = np.empty(shape, dtype=dtype)
    rows = 0
    for chunk in chunks():
        out[rows : rows + len(chunk)] = chunk
        rows += len(chunk)
    if rows != shape[0]:
        raise ValueError(f"{rows} rows made for an array of {shape[0]}")
    return out
