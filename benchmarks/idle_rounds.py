"""Training steps in rounds with idle time between them, as benchmarks/train_bench.py runs
them while the other library takes its turn: does a round after an idle spell run as fast
as one in a steady stream of steps?

    python3 benchmarks/idle_rounds.py                      # swiftunet, rgb32-small, batch 8, 2 threads
    python3 benchmarks/idle_rounds.py --pause 0            # the same without idle time
    python3 benchmarks/idle_rounds.py --torch-idle         # CPU time PyTorch's process uses after its steps

For swiftunet it prints each round's median step time and, per thread of the process,
the vCPU it last ran on and the CPU ticks it took during the round (/proc/self/task), so
that a slow round can be told apart: both threads busy (the machine delivered less) or
one idle (the pool did not use it). --torch-idle runs PyTorch's step of train_bench.py
and prints the CPU seconds its process takes in the 2 s after each burst of steps (its
worker threads spinning would show here). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import train_bench  # noqa: E402  (CONFIGS and PyTorch's step)


def thread_ticks():
    """{thread id: (last vCPU, user ticks)} of this process."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[tid] = (int(fields[36]), int(fields[11]))
    return out


def swiftunet_rounds(args):
    import numpy as np
    import swiftunet

    swiftunet.set_num_threads(args.threads)
    size, channels, dims, time_dim = train_bench.CONFIGS[args.config]
    m = swiftunet.DiffusionModel(size, channels, hidden_dims=dims, time_dim=time_dim, seed=0)
    tr = swiftunet.Trainer(m, schedule=swiftunet.NoiseSchedule.cosine(1000), seed=0, ema_decay=0.999)
    x0 = np.random.default_rng(1).uniform(-1, 1, (args.batch, channels, size, size)).astype(np.float32)
    for _ in range(3):
        tr.step(x0)
    print(f"{args.config} batch {args.batch}, {args.threads} threads, {args.pause} s idle before each round")
    for r in range(args.rounds):
        time.sleep(args.pause)
        before = thread_ticks()
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            tr.step(x0)
            times.append((time.perf_counter() - t) * 1e3)
        after = thread_ticks()
        threads = " ".join(f"{tid}: cpu{cpu} +{ticks - before.get(tid, (cpu, 0))[1]}"
                           for tid, (cpu, ticks) in sorted(after.items()))
        print(f"round {r}: median {sorted(times)[len(times) // 2]:.1f} ms   threads (vCPU, ticks): {threads}")


def torch_idle(args):
    spec = {"config": args.config, "batch": args.batch, "threads": args.threads, "lr": 1e-3,
            "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2, "grad_clip": None, "ema_decay": 0.999}
    step, _ = train_bench._make_torch_step(spec)
    for r in range(3):
        for _ in range(args.steps):
            step()
        t0, c0 = time.time(), time.process_time()
        marks = []
        while time.time() - t0 < 2.0:
            time.sleep(0.1)
            marks.append(f"{time.process_time() - c0:.2f}")
        print(f"burst {r}: CPU seconds of the idle process, every 0.1 s after its steps:", " ".join(marks))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="rgb32-small", choices=sorted(train_bench.CONFIGS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=4, help="steps per round (per burst with --torch-idle)")
    p.add_argument("--pause", type=float, default=0.6, help="idle seconds before each round")
    p.add_argument("--torch-idle", action="store_true", help="measure PyTorch's idle process instead")
    args = p.parse_args()
    torch_idle(args) if args.torch_idle else swiftunet_rounds(args)


if __name__ == "__main__":
    main()
