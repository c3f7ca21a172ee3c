"""Run configuration: typed sections (:mod:`endd.config.schema`), YAML loading, dotted overrides
and one-line errors (:mod:`endd.config.loading`).

A config is a nested mapping. Every key a run understands has a default; a user file or an
override (``--set key.sub=value`` or ``{"key.sub": value}``) may only set known keys (a typo is an
error, not a silently ignored setting), and the resolved config, every default written out, is
saved next to the run's outputs.
"""

from endd.config.loading import (
    DEFAULTS,
    config_schema,
    dump_config,
    load_yaml,
    parse_override,
    resolve_config,
    validate_config,
)
from endd.config.schema import Config, data_kind

__all__ = [
    "DEFAULTS",
    "Config",
    "config_schema",
    "data_kind",
    "dump_config",
    "load_yaml",
    "parse_override",
    "resolve_config",
    "validate_config",
]
