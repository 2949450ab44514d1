#!/usr/bin/env bash
# Command 1: find a lottery ticket with the CPU default recipe (LeNet-300-100 on Fashion-MNIST).
# Extra arguments go to tools/find_ticket.py, e.g. --set lottery.rounds=3 or --out runs/mine.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec "${COMPRESS_VENV:-.venv}/bin/python" tools/find_ticket.py --recipe recipes/lth_lenet300_fashion.yaml "$@"
