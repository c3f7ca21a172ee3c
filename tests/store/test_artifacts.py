"""Atomic artifact I/O: complete or absent, never torn, and created with the user's umask."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from endd.store import artifacts


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        artifacts.write_json(tmp_path / "a.json", {"x": 1})
        artifacts.write_array(tmp_path / "a.npy", np.zeros(3))
    finally:
        os.umask(previous)
    for name in ("a.json", "a.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "out.json"
    artifacts.write_json(target, {"old": True})
    with pytest.raises(RuntimeError), artifacts.atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed mid-write")
    assert artifacts.read_json(target) == {"old": True}  # the previous version, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
