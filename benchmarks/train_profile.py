#!/usr/bin/env python3
"""Where a training step's time goes, swiftunet and PyTorch, one configuration.

    python3 benchmarks/train_profile.py                          # rgb32-small, batch 8, 1 thread, both
    python3 benchmarks/train_profile.py --library torch --threads 2 --batch 32
    python3 benchmarks/train_profile.py --config rgb32-large --repeats 5

Each library runs in its own subprocess (so that neither one's idle worker
threads or allocations disturb the other), with the same step as
benchmarks/train_bench.py (AdamW defaults, EMA 0.999, no clipping).

- torch: phases timed with time.perf_counter, median of --repeats steps after
  3 warm-up steps: draw + q_sample, forward + MSE (autograd on), backward,
  AdamW, EMA; the sum, and a whole step timed on its own; a no-grad forward
  for comparison; then torch.profiler over one more step, top operators by
  self CPU time.
- swiftunet: the split that its public calls allow, medians of --repeats:
  forward (model.forward: the inference path, no activations kept),
  model.loss_and_grad (forward that keeps what backward needs, MSE,
  backward), Trainer.step (draw, q_sample, loss_and_grad's work, AdamW,
  EMA). backward ~ loss_and_grad - forward; optimizer + EMA + draw ~
  step - loss_and_grad (loss_and_grad also copies the gradients out into
  numpy arrays, which step does not do, so the second difference is a
  lower bound).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_bench import CONFIGS, NUM_TIMESTEPS, cosine_alphas_cumprod, worker_env  # noqa: E402


def _median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def profile_torch(config, batch, threads, repeats, top):
    import torch
    import torch.nn.functional as F
    from torch_model import TorchDiffusionModel

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)
    image_size, channels, dims, time_dim = CONFIGS[config]
    model = TorchDiffusionModel(channels, dims, time_dim).train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params]
    ab = torch.tensor(cosine_alphas_cumprod(NUM_TIMESTEPS), dtype=torch.float64)
    sa, s1a = ab.sqrt().float(), (1.0 - ab).sqrt().float()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((batch, channels, image_size, image_size), generator=g) * 2 - 1
    phases = {k: [] for k in ("draw + q_sample", "forward + MSE", "backward", "AdamW", "EMA")}

    def step(record=False):
        c = [time.perf_counter()]
        t = torch.randint(0, NUM_TIMESTEPS, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = sa[t].view(batch, 1, 1, 1) * x0 + s1a[t].view(batch, 1, 1, 1) * noise
        c.append(time.perf_counter())
        loss = F.mse_loss(model(x_t, t), noise)
        c.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        c.append(time.perf_counter())
        opt.step()
        c.append(time.perf_counter())
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1e-3)
        value = loss.item()
        c.append(time.perf_counter())
        if record:
            for name, a, b in zip(phases, c, c[1:]):
                phases[name].append((b - a) * 1e3)
        return value

    for _ in range(3):
        step()
    for _ in range(repeats):
        step(record=True)
    whole = _median_ms(step, repeats)
    xt = torch.randn(x0.shape)
    tt = torch.randint(0, NUM_TIMESTEPS, (batch,))

    def fwd():
        with torch.no_grad():
            model(xt, tt)

    fwd()
    nograd = _median_ms(fwd, repeats)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    return {"library": "torch", "version": torch.__version__,
            "phases_ms": {k: statistics.median(v) for k, v in phases.items()},
            "step_ms": whole, "forward_no_grad_ms": nograd, "profiler_table": table}


def profile_swiftunet(config, batch, threads, repeats):
    import numpy as np
    import swiftunet

    swiftunet.set_num_threads(threads)
    image_size, channels, dims, time_dim = CONFIGS[config]
    m = swiftunet.DiffusionModel(image_size, channels, hidden_dims=dims, time_dim=time_dim, seed=0)
    sched = swiftunet.NoiseSchedule.cosine(NUM_TIMESTEPS)
    rng = np.random.default_rng(1234)
    shape = (batch, channels, image_size, image_size)
    x0 = rng.uniform(-1, 1, shape).astype(np.float32)
    noise = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, NUM_TIMESTEPS, size=batch).astype(np.int64)
    x_t = swiftunet.q_sample(x0, t, noise, schedule=sched)
    out = np.empty_like(x_t)
    res = {"library": "swiftunet", "build_info": swiftunet.build_info()}

    def fwd():
        m.forward(x_t, t, out=out)

    for _ in range(2):
        fwd()
    res["forward_ms"] = _median_ms(fwd, repeats)
    if hasattr(m, "loss_and_grad"):
        def lag():
            m.loss_and_grad(x_t, t, noise)

        for _ in range(2):
            lag()
        res["loss_and_grad_ms"] = _median_ms(lag, repeats)
    if hasattr(swiftunet, "Trainer"):
        tr = swiftunet.Trainer(m, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, grad_clip=None,
                               ema_decay=0.999, schedule=sched, seed=0)
        for _ in range(3):
            tr.step(x0)
        res["step_ms"] = _median_ms(lambda: tr.step(x0), repeats)
    return res


def report(res):
    lines = []
    if res["library"] == "torch":
        p = res["phases_ms"]
        lines.append(f"torch {res['version']}: whole step {res['step_ms']:.1f} ms (median); phases (medians, ms): "
                     + ", ".join(f"{k} {v:.1f}" for k, v in p.items()) + f"; sum {sum(p.values()):.1f}")
        lines.append(f"torch forward under no_grad: {res['forward_no_grad_ms']:.1f} ms")
        lines.append("torch.profiler, one step, top operators by self CPU time:")
        lines.append(res["profiler_table"])
    else:
        f, lg, st = res.get("forward_ms"), res.get("loss_and_grad_ms"), res.get("step_ms")
        lines.append(f"swiftunet ({res['build_info']}): forward {f:.1f} ms"
                     + (f", loss_and_grad {lg:.1f} ms" if lg else ", no loss_and_grad")
                     + (f", Trainer.step {st:.1f} ms" if st else ", no Trainer"))
        if lg:
            lines.append(f"  backward + MSE ~ loss_and_grad - forward = {lg - f:.1f} ms")
        if lg and st:
            lines.append(f"  draw + q_sample + AdamW + EMA ~ step - loss_and_grad = {st - lg:.1f} ms "
                         "(a lower bound: loss_and_grad also copies its gradients out)")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="rgb32-small", choices=sorted(CONFIGS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--top", type=int, default=20, help="profiler rows (torch)")
    ap.add_argument("--library", default="swiftunet,torch", help="comma-separated: swiftunet, torch")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        if a.worker == "torch":
            res = profile_torch(a.config, a.batch, a.threads, a.repeats, a.top)
        else:
            res = profile_swiftunet(a.config, a.batch, a.threads, a.repeats)
        print(json.dumps(res))
        return 0
    print(f"{a.config} {CONFIGS[a.config][:3]}, batch {a.batch}, {a.threads} thread(s), medians of {a.repeats}")
    for lib in [v for v in a.library.split(",") if v]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", lib, "--config", a.config,
               "--batch", str(a.batch), "--threads", str(a.threads), "--repeats", str(a.repeats),
               "--top", str(a.top)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(a.threads))
        if proc.returncode != 0:
            print(f"{lib}: failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        print(report(json.loads(proc.stdout.strip().splitlines()[-1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
