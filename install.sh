#!/usr/bin/env bash
# Installs searchcomp and what its offline data needs. Usage: bash install.sh
# Prints what it did in a few lines; apt's and pip's own output goes to build/install.log
# (shown when a step fails).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p build
LOG="$PWD/build/install.log"
: >"$LOG"
EXTRAS="dev,docs,ray,postgres"

fail() {
  echo "install.sh: $1 failed; the end of build/install.log:" >&2
  tail -n 40 "$LOG" >&2
  exit 1
}

# Debian's full Fashion-MNIST (used by spaces/resnet18-fashion.yaml and the tests).
FASHION=/usr/share/datasets/fashion-mnist
if [ -d "$FASHION" ]; then
  echo "data: Debian's dataset-fashion-mnist is installed ($FASHION)"
elif command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  { $SUDO apt-get update -qq &&
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } \
    >>"$LOG" 2>&1 || fail "apt-get install dataset-fashion-mnist"
  echo "data: installed Debian's dataset-fashion-mnist ($FASHION)"
else
  echo "data: no apt-get here; Fashion-MNIST is downloaded on first use (when online)"
fi

# torch/torchvision come from PyPI (the CUDA build; it runs on the CPU too).
python3 -m pip install --upgrade pip >>"$LOG" 2>&1 || fail "pip install --upgrade pip"
python3 -m pip install -e ".[$EXTRAS]" >>"$LOG" 2>&1 || fail "pip install -e .[$EXTRAS]"
new=$(grep '^Successfully installed' "$LOG" | tail -n 1 | wc -w)
new=$(( new > 2 ? new - 2 : 0 ))
echo "pip: searchcomp installed from $PWD (editable, extras $EXTRAS); $new package(s) installed or upgraded, the rest were there (log: build/install.log)"
python3 -c "import searchcomp, torch, torchvision as tv; print(f'ok: searchcomp {searchcomp.__version__}, torch {torch.__version__}, torchvision {tv.__version__}; next: searchcomp --help')"
