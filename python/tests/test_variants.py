"""Kernel variants and their dispatch (swiftunet/_variants.py).

The choice is tested as a function of (carried variants, CPU flags, SWIFTUNET_VARIANT); the
loading is tested in subprocesses, one per variant this installation carries and this CPU
runs (a portable install, SWIFTUNET_VARIANTS=all): the process maps exactly that variant's
file, build_info() names it, and its forward agrees with the numpy reference.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import swiftunet
from swiftunet import _variants

AVX512_CPU = set().union(*_variants.REQUIRED_FLAGS.values()) | {"sse2"}
AVX2_CPU = _variants.REQUIRED_FLAGS["avx2"] | {"sse2"}
ALL = ("avx512", "avx2", "baseline")


def test_choice_is_the_best_variant_the_cpu_runs(monkeypatch):
    monkeypatch.setattr(_variants.platform, "machine", lambda: "x86_64")
    assert _variants.choose(ALL, AVX512_CPU, "") == ("avx512", "best the CPU runs")
    assert _variants.choose(ALL, AVX2_CPU, "")[0] == "avx2"
    assert _variants.choose(ALL, {"sse2"}, "")[0] == "baseline"
    assert _variants.choose(ALL, None, "")[0] == "baseline"  # flags unknown: only what any CPU runs
    assert _variants.choose(("avx2", "baseline"), AVX512_CPU, "")[0] == "avx2"
    # One missing feature of the avx2 set is enough to refuse it.
    assert _variants.choose(ALL, AVX2_CPU - {"fma"}, "")[0] == "baseline"
    with pytest.raises(ImportError, match="none of the carried kernel variants"):
        _variants.choose(("avx2",), {"sse2"}, "")


def test_arm_cpus_get_the_baseline(monkeypatch):
    monkeypatch.setattr(_variants.platform, "machine", lambda: "aarch64")
    assert _variants.choose(ALL, AVX512_CPU | {"asimd"}, "")[0] == "baseline"


def test_a_requested_variant_is_honoured_or_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(_variants.platform, "machine", lambda: "x86_64")
    assert _variants.choose(ALL, AVX512_CPU, "avx2") == ("avx2", "SWIFTUNET_VARIANT=avx2")
    assert _variants.choose(ALL, AVX512_CPU, "baseline")[0] == "baseline"
    with pytest.raises(ImportError, match=r"SWIFTUNET_VARIANT=avx512: this CPU cannot run it \(missing CPU "
                                          r"features: avx512bw, avx512cd, avx512dq, avx512f, avx512vl\)"):
        _variants.choose(ALL, AVX2_CPU | {"adx"}, "avx512")
    with pytest.raises(ImportError, match="SWIFTUNET_VARIANT=avx2: this installation carries only baseline"):
        _variants.choose(("baseline",), AVX512_CPU, "avx2")
    with pytest.raises(ImportError, match="SWIFTUNET_VARIANT must be one of avx512, avx2, baseline"):
        _variants.choose(ALL, AVX512_CPU, "sse9")


def test_cpu_flags_are_read():
    flags = _variants.cpu_flags()
    if not os.path.exists("/proc/cpuinfo"):
        assert flags is None
        return
    assert flags
    if _variants.platform.machine() == "x86_64":
        assert "sse2" in flags


def _run(code, variant=None):
    env = dict(os.environ)
    env.pop("SWIFTUNET_VARIANT", None)
    if variant is not None:
        env["SWIFTUNET_VARIANT"] = variant
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


_PROBE = r"""
import json, numpy as np, swiftunet
from swiftunet import reference
maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if line.rstrip().endswith("libSwiftUNetC.so")})
m = swiftunet.DiffusionModel(8, 3, hidden_dims=[8, 16], time_dim=16, seed=3)
rng = np.random.default_rng(5)
x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
t = np.array([3, 700])
y = m(x, t)
ref = reference.forward(m.state_dict(), x, t)
err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
print(json.dumps({"info": swiftunet.build_info(), "choice": swiftunet.info()["variant_choice"], "maps": maps,
                  "err": err}))
"""


def _runnable_carried():
    flags = _variants.cpu_flags()
    return [v for v in _variants.available() if _variants.runnable(v, flags)]


@pytest.mark.skipif(not _variants.available(), reason="a single-variant install (build with SWIFTUNET_VARIANTS=all)")
@pytest.mark.parametrize("variant", [None, "avx512", "avx2", "baseline"])
def test_each_variant_loads_alone_and_matches_the_reference(variant):
    if variant is not None and variant not in _runnable_carried():
        pytest.skip(f"{variant}: not carried or not runnable on this CPU")
    proc = _run(_PROBE, variant)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = variant or _runnable_carried()[0]
    assert f"variant={expected} " in res["info"], res["info"]
    why = f"SWIFTUNET_VARIANT={variant}" if variant else "best the CPU runs"
    assert res["choice"] == f"carried: {', '.join(_variants.available())}; chosen: {expected} ({why})"
    assert res["maps"] == [str(_variants.VARIANTS_DIR / expected / _variants.LIBRARY)]
    assert res["err"] < 1e-4


_DIGEST_PROBE = r"""
import hashlib, json, numpy as np, swiftunet
def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()
out = {"info": swiftunet.build_info()}
rng = np.random.default_rng(11)
# Shapes that take every convolution path: Winograd 3x3 (wide and narrow images), the direct
# 3x3 at 4x4, strided down- and transposed up-sampling, attention, odd channel counts.
for name, (size, ch, dims, tdim, batch) in {"rgb32": (32, 3, [16, 32], 32, 3), "gray12": (12, 1, [8, 24, 24], 16, 2),
                                            "rgb20": (20, 3, [24, 40], 24, 1)}.items():
    m = swiftunet.DiffusionModel(size, ch, hidden_dims=dims, time_dim=tdim, seed=7)
    x = rng.standard_normal((batch, ch, size, size)).astype(np.float32)
    t = rng.integers(0, 1000, size=batch)
    y = m(x, t)
    loss, grads = m.loss_and_grad(x, t, y * 0.5)
    out[name] = digest(y, np.float32(loss), *grads.values())
m = swiftunet.DiffusionModel(16, 1, hidden_dims=[16, 32], time_dim=32, seed=1)
tr = swiftunet.Trainer(m, grad_clip=1.0, seed=2)
data = rng.standard_normal((8, 1, 16, 16)).astype(np.float32)
losses = [tr.step(data) for _ in range(3)]
out["train"] = digest(np.array(losses, dtype=np.float32), *tr.model.state_dict().values(),
                      *tr.ema_model().state_dict().values())
print(json.dumps(out))
"""


@pytest.mark.skipif(len(_runnable_carried()) < 2, reason="needs a portable install with two variants this CPU runs")
def test_every_variant_gives_the_same_bits():
    """Every variant keeps the same operations in the same order per element (the register
    blocks only change which register holds a sum), so forwards, gradients and training
    steps agree bit for bit across variants, not only within the parity bound."""
    results = {}
    for variant in _runnable_carried():
        proc = _run(_DIGEST_PROBE, variant)
        assert proc.returncode == 0, proc.stderr
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert f"variant={variant} " in results[variant].pop("info")
    first = next(iter(results.values()))
    for variant, digests in results.items():
        assert digests == first, (variant, digests, first)


@pytest.mark.skipif(not _variants.available(), reason="a single-variant install")
def test_an_unknown_variant_stops_the_import():
    proc = _run("import swiftunet", "sse9")
    assert proc.returncode != 0
    assert "SWIFTUNET_VARIANT must be one of avx512, avx2, baseline" in proc.stderr


@pytest.mark.skipif(bool(_variants.available()), reason="a portable install")
def test_a_single_variant_install_refuses_another_variant():
    proc = _run("import swiftunet", "baseline" if "variant=baseline" not in swiftunet.build_info() else "avx2")
    assert proc.returncode != 0
    assert "this installation carries only the" in proc.stderr


def test_the_loaded_variant_is_the_requested_one():
    """Under SWIFTUNET_VARIANT (CI runs the parity subset once per variant), this process
    really runs that variant's library."""
    requested = os.environ.get("SWIFTUNET_VARIANT")
    info = swiftunet.build_info()
    assert "variant=" in info and "blocks=" in info
    if requested and _variants.available():
        assert f"variant={requested} " in info, info
        maps = {line.split()[-1] for line in open("/proc/self/maps") if line.rstrip().endswith("libSwiftUNetC.so")}
        assert maps == {str(_variants.VARIANTS_DIR / requested / _variants.LIBRARY)}
