#!/usr/bin/env bash
# Fashion-MNIST from Debian's package dataset-fashion-mnist (→ /usr/share/datasets/fashion-mnist).
# Only the Fashion-MNIST benchmark needs it; the unit tests write their own tiny IDX files.
set -euo pipefail
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
