"""swiftunet.info() and `python3 -m swiftunet info`: the vector ISA the library
was compiled for (from the library itself), the kernel variant in use, and the
CPU's vector features (from the operating system)."""

import subprocess
import sys

import swiftunet


def test_info_names_the_build_and_the_cpu():
    d = swiftunet.info()
    build = dict(item.split("=", 1) for item in swiftunet.build_info().split())
    assert d["build"] == swiftunet.build_info()
    assert d["isa"] == build["isa"] == d["kernel_variant"]
    assert d["target_cpu"] == build["target-cpu"] in ("native", "portable")
    assert d["isa"] in ("avx512", "avx2+fma", "avx2", "avx", "sse4.2", "sse2", "sve", "neon", "scalar")
    assert d["threads"] == swiftunet.get_num_threads()
    assert d["version"] == swiftunet.__version__
    features = set(d["cpu_features"])
    # The library runs here, so the CPU has what it was compiled for.
    needs = {"avx512": {"avx512f"}, "avx2+fma": {"avx2", "fma"}, "avx2": {"avx2"}, "avx": {"avx"}}
    if features:
        assert needs.get(d["isa"], set()) <= features, (d["isa"], features)


def test_info_names_isa_kernel_variant_and_cpu_features():
    proc = subprocess.run([sys.executable, "-m", "swiftunet", "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    d = swiftunet.info()
    assert f"vector ISA: {d['isa']} " in proc.stdout
    assert f"kernel variant: {d['kernel_variant']}" in proc.stdout
    assert "vector features: " + (" ".join(d["cpu_features"]) or "unknown") in proc.stdout
