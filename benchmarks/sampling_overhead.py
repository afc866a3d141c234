#!/usr/bin/env python3
"""Overhead of the Swift sampling loop over the model's forward passes.

    python3 benchmarks/sampling_overhead.py                    # 16 images, 32x32, [32, 64, 128], 50 DDIM steps
    python3 benchmarks/sampling_overhead.py --repeats 7 --threads 1

Times `swiftunet.sample(m, n, sampler="ddim", steps=S)` against S calls of
`m(x, t, out=buf)` at batch n with the same timesteps, alternating the two so
that both see the same machine load, and reports the medians and the
overhead = sample / forwards - 1 (the DDIM arithmetic, the x_T draw, the
timesteps buffer and the per-step progress callback with its GIL round trip).
It also compares per-step medians (each sample step timed by a progress hook,
each forward timed alone), which are far less sensitive to a busy machine.
"""

import argparse
import statistics
import time

import numpy as np

import swiftunet


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--hidden-dims", default="32,64,128")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        swiftunet.set_num_threads(a.threads)
    dims = [int(v) for v in a.hidden_dims.split(",")]
    m = swiftunet.DiffusionModel(a.size, 3, hidden_dims=dims, time_dim=128, seed=0)
    s = swiftunet.NoiseSchedule.cosine(1000)
    ts = s.ddim_timesteps(a.steps)
    x = swiftunet.randn((a.n, 3, a.size, a.size), 0)
    buf = np.empty_like(x)
    tb = [np.full(a.n, t, dtype=np.int64) for t in ts]

    def forwards():
        for t in tb:
            m(x, t, out=buf)

    def sample():
        swiftunet.sample(m, n=a.n, sampler="ddim", steps=a.steps, eta=a.eta, schedule=s, seed=0)

    forwards()  # warm-up: arenas sized, caches filled
    sample()
    tf, tsm = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        forwards()
        tf.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sample()
        tsm.append(time.perf_counter() - t0)
    # Per step: the hook's timestamps give each step's wall time (forward +
    # update + callback); medians over many steps shrug off load bursts.
    step_times, fwd_times = [], []
    for _ in range(a.repeats):
        stamps = []
        swiftunet.sample(m, n=a.n, sampler="ddim", steps=a.steps, eta=a.eta, schedule=s, seed=0,
                         progress=lambda done, total: stamps.append(time.perf_counter()))
        step_times += [b - a_ for a_, b in zip(stamps, stamps[1:])]
        for t in tb:
            t0 = time.perf_counter()
            m(x, t, out=buf)
            fwd_times.append(time.perf_counter() - t0)
    mf, ms = statistics.median(tf), statistics.median(tsm)
    print(f"model {dims} {a.size}x{a.size}x3, n={a.n}, {a.steps} DDIM steps (eta {a.eta}), "
          f"{swiftunet.get_num_threads()} threads, {a.repeats} repeats")
    print(f"  {a.steps} forwards : median {mf:.3f} s  (min {min(tf):.3f})")
    print(f"  sample()    : median {ms:.3f} s  (min {min(tsm):.3f})")
    print(f"  overhead    : {100 * (ms / mf - 1):+.2f}% (medians), {100 * (min(tsm) / min(tf) - 1):+.2f}% (minima)")
    sm, fm = statistics.median(step_times), statistics.median(fwd_times)
    print(f"  per step    : sample step median {sm * 1e3:.2f} ms vs forward median {fm * 1e3:.2f} ms over "
          f"{len(step_times)} / {len(fwd_times)} steps -> overhead {100 * (sm / fm - 1):+.2f}% "
          f"({(sm - fm) * 1e3:+.3f} ms per step)")


if __name__ == "__main__":
    main()
