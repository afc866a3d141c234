"""The package runs without the Swift toolchain.

setup.py copies the Swift runtime libraries libSwiftUNetC.so needs into
``swiftunet/_swift_runtime/`` and points every shipped library at them with
``$ORIGIN``-relative RUNPATHs; a wheel is tagged ``manylinux_2_<N>_<arch>``, N the
newest glibc symbol version its files ask for.

Checked here:
  * the installed package's ELF files (and the wheel's): no RUNPATH outside the
    package, every library they need either in the package or one of the C/C++
    system libraries every Linux has;
  * the wheel's platform tag against the glibc versions its files need (read by a
    small ELF reader below, independent of setup.py's readelf);
  * the wheel installed into a fresh venv (no system site-packages; numpy linked
    in from this environment), then a forward (against the numpy reference) and a
    ``swiftunet.sample`` in a subprocess without LD_LIBRARY_PATH and the toolchain
    off PATH: every file the process maps lies outside the toolchain's folder, and
    the Swift runtime mapped is the wheel's copy; then again with the toolchain's
    folder hidden behind an empty directory in a private mount namespace
    (``unshare -m``; skipped where mount namespaces are not allowed).

The wheel is $SWIFTUNET_WHEEL when set (scripts/test.sh builds it once, installs it
for the suite and passes it on); otherwise it is built here with
``pip wheel`` from the source checkout, incrementally when the checkout's
``.build/`` is already there.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import swiftunet

PACKAGE = Path(swiftunet.__file__).resolve().parent
SOURCE_ROOT = Path(__file__).resolve().parents[2]
RUNTIME_DIR = "_swift_runtime"

#: Libraries a shipped file may take from the system: glibc's and the C++ runtime, which the
#: manylinux policies allow (everything Swift must come from the package).
SYSTEM_LIBRARIES = re.compile(r"^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s)\.so\.\d+$"
                              r"|^ld-linux[-\w.]*\.so\.\d+$")


# ---------------------------------------------------------------------------------------------
# A minimal reader of ELF dynamic sections: DT_NEEDED, DT_RUNPATH/DT_RPATH and the glibc
# versions in the version needs (.gnu.version_r).

DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 1, 5, 15, 29
DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF


def read_elf(path):
    """{'needed': [...], 'runpath': [...], 'versions': {library: [version names]}}, or None when
    the file is not a 64-bit little-endian ELF file with a dynamic section."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return None

    def offset(vaddr):
        for start, off, size in loads:
            if start <= vaddr < start + size:
                return off + vaddr - start
        raise ValueError(f"{path}: address {vaddr:#x} outside every loaded segment")

    entries = []
    for pos in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        entries.append((tag, value))
    strtab = offset(next(v for t, v in entries if t == DT_STRTAB))

    def string(index):
        start = strtab + index
        return data[start:data.index(b"\0", start)].decode()

    out = {"needed": [string(v) for t, v in entries if t == DT_NEEDED], "runpath": [], "versions": {}}
    for t, v in entries:
        if t in (DT_RPATH, DT_RUNPATH):
            out["runpath"] += [p for p in string(v).split(":") if p]
    verneed = next((v for t, v in entries if t == DT_VERNEED), None)
    count = next((v for t, v in entries if t == DT_VERNEEDNUM), 0)
    pos = offset(verneed) if verneed is not None else None
    for _ in range(count):
        _, cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", data, pos)
        names, aux = [], pos + vn_aux
        for _ in range(cnt):
            _, _, _, vna_name, vna_next = struct.unpack_from("<IHHII", data, aux)
            names.append(string(vna_name))
            aux += vna_next
        out["versions"][string(vn_file)] = names
        pos += vn_next
    return out


def elf_files(root):
    """{path: read_elf(path)} for every ELF file with a dynamic section under root."""
    found = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.is_symlink() and (path.suffix == ".so" or ".so." in path.name):
            info = read_elf(path)
            if info is not None:
                found[path] = info
    return found


def check_self_contained(package_dir):
    """Asserts that every ELF file of the package finds what it needs inside the package or
    among SYSTEM_LIBRARIES, through RUNPATH entries relative to its own folder; returns
    {path: read_elf(path)}."""
    files = elf_files(package_dir)
    assert files, f"no shared libraries under {package_dir}"
    names = {p.name for p in files}
    assert "libSwiftUNetC.so" in names and "libswiftCore.so" in names, sorted(names)
    for path, info in files.items():
        where = path.relative_to(package_dir)
        for entry in info["runpath"]:
            assert entry == "$ORIGIN" or entry.startswith("$ORIGIN/"), \
                f"{where}: RUNPATH entry {entry!r} points outside the package"
        dirs = [Path(e.replace("$ORIGIN", str(path.parent), 1)).resolve() for e in info["runpath"]]
        for name in info["needed"]:
            hits = [d / name for d in dirs if (d / name).is_file()]
            if hits:
                assert all(package_dir in h.parents for h in hits), (where, name, hits)
            else:
                assert SYSTEM_LIBRARIES.match(name), \
                    f"{where} needs {name}, which neither the package carries nor every Linux system has"
    return files


def glibc_needed(files):
    newest = (2, 17)
    for info in files.values():
        for versions in info["versions"].values():
            for v in versions:
                m = re.fullmatch(r"GLIBC_(\d+)\.(\d+)", v)
                if m:
                    newest = max(newest, (int(m.group(1)), int(m.group(2))))
    return newest


def toolchain_usr():
    """The toolchain's usr folder (where `swiftc` resolves: /opt/swift/usr/bin/swiftc ->
    /opt/swift/usr), or None without a toolchain on PATH."""
    swiftc = shutil.which("swiftc")
    return Path(os.path.realpath(swiftc)).parent.parent if swiftc else None


def forbidden_folder():
    """The folder no mapped file may come from: the toolchain's usr folder, or only its Swift
    libraries when the toolchain is installed in /usr itself."""
    usr = toolchain_usr()
    if usr is None:
        return None
    return usr / "lib" / "swift" if usr == Path("/usr") else usr


# ---------------------------------------------------------------------------------------------
# The installed package (what the rest of the suite imports)

def test_installed_package_carries_its_swift_runtime():
    if not (PACKAGE / RUNTIME_DIR).is_dir():
        pytest.skip(f"{PACKAGE} is an in-place (editable) build, which uses the toolchain's runtime")
    files = check_self_contained(PACKAGE)
    runtime = sorted(p.name for p in (PACKAGE / RUNTIME_DIR).iterdir())
    assert "libswiftCore.so" in runtime
    # Only what the libraries need, recursively: nothing of Foundation, XCTest or the like.
    assert not [n for n in runtime if "Foundation" in n or "XCTest" in n or "Testing" in n], runtime
    needed = {n for info in files.values() for n in info["needed"]}
    assert set(runtime) <= needed, f"carried but needed by no file: {sorted(set(runtime) - needed)}"


def test_info_names_the_swift_runtime_loaded():
    folder = swiftunet.info()["swift_runtime"]
    assert folder is not None and Path(folder, "libswiftCore.so").is_file()
    if (PACKAGE / RUNTIME_DIR).is_dir() and not os.environ.get("LD_LIBRARY_PATH"):
        assert Path(folder).resolve() == (PACKAGE / RUNTIME_DIR).resolve()


# ---------------------------------------------------------------------------------------------
# The wheel, installed into a fresh venv

@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    given = os.environ.get("SWIFTUNET_WHEEL")
    if given:
        path = Path(given)
        assert path.is_file(), f"SWIFTUNET_WHEEL={given} is not a file"
        return path
    if not (SOURCE_ROOT / "setup.py").is_file() or not (SOURCE_ROOT / "Package.swift").is_file():
        pytest.skip(f"no source checkout at {SOURCE_ROOT} to build a wheel from, and SWIFTUNET_WHEEL is unset")
    if shutil.which("swift") is None:
        pytest.skip("building a wheel needs the Swift toolchain (no `swift` on PATH) and SWIFTUNET_WHEEL is unset")
    out = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("SWIFTUNET_VARIANTS", "SWIFTUNET_VARIANT")}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                           "-w", str(out), str(SOURCE_ROOT)], capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    wheels = list(out.glob("swiftunet-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_tag_says_what_it_needs(wheel, tmp_path):
    # name-version-python-abi-platform.whl
    platform_tag = wheel.name[:-len(".whl")].split("-")[-1]
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path)
    files = check_self_contained(tmp_path / "swiftunet")
    major, minor = glibc_needed(files)
    machine = os.uname().machine
    assert platform_tag == f"manylinux_{major}_{minor}_{machine}", (platform_tag, (major, minor))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh venv (no system site-packages) with the wheel installed and this environment's
    numpy linked in (a folder of symlinks on a .pth line), so nothing is downloaded."""
    import numpy

    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                           "--disable-pip-version-check", "--quiet", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    links = root / "numpy-link"
    links.mkdir()
    numpy_dir = Path(numpy.__file__).resolve().parent
    for sibling in (numpy_dir, numpy_dir.with_name("numpy.libs")):  # numpy.libs: a numpy wheel's own libraries
        if sibling.is_dir():
            (links / sibling.name).symlink_to(sibling)
    (site / "_numpy_from_test.pth").write_text(str(links) + "\n")
    return {"python": python, "site": site, "package": site / "swiftunet", "dir": root}


_PROBE = r"""
import json, sys
import numpy as np
import swiftunet
from swiftunet import reference
m = swiftunet.DiffusionModel(8, 3, hidden_dims=[8, 16], time_dim=16, seed=3)
x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
t = np.array([3, 700])
y = m(x, t)
ref = reference.forward(m.state_dict(), x, t)
err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
imgs = swiftunet.sample(swiftunet.pretrained("digits"), n=2, steps=4, seed=0)
maps = sorted({line.rstrip("\n").split(None, 5)[5] for line in open("/proc/self/maps")
               if len(line.split(None, 5)) == 6 and line.split(None, 5)[5].startswith("/")})
print(json.dumps({"file": swiftunet.__file__, "err": err, "sample_shape": list(imgs.shape),
                  "sample_finite": bool(np.isfinite(imgs).all()), "maps": maps,
                  "swift_runtime": swiftunet.info()["swift_runtime"]}))
"""


def _clean_env():
    """The environment without anything that could lead the loader or Python elsewhere, and
    PATH without the toolchain."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                        "SWIFTUNET_VARIANT", "VIRTUAL_ENV")}
    usr = toolchain_usr()
    keep = [p for p in env.get("PATH", "").split(os.pathsep)
            if p and not (usr is not None and Path(os.path.realpath(p)) == usr / "bin")]
    env["PATH"] = os.pathsep.join(keep or ["/usr/bin", "/bin"])
    return env


def _check_probe(proc, venv):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    package = venv["package"].resolve()
    assert Path(res["file"]).resolve().parent == package, res["file"]
    assert res["err"] < 1e-4
    assert res["sample_shape"] == [2, 1, 16, 16] and res["sample_finite"]
    forbidden = forbidden_folder()
    if forbidden is not None:
        inside = [m for m in res["maps"] if Path(m) == forbidden or forbidden in Path(m).parents]
        assert not inside, f"files mapped from the toolchain's folder {forbidden}: {inside}"
    swift_libs = [m for m in res["maps"] if re.search(r"/lib(swift|SwiftUNetC|dispatch|BlocksRuntime)[^/]*\.so", m)]
    assert swift_libs and all(package in Path(m).resolve().parents for m in swift_libs), swift_libs
    carried = {p.name for p in (package / RUNTIME_DIR).iterdir()}
    mapped = {Path(m).name for m in swift_libs if Path(m).parent.name == RUNTIME_DIR}
    assert "libswiftCore.so" in mapped and mapped <= carried, (mapped, carried)
    assert Path(res["swift_runtime"]).resolve() == package / RUNTIME_DIR
    return res


def test_wheel_runs_without_the_toolchain(venv):
    proc = subprocess.run([str(venv["python"]), "-c", _PROBE], capture_output=True, text=True,
                          env=_clean_env(), cwd=str(venv["dir"]), timeout=300)
    _check_probe(proc, venv)


def test_wheel_runs_with_the_toolchain_hidden(venv, tmp_path):
    """As above, in a mount namespace where the toolchain's folder is an empty directory."""
    forbidden = forbidden_folder()
    if forbidden is None:
        pytest.skip("no Swift toolchain on PATH, so none to hide (the test without it has run)")
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    empty = tmp_path / "empty"
    empty.mkdir()
    hide = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    probe = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c", hide, "sh", str(empty),
                            str(forbidden), "sh", "-c", 'test -z "$(ls -A "$0")"', str(forbidden)],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot hide {forbidden} in a private mount namespace here (unshare -m + mount --bind "
                    f"needs CAP_SYS_ADMIN): {probe.stderr.strip()[:200]}")
    proc = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c", hide, "sh", str(empty),
                           str(forbidden), str(venv["python"]), "-c", _PROBE],
                          capture_output=True, text=True, env=_clean_env(), cwd=str(venv["dir"]), timeout=300)
    _check_probe(proc, venv)
