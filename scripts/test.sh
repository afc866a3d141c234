#!/usr/bin/env bash
# Runs every test: the Swift package's tests, then installs the Python package
# from this checkout and runs the Python suite against it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

swift test

# Test-only dependencies: safetensors for the interop tests, onnx and onnxruntime
# for the ONNX export test, scikit-learn for the digits tests (their data and
# classifier). (PyTorch is too large to install here; its parity test runs
# where torch is already installed and is reported as skipped elsewhere.)
"$PYTHON" -m pip install --quiet pytest hypothesis safetensors onnx onnxruntime scikit-learn
"$PYTHON" -m pip install --quiet .
# Run from outside the source tree so `import swiftunet` is the installed package.
cd python/tests
"$PYTHON" -m pytest -q -p no:cacheprovider .
