"""Atomic artifact I/O: every file is written to a temporary name in its folder, then renamed.

A run killed at any moment leaves each artifact either absent or complete. Only formats that
cannot execute code on load: JSON, YAML, ``.npy`` (``allow_pickle=False``) and safetensors.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from endd.store.integrity import remember_digest


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success rename it into place, else delete it.

    The temporary file is created with the user's umask (mode 0666 minus the umask, like any
    file the user writes), not ``mkstemp``'s private 0600, so artifacts can be shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # a name taken by another writer: draw again
            continue
        except OSError as error:  # no space, no permission: name the artifact, not its temporary
            raise _write_error(error, path, temporary) from error
    try:
        os.close(handle)
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        failed = _write_error(error, path, temporary)
        if failed is error:
            raise
        raise failed from error


def _write_error(error: BaseException, path: Path, temporary: Path) -> BaseException:
    """A failed write of ``path`` (a full disk, a file-size limit, no permission) as an OSError
    that names ``path``: the writers' errors name no file or the temporary one, and numpy's short
    writes and safetensors' I/O errors carry no errno. Any other error (one that names another
    file: an input read while writing) is returned as it is."""
    if isinstance(error, OSError):
        if error.filename is not None and str(error.filename) != str(temporary):
            return error
        if error.errno is not None and error.strerror:
            return OSError(error.errno, error.strerror, str(path))
        return OSError(None, f"could not write it ({error})", str(path))  # numpy: "N requested…"
    if type(error).__name__ == "SafetensorError" and "I/O error" in str(error):
        return OSError(None, f"could not write it ({error})", str(path))
    return error


def _write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    with atomic_path(path) as temporary:
        writer(temporary)


def write_text(path: str | Path, text: str) -> None:
    _write_with(path, lambda p: p.write_text(text, encoding="utf-8"))


def json_text(data: Any) -> str:
    """``data`` as the JSON text :func:`write_json` writes."""
    return json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n"


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json_text(data))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_array(path: str | Path, array: np.ndarray | torch.Tensor) -> None:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()

    def writer(p: Path) -> None:
        with open(p, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)

    _write_with(path, writer)


def write_array_chunks(
    path: str | Path,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    chunks: Iterable[np.ndarray | torch.Tensor],
    *,
    checksum: bool = True,
) -> None:
    """A ``.npy`` of ``shape`` written from consecutive row chunks, so the whole array never has
    to be in memory; atomic like every artifact. The chunks must add up to ``shape[0]`` rows.

    With ``checksum`` the bytes are hashed as they are written and the digest is handed to
    :func:`endd.store.integrity.remember_digest`: recording the file afterwards
    (:func:`~endd.store.integrity.file_record`) does not read it back. Pass False for a file
    nobody records (a shard that is concatenated and deleted)."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    digest = hashlib.sha256() if checksum else None

    def writer(p: Path) -> None:
        rows = 0
        with open(p, "wb") as handle:
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(head, header)
            _write_hashed(handle, head.getvalue(), digest)
            for chunk in chunks:
                if isinstance(chunk, torch.Tensor):
                    chunk = chunk.detach().cpu().numpy()
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                if chunk.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"chunk of shape {chunk.shape} for an array {shape}")
                _write_hashed(handle, memoryview(chunk.reshape(-1).view(np.uint8)), digest)
                rows += len(chunk)
        if rows != shape[0]:
            raise ValueError(f"{rows} rows written for an array of {shape[0]}")

    _write_with(path, writer)
    if digest is not None:
        remember_digest(path, digest.hexdigest())


def _write_hashed(handle, data: bytes | memoryview, digest) -> None:
    """Write all of ``data`` to ``handle`` (a buffered file: short writes are retried by it),
    adding it to ``digest`` unless that is None."""
    handle.write(data)
    if digest is not None:
        digest.update(data)


def read_array(path: str | Path, *, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def write_weights(path: str | Path, module: torch.nn.Module) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    _write_with(path, lambda p: save_file(state, str(p)))
