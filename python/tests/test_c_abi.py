"""The C interface used from C alone: compile Tests/CABI/forward_demo.c against
the installed library and its header, run it, and check what it printed."""
import os
import subprocess
from pathlib import Path

import numpy as np

import swiftunet
from swiftunet import _variants

ROOT = Path(__file__).resolve().parents[2]
PKG = Path(swiftunet.__file__).resolve().parent
# The library this process runs: next to the extension, or a portable install's chosen variant.
LIB_DIR = _variants.selected_path.parent if _variants.carried else PKG


def test_c_program_runs_a_forward(tmp_path, c_compiler):
    lib = LIB_DIR / "libSwiftUNetC.so"
    header_dir = PKG / "include"
    assert lib.exists(), f"{lib} missing from the installed package"
    assert (header_dir / "swiftunet.h").exists(), "the installed package lacks include/swiftunet.h"
    exe = tmp_path / "forward_demo"
    subprocess.run(
        [c_compiler, "-std=c99", "-Wall", "-Werror", "-o", str(exe), str(ROOT / "Tests/CABI/forward_demo.c"),
         f"-I{header_dir}", f"-L{LIB_DIR}", "-lSwiftUNetC", f"-Wl,-rpath,{LIB_DIR}", "-lm"],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("params=")
    checksum = float(run.stdout.split("checksum=")[1])

    # The same model from Python gives the same checksum.
    m = swiftunet.DiffusionModel(8, 3, hidden_dims=[8, 16, 32], time_dim=16, seed=7)
    i = np.arange(2 * 3 * 8 * 8)
    x = np.sin(0.37 * i).astype(np.float32).reshape(2, 3, 8, 8)
    y = m(x, np.array([0, 999]))
    assert abs(float(np.abs(y.astype(np.float64)).sum()) - checksum) <= 1e-3 * checksum


def test_forward_allocates_nothing_after_the_first_call(tmp_path, c_compiler):
    """Tests/CABI/alloc_count.c replaces malloc and friends for the whole process
    and counts the allocations of 20 forwards after the first calls at a shape."""
    exe = tmp_path / "alloc_count"
    subprocess.run(
        [c_compiler, "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(ROOT / "Tests/CABI/alloc_count.c"),
         f"-I{PKG / 'include'}", f"-L{LIB_DIR}", "-lSwiftUNetC", f"-Wl,-rpath,{LIB_DIR}"],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    counts = {}
    for line in run.stdout.splitlines():
        fields = dict(f.split("=") for f in line.split())
        counts[(int(fields["threads"]), int(fields["batch"]))] = float(fields["allocations_per_forward"])
    assert set(counts) == {(1, 1), (1, 2), (2, 1), (2, 2)}, run.stdout
    # Activations and scratch come from the model's arena, and parallel regions hand
    # their tasks to the workers in place: nothing at any thread count or batch.
    assert all(n == 0 for n in counts.values()), run.stdout
