"""Write the files endd needs to distill an ensemble you trained yourself, without endd.

Run it with ``python examples/your_ensemble_files.py OUT`` (a few seconds on a laptop CPU). It
stands in for your own project: three MLPs trained with plain PyTorch on scikit-learn's 8×8
digits, then saved the two ways endd takes a teacher from outside:

1. ``OUT/digits.npz``: the data as endd reads bring-your-own arrays (``x_train``, ``y_train``,
   ``x_test``, ``y_test``: 64 features in [0, 1]).
2. ``OUT/teacher_logits/{train,test}.npy``: the members' logits on each split, [N, M, K]
   (``teacher.source: logits``).
3. ``OUT/members/member{0,1,2}.safetensors`` and ``OUT/digitnets.py`` (the members' class):
   member checkpoints (``teacher.source: checkpoints``).

It then prints the ``endd run`` commands that distill them (docs/your_ensemble.md shows their
output). The members are given the inputs exactly as ``digits.npz`` holds them, so both routes
give the same teacher, and the same students.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

MEMBERS = 3
MODULE = '''
from torch import nn


class DigitsMLP(nn.Module):
    """One member: 64 pixels -> 10 digit logits."""

    def __init__(self, hidden=64):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.layers(x)
'''


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "digitnets.py").write_text(textwrap.dedent(MODULE).lstrip())
    sys.path.insert(0, str(out))
    from digitnets import DigitsMLP

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    splits = {"train": order[:1257], "test": order[1257:]}
    np.savez(
        out / "digits.npz",
        x_train=x[splits["train"]],
        y_train=y[splits["train"]],
        x_test=x[splits["test"]],
        y_test=y[splits["test"]],
    )

    inputs = torch.from_numpy(x[splits["train"]])
    labels = torch.from_numpy(y[splits["train"]])
    members = []
    (out / "members").mkdir(exist_ok=True)
    for seed in range(MEMBERS):
        torch.manual_seed(seed)
        member = DigitsMLP()
        optimiser = torch.optim.Adam(member.parameters(), lr=1e-2)
        for _ in range(150):  # full-batch training: 1,257 images
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(member(inputs), labels).backward()
            optimiser.step()
        save_file(member.state_dict(), str(out / "members" / f"member{seed}.safetensors"))
        members.append(member.eval())

    (out / "teacher_logits").mkdir(exist_ok=True)
    with torch.no_grad():
        for split, index in splits.items():
            batch = torch.from_numpy(x[index])
            logits = torch.stack([member(batch) for member in members], dim=1)  # [N, M, K]
            np.save(out / "teacher_logits" / f"{split}.npy", logits.numpy())
            errors = (logits.softmax(-1).mean(1).argmax(-1).numpy() != y[index]).mean()
            print(f"ensemble {split} error: {100 * errors:.1f} %")

    members_yaml = ", ".join(
        f"{{backbone: digitnets.DigitsMLP, weights: {out}/members/member{i}.safetensors}}"
        for i in range(MEMBERS)
    )
    data = f"--set name=digits --set data.name=npz --set data.path={out}/digits.npz"
    print("\ndistill the logits:")
    print(f"  endd run configs/spiral.yaml --out runs/digits_logits {data} \\")
    print(f"    --set teacher.source=logits --set teacher.path={out}/teacher_logits")
    print("distill the checkpoints:")
    print(f"  PYTHONPATH={out} endd run configs/spiral.yaml --out runs/digits_ckpt {data} \\")
    print(f'    --set teacher.source=checkpoints --set "teacher.members=[{members_yaml}]"')


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "my_ensemble"))
