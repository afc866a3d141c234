#!/usr/bin/env bash
# Runs every test: the Swift package's tests, then installs the Python package
# from this checkout and runs the Python suite against it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

swift test

"$PYTHON" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$PYTHON" -m pip install --quiet pytest hypothesis safetensors  # safetensors: interop tests in test_io.py
"$PYTHON" -m pip install --quiet .
# Run from outside the source tree so `import swiftunet` is the installed package.
cd python/tests
"$PYTHON" -m pytest -q -p no:cacheprovider .
