"""Using a trained model outside endd's pipeline: predictions for files of new inputs, and
export to a single ONNX or TorchScript file that runs without endd.

- :func:`predict_file` (``endd predict``): a ``.npy``/``.npz``/image folder in, an ``.npz`` of
  probabilities and uncertainty measures out, in batches.
- :func:`export_model` (``endd export``): one graph from raw inputs (standardisation included) to
  named outputs, the measures built from elementary operators (:mod:`endd.deploy.graph`),
  checked against endd right after export.
"""

from __future__ import annotations

__all__ = ["export_model", "predict_file"]


def __getattr__(name: str):
    # torch and the exporters are imported on first use, not by `import endd.deploy`.
    if name == "predict_file":
        from endd.deploy.predict import predict_file

        return predict_file
    if name == "export_model":
        from endd.deploy.export import export_model

        return export_model
    raise AttributeError(f"module 'endd.deploy' has no attribute {name!r}")
