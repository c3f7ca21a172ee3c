"""Tiny configs that run the whole pipeline in seconds (importable from any test folder)."""

#: Overrides that shrink the spiral config to a few seconds end to end.
TINY_SPIRAL = [
    "data.points_per_class=60",
    "data.aux_size=60",
    "data.ood_size=40",
    "data.grid_resolution=8",
    "ensemble.members=3",
    "ensemble.epochs=2",
    "ensemble.batch_size=64",
    "students.epochs=2",
    "students.batch_size=64",
    "model.hidden=[16, 16]",
    "trainer.workers=1",
]
