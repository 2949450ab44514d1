#!/usr/bin/env bash
# Command 2: the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec "${COMPRESS_VENV:-.venv}/bin/python" -m pytest -q "$@"
