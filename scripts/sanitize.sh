#!/usr/bin/env bash
# Runs the Swift package's tests under the address sanitizer and the thread
# sanitizer, each in its own scratch directory so the normal .build/ is left
# alone. Usage:
#
#   scripts/sanitize.sh            # both
#   scripts/sanitize.sh address    # only ASan (+ UBSan-free; leaks are checked at exit)
#   scripts/sanitize.sh thread     # only TSan
#
# Extra arguments after the sanitizer name go to `swift test`, e.g.
#   scripts/sanitize.sh thread --filter ConcurrencyTests
#
# Each sanitizer needs a full debug build of the package (a few minutes on two
# cores); later runs are incremental. See docs/robustness.md.
set -euo pipefail
cd "$(dirname "$0")/.."

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

status=0
for s in "${which[@]}"; do
    case "$s" in
        address) scratch=.build-asan ;;
        thread) scratch=.build-tsan ;;
        *) echo "sanitize.sh: unknown sanitizer '$s' (use address or thread)" >&2; exit 2 ;;
    esac
    echo "=== swift test --sanitize=$s --scratch-path $scratch $*"
    start=$(date +%s)
    if swift test --sanitize="$s" --scratch-path "$scratch" "$@"; then
        echo "=== $s sanitizer: clean ($(( $(date +%s) - start )) s)"
    else
        echo "=== $s sanitizer: FAILED ($(( $(date +%s) - start )) s)" >&2
        status=1
    fi
done
exit $status
