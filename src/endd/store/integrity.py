"""Sizes and checksums of the artifacts a run reads back, and the check that they still match.

A sidecar (``model.json``, ``last.ckpt.json``, a stage's ``done.json``, …) stores
``file_record(path)`` of each file it vouches for; the stage that reads a file back calls
``check_file`` first. A missing, truncated, bit-flipped or foreign file is then a one-line
``DamagedArtifactError`` that names the file and the command that rebuilds it, never silently
reused and never a crash inside the reader.

A record is ``{"bytes": <size>, "sha256": <hex digest>}``. The hash is streamed in chunks, so
a file of tens of GB is never held in memory.

A stage that checks its inputs before it writes anything and then reads them would hash each file
twice; so each process remembers the digests it computed, keyed by the file's identity and
``stat`` (device, inode, size, modification and change times in ns): a file written, renamed
over or changed since is hashed again. (A change that keeps the size and both times, in the same
process, between two checks, is the one thing this cannot see; ``ctime`` cannot be set back by
the user.)

A writer that hashes what it writes (:func:`endd.store.artifacts.write_array_chunks`) tells this
module the digest of the file it renamed into place (:func:`remember_digest`), so recording that
file does not read it back: one pass over a 25 GB teacher cache instead of two.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from endd.errors import DamagedArtifactError

__all__ = [
    "CHUNK_BYTES",
    "DamagedArtifactError",
    "check_file",
    "check_file_any",
    "file_record",
    "remember_digest",
    "sha256_of",
]

CHUNK_BYTES = 8 << 20  # 8 MiB per read: the hash never holds more than this of a file


_KNOWN_DIGESTS: OrderedDict[tuple, str] = OrderedDict()
_KNOWN_LIMIT = 1024


def sha256_of(path: str | Path, *, chunk_bytes: int = CHUNK_BYTES) -> str:
    """The hex SHA-256 of the file at ``path``, read ``chunk_bytes`` at a time."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _identity(path: Path, stat: os.stat_result) -> tuple:
    return (
        os.path.abspath(path),
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
    )


def remember_digest(path: str | Path, digest: str) -> None:
    """Remember ``digest`` as the SHA-256 of the file now at ``path``: for a writer that hashed
    the bytes it wrote, called right after renaming the file into place. A later
    :func:`file_record` or check of the same unchanged file uses it instead of reading it."""
    path = Path(path)
    _remember(_identity(path, path.stat()), digest)


def _remember(key: tuple, digest: str) -> None:
    _KNOWN_DIGESTS[key] = digest
    _KNOWN_DIGESTS.move_to_end(key)
    while len(_KNOWN_DIGESTS) > _KNOWN_LIMIT:
        _KNOWN_DIGESTS.popitem(last=False)


def _digest(path: Path, stat: os.stat_result) -> str:
    """``sha256_of(path)``, or the digest this process computed for the same unchanged file."""
    key = _identity(path, stat)
    known = _KNOWN_DIGESTS.get(key)
    if known is not None:
        _KNOWN_DIGESTS.move_to_end(key)
        return known
    digest = sha256_of(path)
    if _identity(path, path.stat()) == key:  # unchanged while it was read: remember it
        _remember(key, digest)
    return digest


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of the file at ``path``: what a sidecar stores.

    The hash is streamed (``CHUNK_BYTES`` at a time). Raises ``OSError`` if the file cannot be
    read: call it on a file this process has just written (after renaming it into place, or on
    the temporary file that is renamed: a rename keeps the contents).
    """
    path = Path(path)
    stat = path.stat()
    return {"bytes": stat.st_size, "sha256": _digest(path, stat)}


def check_file(
    path: str | Path,
    record: dict[str, Any],
    *,
    rebuild: str,
    sidecar: str | Path | None = None,
) -> None:
    """Raise ``DamagedArtifactError`` unless the file at ``path`` matches ``record``.

    ``record`` is what ``file_record`` returned when the file was written. The size is checked
    first (one ``stat``), then the SHA-256 (a streamed read). ``rebuild`` is the instruction
    that ends the message, e.g. "delete students/end2 and run `endd distill RUN`". ``sidecar``
    (the file the record was read from) is named in the message when given.

    A ``record`` that is not a valid record (no integer size, no 64-digit hex SHA-256) is
    reported the same way, naming ``sidecar``: a damaged sidecar vouches for nothing.

    The message reads: ``damaged artifact <path>: <what is wrong>; <rebuild>``, where what is
    wrong is "missing", "size X bytes, <sidecar> says Y" or "contents differ from the checksum
    in <sidecar>".
    """
    check_file_any(path, [record], rebuild=rebuild, sidecar=sidecar)


def check_file_any(
    path: str | Path,
    records: Sequence[dict[str, Any]],
    *,
    rebuild: str,
    sidecar: str | Path | None = None,
) -> dict[str, Any]:
    """Like :func:`check_file`, but the file may match any of ``records`` (e.g. a checkpoint
    whose sidecar names the new and the previous file); returns the record it matches. The
    file is hashed at most once. A size mismatch is reported against the first record."""
    path = Path(path)
    where = str(sidecar) if sidecar is not None else "its sidecar"
    parsed = [_parse(record) for record in records]
    if not parsed or any(size is None for size, _ in parsed):
        raise DamagedArtifactError(
            sidecar if sidecar is not None else path,
            f"no valid size and checksum of {path.name} in {where}",
            rebuild,
        )
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DamagedArtifactError(path, "missing", rebuild) from None
    except OSError as error:
        raise DamagedArtifactError(path, f"cannot be read ({error.strerror})", rebuild) from None
    if not path.is_file():
        raise DamagedArtifactError(path, "not a file", rebuild)
    size = stat.st_size
    same_size = [i for i, (expected, _) in enumerate(parsed) if expected == size]
    if not same_size:
        raise DamagedArtifactError(path, f"size {size} bytes, {where} says {parsed[0][0]}", rebuild)
    try:
        digest = _digest(path, stat)
    except OSError as error:
        raise DamagedArtifactError(path, f"cannot be read ({error.strerror})", rebuild) from None
    for i in same_size:
        if parsed[i][1] == digest:
            return records[i]
    raise DamagedArtifactError(path, f"contents differ from the checksum in {where}", rebuild)


def _parse(record: Any) -> tuple[int | None, str]:
    """(size, hex digest) of a record, or (None, "") if it is not a valid record."""
    if not isinstance(record, dict):
        return None, ""
    size, digest = record.get("bytes"), record.get("sha256")
    valid_size = isinstance(size, int) and not isinstance(size, bool) and size >= 0
    if not valid_size or not isinstance(digest, str) or len(digest) != 64:
        return None, ""
    return size, digest.lower()
