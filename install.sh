#!/usr/bin/env bash
# Installs searchcomp and what its offline data needs. Usage: bash install.sh
set -euo pipefail
cd "$(dirname "$0")"

# Debian's full Fashion-MNIST (used by spaces/resnet18-fashion.yaml and the tests).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

# torch/torchvision come from PyPI (the CUDA build; it runs on the CPU too).
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet -e ".[dev,ray,postgres]"
python3 -c "import searchcomp, torch, torchvision; print('searchcomp installed; torch', torch.__version__)"
