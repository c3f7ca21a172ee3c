"""endd: Ensemble Distribution Distillation (Malinin, Mlodozeniec & Gales, ICLR 2020).

Train an ensemble, distill it into one Prior Network (a network whose output parametrises a
Dirichlet), and read off the ensemble's accuracy and its split of uncertainty into data and
knowledge uncertainty at the cost of a single model.
"""

__version__ = "0.1.0"

# Public names are imported on first use: `import endd` (and `endd --help`) stays fast instead of
# loading Lightning.
_EXPORTS = {
    "Distiller": "endd.lightning",
    "Run": "endd.api",
    "distill_arrays": "endd.api",
    "load_run": "endd.api",
    "Predictor": "endd.models.prior",
    "PriorNetwork": "endd.models.prior",
    "dirichlet_uncertainty": "endd.uncertainty",
    "ensemble_uncertainty": "endd.uncertainty",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'endd' has no attribute {name!r}")
