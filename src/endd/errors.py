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


class DamagedArtifactError(RunDirError):
    """A file of a run that no longer matches the size and checksum its sidecar recorded
    (missing, truncated, changed, or another run's file): reported with the command that
    rebuilds it, never silently reused."""

    def __init__(self, path: object, problem: str, rebuild: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.rebuild = rebuild
        super().__init__(f"damaged artifact {self.path}: {problem}; {rebuild}")

    def __reduce__(self):  # raised in a worker process, re-raised in the parent: pickled
        return type(self), (self.path, self.problem, self.rebuild)
