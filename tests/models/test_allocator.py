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


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_release_returns_kept_memory_to_the_kernel():
    """With freed memory kept (no mmap, 1 GiB trim threshold), 256 MiB freed stays resident
    until release_freed_memory hands it back."""
    path = keep_freed_memory.__code__.co_filename
    code = (
        "import importlib.util, re, sys\n"
        f"spec = importlib.util.spec_from_file_location('allocator', {path!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "def rss():\n"
        "    text = open('/proc/self/status').read()\n"
        "    return int(re.search(r'VmRSS:\\s+(\\d+)', text).group(1)) >> 10\n"
        "assert module.keep_freed_memory()\n"
        "blocks = [bytearray(b'x' * (1 << 20)) for _ in range(256)]\n"
        "small = bytearray(16)  # above the freed blocks: the heap's top is in use\n"
        "grown = rss(); del blocks\n"
        "kept = rss()\n"
        "released = module.release_freed_memory()\n"
        "print(grown, kept, rss())\n"
        "sys.exit(0 if released and kept > grown - 32 and rss() < kept - 200 else 1)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
