#!/usr/bin/env bash
# Runs tests under the sanitizers, each in its own scratch directory so the
# normal .build/ is left alone. Usage:
#
#   scripts/sanitize.sh            # address, then thread
#   scripts/sanitize.sh address    # swift test under ASan (leaks checked at exit)
#   scripts/sanitize.sh thread     # swift test under TSan
#   scripts/sanitize.sh python     # the Python fuzz/robustness/API/sampling tests with an
#                                  # ASan build of libSwiftUNetC (needs the package
#                                  # installed: python3 -m pip install .)
#
# Extra arguments after the mode go to `swift test` (address, thread) or to
# pytest (python), e.g.
#   scripts/sanitize.sh thread --filter RobustnessTests
#   scripts/sanitize.sh python -k fuzz
#
# address and thread each need a full debug build of the package the first
# time (2-4 minutes on two cores); later runs are incremental. See
# docs/robustness.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

which=("address" "thread")
if [[ $# -ge 1 ]]; then
    which=("$1")
    shift
fi

# Abort on the first report instead of printing it and carrying on, so a
# report always fails the run.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=1}"
# XCTest itself leaks its test-case objects at exit; those reports are not
# ours. Everything allocated by SwiftUNet is still checked.
supp="$(mktemp -t swiftunet-lsan.XXXXXX)"
trap 'rm -f "$supp"' EXIT
printf 'leak:libXCTest.so\n' > "$supp"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$supp:print_suppressions=0}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:second_deadlock_stack=1}"
# Fewer worker threads keep TSan's shadow memory and run time small, but keep
# more than one so that the pool's threads really do race if they can.
export SWIFTUNET_NUM_THREADS="${SWIFTUNET_NUM_THREADS:-2}"

# The sanitizer's report is the useful output; Swift's own crash backtracer
# would only add a slow second trace after it.
export SWIFT_BACKTRACE="${SWIFT_BACKTRACE:-enable=no}"

# The Python tests against libSwiftUNetC built with ASan: the installed
# package is copied to a staging directory, its library replaced by the ASan
# build, and the ASan runtime preloaded into the interpreter (and so into the
# fuzz test's child processes, which inherit the environment).
run_python() {
    local scratch=.build-asan stage=.build-asan/python
    # Release (the package's optimised kernels, instrumented): a debug build
    # makes the tests' larger forwards take minutes each.
    swift build -c release --sanitize=address --scratch-path "$scratch" --product SwiftUNetC
    local lib pkg runtime
    lib="$(swift build -c release --sanitize=address --scratch-path "$scratch" --show-bin-path)/libSwiftUNetC.so"
    if ! pkg="$(cd / && "$PYTHON" -c 'import os, swiftunet; print(os.path.dirname(swiftunet.__file__))')"; then
        echo "sanitize.sh python: swiftunet is not installed; run '$PYTHON -m pip install .' first" >&2
        return 1
    fi
    runtime="$(ls "$(dirname "$(dirname "$(command -v swift)")")"/lib/clang/*/lib/linux/libclang_rt.asan-x86_64.so | head -1)"
    rm -rf "$stage"
    mkdir -p "$stage"
    cp -r "$pkg" "$stage/swiftunet"
    cp "$lib" "$stage/swiftunet/libSwiftUNetC.so"
    # Python's own allocations are not ours to check (and CPython keeps many
    # alive at exit): no leak checking here. The memory-limit tests set
    # RLIMIT_AS, which ASan's shadow memory cannot live with; the leak tests
    # measure malloc, which ASan replaces.
    (cd python/tests &&
        LD_PRELOAD="$runtime" ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1" \
        PYTHONPATH="$(cd ../.. && pwd)/$stage" \
        "$PYTHON" -m pytest -q -p no:cacheprovider test_fuzz.py test_robustness.py test_api.py test_sampling.py test_training.py \
            -k "not memory_error and not huge_config and not thread_creation" "$@")
}

status=0
for s in "${which[@]}"; do
    start=$(date +%s)
    case "$s" in
        address|thread)
            scratch=.build-asan
            [[ "$s" == thread ]] && scratch=.build-tsan
            echo "=== swift test --sanitize=$s --scratch-path $scratch $*"
            if swift test --sanitize="$s" --scratch-path "$scratch" "$@"; then ok=1; else ok=0; fi
            ;;
        python)
            echo "=== Python tests with an ASan libSwiftUNetC $*"
            if run_python "$@"; then ok=1; else ok=0; fi
            ;;
        *) echo "sanitize.sh: unknown mode '$s' (use address, thread or python)" >&2; exit 2 ;;
    esac
    if [[ $ok == 1 ]]; then
        echo "=== $s: clean ($(( $(date +%s) - start )) s)"
    else
        echo "=== $s: FAILED ($(( $(date +%s) - start )) s)" >&2
        status=1
    fi
done
exit $status
