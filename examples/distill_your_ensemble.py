"""Distill an ensemble you trained yourself into one Prior Network, in your own Lightning loop.

Run it with ``python examples/distill_your_ensemble.py`` (about ten seconds on a laptop CPU;
it prints its wall time). Nothing here uses endd until step 3: the ensemble and the data are
plain PyTorch and Lightning, as in your own project.

1. **Data.** scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), flattened to 64
   features scaled to [0, 1] and split once, with a fixed seed, into 1,347 training and 450 test
   images. A ``LightningDataModule`` yields ``(x, y)`` batches, like any classification
   DataModule.
2. **Ensemble.** Three MLPs (64 → 128 → 10), each from its own random initialisation and with its
   own shuffling, trained with a hand-written PyTorch loop and cross-entropy. They agree on most
   digits and disagree on the hard ones: that disagreement is the ensemble's *knowledge*
   uncertainty.
3. **Distillation.** ``endd.lightning.Distiller`` wraps a fresh MLP of the same shape (the
   student) and the three members (the teacher, frozen, run on every batch; the labels in the
   batches are ignored). The EnD² loss trains the student's outputs as the concentration
   parameters α = exp(z) of a Dirichlet that should put its mass where the members'
   predictions fall. The temperature starts at 2.5 (so the members' sharp predictions and the
   student's flat initial Dirichlet overlap), holds for 30 % of the optimiser steps and decays
   linearly to 1 by 70 %. A plain ``lightning.Trainer`` fits it with the DataModule.
4. **Uncertainty.** ``endd.PriorNetwork(distiller.student).predict(x)`` gives the student's
   class probabilities and its total / data / knowledge uncertainty from one forward pass;
   ``endd.ensemble_uncertainty`` gives the same split for the ensemble from its three
   members' probabilities (three forward passes). The table prints both models' test error
   and mean knowledge uncertainty (the mutual information between the label and the model,
   in nats) on the test digits: the student should be within a few points of the ensemble's
   error and of the same order of knowledge uncertainty.

To keep the student, save its weights (``torch.save(distiller.student.state_dict(), path)``)
and rebuild ``endd.PriorNetwork(mlp())`` around them. Your batches may also carry the members'
logits computed once beforehand, ``(x, teacher_logits [B, M, K])``, so the ensemble is not run
while distilling (see ``endd.lightning``).
"""

from __future__ import annotations

import time

import lightning as L
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import endd
from endd.lightning import Distiller

MEMBERS = 3
MEMBER_EPOCHS = 30
STUDENT_EPOCHS = 40
BATCH_SIZE = 64


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


class Digits(L.LightningDataModule):
    """Step 1: the digits as (x, y) tensors; training batches shuffled."""

    def __init__(self, batch_size: int = BATCH_SIZE) -> None:
        super().__init__()
        self.batch_size = batch_size
        digits = load_digits()
        x = torch.tensor(digits.data / 16.0, dtype=torch.float32)  # pixel values 0..16 -> [0, 1]
        y = torch.tensor(digits.target, dtype=torch.long)
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=450, random_state=0, stratify=y
        )
        self.train = TensorDataset(x_train, y_train)
        self.x_test, self.y_test = x_test, y_test

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(self.train, self.batch_size, shuffle=True, generator=generator)


def train_member(data: Digits, seed: int) -> nn.Module:
    """Step 2: one ensemble member, plain PyTorch."""
    torch.manual_seed(seed)
    model = mlp()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data.train, BATCH_SIZE, shuffle=True, generator=generator)
    for _ in range(MEMBER_EPOCHS):
        for x, y in loader:
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
    return model.eval()


def main() -> None:
    # Models this small gain nothing from several threads, and lose a lot when the CPU is shared.
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = Digits()
    members = [train_member(data, seed) for seed in range(MEMBERS)]
    ensemble_seconds = time.perf_counter() - start

    # Step 3: distill the three members into one student, in a plain Lightning Trainer.
    torch.manual_seed(100)
    distiller = Distiller(
        mlp(),
        teacher=members,
        loss="endd",
        temperature={"initial": 2.5, "final": 1.0, "hold_fraction": 0.3, "decay_end_fraction": 0.7},
    )
    trainer = L.Trainer(
        max_epochs=STUDENT_EPOCHS,
        accelerator="cpu",
        logger=False,  # your own logger receives train_loss and temperature
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(distiller, datamodule=data)
    distill_seconds = time.perf_counter() - start - ensemble_seconds
    final = trainer.callback_metrics
    print(
        f"distilled for {STUDENT_EPOCHS} epochs: final train_loss {float(final['train_loss']):.3f}"
        f", temperature {float(final['temperature_step']):.2f}"
    )

    # Step 4: errors and uncertainty, the ensemble's next to the student's.
    with torch.no_grad():
        member_probs = torch.stack([m(data.x_test) for m in members], dim=1).softmax(dim=-1)
    ensemble = endd.ensemble_uncertainty(member_probs)  # total, data, knowledge, ... per input
    ensemble["probs"] = member_probs.mean(dim=1)
    student = endd.PriorNetwork(distiller.student).predict(data.x_test)  # one forward pass
    print(f"{'model':<10}{'test error':>12}{'mean knowledge uncertainty':>29}")
    for name, out in (("ensemble", ensemble), ("student", student)):
        error = (out["probs"].argmax(dim=-1) != data.y_test).double().mean()
        print(f"{name:<10}{100 * float(error):>11.2f}%{float(out['knowledge'].mean()):>29.4f}")
    total = time.perf_counter() - start
    print(
        f"wall time: {total:.1f} s (ensemble {ensemble_seconds:.1f} s, "
        f"distillation {distill_seconds:.1f} s)"
    )


if __name__ == "__main__":
    main()
