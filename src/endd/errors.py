"""Exceptions users see. The CLI turns each into a one-line message and a non-zero exit."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(value: object, options: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``value``, or nothing: the hint every
    "unknown name" message ends with."""
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class EnddError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class ConfigError(EnddError, ValueError):
    """An invalid configuration file, key or value."""


class DataError(EnddError, ValueError):
    """Missing, corrupt or malformed data."""


class RunDirError(EnddError):
    """A run directory that is missing, incomplete or belongs to another config."""
