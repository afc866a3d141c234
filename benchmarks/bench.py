#!/usr/bin/env python3
"""swiftunet forward-pass benchmark, against the numpy reference and peers.

    python3 benchmarks/bench.py                 # everything, one round (several minutes on 2 cores)
    python3 benchmarks/bench.py --rounds 2      # two sweeps, best round kept (for the record)
    python3 benchmarks/bench.py --quick         # fewer repeats, no scaling section
    python3 benchmarks/bench.py --threads 1 --cases rgb32-small --batches 1
    python3 benchmarks/bench.py --json results.json
    python3 benchmarks/bench.py --variants all  # every kernel variant this CPU runs (portable install)

What it measures (see docs/benchmarks.md for a full run and how to read it):

- Cases: {32x32x3 [32,64,128], 32x32x3 [64,128,256], 28x28x1 [32,64,128]}
  x batch {1, 8}, each at 1 and 2 threads (time_dim 128, seed-0 weights).
- Every (case, threads, engine) runs in a fresh subprocess, so each reports
  its own peak RSS (VmHWM of /proc/self/status: the high-water mark of the
  whole process, Python and imports included) and nothing is shared between
  engines.
  All engines get the same weights (swiftunet's seed-0 state_dict, saved to
  an .npz) and the same inputs, and the same thread count:
    swiftunet     swiftunet.set_num_threads(n), forward(x, t, out=buf)
    reference     swiftunet.reference.forward (float64 numpy), BLAS threads = n
                  (OPENBLAS/OMP_NUM_THREADS); fewer repeats, it is slow.
                  OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed from this
                  subprocess's environment only (they slow current numpy).
    onnxruntime   the graph from swiftunet.onnx_export.export_onnx,
                  intra_op_num_threads = n, inter_op 1, sequential execution
    torch         benchmarks/torch_model.py, torch.set_num_threads(n),
                  set_num_interop_threads(1), torch.inference_mode()
  Peers that are not installed are left out (shown as "-").
- Kernel variants: a portable install (SWIFTUNET_VARIANTS=all pip install .)
  carries an avx512, an avx2 and a baseline library. --variants all (or a
  list) times swiftunet once per variant the CPU can run, each in its own
  subprocess with SWIFTUNET_VARIANT=<name>, in the same run as the peers; the
  table has one swiftunet line per variant. Without --variants, swiftunet is
  the variant the installation picks by itself. The header names the CPU
  model and the variant(s). The baseline variant (no FMA instructions, ~70x
  slower) is timed over 3 calls after 1 warm-up.
- Time: median of >= 10 timed calls after warm-up (2 calls, then until 0.3 s
  have passed); timed calls continue past 10 until 2 s have passed (max 100).
- GFLOP/s: count_flops() below / median time. FLOPs = 2 x the multiply-adds
  of direct convolution and matmul: Conv2d Ho*Wo*Cout*Cin*kh*kw,
  ConvTranspose2d Hin*Win*Cin*Cout*kh*kw (every tap, as the scatter form does),
  Linear in*out, attention 2*N*N*C (q.k and attn.v); per sample. Norms,
  activations, softmax, bias adds and the sinusoid are not counted (< 1%).
- % of peak: GFLOP/s / (single-core FMA peak x threads). The peak is measured
  by a small C program (independent FMA chains of the widest vector ISA the
  compiler targets with -march=native, best of 30 short trials, run at the
  start and at the end of the run, higher kept, so that other users' load
  lowers it as little as possible; the multi-thread probe is printed for
  information only); when no C compiler is found the constant 165
  GFLOP/s/core is used. The header says which. The FLOP count is that of
  direct convolution, so an engine using a fast algorithm (Winograd, as
  swiftunet's 3x3 convolutions do) reports "effective" GFLOP/s, which can
  exceed the FMA peak.
- "swift/best peer" = swiftunet time / fastest of (onnxruntime, torch) time:
  below 1 means swiftunet is faster.
- Memory: resident bytes per swiftunet model, for each case: one subprocess
  makes 5 models one after another and reads VmRSS after each, then runs two
  batch-1 forwards on each (the arena is sized by the first, filled by the
  second) and reads it again; per model = the growth from the
  first model to the fifth / 4 (the first also pays one-time costs), printed
  with its ratio to the raw parameter bytes.
- Scaling: swiftunet alone on the [32,64,128] RGB model, batch 1,2,4,8,16 at
  32x32 and image size 16, 32, 64 at batch 1, at the highest thread count.
- Second-thread speedup: swiftunet's time at 1 thread / time at the highest
  thread count, for every model at the largest batch, two ways. "From the
  table" divides the two rows' kept medians, which may come from rounds
  minutes apart. "Paired" runs one subprocess that alternates the two thread
  counts call by call (set_num_threads between calls; >= 10 pairs, then
  until 4 s have passed, max 200) and reports each count's median and the
  median (and quartiles) of the per-pair ratios, so that a slow spell of the
  host slows both halves of a pair instead of one row. Needs 1 among
  --threads and no --quick.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PEAK_PER_CORE = 165.0  # GFLOP/s, fp32 FMA, used only when the probe cannot run

# name -> (image_size, channels, hidden_dims)
MODELS = {
    "rgb32-small": (32, 3, [32, 64, 128]),
    "rgb32-large": (32, 3, [64, 128, 256]),
    "gray28-small": (28, 1, [32, 64, 128]),
}
TIME_DIM = 128
ENGINES = ("swiftunet", "reference", "onnxruntime", "torch")


# --------------------------------------------------------------------------
# FLOP counting


def count_flops(channels, hidden_dims, time_dim, batch, height, width, breakdown=False):
    """FLOPs of one forward pass = 2 x direct multiply-adds (see module doc)."""
    d = [int(v) for v in hidden_dims]
    L = len(d) - 1
    T = int(time_dim)
    macs = {}

    def add(kind, n):
        macs[kind] = macs.get(kind, 0) + n

    def conv(cin, cout, k, ho, wo):
        add("conv", ho * wo * cout * cin * k * k)

    def res(cin, cout, h, w):
        conv(cin, cout, 3, h, w)
        add("linear", T * cout)
        conv(cout, cout, 3, h, w)
        if cin != cout:
            conv(cin, cout, 1, h, w)

    add("linear", T * 4 * T + 4 * T * T)              # time MLP
    h, w = height, width
    conv(channels, d[0], 3, h, w)                      # init_conv
    for i in range(L):
        res(d[i], d[i + 1], h, w)
        h, w = h // 2, w // 2
        conv(d[i + 1], d[i + 1], 4, h, w)              # down, output size
    c = d[L]
    res(c, c, h, w)
    conv(c, 3 * c, 1, h, w)                            # qkv
    n = h * w
    add("attention", 2 * n * n * c)                    # q.k and attn.v over all heads
    conv(c, c, 1, h, w)                                # proj
    res(c, c, h, w)
    for j in range(L):
        i = L - 1 - j
        add("conv_transpose", h * w * d[i + 1] * d[i + 1] * 16)   # input size
        h, w = h * 2, w * 2
        res(2 * d[i + 1], d[i], h, w)
    conv(d[0], channels, 3, h, w)                      # out_conv
    flops = {k: 2 * v * batch for k, v in macs.items()}
    total = sum(flops.values())
    return (total, flops) if breakdown else total


# --------------------------------------------------------------------------
# FMA peak probe

_PEAK_C = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512F__)
typedef __m512 V;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ISA "avx512"
static float sum(V v) { return _mm512_reduce_add_ps(v); }
#elif defined(__FMA__)
typedef __m256 V;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ISA "avx2-fma"
static float sum(V v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0; for (int i = 0; i < 8; i++) s += t[i]; return s; }
#else
#error "no FMA"
#endif
#define CHAINS 12
static long ITERS;
static volatile float sink;
static void *work(void *arg) {
    V a[CHAINS];
    for (int k = 0; k < CHAINS; k++) a[k] = SET1(1.0f + k * 1e-3f);
    V b = SET1(0.999999f), c = SET1(1e-6f);
    V a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5];
    V a6 = a[6], a7 = a[7], a8 = a[8], a9 = a[9], a10 = a[10], a11 = a[11];
    for (long i = 0; i < ITERS; i++) {   /* 12 independent chains, written out */
        a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c);
        a4 = FMA(a4, b, c); a5 = FMA(a5, b, c); a6 = FMA(a6, b, c); a7 = FMA(a7, b, c);
        a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
    }
    float s = sum(a0) + sum(a1) + sum(a2) + sum(a3) + sum(a4) + sum(a5)
            + sum(a6) + sum(a7) + sum(a8) + sum(a9) + sum(a10) + sum(a11);
    sink = s;
    return NULL;
}
static double now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1;
    ITERS = argc > 2 ? atol(argv[2]) : 20000000L;
    pthread_t th[64];
    double t0 = now();
    for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, work, NULL);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    double dt = now() - t0;
    printf("%s %.3f\n", ISA, (double)n * ITERS * CHAINS * LANES * 2 / dt / 1e9);
    return 0;
}
"""


def measure_peak(max_threads, trials=30):
    """{'source', 'isa', 'per_core', 'by_threads': {n: GFLOP/s}}."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    fallback = {
        "source": f"constant {DEFAULT_PEAK_PER_CORE:g} GFLOP/s/core (no C compiler to measure it)",
        "isa": "?",
        "per_core": DEFAULT_PEAK_PER_CORE,
        "by_threads": {n: DEFAULT_PEAK_PER_CORE * n for n in range(1, max_threads + 1)},
    }
    if cc is None:
        return fallback
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(_PEAK_C)
        try:
            subprocess.run([cc, "-O2", "-march=native", "-pthread", str(src), "-o", str(exe)],
                           check=True, capture_output=True, timeout=60)
            by_threads, isa = {}, "?"
            for n in range(1, max_threads + 1):
                best = 0.0
                for _ in range(trials):
                    out = subprocess.run([str(exe), str(n), "5000000"], check=True,
                                         capture_output=True, text=True, timeout=60).stdout.split()
                    isa, best = out[0], max(best, float(out[1]))
                by_threads[n] = best
        except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
            fallback["source"] = f"constant {DEFAULT_PEAK_PER_CORE:g} GFLOP/s/core (probe failed: {exc})"
            return fallback
    return {
        "source": f"measured ({isa} FMA chains, best of {trials} short trials)",
        "isa": isa,
        "per_core": by_threads[1],
        "by_threads": by_threads,
    }


# --------------------------------------------------------------------------
# worker: one engine, one case, one thread count, in a fresh process


def _maxrss_mib():
    """This process's peak RSS in MiB.

    VmHWM (Linux) belongs to the address space, which exec() makes anew; the
    getrusage ru_maxrss of a child started with fork+exec starts at its
    parent's RSS at fork time (it survives exec), so it is used only where
    /proc is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _time_calls(fn, min_reps, min_time, max_reps, warmup_calls=2, warmup_time=0.3):
    start = time.perf_counter()
    n = 0
    while n < warmup_calls or time.perf_counter() - start < warmup_time:
        fn()
        n += 1
        if n >= 50:
            break
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _vmrss_bytes():
    """This process's resident set size now (VmRSS of /proc/self/status), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_worker(spec):
    """Resident bytes per swiftunet model: makes `models` models one after another (seed-0
    weights), reading VmRSS after each is made and again after each has run one batch-1
    forward at its image size; per model = the growth from the first model to the last
    over the models after the first (the first one also pays for one-time costs: the
    thread pool, the library's first allocations)."""
    import numpy as np
    import swiftunet

    swiftunet.set_num_threads(int(spec["threads"]))
    image_size, channels, dims = spec["image_size"], spec["channels"], spec["hidden_dims"]
    x = np.zeros((1, channels, image_size, image_size), dtype=np.float32)
    models, created, after_forward = [], [], []
    for _ in range(int(spec["models"])):
        m = swiftunet.DiffusionModel(image_size, channels, hidden_dims=dims, time_dim=spec["time_dim"])
        models.append(m)
        created.append(_vmrss_bytes())
    for m in models:
        # Two forwards: the first runs in side chunks and sizes the arena, the second fills it.
        m.forward(x, [1])
        m.forward(x, [1])
        after_forward.append(_vmrss_bytes())
    n = len(models) - 1
    return {
        "models": len(models),
        "parameter_bytes": models[0].num_parameters * 4,
        "per_model_bytes": (created[-1] - created[0]) / n,
        # plus each later model's growth from its forward (its activation arena)
        "per_model_after_forward_bytes": (created[-1] - created[0] + after_forward[-1] - after_forward[0]) / n,
    }


def worker(spec):
    import numpy as np

    if spec.get("memory"):
        return memory_worker(spec)
    engine, n = spec["engine"], int(spec["threads"])
    data = np.load(spec["inputs"])
    x, t = np.ascontiguousarray(data["x"]), np.ascontiguousarray(data["t"])
    weights = dict(np.load(spec["weights"]))
    image_size, channels, dims = spec["image_size"], spec["channels"], spec["hidden_dims"]
    info = {}

    if engine.startswith("swiftunet"):
        import swiftunet

        swiftunet.set_num_threads(n)
        m = swiftunet.DiffusionModel(image_size, channels, hidden_dims=dims, time_dim=spec["time_dim"])
        m.load_state_dict(weights)
        out = np.empty_like(x)

        def run():
            return m.forward(x, t, out=out)

        info["build_info"] = swiftunet.build_info()
        info["threads_reported"] = swiftunet.get_num_threads()
    elif engine == "reference":
        from swiftunet import reference

        try:
            import threadpoolctl

            threadpoolctl.threadpool_limits(n)
            info["blas"] = [
                {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                for p in threadpoolctl.threadpool_info()
            ]
        except ImportError:
            pass

        def run():
            return reference.forward(weights, x, t)
    elif engine == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(spec["onnx"], sess_options=opts, providers=["CPUExecutionProvider"])
        feeds = {"x": x, "t": t.astype(np.int64)}
        info["version"] = ort.__version__

        def run():
            return sess.run(["eps"], feeds)[0]
    elif engine == "torch":
        import torch

        sys.path.insert(0, str(HERE))
        from torch_model import TorchDiffusionModel

        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        tm = TorchDiffusionModel(channels, dims, spec["time_dim"]).eval()
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)
        info["version"] = torch.__version__

        def run():
            with torch.inference_mode():
                return tm(xt, tt).numpy()
    else:
        raise ValueError(engine)

    if engine.startswith("swiftunet") and spec.get("paired_threads"):
        return _paired_thread_times(swiftunet, run, n, int(spec["paired_threads"]), spec["min_reps"])

    rss_before = _maxrss_mib()
    y = run()  # first call, kept for the correctness check
    np.save(spec["output"], np.asarray(y, dtype=np.float32))
    times = _time_calls(run, spec["min_reps"], spec["min_time"], spec["max_reps"],
                        warmup_calls=spec.get("warmup_calls", 2), warmup_time=spec.get("warmup_time", 0.3))
    rss_after = _maxrss_mib()
    return {
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "reps": len(times),
        "peak_rss_mib": rss_after,
        "rss_before_forward_mib": rss_before,
        "info": info,
    }


def _paired_thread_times(swiftunet, run, low, high, pairs):
    """Alternates calls at `low` and `high` threads in one process.

    Each pair (one call at each count, back to back) falls in the same few tens of
    milliseconds, so a slow spell of the host (other users' load, a vCPU moved to a
    busier core) slows both calls of a pair rather than only the rows measured
    during it. The speedup is the median over pairs of time(low) / time(high).
    """
    for n in (low, high, low, high):  # warm-up: arenas for both counts, workers started
        swiftunet.set_num_threads(n)
        run()
    lows, highs, ratios = [], [], []
    start = time.perf_counter()
    while len(ratios) < pairs or (time.perf_counter() - start < 4.0 and len(ratios) < 200):
        swiftunet.set_num_threads(low)
        t0 = time.perf_counter()
        run()
        t1 = time.perf_counter()
        swiftunet.set_num_threads(high)
        run()
        t2 = time.perf_counter()
        lows.append(t1 - t0)
        highs.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    return {
        "low_threads": low,
        "high_threads": high,
        "pairs": len(ratios),
        "low_median_ms": statistics.median(lows) * 1e3,
        "high_median_ms": statistics.median(highs) * 1e3,
        "speedup_median": statistics.median(ratios),
        "speedup_quartiles": statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else ratios * 3,
    }


def run_worker(spec, timeout, env=None):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "no result: " + proc.stdout[-300:]}


def engine_env(engine, threads):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    variant = engine_variant(engine)
    if variant is not None:
        env["SWIFTUNET_VARIANT"] = variant
    if engine == "reference":
        # Only here, for the reference's timing: these slow a current numpy.
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


# --------------------------------------------------------------------------
# driver


def engine_variant(engine):
    """'avx2' for the engine 'swiftunet:avx2'; None for plain 'swiftunet' and the peers."""
    return engine.split(":", 1)[1] if engine.startswith("swiftunet:") else None


def runnable_variants(wanted):
    """The kernel variants to time: `wanted` ('all' or a comma list) that the installation
    carries and this CPU runs, best first; the others with the reason they are left out."""
    from swiftunet import _variants

    carried = _variants.available()
    flags = _variants.cpu_flags()
    names = list(_variants.ORDER) if wanted == "all" else [v for v in wanted.split(",") if v]
    run, skipped = [], []
    for v in names:
        if v not in _variants.ORDER:
            raise SystemExit(f"--variants: unknown variant {v!r}; choose from {', '.join(_variants.ORDER)} or all")
        if v not in carried:
            skipped.append((v, "not carried by this installation (build with SWIFTUNET_VARIANTS=all)"))
        elif not _variants.runnable(v, flags):
            skipped.append((v, "this CPU cannot run it"))
        else:
            run.append(v)
    return run, skipped


def available_engines(wanted):
    import importlib.util

    have = []
    for e in wanted:
        if e in ("swiftunet", "reference") or e.startswith("swiftunet:"):
            have.append(e)
        elif e == "onnxruntime":
            if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
                have.append(e)
        elif e == "torch":
            if importlib.util.find_spec("torch"):
                have.append(e)
    return have


def prepare_case(tmp, name, batch, height=None, width=None, with_onnx=False):
    """Writes weights / inputs (and the ONNX graph) for one case; returns the base spec."""
    import numpy as np
    import swiftunet

    image_size, channels, dims = MODELS[name]
    h = height or image_size
    w = width or image_size
    key = f"{name}"
    wpath = Path(tmp) / f"{key}.weights.npz"
    if not wpath.exists():
        m = swiftunet.DiffusionModel(image_size, channels, hidden_dims=dims, time_dim=TIME_DIM, seed=0)
        np.savez(wpath, **m.state_dict())
        if with_onnx:
            from swiftunet.onnx_export import export_onnx

            export_onnx(m, str(Path(tmp) / f"{key}.onnx"))
    ipath = Path(tmp) / f"{key}.b{batch}.{h}x{w}.inputs.npz"
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((batch, channels, h, w)).astype(np.float32)
    t = rng.integers(0, 1000, size=batch).astype(np.int64)
    np.savez(ipath, x=x, t=t)
    return {
        "case": name,
        "batch": batch,
        "height": h,
        "width": w,
        "image_size": image_size,
        "channels": channels,
        "hidden_dims": dims,
        "time_dim": TIME_DIM,
        "weights": str(wpath),
        "inputs": str(ipath),
        "onnx": str(Path(tmp) / f"{key}.onnx"),
        "flops": count_flops(channels, dims, TIME_DIM, batch, h, w),
    }


def rel_err(a, ref):
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def fmt(v, spec=".1f", none="-"):
    return none if v is None else format(v, spec)


def machine_facts():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    versions = {}
    for dist in ("numpy", "onnx", "onnxruntime", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def loadavg():
    """The 1-minute load average (other users' work shows here), or None."""
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def measure_memory(cases, threads, timeout):
    """`memory_worker` for each case, each in a fresh subprocess."""
    rows = []
    for name in cases:
        image_size, channels, dims = MODELS[name]
        spec = {"memory": True, "models": 5, "threads": threads, "image_size": image_size,
                "channels": channels, "hidden_dims": dims, "time_dim": TIME_DIM}
        log(f"memory: {name}, 5 models ...")
        res = run_worker(spec, timeout, env=engine_env("swiftunet", threads))
        rows.append({"case": name, "hidden_dims": dims, **res})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="5 timed calls (reference 1), no scaling section: a smoke run, not for the record")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--cases", default=",".join(MODELS),
                    help=f"comma-separated models (default all: {','.join(MODELS)})")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help=f"comma-separated engines (default all installed: {','.join(ENGINES)})")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the resident-memory-per-model section (no timing)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the batch / image-size scaling section")
    ap.add_argument("--rounds", type=int, default=1,
                    help="sweep all cases this many times and keep, per engine, the round with the "
                         "lowest median (default 1; more rounds dodge other users' load)")
    ap.add_argument("--ref-reps", type=int, default=3, help="timed calls of the numpy reference (default 3)")
    ap.add_argument("--json", help="also write all raw results to this file")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per subprocess (default 900)")
    ap.add_argument("--variants",
                    help="time swiftunet once per kernel variant: 'all' (every one the installation carries "
                         "and the CPU runs) or a comma list of avx512,avx2,baseline")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    threads = [int(v) for v in args.threads.split(",") if v]
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in MODELS:
            ap.error(f"unknown case {c!r}; choose from {', '.join(MODELS)}")
    batches = [int(v) for v in args.batches.split(",") if v]
    engines = available_engines([e for e in args.engines.split(",") if e])
    skipped_variants = []
    if args.variants and "swiftunet" in engines:
        variants, skipped_variants = runnable_variants(args.variants)
        if not variants:
            raise SystemExit("--variants: none of them can run here: "
                             + "; ".join(f"{v}: {why}" for v, why in skipped_variants))
        i = engines.index("swiftunet")
        engines[i:i + 1] = [f"swiftunet:{v}" for v in variants]
    min_reps, min_time, max_reps = (5, 0.5, 20) if args.quick else (10, 2.0, 100)
    ref_reps = 1 if args.quick else max(1, args.ref_reps)
    rounds = max(1, args.rounds)

    import swiftunet

    if args.memory_only:
        results = {"memory": measure_memory(cases, max(threads), args.timeout)}
        print(render_memory(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        return 0

    facts = machine_facts()
    facts["swiftunet_build"] = swiftunet.build_info()
    facts["engines"] = engines
    facts["variants"] = [engine_variant(e) for e in engines if engine_variant(e)] or [swiftunet_variant(facts)]
    facts["variants_skipped"] = skipped_variants
    log(f"engines: {', '.join(engines)}; measuring FMA peak ...")
    peak = measure_peak(max(threads))
    load_start = loadavg()
    results = {"facts": facts, "peak": peak, "cases": [], "scaling": [], "paired": [], "min_reps": min_reps,
               "rounds": rounds}

    with tempfile.TemporaryDirectory(prefix="swiftunet-bench-") as tmp:
        rows = {}
        bases = {}
        for rnd in range(rounds):
            for name in cases:
                for batch in batches:
                    if (name, batch) not in bases:
                        bases[name, batch] = prepare_case(tmp, name, batch, with_onnx="onnxruntime" in engines)
                    base = bases[name, batch]
                    for n in threads:
                        row = rows.get((name, batch, n))
                        if row is None:
                            row = {k: base[k] for k in ("case", "batch", "height", "width", "channels",
                                                        "hidden_dims", "flops")}
                            row.update(threads=n, engines={}, loadavg=[])
                            rows[name, batch, n] = row
                            results["cases"].append(row)
                        row["loadavg"].append(loadavg())
                        outputs = {}
                        for engine in engines:
                            if engine == "reference" and rnd > 0:
                                continue  # the reference is timed once: it is slow and only a yardstick
                            spec = dict(base, engine=engine, threads=n,
                                        output=str(Path(tmp) / f"out.{engine}.npy"))
                            if engine == "reference":
                                spec.update(min_reps=ref_reps, min_time=0.0, max_reps=ref_reps,
                                            warmup_calls=0, warmup_time=0.0)
                            elif engine_variant(engine) == "baseline":
                                # No FMA instructions: ~70x slower; a few calls show its speed.
                                spec.update(min_reps=3, min_time=0.0, max_reps=3, warmup_calls=1, warmup_time=0.0)
                            else:
                                spec.update(min_reps=min_reps, min_time=min_time, max_reps=max_reps)
                            log(f"[round {rnd + 1}/{rounds}] {name} B={batch} threads={n} {engine} ...")
                            res = run_worker(spec, args.timeout, env=engine_env(engine, n))
                            if "error" in res:
                                log(f"  {engine} failed: {res['error']}")
                            else:
                                outputs[engine] = spec["output"]
                                log(f"  {res['median_ms']:.2f} ms (median of {res['reps']}), "
                                    f"peak RSS {res['peak_rss_mib']:.0f} MiB")
                            res["round_medians_ms"] = []
                            old = row["engines"].get(engine)
                            if old is not None:
                                res["round_medians_ms"] = old["round_medians_ms"]
                            if "median_ms" in res:
                                res["round_medians_ms"].append(res["median_ms"])
                            # keep the round with the lowest median (least disturbed by other load)
                            if old is None or "error" in old or ("median_ms" in res and res["median_ms"] < old["median_ms"]):
                                for key in ("rel_err_vs_reference", "rel_err_vs_swiftunet"):
                                    if old is not None and key in old:
                                        res.setdefault(key, old[key])
                                row["engines"][engine] = res
                            else:
                                old["round_medians_ms"] = res["round_medians_ms"]
                        # correctness of this very run: every engine vs the reference (or swiftunet)
                        if rnd == 0:
                            import numpy as np

                            oracle = "reference" if "reference" in outputs else swift_engines(engines)[0]
                            if oracle in outputs:
                                ref_out = np.load(outputs[oracle])
                                for engine, path in outputs.items():
                                    if engine != oracle:
                                        row["engines"][engine]["rel_err_vs_" + oracle] = rel_err(
                                            np.load(path), ref_out)

        primary = (swift_engines(engines) or [None])[0]
        if not args.quick and not args.no_scaling and primary:
            n = max(threads)
            points = [(b, 32) for b in (1, 2, 4, 8, 16)] + [(1, s) for s in (16, 64)]
            for batch, size in points:
                base = prepare_case(tmp, "rgb32-small", batch, size, size)
                spec = dict(base, engine=primary, threads=n, output=str(Path(tmp) / "out.scaling.npy"),
                            min_reps=min_reps, min_time=min_time, max_reps=max_reps)
                log(f"scaling: B={batch} {size}x{size} threads={n} ...")
                res = run_worker(spec, args.timeout, env=engine_env(primary, n))
                results["scaling"].append({"batch": batch, "size": size, "threads": n,
                                           "flops": base["flops"], "loadavg": loadavg(), **res})

        if not args.quick and primary and len(threads) > 1 and min(threads) == 1:
            n, batch = max(threads), max(batches)
            for name in cases:
                base = bases.get((name, batch)) or prepare_case(tmp, name, batch)
                spec = dict(base, engine=primary, threads=1, paired_threads=n,
                            output=str(Path(tmp) / "out.paired.npy"), min_reps=min_reps)
                log(f"paired threads: {name} B={batch} 1 vs {n} threads ...")
                res = run_worker(spec, args.timeout, env=engine_env(primary, n))
                results["paired"].append({"case": name, "batch": batch, "threads": n, "loadavg": loadavg(), **res})

        if "swiftunet" in engines:
            results["memory"] = measure_memory(cases, max(threads), args.timeout)

    # The probe again at the end: other users' load only ever lowers it, so
    # the higher of the two is the better estimate of the machine's peak.
    peak2 = measure_peak(max(threads))
    if peak2["per_core"] > peak["per_core"]:
        peak2["source"] += " (end of run; higher than at the start)"
        results["peak"] = peak = peak2
    results["facts"]["loadavg_start_end"] = [load_start, loadavg()]
    report = render(results, threads)
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        log(f"raw results written to {args.json}")
    return 0


def swift_engines(engines):
    """The swiftunet engines of a run ('swiftunet', or one 'swiftunet:<variant>' per variant)."""
    return [e for e in engines if e.startswith("swiftunet")]


def swiftunet_variant(facts):
    """The variant named in the build description ('variant=avx2 ...'), or '?'."""
    for part in facts.get("swiftunet_build", "").split():
        if part.startswith("variant="):
            return part.split("=", 1)[1]
    return "?"


def render(results, threads):
    facts, peak = results["facts"], results["peak"]
    lines = []
    lines.append(f"date: {facts['date']}; nproc: {facts['nproc']}; CPU: {facts['cpu']}; "
                 f"1-min load average at start/end: {facts.get('loadavg_start_end')}")
    lines.append(f"swiftunet build: {facts['swiftunet_build']}; python {facts['python']}; "
                 + ", ".join(f"{k} {v}" for k, v in facts.get("versions", {}).items()))
    skipped = "".join(f"; {v} not run: {why}" for v, why in facts.get("variants_skipped", []))
    lines.append(f"kernel variant(s) timed: {', '.join(facts.get('variants') or ['?'])}{skipped}")
    peaks = ", ".join(f"{n} thread{'s' if n > 1 else ''}: {peak['by_threads'][n]:.0f}"
                      for n in sorted(peak["by_threads"]))
    lines.append(f"FMA peak (GFLOP/s): {peak['source']}: {peaks}; "
                 f"% peak uses {peak['per_core']:.0f} x threads")
    lines.append(f"times: median of >= {results.get('min_reps', '?')} calls after warm-up; "
                 f"{results.get('rounds', 1)} round(s), best round's median kept; "
                 "load = 1-min load average when the row started (per round)")
    lines.append("")
    lines.append("| case | B | thr | variant | GFLOP | swiftunet ms | GFLOP/s | % peak | peak RSS MiB "
                 "| numpy ref ms (ref/swift) | ORT ms | torch ms | swift/best peer | swift err vs ref | load |")
    lines.append("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row, swift in ((row, swift) for row in results["cases"]
                       for swift in (swift_engines(list(row["engines"])) or ["swiftunet"])):
        e = row["engines"]
        n = row["threads"]
        variant = engine_variant(swift) or swiftunet_variant(facts)

        def ms(engine):
            r = e.get(engine)
            return None if r is None or "error" in r else r["median_ms"]

        s = ms(swift)
        gflops = row["flops"] / 1e9
        rate = gflops / (s / 1e3) if s else None
        pk = peak["per_core"] * n
        pct = 100 * rate / pk if rate else None
        rss = e[swift]["peak_rss_mib"] if s else None
        ref = ms("reference")
        peers = [v for v in (ms("onnxruntime"), ms("torch")) if v is not None]
        best = min(peers) if peers else None
        ref_cell = f"{ref:.0f} ({ref / s:.0f}x)" if ref and s else fmt(ref, ".0f")
        err = None
        if s and "rel_err_vs_reference" in e.get(swift, {}):
            err = e[swift]["rel_err_vs_reference"]
        case = f"{row['case']} {row['height']}x{row['width']}x{row['channels']} {row['hidden_dims']}"
        lines.append(
            f"| {case} | {row['batch']} | {n} | {variant} | {gflops:.2f} | {fmt(s, '.2f')} | {fmt(rate, '.1f')} "
            f"| {fmt(pct, '.1f')} | {fmt(rss, '.0f')} | {ref_cell} | {fmt(ms('onnxruntime'), '.2f')} "
            f"| {fmt(ms('torch'), '.2f')} | {fmt(s / best if s and best else None, '.2f')} "
            f"| {fmt(err, '.1e')} | {'/'.join(fmt(v, '.1f') for v in row.get('loadavg', []))} |"
        )
    # peers' own numbers: RSS and agreement
    lines.append("")
    lines.append("Peers (same weights, inputs and threads; error = max|a-ref|/max|ref| vs the float64 reference):")
    lines.append("")
    lines.append("| case | B | thr | engine | ms | GFLOP/s | peak RSS MiB | error vs ref |")
    lines.append("|---|---:|---:|---|---:|---:|---:|---:|")
    for row in results["cases"]:
        for engine, r in row["engines"].items():
            if engine.startswith("swiftunet"):
                continue
            if "error" in r:
                lines.append(f"| {row['case']} | {row['batch']} | {row['threads']} | {engine} | failed: "
                             f"{r['error'][:60]} | | | |")
                continue
            rate = row["flops"] / 1e9 / (r["median_ms"] / 1e3)
            err = r.get("rel_err_vs_reference")
            lines.append(f"| {row['case']} | {row['batch']} | {row['threads']} | {engine} "
                         f"| {r['median_ms']:.2f} | {rate:.1f} | {r['peak_rss_mib']:.0f} | {fmt(err, '.1e')} |")
    speedups = _table_speedups(results)
    if speedups or results.get("paired"):
        lines.append("")
        lines.append("Second-thread speedup, swiftunet (time at 1 thread / time at more):")
        lines.append("")
        lines.append("| case | B | threads | from the table (best rounds) | paired: 1-thread ms | paired: n-thread ms "
                     "| paired speedup, median (quartiles) | pairs | load |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        paired = {(r["case"], r["batch"], r["threads"]): r for r in results.get("paired", [])}
        for key in dict.fromkeys(list(speedups) + list(paired)):
            case, batch, n = key
            table = fmt(speedups.get(key), '.2f')
            p = paired.get(key)
            if p is not None and "error" in p:
                lines.append(f"| {case} | {batch} | {n} | {table} | failed: {p['error'][:60]} | | | | |")
                continue
            q = p["speedup_quartiles"] if p else None
            lines.append(
                f"| {case} | {batch} | {n} | {table} "
                f"| {fmt(p and p['low_median_ms'], '.2f')} | {fmt(p and p['high_median_ms'], '.2f')} "
                f"| {fmt(p and p['speedup_median'], '.2f')}{f' ({q[0]:.2f}-{q[2]:.2f})' if q else ''} "
                f"| {fmt(p and p['pairs'], 'd')} | {fmt(p and p.get('loadavg'), '.1f')} |")
        lines.append("")
        lines.append("The table's figure divides two rows' best rounds, which may come from different minutes; "
                     "the paired figure alternates the two thread counts call by call in one process.")
    if results["scaling"]:
        lines.append("")
        n = results["scaling"][0]["threads"]
        lines.append(f"Scaling, swiftunet, rgb32-small [32,64,128] C=3, {n} thread(s):")
        lines.append("")
        lines.append("| B | HxW | GFLOP | ms | ms / image | GFLOP/s | % peak | time vs B=1 32x32 | peak RSS MiB | load |")
        lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        base = next((r for r in results["scaling"] if r["batch"] == 1 and r["size"] == 32 and "error" not in r),
                    None)
        for r in sorted(results["scaling"], key=lambda r: (r["size"] != 32, r["size"], r["batch"])):
            if "error" in r:
                lines.append(f"| {r['batch']} | {r['size']}x{r['size']} | | failed: {r['error'][:60]} | | | | | | |")
                continue
            rate = r["flops"] / 1e9 / (r["median_ms"] / 1e3)
            pct = 100 * rate / (peak["per_core"] * n)
            rel = r["median_ms"] / base["median_ms"] if base else None
            lines.append(f"| {r['batch']} | {r['size']}x{r['size']} | {r['flops'] / 1e9:.2f} | {r['median_ms']:.2f} "
                         f"| {r['median_ms'] / r['batch']:.2f} | {rate:.1f} | {pct:.1f} | {fmt(rel, '.2f')} "
                         f"| {r['peak_rss_mib']:.0f} | {fmt(r.get('loadavg'), '.1f')} |")
    if results.get("memory"):
        lines.append("")
        lines.append(render_memory(results))
    return "\n".join(lines)


def render_memory(results):
    """The resident-memory-per-model table (Markdown)."""
    lines = []
    lines.append("Resident memory per swiftunet model (VmRSS growth per model over 5 models made one after "
                 "another in one process, the first excluded; then each runs two batch-1 forwards):")
    lines.append("")
    lines.append("| case | parameters MiB | per model MiB | / parameters | after B=1 forwards MiB | / parameters |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    mib = 1024.0 * 1024.0
    for r in results["memory"]:
        if "error" in r:
            lines.append(f"| {r['case']} {r['hidden_dims']} | failed: {r['error'][:60]} | | | | |")
            continue
        p = r["parameter_bytes"]
        lines.append(f"| {r['case']} {r['hidden_dims']} | {p / mib:.1f} | {r['per_model_bytes'] / mib:.1f} "
                     f"| {r['per_model_bytes'] / p:.2f} | {r['per_model_after_forward_bytes'] / mib:.1f} "
                     f"| {r['per_model_after_forward_bytes'] / p:.2f} |")
    return "\n".join(lines)


def _table_speedups(results):
    """(case, batch, n) -> time at 1 thread / time at n threads, from the main table."""
    ms = {}
    for row in results["cases"]:
        r = next((row["engines"][e] for e in swift_engines(list(row["engines"]))), None)
        if r is not None and "median_ms" in r:
            ms[row["case"], row["batch"], row["threads"]] = r["median_ms"]
    return {(c, b, n): ms[c, b, 1] / v for (c, b, n), v in ms.items() if n > 1 and (c, b, 1) in ms}


if __name__ == "__main__":
    sys.exit(main())
