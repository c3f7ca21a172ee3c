"""keep_freed_memory: a process-wide malloc setting, so it is exercised in a child process."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from endd.models.allocator import keep_freed_memory


def test_negative_threshold_raises():
    with pytest.raises(ValueError, match="trim_threshold"):
        keep_freed_memory(-1)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_applies_on_glibc():
    path = keep_freed_memory.__code__.co_filename
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('allocator', {path!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "big = bytearray(64 << 20); del big\n"
        "sys.exit(0 if module.keep_freed_memory() else 1)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
