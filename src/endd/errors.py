"""Exceptions users see. The CLI turns each into a one-line message and a non-zero exit."""


class EnddError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class ConfigError(EnddError, ValueError):
    """An invalid configuration file, key or value."""


class DataError(EnddError, ValueError):
    """Missing, corrupt or malformed data."""


class RunDirError(EnddError):
    """A run directory that is missing, incomplete or belongs to another config."""
