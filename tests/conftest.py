"""Shared fixtures: tiny configs that run the whole pipeline in seconds."""

from __future__ import annotations

import os
import tempfile

import pytest

from tiny import TINY_SPIRAL

# The image cache (data.cache, default $XDG_CACHE_HOME/endd) of every run the tests start, in
# this process and in the commands it launches, goes to a folder of its own: never the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="endd-test-cache-")


@pytest.fixture
def tiny_spiral() -> list[str]:
    return list(TINY_SPIRAL)
