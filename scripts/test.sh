#!/usr/bin/env bash
# Command 2: the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
python="${COMPRESS_VENV:-.venv}/bin/python"
if [ $# -gt 0 ]; then
  exec "$python" -m pytest -q "$@"
fi
# The tests that run OpenVINO's runtime in their own process go in a pytest process of their own: once it
# has run, other native code in the same process crashed (SIGSEGV in poll) -- a known issue, see
# tests/conftest.py. compress itself measures export.json's OpenVINO accuracies in a child process.
openvino_tests=(tests/bench tests/export/test_export_openvino.py)
"$python" -m pytest -q --durations=20 "${openvino_tests[@]/#/--ignore=}"
exec "$python" -m pytest -q "${openvino_tests[@]}"
