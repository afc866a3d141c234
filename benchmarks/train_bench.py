#!/usr/bin/env python3
"""swiftunet training-step benchmark, against PyTorch eager on the CPU.

    python3 benchmarks/train_bench.py                   # everything (6-8 minutes on 2 cores)
    python3 benchmarks/train_bench.py --quick           # 1 round of 2 steps: a smoke run, not for the record
    python3 benchmarks/train_bench.py --configs rgb32-small --batches 8 --threads 1 --rounds 3
    python3 benchmarks/train_bench.py --no-torch        # swiftunet rows only
    python3 benchmarks/train_bench.py --json results.json

What it measures (docs/benchmarks.md, "Training step time", has a full run):

- One training step = draw t (uniform in [0, T)) and the noise, q_sample on
  the cosine schedule (T = 1000), forward, MSE loss (mean), backward,
  gradient clipping (off by default, --grad-clip C turns it on for both
  libraries), AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay
  1e-2), EMA of the weights (decay 0.999, on by default; --ema-decay 0 turns
  it off for both libraries), and the loss read back as a Python float.
    swiftunet  swiftunet.Trainer(model, ...).step(x0): all of the above in
               one call (swiftunet.set_num_threads(n)).
    torch      benchmarks/torch_model.py's TorchDiffusionModel (PyTorch's
               default init, torch.manual_seed(0)); torch.set_num_threads(n),
               set_num_interop_threads(1); torch.randint / torch.randn with a
               seeded generator; x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise
               with ab from docs/model.md's cosine formula (float64, rounded to
               float32); F.mse_loss; opt.zero_grad(set_to_none=True);
               loss.backward(); [clip_grad_norm_]; opt.step() with
               torch.optim.AdamW(same hyper-parameters, PyTorch's default
               implementation choice); EMA by torch._foreach_lerp_(ema,
               params, 1 - decay) under no_grad; loss.item().
- Configurations: rgb32-small (32x32x3, [32,64,128]), gray28-small
  (28x28x1, [32,64,128]), rgb32-large (32x32x3, [64,128,256]), time_dim 128,
  x batch {8, 32} x threads {1, 2}. x0 is one fixed batch drawn uniformly
  from [-1, 1).
- Every (library, configuration, batch, threads) runs in its own subprocess,
  so each reports its own peak RSS: VmHWM of /proc/self/status (the whole
  process's high-water mark: interpreter, imports, model, trainer state and
  the steps), read in the child after its last step; "setup RSS" is the
  same figure before the first step.
- Interleaving: for one row both subprocesses are started (one after the
  other: each does its set-up and warm-up steps while the other waits),
  then the parent alternates them, round by round: one library takes
  --steps timed steps while the other sits blocked on a pipe, then the
  other; which one goes first alternates between rounds, and the parent
  pauses 0.1 s at each hand-over (so that idle worker threads of the one
  that finished have stopped spinning). Each step is timed in the child
  (time.perf_counter around the step). A library's figure is the median of
  its per-round medians; "ratio" = swiftunet / torch of those; "round
  ratios" is the range of the per-round ratios (the pair of rounds ran back
  to back, so a busy spell of the machine moves both).
- Warm-up: --warmup steps (default 3) before timing: the first step
  allocates swiftunet's arena and PyTorch's optimizer state.
- Verdict: "meets" when ratio <= 0.75 and swiftunet's peak RSS <= torch's;
  otherwise which of the two misses, by how much.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import resource
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (image_size, channels, hidden_dims, time_dim)
CONFIGS = {
    "rgb32-small": (32, 3, [32, 64, 128], 128),
    "gray28-small": (28, 1, [32, 64, 128], 128),
    "rgb32-large": (32, 3, [64, 128, 256], 128),
    "tiny": (8, 1, [8, 16], 16),  # for the test of this script; not in the default set
}
DEFAULT_CONFIGS = ("rgb32-small", "gray28-small", "rgb32-large")
LIBRARIES = ("swiftunet", "torch")
NUM_TIMESTEPS = 1000
TARGET_RATIO = 0.75
MARK = "@@train_bench "  # prefix of the protocol lines a worker prints on stdout
HANDOVER_PAUSE = 0.1


# --------------------------------------------------------------------------
# worker: one library, one configuration, batch and thread count


def _rss_mib():
    """(current VmRSS, peak VmHWM) of this process in MiB.

    VmHWM belongs to the address space that exec() made for this process; the
    getrusage ru_maxrss of a fork+exec child starts at its parent's RSS at
    fork time, so it is used only where /proc is missing.
    """
    cur = peak = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024.0  # kB
                elif line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return cur, peak


def cosine_alphas_cumprod(T):
    """docs/model.md section 3: f(u) = cos(((u/T) + 0.008)/1.008 * pi/2)^2,
    beta_t = min(1 - f(t+1)/f(t), 0.999), alpha_bar = cumprod(1 - beta); float64."""
    f = [math.cos(((u / T) + 0.008) / 1.008 * math.pi / 2) ** 2 for u in range(T + 1)]
    ab, acc = [], 1.0
    for t in range(T):
        acc *= 1.0 - min(1.0 - f[t + 1] / f[t], 0.999)
        ab.append(acc)
    return ab


def _make_swiftunet_step(spec):
    import numpy as np
    import swiftunet

    if not hasattr(swiftunet, "Trainer"):
        raise RuntimeError("this swiftunet has no Trainer (training is not built in)")
    swiftunet.set_num_threads(spec["threads"])
    image_size, channels, dims, time_dim = CONFIGS[spec["config"]]
    m = swiftunet.DiffusionModel(image_size, channels, hidden_dims=dims, time_dim=time_dim, seed=0)
    tr = swiftunet.Trainer(m, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                           weight_decay=spec["weight_decay"], grad_clip=spec["grad_clip"],
                           ema_decay=spec["ema_decay"],
                           schedule=swiftunet.NoiseSchedule.cosine(NUM_TIMESTEPS), seed=0)
    rng = np.random.default_rng(1234)
    x0 = rng.uniform(-1.0, 1.0, (spec["batch"], channels, image_size, image_size)).astype(np.float32)

    def step():
        return float(tr.step(x0))

    info = {"build_info": swiftunet.build_info(), "threads_reported": swiftunet.get_num_threads()}
    return step, info


def _make_torch_step(spec):
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    from torch_model import TorchDiffusionModel

    n = spec["threads"]
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)
    image_size, channels, dims, time_dim = CONFIGS[spec["config"]]
    model = TorchDiffusionModel(channels, dims, time_dim).train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                            weight_decay=spec["weight_decay"])
    ema_decay, clip = spec["ema_decay"], spec["grad_clip"]
    ema = [p.detach().clone() for p in params] if ema_decay else None
    ab = torch.tensor(cosine_alphas_cumprod(NUM_TIMESTEPS), dtype=torch.float64)
    sqrt_ab, sqrt_1m_ab = ab.sqrt().float(), (1.0 - ab).sqrt().float()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((spec["batch"], channels, image_size, image_size), generator=g) * 2.0 - 1.0
    B = x0.shape[0]

    def step():
        t = torch.randint(0, NUM_TIMESTEPS, (B,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = sqrt_ab[t].view(B, 1, 1, 1) * x0 + sqrt_1m_ab[t].view(B, 1, 1, 1) * noise
        loss = F.mse_loss(model(x_t, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, params, 1.0 - ema_decay)
        return loss.item()

    info = {"version": torch.__version__, "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "threads_reported": torch.get_num_threads(),
            "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()}
    return step, info


def _make_fake_step(spec):
    """A stand-in library for the tests of this script: a step sleeps
    spec['fake_ms'][lib] ms; set-up touches spec['fake_mib'][lib] MiB."""
    lib = spec["library"]
    ms = spec["fake_ms"][lib] / 1e3
    keep = bytearray(int(spec["fake_mib"][lib] * 2**20))
    for i in range(0, len(keep), 4096):
        keep[i] = 1

    def step():
        time.sleep(ms)
        return float(len(keep) > 0)

    return step, {"fake": True}


def _send(obj):
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker(spec):
    """Set-up and warm-up, then 'run N' / 'quit' commands on stdin (one per line)."""
    lib = spec["library"]
    try:
        if spec.get("fake_ms"):
            step, info = _make_fake_step(spec)
        elif lib == "swiftunet":
            step, info = _make_swiftunet_step(spec)
        elif lib == "torch":
            step, info = _make_torch_step(spec)
        else:
            raise ValueError(f"unknown library {lib!r}")
        setup_rss = _rss_mib()[1]
        warm = []
        for _ in range(spec["warmup"]):
            t0 = time.perf_counter()
            step()
            warm.append((time.perf_counter() - t0) * 1e3)
    except Exception as exc:  # reported to the parent, which carries on without this library
        _send({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _send({"ready": True, "info": info, "setup_rss_mib": setup_rss, "warmup_ms": warm,
           "after_warmup_rss_mib": _rss_mib()[1]})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run":
            times, losses = [], []
            try:
                for _ in range(int(cmd[1])):
                    t0 = time.perf_counter()
                    losses.append(step())
                    times.append((time.perf_counter() - t0) * 1e3)
            except Exception as exc:
                _send({"error": f"{type(exc).__name__}: {exc}"})
                return 1
            _send({"ms": times, "loss": losses})
        elif cmd[0] == "quit":
            cur, peak = _rss_mib()
            _send({"peak_rss_mib": peak, "rss_mib": cur})
            return 0
    return 0


# --------------------------------------------------------------------------
# parent side of one worker


class Worker:
    """A worker subprocess and its protocol lines (read with a timeout)."""

    def __init__(self, spec, env, timeout):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        self.timeout = timeout
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self._buf = b""
        self._err = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ, "out")
        self._sel.register(self.proc.stderr, selectors.EVENT_READ, "err")

    def read(self):
        """The next protocol message (a dict); {'error': ...} on exit or timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(MARK):
                    return json.loads(text[len(MARK):])
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return {"error": f"no answer within {self.timeout:g} s"}
            events = self._sel.select(timeout=min(left, 1.0))
            closed = False
            for key, _ in events:
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    closed = True
                elif key.data == "out":
                    self._buf += chunk
                else:
                    self._err = (self._err + chunk)[-4000:]
            if closed and b"\n" not in self._buf:
                self.proc.wait(timeout=30)
                tail = " | ".join(self._err.decode(errors="replace").strip().splitlines()[-3:])
                return {"error": f"exited with {self.proc.returncode}: {tail}"}

    def command(self, text):
        try:
            self.proc.stdin.write((text + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            return {"error": f"worker gone: {exc}"}
        return self.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._sel.close()
        self.proc.stdout.close()
        self.proc.stderr.close()


def worker_env(threads):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def loadavg():
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_row(base, libs, rounds, steps, timeout, pause=HANDOVER_PAUSE):
    """Both libraries' subprocesses for one row, alternated round by round."""
    row = dict(base, libraries={}, loadavg=[], sequence=[])
    workers = {}
    for lib in libs:  # one after the other: set-up and warm-up never overlap
        spec = dict(base, library=lib)
        w = Worker(spec, worker_env(base["threads"]), timeout)
        msg = w.read()
        res = {"rounds_ms": [], "loss": []}
        if "error" in msg:
            log(f"  {lib} failed to start: {msg['error']}")
            res["error"] = msg["error"]
            w.close()
        else:
            res.update(info=msg["info"], setup_rss_mib=msg["setup_rss_mib"], warmup_ms=msg["warmup_ms"],
                       after_warmup_rss_mib=msg["after_warmup_rss_mib"])
            workers[lib] = w
        row["libraries"][lib] = res
    for rnd in range(rounds):
        row["loadavg"].append(loadavg())
        order = [lib for lib in libs if lib in workers]
        if rnd % 2 == 1:
            order.reverse()
        for lib in order:
            if lib not in workers:
                continue
            time.sleep(pause)
            res = row["libraries"][lib]
            row["sequence"].append([rnd, lib])
            msg = workers[lib].command(f"run {steps}")
            if "error" in msg:
                log(f"  {lib} failed: {msg['error']}")
                res["error"] = msg["error"]
                workers.pop(lib).close()
                continue
            res["rounds_ms"].append(msg["ms"])
            res["loss"].extend(msg["loss"])
    for lib, w in workers.items():
        msg = w.command("quit")
        res = row["libraries"][lib]
        if "error" in msg:
            res["error"] = msg["error"]
        else:
            res["peak_rss_mib"] = msg["peak_rss_mib"]
        w.close()
    summarize_row(row)
    return row


def summarize_row(row):
    """Per-library median of per-round medians; swiftunet/torch ratios."""
    libs = row["libraries"]
    for res in libs.values():
        meds = [statistics.median(r) for r in res.get("rounds_ms", []) if r]
        res["round_medians_ms"] = meds
        res["ms_per_step"] = statistics.median(meds) if meds and "error" not in res else None
    s, t = libs.get("swiftunet", {}), libs.get("torch", {})
    row["ratio"] = row["rss_ratio"] = None
    row["round_ratios"] = []
    if s.get("ms_per_step") and t.get("ms_per_step"):
        row["ratio"] = s["ms_per_step"] / t["ms_per_step"]
        row["round_ratios"] = [a / b for a, b in zip(s["round_medians_ms"], t["round_medians_ms"])]
    if s.get("peak_rss_mib") and t.get("peak_rss_mib"):
        row["rss_ratio"] = s["peak_rss_mib"] / t["peak_rss_mib"]
    row["verdict"] = verdict(row)
    return row


def verdict(row):
    if row["ratio"] is None or row["rss_ratio"] is None:
        return "-"
    misses = []
    if row["ratio"] > TARGET_RATIO:
        misses.append(f"time {row['ratio']:.2f} > {TARGET_RATIO}")
    if row["rss_ratio"] > 1.0:
        misses.append(f"RSS {row['rss_ratio']:.2f}x torch")
    return "meets" if not misses else "misses: " + ", ".join(misses)


# --------------------------------------------------------------------------
# machine facts and the report


def cpu_facts():
    """(CPU model name, vector ISA) from /proc/cpuinfo."""
    model, flags = "?", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    if "avx512f" in flags:
        isa = "AVX-512 (" + " ".join(avx512) + ")"
    elif "avx2" in flags:
        isa = "AVX2" + (" + FMA" if "fma" in flags else "")
    elif flags:
        isa = "no AVX2 (" + (" ".join(sorted(f for f in flags if f.startswith(("sse", "avx")))) or "-") + ")"
    else:
        isa = "?"
    return model, isa


def swiftunet_build_info():
    """swiftunet.build_info() from a short subprocess (the parent stays free of both libraries)."""
    code = "import swiftunet; print(swiftunet.build_info()); print(hasattr(swiftunet, 'Trainer'))"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "? (import timed out)", False
    if out.returncode != 0:
        return "? (import failed: " + (out.stderr.strip().splitlines() or ["?"])[-1] + ")", False
    lines = out.stdout.strip().splitlines()
    return lines[0], lines[-1] == "True"


def fmt(v, spec=".1f", none="-"):
    return none if v is None else format(v, spec)


def render(results):
    f = results["facts"]
    lines = [
        f"date: {f['date']}; nproc: {f['nproc']}; 1-min load average at start/end: {f.get('loadavg_start_end')}",
        f"CPU: {f['cpu']}; vector ISA: {f['isa']}",
        f"swiftunet build: {f['swiftunet_build']}; python {f['python']}",
        f"torch: {f['torch']}",
        f"step: {f['step']}",
        f"timing: {f['timing']}",
        "",
        "| config | B | thr | swiftunet ms/step | torch ms/step | ratio | round ratios | swiftunet peak RSS MiB "
        "| torch peak RSS MiB | RSS ratio | verdict (ratio <= 0.75, RSS <= torch) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in results["rows"]:
        s, t = row["libraries"].get("swiftunet", {}), row["libraries"].get("torch", {})
        rr = row.get("round_ratios") or []
        name = f"{row['config']} {row['image_size']}x{row['image_size']}x{row['channels']} {row['hidden_dims']}"

        def ms(r):
            return f"failed: {r['error'][:50]}" if "error" in r else fmt(r.get("ms_per_step"), ".1f")

        lines.append(
            f"| {name} | {row['batch']} | {row['threads']} | {ms(s) if s else '-'} | {ms(t) if t else '-'} "
            f"| {fmt(row.get('ratio'), '.2f')} | {f'{min(rr):.2f}-{max(rr):.2f}' if rr else '-'} "
            f"| {fmt(s.get('peak_rss_mib'), '.0f')} | {fmt(t.get('peak_rss_mib'), '.0f')} "
            f"| {fmt(row.get('rss_ratio'), '.2f')} | {row.get('verdict', '-')} |")
    lines.append("")
    lines.append("Detail: setup RSS = VmHWM before the first step (interpreter, imports, model, trainer); "
                 "first step = the first warm-up step; load = 1-min load average at each round's start.")
    lines.append("")
    lines.append("| config | B | thr | swiftunet setup RSS MiB | torch setup RSS MiB | swiftunet first step ms "
                 "| torch first step ms | swiftunet round medians ms | torch round medians ms | mean loss swift/torch "
                 "| load |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---|---|---|---|")
    for row in results["rows"]:
        s, t = row["libraries"].get("swiftunet", {}), row["libraries"].get("torch", {})

        def first(r):
            return fmt(r["warmup_ms"][0], ".0f") if r.get("warmup_ms") else "-"

        def meds(r):
            return " ".join(f"{v:.1f}" for v in r.get("round_medians_ms", [])) or "-"

        def loss(r):
            return fmt(statistics.fmean(r["loss"]), ".3f") if r.get("loss") else "-"

        lines.append(
            f"| {row['config']} | {row['batch']} | {row['threads']} | {fmt(s.get('setup_rss_mib'), '.0f')} "
            f"| {fmt(t.get('setup_rss_mib'), '.0f')} | {first(s)} | {first(t)} | {meds(s)} | {meds(t)} "
            f"| {loss(s)}/{loss(t)} | {'/'.join(fmt(v, '.1f') for v in row.get('loadavg', []))} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 round of 2 steps after 1 warm-up step (unless given): a smoke run")
    ap.add_argument("--rounds", type=int, help="alternating rounds per row (default 5; --quick 1)")
    ap.add_argument("--steps", type=int, help="timed steps per library per round (default 4; --quick 2)")
    ap.add_argument("--warmup", type=int, help="untimed steps before the first round (default 3; --quick 1)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated (default {','.join(DEFAULT_CONFIGS)}; also: "
                         f"{','.join(c for c in CONFIGS if c not in DEFAULT_CONFIGS)})")
    ap.add_argument("--batches", default="8,32", help="comma-separated batch sizes (default 8,32)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--no-torch", action="store_true", help="swiftunet rows only")
    ap.add_argument("--grad-clip", type=float, default=None,
                    help="clip the gradient's global norm to this (both libraries; default off)")
    ap.add_argument("--ema-decay", type=float, default=0.999,
                    help="EMA decay (both libraries; default 0.999; 0 = no EMA)")
    ap.add_argument("--json", help="also write all raw results to this file")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per worker answer (default 600)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--fake", help=argparse.SUPPRESS)  # tests: JSON {"ms": {lib: ms}, "mib": {lib: MiB}}
    args = ap.parse_args(argv)

    if args.worker:
        return worker(json.loads(args.worker))

    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    steps = args.steps if args.steps is not None else (2 if args.quick else 4)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if rounds < 1 or steps < 1 or warmup < 1:
        ap.error("--rounds, --steps and --warmup must be >= 1 (the first step allocates, it is never timed)")
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown configuration {c!r}; choose from {', '.join(CONFIGS)}")
    batches = [int(v) for v in args.batches.split(",") if v]
    threads = [int(v) for v in args.threads.split(",") if v]
    ema_decay = args.ema_decay if args.ema_decay else 0.0
    fake = json.loads(args.fake) if args.fake else None

    model, isa = cpu_facts()
    if fake:
        build, has_trainer = "fake", True
    else:
        build, has_trainer = swiftunet_build_info()
    libs = ["swiftunet"]
    if args.no_torch:
        torch_note = "not measured (--no-torch): swiftunet rows only"
    elif fake or importlib.util.find_spec("torch") is not None:
        libs.append("torch")
        torch_note = None  # filled from the first torch worker's answer
    else:
        torch_note = "not installed: swiftunet rows only"
    if not has_trainer:
        log(f"swiftunet ({build}) has no Trainer: its rows will say so")

    clip_txt = f"gradient clipping at global norm {args.grad_clip:g}" if args.grad_clip else "no gradient clipping"
    ema_txt = f"EMA decay {ema_decay:g}" if ema_decay else "no EMA"
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": model, "isa": isa, "swiftunet_build": build,
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch_note,
        "step": (f"draw t and noise, q_sample (cosine, T={NUM_TIMESTEPS}), forward, MSE, backward, {clip_txt}, "
                 f"AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 1e-2), {ema_txt}"),
        "timing": (f"{warmup} warm-up step(s), then {rounds} alternating round(s) of {steps} timed step(s) "
                   "per library; ms/step = median of the per-round medians"),
    }
    results = {"facts": facts, "rows": [], "args": vars(args)}
    load_start = loadavg()
    for config in configs:
        image_size, channels, dims, time_dim = CONFIGS[config]
        for batch in batches:
            for n in threads:
                base = {"config": config, "image_size": image_size, "channels": channels, "hidden_dims": dims,
                        "time_dim": time_dim, "batch": batch, "threads": n, "warmup": warmup,
                        "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2,
                        "grad_clip": args.grad_clip, "ema_decay": ema_decay}
                if fake:
                    base.update(fake_ms=fake["ms"], fake_mib=fake["mib"])
                log(f"{config} B={batch} threads={n}: {' vs '.join(libs)} ...")
                row = run_row(base, libs, rounds, steps, args.timeout)
                results["rows"].append(row)
                for lib, res in row["libraries"].items():
                    if res.get("ms_per_step") is not None:
                        log(f"  {lib}: {res['ms_per_step']:.1f} ms/step, peak RSS {fmt(res.get('peak_rss_mib'), '.0f')} MiB")
                    if lib == "torch" and facts["torch"] is None and "info" in res:
                        i = res["info"]
                        if i.get("fake"):
                            facts["torch"] = "fake"
                        else:
                            facts["torch"] = (f"{i['version']}, MKLDNN available: {i['mkldnn']}, "
                                              f"CPU capability {i['cpu_capability']}; eager, float32")
    if facts["torch"] is None:
        facts["torch"] = "installed but no worker started (see the rows)"
    facts["loadavg_start_end"] = [load_start, loadavg()]
    report = render(results)
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        log(f"raw results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
