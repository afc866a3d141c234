"""What this installation is: the library's build, the CPU it runs on, threads.

``swiftunet.info()`` returns it as one dict (``python3 -m swiftunet info``
prints it). The vector ISA comes from the compiled library itself (the
instruction set its kernels were compiled for); the CPU's features come from
the operating system, so the two can be compared.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["info", "cpu_features"]

#: The vector features worth naming (others in /proc/cpuinfo are left out).
VECTOR_FEATURES = ("sse2", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                   "avx512dq", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd", "sve", "sve2")


def _parse_build(summary: str) -> Dict[str, str]:
    """'arch=x86_64 isa=avx512 ...' -> {'arch': 'x86_64', 'isa': 'avx512', ...}."""
    fields = {}
    for item in summary.split():
        key, sep, value = item.partition("=")
        if sep:
            fields[key] = value
    return fields


def _cpu_model_and_flags() -> "tuple[Optional[str], List[str]]":
    """(model name, feature flags) from the operating system; (None, []) if unknown."""
    if sys.platform.startswith("linux"):
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None, []
        model, flags = None, []
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "cpu model") and model is None:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = value.split()
        return model, flags
    if sys.platform == "darwin":
        def sysctl(name):
            try:
                return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                                      timeout=5).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                return ""
        model = sysctl("machdep.cpu.brand_string") or None
        flags = (sysctl("machdep.cpu.features") + " " + sysctl("machdep.cpu.leaf7_features")).lower().split()
        if platform.machine() == "arm64":
            flags.append("neon")
        return model, [f.replace(".", "_") for f in flags]
    return None, []


def cpu_features() -> List[str]:
    """The CPU's vector features (of VECTOR_FEATURES) as the operating system reports them."""
    _, flags = _cpu_model_and_flags()
    present = set(flags)
    return [f for f in VECTOR_FEATURES if f in present]


def swift_runtime() -> Optional[str]:
    """The folder of the Swift runtime (libswiftCore.so) this process has loaded: the package's
    own ``_swift_runtime`` for an installed package or wheel, the toolchain's for an in-place
    build; None where the process's mappings cannot be read."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(None, 5)
                if len(fields) == 6 and fields[5].endswith("/libswiftCore.so"):
                    return str(Path(fields[5]).parent)
    except OSError:
        pass
    return None


def info() -> Dict[str, object]:
    """A dict describing this installation:

    ``version``, ``build`` (the loaded library's own summary string) and its
    fields ``arch``, ``target_cpu`` (the ``-target-cpu`` it was compiled for:
    "native" for the build machine's CPU, "skylake-avx512", "haswell", or
    "generic" for any CPU of the architecture), ``isa`` (the vector
    instruction set the kernels were compiled for, e.g. "avx512", "avx2+fma",
    "sse2", "neon"), ``kernel_variant`` (the variant running: "native",
    "avx512", "avx2" or "baseline"), ``register_blocks`` (the GEMM register
    blocks of that variant), ``variants_carried`` (a portable install's
    variants, best first; empty for a single-variant one), ``variant_choice``
    (why this variant runs), ``cpu`` (model name or None), ``cpu_features``
    (the CPU's vector features), ``threads``, ``cpus``, ``abi_version``,
    ``python``, ``numpy``, ``package`` (its directory) and ``swift_runtime``
    (the folder of the Swift runtime libraries loaded, see swift_runtime()).
    """
    import numpy as np

    from . import __version__, _swiftunet, _variants

    summary = _swiftunet.build_info()
    build = _parse_build(summary)
    model, _ = _cpu_model_and_flags()
    isa = build.get("isa", "unknown")
    return {
        "version": __version__,
        "build": summary,
        "arch": build.get("arch", platform.machine()),
        "target_cpu": build.get("target-cpu", "unknown"),
        "isa": isa,
        "kernel_variant": build.get("variant", "unknown"),
        "register_blocks": build.get("blocks", "unknown"),
        "variants_carried": list(_variants.carried),
        "variant_choice": _variants.describe(),
        "cpu": model,
        "cpu_features": cpu_features(),
        "threads": _swiftunet.get_num_threads(),
        "cpus": os.cpu_count(),
        "abi_version": _swiftunet.abi_version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "package": str(Path(__file__).resolve().parent),
        "swift_runtime": swift_runtime(),
    }
