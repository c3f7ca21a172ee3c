"""Training engine: Lightning modules for members and students, batch feeding, the Trainer."""

from endd.engine.batches import batch_loader
from endd.engine.modules import EnsembleModule, StudentModule
from endd.engine.seeding import seeded
from endd.engine.trainer import fit, inference_device
from endd.models.prior import predict_in_batches  # inference, shared with Predictor.predict

__all__ = [
    "EnsembleModule",
    "StudentModule",
    "batch_loader",
    "fit",
    "inference_device",
    "predict_in_batches",
    "seeded",
]
