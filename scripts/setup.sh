#!/usr/bin/env bash
# Idempotent set-up, run by the other scripts: virtualenv, the package, and Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${COMPRESS_VENV:-.venv}
PYTHON=${PYTHON:-python3}

stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: creating $VENV and installing compress with its dev tools (first run only)" >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e '.[dev]'
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# Fashion-MNIST: Debian ships the original IDX files; torchvision downloads them where the network allows.
fmnist=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$fmnist" ] && [ -z "${COMPRESS_DATA:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing dataset-fashion-mnist with apt-get" >&2
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "setup: could not install dataset-fashion-mnist; torchvision will try to download Fashion-MNIST" >&2
  else
    echo "setup: Fashion-MNIST not found at $(dirname "$fmnist") and apt-get is not usable here;" \
         "torchvision will download it when the network allows, or set COMPRESS_DATA to a folder holding it" >&2
  fi
fi
