"""Training engine: Lightning modules for members and students, batch feeding, the Trainer."""

from endd.engine.batches import batch_loader, predict_in_batches
from endd.engine.modules import EnsembleModule, StudentModule
from endd.engine.trainer import fit

__all__ = ["EnsembleModule", "StudentModule", "batch_loader", "fit", "predict_in_batches"]
