#!/usr/bin/env bash
# A reduced CIFAR-sized EnD² pipeline on one GPU, in under 6 minutes: VGG-16 (batch norm), M = 5,
# 32×32×3 inputs, a few epochs, all five students; prints the card and the throughput (images/s)
# of ensemble training, distillation and inference (ensemble versus one student).
#
#   scripts/gpu_check.sh                    # on a machine with a CUDA GPU
#   GPU_CHECK_TINY=1 scripts/gpu_check.sh   # CPU smoke test of the script itself (≈ 1 min)
#
# Data: Fashion-MNIST resized to 32×32 and repeated to 3 channels when its files are found
# (GPU_CHECK_DATA_ROOT, else the Debian package under /usr/share/datasets), otherwise synthetic
# 32×32×3 images with class-dependent patterns written to an .npz file — no download either way.
#
# Python: $PYTHON if set; else the first of .venv/bin/python and python3 that imports torch,
# lightning and endd; else python3 with src/ on PYTHONPATH if it has torch and lightning (a lent
# GPU machine: no package index there); else a .venv-gpu that reuses an installed torch (--system-site-packages)
# and pip-installs endd into it; else scripts/setup.sh (needs a package index).
#
# Environment:
#   GPU_CHECK_TINY=1      tiny sizes on the CPU (no GPU needed)
#   GPU_CHECK_OUT=DIR     keep the run directory there (default: a temporary one, removed at the end)
#   GPU_CHECK_TIMEOUT=S   limit for the pipeline run in seconds (default 330)
#   OUT=DIR               also write the figures (gpu_check.json) and the run's metrics.json there
set -euo pipefail
cd "$(dirname "$0")/.."

has_endd() { "$1" -c "import torch, lightning, endd" >/dev/null 2>&1; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in .venv-gpu/bin/python .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && has_endd "$candidate"; then
      PY=$candidate
      break
    fi
  done
fi
if [ -z "$PY" ] && PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" has_endd python3; then
  # A machine whose python3 already has torch, lightning and the rest (e.g. a lent GPU with no
  # package index): run endd from the source tree, nothing to install.
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  PY=python3
fi
if [ -z "$PY" ]; then
  if python3 -c "import torch" >/dev/null 2>&1; then
    echo "gpu_check: installing endd into .venv-gpu (reusing the installed torch)" >&2
    python3 -m venv --system-site-packages .venv-gpu
    .venv-gpu/bin/python -m pip install -q -e .
    PY=.venv-gpu/bin/python
  else
    echo "gpu_check: no torch found; running scripts/setup.sh" >&2
    scripts/setup.sh
    PY=.venv/bin/python
  fi
fi

SCRIPT=$(mktemp "${TMPDIR:-/tmp}/endd_gpu_check.XXXXXX.py")
if [ -n "${GPU_CHECK_OUT:-}" ]; then
  RUN_DIR=$GPU_CHECK_OUT
  trap 'rm -f "$SCRIPT"' EXIT
else  # a temporary run: removed at the end (OUT keeps the figures)
  SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/endd-gpu-check.XXXXXX")
  RUN_DIR=$SCRATCH/run
  trap 'rm -rf "$SCRIPT" "$SCRATCH"' EXIT
fi
cat >"$SCRIPT" <<'PYTHON'
"""The check itself: data, one pipeline run, then timed inference."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from endd.data.images.idx import DEBIAN_DATASETS_ROOT, FASHION_MNIST_FOLDER
from endd.engine import predict_in_batches
from endd.pipeline import artifacts
from endd.pipeline.run import run_config
from endd.pipeline.run_dir import RunDir, load_model

TINY = os.environ.get("GPU_CHECK_TINY") == "1"
run_dir = Path(sys.argv[1])
gpu = torch.cuda.is_available()
if not gpu and not TINY:
    sys.exit("gpu_check: no CUDA GPU visible to torch; GPU_CHECK_TINY=1 runs the CPU smoke test")
device_name = torch.cuda.get_device_name(0) if gpu else "CPU (tiny smoke test)"

members = 2 if TINY else 5
if TINY:
    sizes = {"train": 256, "test": 128, "ood": 64}
else:
    sizes = {"train": 20000, "test": 5000, "ood": 2000}
half = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float16
config = {
    "name": "gpu_check",
    "seed": 0,
    "data": {
        "train_size": sizes["train"],
        "test_size": sizes["test"],
        "ood_size": sizes["ood"],
        "aux_size": sizes["ood"],
        "augment": True,
    },
    "model": {"backbone": "vgg16", "hidden": None, "width": 8 if TINY else 64},
    "ensemble": {"members": members, "epochs": 1 if TINY else 3, "batch_size": 128},
    "students": {"epochs": 1 if TINY else 2, "batch_size": 128},
    "trainer": {
        "accelerator": "gpu" if gpu else "cpu",
        "precision": ("bf16-mixed" if half == torch.bfloat16 else "16-mixed") if gpu else "32-true",
        "workers": 1,
        "eval_batch_size": 1024,
    },
}

fashion_root = os.environ.get("GPU_CHECK_DATA_ROOT")
candidates = [Path(fashion_root)] if fashion_root else [DEBIAN_DATASETS_ROOT]
if any((c / FASHION_MNIST_FOLDER).is_dir() or (c / "train-labels-idx1-ubyte.gz").is_file()
       for c in candidates):
    source = "Fashion-MNIST resized to 32×32×3"
    config["data"] |= {
        "name": "fashion_mnist",
        "path": fashion_root,
        "size": 32,
        "channels": 3,
        "ood": ["gaussian_noise", "inverted"],
        "aux": "vflip",
    }
else:
    source = "synthetic 32×32×3 (class patterns + noise)"
    rng = np.random.default_rng(0)
    classes, n_train, n_test, n_ood = 10, sizes["train"], sizes["test"], sizes["ood"]
    # smooth class templates: low-resolution random patterns upsampled to 32×32
    coarse = torch.from_numpy(rng.random((classes, 3, 4, 4), dtype=np.float32))
    templates = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear").numpy()

    def draw(n):
        labels = rng.integers(0, classes, n)
        images = templates[labels] + 0.35 * rng.standard_normal((n, 3, 32, 32), dtype=np.float32)
        return np.clip(images, 0, 1).astype(np.float32), labels

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    path = run_dir.parent / f"{run_dir.name}-synthetic.npz"
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        x_aux=np.clip(x_train[:n_ood, :, ::-1], 0, 1),  # upside down
        x_ood_uniform=rng.random((n_ood, 3, 32, 32), dtype=np.float32),
    )
    # npz inputs are not augmented (crop + flip is for the image datasets)
    config["data"] |= {"name": "npz", "path": str(path), "train_size": None, "test_size": None,
                       "augment": False, "ood": ["uniform"], "aux": "x_aux"}

print(f"gpu_check: {device_name}; data: {source}; VGG-16 width {config['model']['width']}, "
      f"M = {members}; run directory {run_dir}", flush=True)
start = time.perf_counter()
run = run_config(config, run_dir, quiet=True)
pipeline_seconds = time.perf_counter() - start

metrics = artifacts.read_json(run.metrics)
ensemble_spec = artifacts.read_json(run.ensemble / "model.json")
n_train = int(np.load(run.teacher / "train.npy", mmap_mode="r").shape[0])
aux_logits = run.teacher / "aux.npy"
n_aux = int(np.load(aux_logits, mmap_mode="r").shape[0]) if aux_logits.is_file() else 0
rows = []
ensemble_rate = n_train * ensemble_spec["epochs"] / ensemble_spec["train_seconds"]
rows.append(("ensemble training (images/s, all members)", ensemble_rate))
rows.append(("ensemble training (member-images/s)", ensemble_rate * members))
students = [m for m in metrics["models"] if m not in ("individual", "ensemble")]
for method in students:
    spec = artifacts.read_json(run.student(method) / "model.json")
    inputs = n_train + (n_aux if method.endswith("_aux") else 0)
    rate = inputs * spec["epochs"] / spec["train_seconds"]
    rows.append((f"distillation {method} (images/s)", rate))

device = torch.device("cuda" if gpu else "cpu")
x = torch.randn(sizes["test"], 3, 32, 32)
if gpu:
    x = x.to(device)


def inference_rate(network):
    network = network.to(device).eval()
    autocast = torch.autocast("cuda", dtype=half) if gpu else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), autocast:
        predict_in_batches(network, x[:256], 256)  # warm-up
        if gpu:
            torch.cuda.synchronize()
        begin = time.perf_counter()
        predict_in_batches(network, x, config["trainer"]["eval_batch_size"])
        if gpu:
            torch.cuda.synchronize()
    return len(x) / (time.perf_counter() - begin)


ensemble_inference = inference_rate(load_model(run.ensemble).network)
student_inference = inference_rate(load_model(run.student("endd")).network)
rows.append(("inference ensemble (images/s)", ensemble_inference))
rows.append(("inference EnD² student (images/s)", student_inference))

print(f"\nendd gpu_check on {device_name} ({source}), pipeline wall time {pipeline_seconds:.0f} s")
print(f"{'measure':48s} {'value':>12s}")
for label, value in rows:
    print(f"{label:48s} {value:12.0f}")
print(f"{'student / ensemble inference speed-up':48s} {student_inference / ensemble_inference:12.1f}"
      f"  (target ≥ 0.8·M = {0.8 * members:.1f})")
print("stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in metrics["timing"].items()))
errors = {m: metrics["models"][m]["error"] for m in ("ensemble", *students)}
print("test error: " + ", ".join(f"{m} {e:.3f}" for m, e in errors.items()))

out = os.environ.get("OUT")
if out:
    Path(out).mkdir(parents=True, exist_ok=True)
    summary = {"device": device_name, "data": source, "members": members, "tiny": TINY,
               "pipeline_seconds": pipeline_seconds, "throughput": dict(rows),
               "timing": metrics["timing"], "errors": errors}
    (Path(out) / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    (Path(out) / "metrics.json").write_text(run.metrics.read_text())
PYTHON

export PYTHONWARNINGS=ignore
timeout "${GPU_CHECK_TIMEOUT:-330}" "$PY" "$SCRIPT" "$RUN_DIR"
