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
    assert d["isa"] == build["isa"]
    assert d["kernel_variant"] == build["variant"] in ("native", "avx512", "avx2", "baseline")
    assert d["register_blocks"] == build["blocks"]
    targets = {"native": "native", "avx512": "skylake-avx512", "avx2": "haswell", "baseline": "generic"}
    assert d["target_cpu"] == build["target-cpu"] == targets[d["kernel_variant"]]
    if d["variants_carried"]:
        # A portable install runs one of what it carries, and says why.
        assert d["kernel_variant"] in d["variants_carried"]
        assert f"chosen: {d['kernel_variant']} " in d["variant_choice"]
    else:
        assert d["variant_choice"] == "one variant, compiled into this installation (no dispatch)"
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
    assert f"kernel variant: {d['kernel_variant']} (register blocks {d['register_blocks']})" in proc.stdout
    assert f"kernel variants: {d['variant_choice']}" in proc.stdout
    assert "vector features: " + (" ".join(d["cpu_features"]) or "unknown") in proc.stdout
