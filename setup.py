"""Builds the swiftunet Python package.

`pip install .` runs, in this order:

1. `swift build -c release --product SwiftUNetC` at the repository root (the
   `swift` found on PATH), into `.build/` (or `.build-portable/` when
   SWIFTUNET_PORTABLE is set to anything but "0", which Package.swift reads to
   drop `-target-cpu native`). SwiftPM builds incrementally, so repeated
   installs only rebuild what changed. Its output is echoed line by line with
   the elapsed time, and a line every HEARTBEAT_SECONDS says it is still at
   work; pip shows these with `pip install -v .`.
2. copies `libSwiftUNetC.so` into the package (`swiftunet/libSwiftUNetC.so`)
   and the C header into `swiftunet/include/swiftunet.h`;
3. compiles the extension `swiftunet._swiftunet` against that copy, with
   RUNPATH `$ORIGIN` so it finds the library next to itself.

Portable build: with SWIFTUNET_VARIANTS=all (or a comma-separated subset of
avx512,avx2,baseline), step 1 runs once per variant (SWIFTUNET_VARIANT=<name>
for Package.swift, scratch path `.build-<name>/`), each library goes to
`swiftunet/_variants/<name>/libSwiftUNetC.so`, and at import time
swiftunet/_variants.py loads the best one the CPU runs (SWIFTUNET_VARIANT
forces a lower one). No library is then put next to the extension, whose
RUNPATH also names the least demanding variant's folder as a fallback.

libSwiftUNetC.so finds the Swift runtime (libswiftCore.so, ...) through its
own RUNPATH, which swiftc sets to the toolchain's runtime directory; this
script checks that and relinks with an explicit `-rpath` if it is missing.
The installed package therefore needs the toolchain to stay where it was at
build time, and needs no environment variables.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
INCLUDE_DIR = Path("Sources") / "SwiftUNetC" / "include"
HEADER = INCLUDE_DIR / "swiftunet.h"
PRODUCT = "SwiftUNetC"
LIBRARY = "libSwiftUNetC.so"


def _portable() -> bool:
    # Same rule as Package.swift: anything but "0" (an unset variable is "0").
    return os.environ.get("SWIFTUNET_PORTABLE", "0") != "0"


_START = time.monotonic()

#: The kernel variants a portable build can carry, best first (Package.swift's SWIFTUNET_VARIANT).
ALL_VARIANTS = ("avx512", "avx2", "baseline")


def _requested_variants() -> list:
    """The variants of a portable build (SWIFTUNET_VARIANTS), best first, or [] for the single
    default one. 'all' is avx512, avx2 and baseline on x86-64, baseline alone elsewhere."""
    value = os.environ.get("SWIFTUNET_VARIANTS", "").strip()
    if not value:
        return []
    # avx512 and avx2 are x86-64 instruction sets; elsewhere only baseline exists.
    allowed = ALL_VARIANTS if platform.machine().lower() in ("x86_64", "amd64") else ("baseline",)
    names = list(allowed) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in names if v not in allowed]
    if bad or not names:
        raise BuildSwiftError(f"SWIFTUNET_VARIANTS must be 'all' or a comma-separated list of "
                              f"{', '.join(allowed)} on {platform.machine()}, got {value!r}")
    return [v for v in ALL_VARIANTS if v in names]  # best first, each once


def _log(msg: str) -> None:
    print(f"swiftunet build [{time.monotonic() - _START:5.0f} s]: {msg}", flush=True)


#: Seconds without output from `swift build` after which a line says it is still at work
#: (whole-module optimisation compiles the library in one step of a few minutes).
HEARTBEAT_SECONDS = 20


def _run_streamed(cmd, env) -> int:
    """Runs `cmd`, echoing each line it prints with the elapsed time, plus a line
    every HEARTBEAT_SECONDS while it is silent; returns its exit code. pip shows
    these lines with `pip install -v .` (and all of them when the build fails)."""
    _log("$ " + " ".join(str(c) for c in cmd))
    proc = subprocess.Popen([str(c) for c in cmd], cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    last = {"time": time.monotonic(), "beats": 0}
    done = threading.Event()

    def heartbeat():
        while not done.wait(1):
            if time.monotonic() - last["time"] >= HEARTBEAT_SECONDS:
                last["time"] = time.monotonic()  # the next one HEARTBEAT_SECONDS later
                last["beats"] += 1
                why = (" (each Swift module is optimised as a whole, so a step prints nothing until it is done)"
                       if last["beats"] == 1 else "")
                _log("swift build: still compiling" + why)

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                last["time"] = time.monotonic()
                _log(line)
        return proc.wait()
    finally:
        done.set()
        beat.join()


class BuildSwiftError(RuntimeError):
    pass


def _find_swift() -> str:
    swift = shutil.which("swift")
    if swift is None:
        raise BuildSwiftError(
            "swiftunet needs the Swift toolchain (Swift 6.0 or newer) to build its "
            "library, but no `swift` executable is on PATH. Install Swift from "
            "https://www.swift.org/install/ (or add its usr/bin to PATH) and retry."
        )
    return swift


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    _log("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], cwd=str(ROOT), **kwargs)


def _runtime_library_paths(swift: str) -> list:
    """The toolchain's Swift runtime directories (swift -print-target-info)."""
    try:
        proc = _run([swift, "-print-target-info"], check=True, capture_output=True, text=True)
        info = json.loads(proc.stdout)
        return [p for p in info.get("paths", {}).get("runtimeLibraryPaths", []) if p]
    except (subprocess.CalledProcessError, ValueError, OSError) as exc:
        _log(f"warning: could not read the toolchain's runtime paths ({exc})")
        return []


def _runpath(library: Path) -> list:
    """DT_RUNPATH/DT_RPATH entries of an ELF file, or None if readelf is missing."""
    readelf = shutil.which("readelf")
    if readelf is None:
        return None
    proc = subprocess.run([readelf, "-d", str(library)], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    entries = []
    for line in proc.stdout.splitlines():
        if "(RUNPATH)" in line or "(RPATH)" in line:
            start, end = line.find("["), line.rfind("]")
            if start >= 0 and end > start:
                entries.extend(p for p in line[start + 1 : end].split(":") if p)
    return entries


def build_swift_library(variant: str = None) -> Path:
    """Runs swift build (for one kernel variant when given) and returns the built libSwiftUNetC.so."""
    swift = _find_swift()
    env = dict(os.environ)  # passes SWIFTUNET_PORTABLE / SWIFTUNET_VARIANT through to Package.swift
    if variant is not None:
        scratch = ROOT / f".build-{variant}"
        env["SWIFTUNET_VARIANT"] = variant
        env.pop("SWIFTUNET_PORTABLE", None)
    else:
        scratch = ROOT / (".build-portable" if _portable() else ".build")
    base = [swift, "build", "-c", "release", "--product", PRODUCT, "--scratch-path", scratch]

    what = f"variant {variant}" if variant else ("portable" if _portable() else "for this CPU")
    _log(f"compiling the Swift library ({what}); "
         "the first build takes a few minutes, later ones only rebuild what changed")
    code = _run_streamed(base, env)
    if code != 0:
        raise BuildSwiftError(f"`swift build` failed with exit code {code} (see above)")
    _log("Swift library built")
    bin_path = _run(base + ["--show-bin-path"], env=env, check=True, capture_output=True, text=True)
    library = Path(bin_path.stdout.strip().splitlines()[-1]) / LIBRARY
    if not library.is_file():
        raise BuildSwiftError(f"`swift build` succeeded but {library} does not exist")

    # The library must find the Swift runtime without LD_LIBRARY_PATH.
    runtime_dirs = _runtime_library_paths(swift)
    runpath = _runpath(library)
    missing = [d for d in runtime_dirs if runpath is None or d not in runpath]
    if missing:
        _log(f"{LIBRARY} RUNPATH {runpath} lacks {missing}; relinking with an explicit rpath")
        extra = []
        for d in missing:
            extra += ["-Xlinker", "-rpath", "-Xlinker", d]
        code = _run_streamed(base + extra, env)
        if code != 0:
            raise BuildSwiftError(f"`swift build` (relink with rpath) failed with exit code {code}")
    return library


def _copy_if_changed(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and int(s.st_mtime) == int(d.st_mtime):
            return
    # Copy to a temporary name and rename: a process that has the old library
    # loaded keeps its mapping intact.
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


class BuildPyClean(build_py):
    """build_py that starts from an empty build/lib*/swiftunet, so that a file
    removed from the sources (or excluded from the package) does not linger in
    setuptools' in-tree build directory and end up in the next wheel. Only
    Python files and copies live there; the slow part (SwiftPM's .build/) is
    left alone, so rebuilds stay incremental."""

    def run(self):
        pkg = (Path(self.build_lib) / "swiftunet").resolve()
        source = (ROOT / "python").resolve()
        if pkg.is_dir() and source not in pkg.parents and pkg != source:
            shutil.rmtree(pkg)
        super().run()


class BuildExtWithSwift(build_ext):
    """build_ext that first builds libSwiftUNetC.so and puts it in the package."""

    def _package_dir(self) -> Path:
        # Where swiftunet/_swiftunet*.so goes: build/lib.../swiftunet, or the
        # source package for --inplace (editable installs).
        return Path(self.get_ext_fullpath("swiftunet._swiftunet")).resolve().parent

    def run(self):
        pkg = self._package_dir()
        try:
            variants = _requested_variants()
            if variants:
                # One library per variant under _variants/; the extension links against the
                # least demanding one (same symbols and SONAME in all), _variants.py picks.
                for variant in variants:
                    _log(f"building kernel variant {variant}")
                    _copy_if_changed(build_swift_library(variant), pkg / "_variants" / variant / LIBRARY)
                for stale in [v for v in ALL_VARIANTS if v not in variants]:
                    shutil.rmtree(pkg / "_variants" / stale, ignore_errors=True)
                (pkg / LIBRARY).unlink(missing_ok=True)
                link_dir = pkg / "_variants" / variants[-1]
            else:
                library = build_swift_library()
                # A portable build's variants left in place would be loaded instead of this one.
                shutil.rmtree(pkg / "_variants", ignore_errors=True)
                _copy_if_changed(library, pkg / LIBRARY)
                link_dir = pkg
        except BuildSwiftError as exc:
            sys.stderr.write(f"\nerror: {exc}\n\n")
            raise SystemExit(1)
        self._variants = variants
        if not self.inplace:
            _copy_if_changed(ROOT / HEADER, pkg / "include" / "swiftunet.h")
        for ext in self.extensions:
            ext.library_dirs = [str(link_dir)] + list(ext.library_dirs or [])
            if variants:
                # Without swiftunet/_variants.py's preload (e.g. the extension imported on its
                # own), the loader falls back to the least demanding variant carried.
                fallback = "-Wl,-rpath,$ORIGIN/_variants/" + variants[-1]
                if fallback not in ext.extra_link_args:
                    ext.extra_link_args = list(ext.extra_link_args) + [fallback]
        _log("compiling the CPython extension")
        # Relink every time: a few seconds, and the link flags depend on the variants built.
        self.force = True
        super().run()
        _log("done")

    def get_outputs(self):
        outputs = list(super().get_outputs())
        pkg = self._package_dir()
        variants = getattr(self, "_variants", None)
        if variants is None:
            variants = _requested_variants()
        if variants:
            outputs.extend(str(pkg / "_variants" / v / LIBRARY) for v in variants)
        else:
            outputs.append(str(pkg / LIBRARY))
        if not self.inplace:
            outputs.append(str(pkg / "include" / "swiftunet.h"))
        return outputs


extension = Extension(
    "swiftunet._swiftunet",
    sources=["python/swiftunet/_swiftunet.c"],
    include_dirs=[str(INCLUDE_DIR)],
    depends=[str(HEADER)],
    libraries=["SwiftUNetC"],
    extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
    extra_link_args=["-Wl,-rpath,$ORIGIN"],
)

setup(
    package_dir={"": "python"},
    packages=["swiftunet"],
    # The shipped trained weights (swiftunet.pretrained); not a package, so listed here.
    package_data={"swiftunet": ["weights/*.safetensors"]},
    ext_modules=[extension],
    cmdclass={"build_py": BuildPyClean, "build_ext": BuildExtWithSwift},
    zip_safe=False,
)
