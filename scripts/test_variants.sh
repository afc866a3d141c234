#!/usr/bin/env bash
# The kernel variants beside the default build (scripts/test.sh tests that one fully; CI runs
# this after it). Bounded: about 15 minutes on 2 cores, most of it compiling.
#   1. `swift test` (every Swift test, the fast kernels against their plain twins over odd
#      shapes among them) once per variant this CPU runs: avx512, avx2, baseline;
#   2. a portable wheel (SWIFTUNET_VARIANTS=all: the three in one package) installed into
#      $PYTHON's environment, then the dispatch tests, which also check that every variant
#      this CPU runs gives the same bits (forwards, gradients, training steps), and
#      test_wheel.py on that wheel (a fresh venv, the toolchain out of reach);
#   3. the forward and training parity tests once per variant, forced with SWIFTUNET_VARIANT
#      (baseline only the dispatch tests: without FMA instructions it is ~70x slower, and
#      step 2 has shown its bits equal to the others').
# Leaves the portable package installed in $PYTHON's environment (scripts/test.sh puts the
# default build back).
#
#   PYTHON=/path/to/python ./scripts/test_variants.sh   (default: the test venv .venv-test/
#                                                        that scripts/test.sh makes)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test_variants.sh: $*"; }
PYTHON="${PYTHON:-$PWD/.venv-test/bin/python}"
"$PYTHON" -c 'import numpy, pytest' || { say "PYTHON=$PYTHON lacks numpy or pytest (run scripts/test.sh first)"; exit 1; }

has_flags() {  # has_flags FLAG...: every FLAG is in /proc/cpuinfo's flags line
    local line
    line=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    for f in "$@"; do [[ "$line" == *" $f "* ]] || return 1; done
}

# The same rule as python/swiftunet/_variants.py's REQUIRED_FLAGS.
runnable=(baseline)
if [[ "$(uname -m)" == x86_64 ]]; then
    if has_flags avx avx2 fma bmi1 bmi2 f16c movbe abm popcnt sse4_2; then
        runnable=(avx2 "${runnable[@]}")
        if has_flags avx512f avx512cd avx512bw avx512dq avx512vl adx; then runnable=(avx512 "${runnable[@]}"); fi
    fi
    build="all"
else
    build="baseline"  # avx512 and avx2 are x86-64 variants
fi
say "this CPU runs: ${runnable[*]}"

for v in "${runnable[@]}"; do
    say "swift test, variant $v"
    SWIFTUNET_VARIANT="$v" swift test --disable-swift-testing --scratch-path ".build-test-$v"
done

wheel_dir=$(mktemp -d)
trap 'rm -rf "$wheel_dir"' EXIT
say "portable wheel (SWIFTUNET_VARIANTS=$build), installed into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
SWIFTUNET_VARIANTS="$build" "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$wheel_dir" .
wheel=$(echo "$wheel_dir"/swiftunet-*.whl)
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$wheel"
cd python/tests
say "dispatch tests, every variant against the others; the portable wheel without the toolchain"
SWIFTUNET_WHEEL="$wheel" "$PYTHON" -m pytest -q -p no:cacheprovider test_variants.py test_info.py test_wheel.py
for v in "${runnable[@]}"; do
    if [[ "$v" == baseline ]]; then
        tests=(test_variants.py test_info.py)
    else
        tests=(test_variants.py test_info.py test_parity.py test_training.py)
    fi
    say "SWIFTUNET_VARIANT=$v: ${tests[*]}"
    SWIFTUNET_VARIANT="$v" "$PYTHON" -m pytest -q -p no:cacheprovider "${tests[@]}"
done
