#!/usr/bin/env bash
# Runs every test: the Swift package's tests, then builds the Python package's
# wheel from this checkout (what `pip install .` builds and installs), installs it
# and runs the Python suite against it (test_wheel.py also installs the same
# wheel into a fresh venv and runs it without the Swift toolchain).
#
# Where the Python side runs:
#   PYTHON=/path/to/python ./scripts/test.sh   that interpreter's environment
#   ./scripts/test.sh                          a test venv of its own, .venv-test/
# .venv-test/ is made (once) with --system-site-packages so that packages the
# machine already has are used from there: numpy, and PyTorch, which is too
# large to install for a test run, so its parity tests run wherever torch is
# installed and are reported as skipped elsewhere. Whatever the suite needs and
# the environment lacks (the `test` extra in pyproject.toml) is installed into
# that environment only, and named before it is.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test.sh: $*"; }

# Every Swift test is an XCTest case; without --disable-swift-testing the swift-testing
# runner would also start and report "0 tests in 0 suites".
swift test --disable-swift-testing

if [[ -n "${PYTHON:-}" ]]; then
    say "Python tests with PYTHON=$PYTHON"
else
    venv=.venv-test
    if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        say "creating the test venv $venv (python3 -m venv --system-site-packages)"
        rm -rf "$venv"
        python3 -m venv --system-site-packages "$venv"
    fi
    PYTHON="$PWD/$venv/bin/python"
    say "Python tests in the test venv $venv"
fi

# What the environment lacks of the package's dependencies and its `test` extra
# (distribution names as pyproject.toml lists them).
missing=$("$PYTHON" - <<'EOF'
import importlib.metadata as md, re
text = open("pyproject.toml").read()
lists = [re.search(r'^' + key + r'\s*=\s*\[(.*?)\]', text, re.M).group(1) for key in ("dependencies", "test")]
missing = []
for req in re.findall(r'"([^"]+)"', " ".join(lists)):
    name = re.split(r'[<>=!~; \[]', req, maxsplit=1)[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        missing.append(req)
print(" ".join(missing))
EOF
)
env_dir=$("$PYTHON" -c 'import sys; print(sys.prefix)')
if [[ -n "$missing" ]]; then
    say "installing into $env_dir: $missing, and what they need (pip's list follows)"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install --disable-pip-version-check $missing | { grep '^Successfully installed' || true; }
else
    say "test dependencies already in $env_dir"
fi
# The wheel `pip install .` would build and install, built once and kept for the suite:
# test_wheel.py installs it into a fresh venv and runs it without the toolchain (SWIFTUNET_WHEEL).
wheel_dir=$(mktemp -d)
trap 'rm -rf "$wheel_dir"' EXIT
say "building the wheel from this checkout (pip wheel: setuptools in a temporary environment)"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$wheel_dir" .
wheel=$(echo "$wheel_dir"/swiftunet-*.whl)
say "installing $(basename "$wheel") ($(du -k "$wheel" | cut -f1) kB) into $env_dir"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$wheel"
export SWIFTUNET_WHEEL="$wheel"
# Run from outside the source tree so `import swiftunet` is the installed package.
cd python/tests
"$PYTHON" -m pytest -q -p no:cacheprovider .
