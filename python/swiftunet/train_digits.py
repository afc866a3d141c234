"""Trains the shipped digits model: ``python3 -m swiftunet train-digits``.

    python3 -m swiftunet train-digits --out digits.safetensors              # the shipped run
    python3 -m swiftunet train-digits --out digits.safetensors --resume     # continue after a stop
    python3 -m swiftunet train-digits --steps 200 --out quick.safetensors   # a short run

Data: `swiftunet.digits.load_digits_16("train")` (scikit-learn's 8x8 digits,
first 1,500 images, upsampled to 16x16, in [-1, 1]). Model, optimiser and
schedule: the defaults below (`SHIPPED`), which are exactly the settings of
the weights in swiftunet/weights/digits.safetensors, so that running the
first command again writes a file with the same SHA-256 (the trainer is
bit-reproducible at every thread count and across a stop and --resume).

Batches are those of ``Trainer.fit(data, epochs, batch_size)``: epoch e
visits the images in the order ``np.random.default_rng([seed, e]).permutation(N)``
in consecutive slices of batch_size (the last one partial). The loop is
written out here so that a run can stop at any step (``--steps``) and save
a checkpoint every ``--checkpoint-every`` steps; it takes the same steps as
fit would.

Files: ``--out`` gets the EMA weights (a model file: load it with
``DiffusionModel.load``); the checkpoint (``--checkpoint``, default
``<out>.ckpt.safetensors``) holds the whole training state for --resume,
with the run's settings beside it in ``<checkpoint>.json``. Ctrl-C saves a
checkpoint and exits with status 130.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

#: The settings of the shipped weights (python/swiftunet/weights/digits.safetensors).
SHIPPED: Dict[str, Any] = {
    "hidden_dims": [32, 64, 64],
    "time_dim": 64,
    "seed": 0,
    "epochs": 200,          # 24 steps per epoch at batch 64: 4,800 steps
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "timesteps": 1000,      # cosine schedule
}

#: The settings that must agree between a checkpoint and a --resume.
_RUN_KEYS = ("hidden_dims", "time_dim", "seed", "batch_size", "lr", "weight_decay", "grad_clip",
             "ema_decay", "timesteps", "limit", "total_steps")


def _dims(text: str) -> List[int]:
    try:
        dims = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(dims) < 2:
        raise argparse.ArgumentTypeError(f"need at least two hidden dims, got {text!r}")
    return dims


def build_parser() -> argparse.ArgumentParser:
    s = SHIPPED
    p = argparse.ArgumentParser(
        prog="python3 -m swiftunet train-digits",
        description="Train a DiffusionModel(16, 1) on scikit-learn's handwritten digits (needs scikit-learn). "
                    "The defaults reproduce the shipped weights (swiftunet.pretrained('digits')) bit for bit.")
    p.add_argument("--out", default="digits.safetensors",
                   help="where the EMA weights go (default digits.safetensors)")
    p.add_argument("--checkpoint", default=None,
                   help="the training checkpoint (default: <out without .safetensors>.ckpt.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint (same settings)")
    p.add_argument("--seed", type=int, default=s["seed"], help=f"model initialisation and training draws "
                                                                 f"(default {s['seed']})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, default=None,
                   help=f"total epochs (default {s['epochs']}; ceil(N / batch-size) steps each)")
    g.add_argument("--steps", type=int, default=None, help="total steps instead of --epochs")
    p.add_argument("--batch-size", type=int, default=s["batch_size"], help=f"default {s['batch_size']}")
    p.add_argument("--hidden-dims", type=_dims, default=list(s["hidden_dims"]),
                   help="comma-separated, default " + ",".join(map(str, s["hidden_dims"])))
    p.add_argument("--time-dim", type=int, default=s["time_dim"], help=f"default {s['time_dim']}")
    p.add_argument("--lr", type=float, default=s["lr"], help=f"AdamW learning rate (default {s['lr']})")
    p.add_argument("--weight-decay", type=float, default=s["weight_decay"], help=f"default {s['weight_decay']}")
    p.add_argument("--grad-clip", type=float, default=s["grad_clip"],
                   help=f"global gradient-norm clip, 0 for none (default {s['grad_clip']})")
    p.add_argument("--ema-decay", type=float, default=s["ema_decay"], help=f"default {s['ema_decay']}")
    p.add_argument("--timesteps", type=int, default=s["timesteps"],
                   help=f"cosine schedule length T (default {s['timesteps']})")
    p.add_argument("--limit", type=int, default=None, help="train on the first LIMIT training images only")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (results do not depend on it)")
    p.add_argument("--loss-png", default=None, help="also plot the loss curve to this PNG (needs matplotlib)")
    p.add_argument("--samples-png", default=None,
                   help="also write a grid of 16 DDIM-50 samples (seed 0) of the EMA model to this PNG")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _checkpoint_path(args) -> str:
    if args.checkpoint:
        return args.checkpoint
    base = args.out[:-len(".safetensors")] if args.out.endswith(".safetensors") else args.out
    return base + ".ckpt.safetensors"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_ema(trainer, path: str, run: Dict[str, Any]) -> None:
    """The EMA weights as a model file, with the run's settings in __metadata__
    (all deterministic: no dates or timings, so the same run gives the same bytes)."""
    from .io import FORMAT_NAME, FORMAT_VERSION, save_safetensors
    ema = trainer.ema_model()
    cfg = ema.config()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "image_size": str(cfg["image_size"]),
        "channels": str(cfg["channels"]),
        "hidden_dims": json.dumps(list(cfg["hidden_dims"])),
        "time_dim": str(cfg["time_dim"]),
        "weights": "ema",
        "data": "sklearn.datasets.load_digits, first 1500 images, 8x8 -> 16x16 nearest, x/8-1",
        "training": json.dumps({k: run[k] for k in _RUN_KEYS}, sort_keys=True),
        "step_count": str(trainer.step_count),
        "schedule": f"cosine({run['timesteps']})",
    }
    save_safetensors(ema.state_dict(), path, metadata)


def plot_losses(losses: List[float], path: str, title: str = "") -> None:
    """The per-step loss (light) and its 100-step running mean, log scale, as a PNG (matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"--loss-png needs matplotlib ({exc}); `python3 -m pip install matplotlib`") from None
    y = np.asarray(losses, dtype=np.float64)
    k = min(100, max(1, len(y)))
    smooth = np.convolve(y, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    ax.plot(np.arange(1, len(y) + 1), y, color="0.75", linewidth=0.6, label="loss per step")
    ax.plot(np.arange(k, len(y) + 1), smooth, color="C0", linewidth=1.6, label=f"mean of {k} steps")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss (noise prediction)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _load_data(limit: Optional[int]) -> np.ndarray:
    from .digits import load_digits_16
    data = load_digits_16("train")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        data = data[:limit]
    return np.ascontiguousarray(data)


def run(args) -> int:
    import swiftunet
    from .sampling import _make_bar

    if args.threads is not None:
        swiftunet.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    data = _load_data(args.limit)
    n = data.shape[0]
    per_epoch = -(-n // args.batch_size)
    if args.steps is not None:
        if args.steps < 0:
            raise ValueError(f"--steps must be >= 0, got {args.steps}")
        total = args.steps
    else:
        epochs = SHIPPED["epochs"] if args.epochs is None else args.epochs
        if epochs < 0:
            raise ValueError(f"--epochs must be >= 0, got {epochs}")
        total = epochs * per_epoch
    run_settings = {
        "hidden_dims": list(args.hidden_dims), "time_dim": args.time_dim, "seed": args.seed,
        "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "grad_clip": args.grad_clip if args.grad_clip else None, "ema_decay": args.ema_decay,
        "timesteps": args.timesteps, "limit": args.limit, "total_steps": total,
    }
    ckpt = _checkpoint_path(args)
    side = ckpt + ".json"
    schedule = swiftunet.NoiseSchedule.cosine(args.timesteps)

    if args.resume:
        if not os.path.exists(ckpt):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt!r}")
        with open(side, "r", encoding="utf-8") as f:
            saved = json.load(f)
        # A longer run may continue a shorter one; everything else must agree.
        diff = [f"{k}: checkpoint {saved.get(k)!r}, now {run_settings[k]!r}"
                for k in _RUN_KEYS if k != "total_steps" and saved.get(k) != run_settings[k]]
        if diff:
            raise ValueError("--resume: the settings differ from the checkpoint's: " + "; ".join(diff))
        trainer = swiftunet.Trainer.load(ckpt)
        print(f"resumed {ckpt} at step {trainer.step_count}", flush=True)
    else:
        model = swiftunet.DiffusionModel(16, 1, hidden_dims=args.hidden_dims, time_dim=args.time_dim,
                                         seed=args.seed)
        trainer = swiftunet.Trainer(model, lr=args.lr, weight_decay=args.weight_decay,
                                    grad_clip=run_settings["grad_clip"], ema_decay=args.ema_decay,
                                    schedule=schedule, seed=args.seed)
    model = trainer.model
    print(f"training {model!r} on {n} digits, batch {args.batch_size} ({per_epoch} steps/epoch), "
          f"{total} steps, seed {args.seed}, {swiftunet.get_num_threads()} threads", flush=True)

    def checkpoint():
        trainer.save(ckpt)
        from .io import atomic_open
        with atomic_open(side) as f:
            f.write(json.dumps(run_settings, sort_keys=True, indent=1).encode("utf-8"))

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    bar = _make_bar(total, "train-digits", initial=min(trainer.step_count, total)) if progress else None
    start = time.perf_counter()
    first = trainer.step_count
    perm, perm_epoch = None, -1
    last_report = start
    try:
        while trainer.step_count < total:
            step = trainer.step_count
            epoch, index = divmod(step, per_epoch)
            if epoch != perm_epoch:
                perm = np.random.default_rng([args.seed, epoch]).permutation(n)
                perm_epoch = epoch
            loss = trainer.step(data[perm[index * args.batch_size:(index + 1) * args.batch_size]])
            done = trainer.step_count
            if bar is not None:
                bar.set_postfix(epoch=f"{epoch + 1}", loss=f"{loss:.4f}", refresh=False)
                bar.update(1)
            elif time.perf_counter() - last_report > 60 or done == total:
                last_report = time.perf_counter()
                recent = trainer.losses[-100:]
                print(f"step {done}/{total} epoch {epoch + 1} loss(mean of last {len(recent)}) "
                      f"{sum(recent) / len(recent):.4f} elapsed {last_report - start:.0f} s", flush=True)
            if done % args.checkpoint_every == 0 and done < total:
                checkpoint()
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        checkpoint()
        print(f"\ninterrupted at step {trainer.step_count}: checkpoint {ckpt} (continue with --resume)",
              file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    checkpoint()
    save_ema(trainer, args.out, run_settings)
    losses = trainer.losses
    tail = losses[-100:] if losses else [float("nan")]
    print(f"{trainer.step_count - first} steps in {elapsed:.1f} s "
          f"({elapsed / max(1, trainer.step_count - first) * 1e3:.1f} ms/step); "
          f"mean loss of the last {len(tail)} steps {sum(tail) / len(tail):.4f}", flush=True)
    print(f"EMA weights -> {args.out} (sha256 {sha256_file(args.out)}); checkpoint -> {ckpt}", flush=True)
    if args.loss_png and losses:
        plot_losses(losses, args.loss_png, title=f"train-digits: {model.config()['hidden_dims']}, "
                                                 f"batch {args.batch_size}, seed {args.seed}")
        print(f"loss curve -> {args.loss_png}", flush=True)
    if args.samples_png:
        from .images import image_grid, write_png
        imgs = swiftunet.sample(swiftunet.DiffusionModel.load(args.out), n=16, steps=50, schedule=schedule,
                                seed=0)
        write_png(args.samples_png, image_grid(imgs, nrow=4))
        print(f"samples -> {args.samples_png}", flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
