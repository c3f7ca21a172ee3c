"""Shared fixtures: tiny configs that run the whole pipeline in seconds."""

from __future__ import annotations

import pytest

from tiny import TINY_SPIRAL


@pytest.fixture
def tiny_spiral() -> list[str]:
    return list(TINY_SPIRAL)
