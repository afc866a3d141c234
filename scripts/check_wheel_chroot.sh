#!/usr/bin/env bash
# Runs a swiftunet wheel on a system that has never seen Swift: a minimal Debian root
# (debootstrap --variant=minbase with python3, python3-numpy and python3-venv only), the wheel
# installed into a venv there, then a forward against the numpy reference, a sample, and the
# list of Swift libraries the process maps (all must be the wheel's own). Needs root and
# debootstrap (apt-get install debootstrap); the root (~360 MB, about a minute to make) is kept
# for the next run. Not part of CI (python/tests/test_wheel.py checks the same in a fresh venv
# with the toolchain hidden); a manual check before handing a wheel out.
#
#   ./scripts/check_wheel_chroot.sh dist/swiftunet-*.whl [ROOT_DIR]   (default /tmp/swiftunet-root)
set -euo pipefail

say() { echo "check_wheel_chroot.sh: $*"; }
wheel=${1:?usage: $0 WHEEL [ROOT_DIR]}
root=${2:-/tmp/swiftunet-root}
suite=${SUITE:-bookworm}   # its python3 must be the wheel's (cp311 for bookworm)
[[ -f "$wheel" ]] || { say "no wheel at $wheel"; exit 1; }
command -v debootstrap >/dev/null || { say "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }

if [[ ! -x "$root/usr/bin/python3" ]]; then
    say "making a minimal $suite root in $root"
    debootstrap --variant=minbase --include=python3,python3-numpy,python3-venv "$suite" "$root" \
        http://deb.debian.org/debian >/dev/null
fi
if find "$root" -xdev -name 'libswiftCore.so*' -not -path '*/swiftunet/*' | grep -q .; then
    say "$root holds a Swift runtime outside a swiftunet package; use an empty ROOT_DIR"; exit 1
fi

mkdir -p "$root/tmp/wheel"
rm -f "$root"/tmp/wheel/*.whl
cp "$wheel" "$root/tmp/wheel/"
mount -t proc proc "$root/proc"
trap 'umount "$root/proc"' EXIT
chroot "$root" /bin/sh -euc '
    rm -rf /tmp/venv
    python3 -m venv --system-site-packages /tmp/venv
    /tmp/venv/bin/pip install --quiet --no-deps --no-index /tmp/wheel/*.whl
    cd /tmp && env -i PATH=/usr/bin:/bin /tmp/venv/bin/python -c "
import numpy as np, swiftunet
from swiftunet import reference
m = swiftunet.DiffusionModel(8, 3, hidden_dims=[8, 16], time_dim=16, seed=3)
x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
t = np.array([3, 700])
y = m(x, t)
ref = reference.forward(m.state_dict(), x, t)
err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
imgs = swiftunet.sample(swiftunet.pretrained(\"digits\"), n=4, steps=10, seed=0)
libs = sorted({l.split()[-1] for l in open(\"/proc/self/maps\") if \"swift\" in l.lower()})
print(\"forward: max relative error\", err, \"against the reference\")
print(\"sample:\", imgs.shape, \"finite:\", bool(np.isfinite(imgs).all()))
print(\"kernel variants:\", swiftunet.info()[\"variant_choice\"])
print(\"Swift libraries mapped:\", *libs, sep=\"\\n  \")
pkg = swiftunet.info()[\"package\"]
assert err < 1e-4 and np.isfinite(imgs).all() and all(p.startswith(pkg + \"/\") for p in libs), libs
"
'
say "$(basename "$wheel") runs in $root, a $suite root without Swift"
