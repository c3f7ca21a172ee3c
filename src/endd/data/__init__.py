"""Datasets as :class:`DataBundle`: standardised splits (tensors, or rows read from disk a batch
at a time), by name from the config."""

from __future__ import annotations

from typing import Any

from endd.data.bundle import DataBundle
from endd.data.image_bundle import IN_DOMAIN_DATASETS
from endd.errors import ConfigError

__all__ = ["DATASETS", "DataBundle", "load_data"]

DATASETS = ("spiral", "npz", *IN_DOMAIN_DATASETS)


def load_data(data: dict[str, Any], seed: int) -> DataBundle:
    """Build the dataset the ``data`` config section names; deterministic given ``seed``."""
    name = data["name"]
    if name == "spiral":
        from endd.data.spiral import load_spiral

        return load_spiral(data, seed)
    if name == "npz":
        from endd.data.arrays import load_npz

        return load_npz(data, seed)
    if name in IN_DOMAIN_DATASETS:
        from endd.data.image_bundle import load_image_bundle

        return load_image_bundle(data, seed)
    raise ConfigError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
