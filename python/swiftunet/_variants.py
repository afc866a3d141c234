"""Picks the kernel variant of libSwiftUNetC.so this process loads.

A default install (`pip install .`) carries one library, compiled for the machine
that built it, in the package folder next to the extension; nothing is chosen.

A portable install (built with SWIFTUNET_VARIANTS=all, see setup.py) carries one
library per instruction set in `_variants/<name>/libSwiftUNetC.so`, all with the
same SONAME and symbols:

    avx512    AVX-512F/CD/BW/DQ/VL (+ the AVX2 set), SIMD16 register tiles
    avx2      AVX2 + FMA (+ BMI1/2, F16C, MOVBE, LZCNT), SIMD8 blocks for 16 ymm
    baseline  any x86-64 (SSE2) or any arm64 CPU

Before the extension is imported, `preload()` reads the CPU's features, takes the
best variant they allow (or the one SWIFTUNET_VARIANT names, if the CPU can run
it) and loads that file with RTLD_GLOBAL; the extension's DT_NEEDED entry
`libSwiftUNetC.so` then resolves to the library already loaded (the dynamic
loader matches it by SONAME), so no instruction the CPU lacks is ever executed.
"""

import ctypes
import os
import platform
from pathlib import Path

LIBRARY = "libSwiftUNetC.so"
VARIANTS_DIR = Path(__file__).resolve().parent / "_variants"
ENV = "SWIFTUNET_VARIANT"

# Best first. The flags are /proc/cpuinfo's names for what each variant's
# -target-cpu (Package.swift) lets the compiler emit.
_HASWELL = {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm", "popcnt", "sse4_2"}
REQUIRED_FLAGS = {
    "avx512": _HASWELL | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "adx"},
    "avx2": _HASWELL,
    "baseline": set(),
}
ORDER = ("avx512", "avx2", "baseline")

# What preload() did: the variant loaded, its file, the variants carried and why it was chosen.
selected = None
selected_path = None
carried = ()
reason = None


def cpu_flags():
    """The CPU feature flags the kernel reports (Linux /proc/cpuinfo), or None where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                # x86: "flags : ..."; arm64: "Features : ..." (NEON is always there).
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return None


def runnable(variant, flags):
    """True when a CPU with these flags can run the variant (unknown flags: baseline only)."""
    if variant == "baseline":
        return True
    if flags is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return REQUIRED_FLAGS[variant] <= flags


def available():
    """The variants this installation carries, best first (empty for a single-variant install)."""
    if not VARIANTS_DIR.is_dir():
        return ()
    return tuple(v for v in ORDER if (VARIANTS_DIR / v / LIBRARY).is_file())


def choose(carried_variants, flags, requested):
    """(variant, reason) for these carried variants, CPU flags and SWIFTUNET_VARIANT value.

    Raises ImportError when the requested variant is unknown, not carried, or not
    runnable on this CPU (never falls back silently from an explicit request)."""
    if requested:
        if requested not in ORDER:
            raise ImportError(f"{ENV} must be one of {', '.join(ORDER)} (or unset), got {requested!r}")
        if requested not in carried_variants:
            raise ImportError(f"{ENV}={requested}: this installation carries only "
                              f"{', '.join(carried_variants)}")
        if not runnable(requested, flags):
            missing = sorted(REQUIRED_FLAGS[requested] - (flags or set()))
            raise ImportError(f"{ENV}={requested}: this CPU cannot run it (missing CPU features: "
                              f"{', '.join(missing) or 'unknown CPU'})")
        return requested, f"{ENV}={requested}"
    for v in carried_variants:
        if runnable(v, flags):
            return v, "best the CPU runs"
    raise ImportError(f"none of the carried kernel variants ({', '.join(carried_variants)}) runs on this CPU")


def requested_variant():
    """The variant SWIFTUNET_VARIANT asks for ('' when unset)."""
    return os.environ.get(ENV, "").strip()


def loaded_variant(build_summary):
    """The `variant=` field of the loaded library's build_info() string."""
    for item in build_summary.split():
        key, _, value = item.partition("=")
        if key == "variant":
            return value
    return "unknown"


def preload():
    """Loads the chosen variant's library (portable installs); no-op for single-variant ones."""
    global selected, selected_path, carried, reason
    carried = available()
    wanted = requested_variant()
    if not carried:
        # One library, next to the extension: SWIFTUNET_VARIANT is checked against its
        # build_info once loaded (swiftunet/__init__.py).
        return
    selected, reason = choose(carried, cpu_flags(), wanted)
    selected_path = VARIANTS_DIR / selected / LIBRARY
    ctypes.CDLL(str(selected_path), mode=os.RTLD_NOW | os.RTLD_GLOBAL)


def describe():
    """One line on the dispatch: what was carried and why this variant was chosen."""
    if not carried:
        return "one variant, compiled into this installation (no dispatch)"
    return f"carried: {', '.join(carried)}; chosen: {selected} ({reason})"
