"""How good the digits model's samples are: ``python3 -m swiftunet evaluate``.

    python3 -m swiftunet evaluate                       # the shipped model, 1,000 samples per sampler
    python3 -m swiftunet evaluate --weights d.safetensors --n 200 --samplers ddim:20

Needs scikit-learn. For each sampler (default DDIM with 10, 20 and 50 steps
and DDPM with all T steps; `dpmpp_2m:STEPS` adds DPM-Solver++ 2M, and a third
field picks the timesteps, e.g. `dpmpp_2m:10:power0.5` or `ddim:10:trailing`)
it draws `n` samples (seed `--seed`, the same starting noise for every
sampler), brings them back to the 8x8 digits'
scale (`swiftunet.digits.downsample_8`: clip to [-1, 1], mean of each 2x2
block, (x + 1) * 8, so values 0..16) and measures, next to the same
measures of the 297 held-out real test digits:

- confident: the fraction that a logistic regression trained on the 1,500
  real training digits (features x / 16, scikit-learn's LogisticRegression,
  lbfgs, C = 1, max_iter 5000, random_state 0) assigns a class with
  probability >= 0.9; also for a small MLP (one hidden layer of 128,
  random_state 0) as a second opinion;
- the ten class frequencies of the logistic regression's predictions and
  their entropy in bits (log2 10 = 3.32 for uniform);
- Frechet distance (FD) to the 1,500 training digits: of Gaussians fitted to
  the pixels (x / 16, 64 values) and to the MLP's 128 hidden units, the
  distance FID computes on Inception features. Lower is closer to the data in
  both what the digits look like and how varied they are. FD grows as the
  sample shrinks, so only rows with the same n compare (the 297 real test
  digits' FD is larger for that reason alone);
- nearest: the mean Euclidean distance (0..16 scale, 64 pixels) from each
  image to its nearest training digit, and the fraction nearer than the 5th
  percentile of the real test digits' distances (about 5% when the model
  does not copy its training images, more when it does).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

#: Confidence threshold of the "confident" fraction.
CONFIDENT = 0.9


def _classifiers(x_train8: np.ndarray, y_train: np.ndarray):
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
    except ImportError as exc:
        raise ImportError(f"evaluate needs scikit-learn ({exc}); `python3 -m pip install scikit-learn`") from None
    import warnings
    lr = LogisticRegression(C=1.0, max_iter=5000, random_state=0)
    mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=1000, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr.fit(x_train8 / 16.0, y_train)
        mlp.fit(x_train8 / 16.0, y_train)
    return lr, mlp


def _nearest(x8: np.ndarray, train8: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of x8 to its nearest row of train8."""
    out = np.empty(x8.shape[0])
    tn = (train8 ** 2).sum(axis=1)
    for i in range(0, x8.shape[0], 500):
        a = x8[i:i + 500]
        d2 = (a ** 2).sum(axis=1)[:, None] + tn[None, :] - 2.0 * a @ train8.T
        out[i:i + 500] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of Gaussians fitted to rows of a and b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr (C_a C_b)^(1/2) = sum of sqrt(eigenvalues) of the symmetric C_a^(1/2) C_b C_a^(1/2).
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cb @ root_a), 0.0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2.0 * cross)


def _hidden(mlp, x8: np.ndarray) -> np.ndarray:
    """The MLP's hidden layer (ReLU) for images x8 [N, 64] (0..16 scale)."""
    return np.maximum((x8 / 16.0) @ mlp.coefs_[0] + mlp.intercepts_[0], 0.0)


def measure(x8: np.ndarray, lr, mlp, train8: np.ndarray, near_threshold: float) -> Dict[str, Any]:
    """The measures of images x8 [N, 64] (0..16 scale)."""
    p = lr.predict_proba(x8 / 16.0)
    pm = mlp.predict_proba(x8 / 16.0)
    freq = np.bincount(p.argmax(axis=1), minlength=10) / x8.shape[0]
    nz = freq[freq > 0]
    dist = _nearest(x8, train8)
    return {
        "n": int(x8.shape[0]),
        "confident": float((p.max(axis=1) >= CONFIDENT).mean()),
        "confident_mlp": float((pm.max(axis=1) >= CONFIDENT).mean()),
        "class_freq": [float(f) for f in freq],
        "entropy_bits": float(-(nz * np.log2(nz)).sum()),
        "fd_pixels": frechet_distance(x8 / 16.0, train8 / 16.0),
        "fd_features": frechet_distance(_hidden(mlp, x8), _hidden(mlp, train8)),
        "nearest_mean": float(dist.mean()),
        "nearer_than_test_p5": float((dist < near_threshold).mean()),
    }


SAMPLER_HELP = ("NAME:STEPS[:TIMESTEPS] with NAME ddim or dpmpp_2m and TIMESTEPS linspace (default), "
                "leading, trailing, powerP (swiftunet.power_timesteps with power P) or, for dpmpp_2m, "
                "karras; or ddpm")


def _parse_samplers(text: str) -> List[Tuple[str, Optional[int], str]]:
    """"ddim:10,dpmpp_2m:10:power0.5,ddpm" ->
    [("ddim", 10, "linspace"), ("dpmpp_2m", 10, "power0.5"), ("ddpm", None, "linspace")]."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if item == "ddpm":
            out.append(("ddpm", None, "linspace"))
            continue
        parts = item.split(":")
        if len(parts) in (2, 3) and parts[0] in ("ddim", "dpmpp_2m"):
            try:
                steps = int(parts[1])
            except ValueError:
                steps = 0
            plan = parts[2] if len(parts) == 3 else "linspace"
            ok_plan = plan in ("linspace", "leading", "trailing") or (plan == "karras" and parts[0] == "dpmpp_2m")
            if plan.startswith("power"):
                try:
                    ok_plan = float(plan[5:]) > 0
                except ValueError:
                    ok_plan = False
            if steps >= 1 and ok_plan:
                out.append((parts[0], steps, plan))
                continue
        raise ValueError(f"--samplers: bad entry {item!r} ({SAMPLER_HELP})")
    return out


def _plan_kwargs(plan: str, T: int, steps: int) -> Dict[str, Any]:
    """sample()'s keyword arguments for a TIMESTEPS entry of --samplers."""
    import swiftunet
    if plan == "karras":
        return {"karras_sigmas": True}
    if plan.startswith("power"):
        return {"timesteps": swiftunet.power_timesteps(T, steps, float(plan[5:]))}
    return {"timestep_spacing": plan}


def row_name(m: Dict[str, Any]) -> str:
    """A sampler's name in the tables: DDIM-50, DPMPP_2M-10 power0.5, ..."""
    plan = m.get("plan", "linspace")
    return f"{m['sampler'].upper()}-{m['steps']}" + ("" if plan == "linspace" else f" {plan}")


@functools.lru_cache(maxsize=1)
def _judges():
    """(train8, lr, mlp, near threshold, real test measures): fitted once per process,
    since the data and the classifiers' seeds are fixed."""
    from .digits import load_digits_8
    train8, y_train = load_digits_8("train", return_labels=True)
    test8, y_test = load_digits_8("test", return_labels=True)
    lr, mlp = _classifiers(train8, y_train)
    threshold = float(np.percentile(_nearest(test8, train8), 5))
    real = measure(test8, lr, mlp, train8, threshold)
    real["accuracy"] = float((lr.predict(test8 / 16.0) == y_test).mean())
    return train8, lr, mlp, threshold, real


def evaluate(model=None, n: int = 1000, seed: int = 0, samplers="ddim:10,ddim:20,ddim:50,ddpm",
             timesteps: int = 1000, progress: bool = False, log=None) -> Dict[str, Any]:
    """Runs the evaluation; returns {"real_test": measures, "samplers": [measures + name, steps, seconds]}."""
    import swiftunet
    from .digits import downsample_8

    if model is None:
        model = swiftunet.pretrained("digits")
    if (model.image_size, model.channels) != (16, 1):
        raise ValueError(f"evaluate needs a 16x16, 1-channel model, got image_size {model.image_size}, "
                         f"channels {model.channels}")
    if isinstance(samplers, str):
        samplers = _parse_samplers(samplers)
    train8, lr, mlp, threshold, real = _judges()
    real = {k: (list(v) if isinstance(v, list) else v) for k, v in real.items()}
    schedule = swiftunet.NoiseSchedule.cosine(timesteps)
    rows = []
    for entry in samplers:
        sampler, steps, plan = (tuple(entry) + ("linspace",))[:3]
        kwargs = _plan_kwargs(plan, timesteps, steps) if steps else {}
        start = time.perf_counter()
        imgs = swiftunet.sample(model, n=n, sampler=sampler, steps=steps if steps else 50, schedule=schedule,
                                seed=seed, progress=progress, **kwargs)
        seconds = time.perf_counter() - start
        row = measure(downsample_8(imgs), lr, mlp, train8, threshold)
        row.update({"sampler": sampler, "steps": steps if steps else timesteps, "plan": plan, "seconds": seconds})
        rows.append(row)
        if log is not None:
            log(f"{row_name(row)}: {seconds:.1f} s, confident {row['confident']:.3f}, "
                f"FD pixels {row['fd_pixels']:.3f}, FD features {row['fd_features']:.3f}")
    return {"real_test": real, "samplers": rows, "n": n, "seed": seed, "threads": swiftunet.get_num_threads(),
            "test_p5_distance": threshold}


def markdown(result: Dict[str, Any]) -> str:
    real = result["real_test"]
    lines = [
        f"| images | time (s) | confident (LR) | vs real | confident (MLP) | FD pixels | FD features "
        f"| min class | max class | entropy (bits) | nearest train (mean) | nearer than test p5 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(name, m, seconds):
        f = m["class_freq"]
        ratio = m["confident"] / real["confident"] if real["confident"] else float("nan")
        return (f"| {name} | {seconds} | {m['confident']:.3f} | {ratio:.2f} | {m['confident_mlp']:.3f} "
                f"| {m['fd_pixels']:.3f} | {m['fd_features']:.3f} "
                f"| {min(f):.3f} | {max(f):.3f} | {m['entropy_bits']:.3f} | {m['nearest_mean']:.2f} "
                f"| {m['nearer_than_test_p5']:.3f} |")

    lines.append(row(f"real test digits ({real['n']})", real, "-"))
    for m in result["samplers"]:
        lines.append(row(f"{row_name(m)} ({m['n']})", m, f"{m['seconds']:.1f}"))
    lines += ["", "Class frequencies (logistic regression's predictions, digits 0-9):", "",
              "| images | " + " | ".join(str(d) for d in range(10)) + " |",
              "| --- |" + " ---: |" * 10]
    for name, m in [("real test", real)] + [(row_name(m), m) for m in result["samplers"]]:
        lines.append(f"| {name} | " + " | ".join(f"{f:.3f}" for f in m["class_freq"]) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m swiftunet evaluate",
                                description="Quality of a 16x16 digits model's samples (needs scikit-learn).")
    p.add_argument("--weights", default=None, help="a model file (default: swiftunet.pretrained('digits'))")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--samplers", default="ddim:10,ddim:20,ddim:50,ddpm",
                   help="comma-separated samplers, each " + SAMPLER_HELP +
                        " (default ddim:10,ddim:20,ddim:50,ddpm)")
    p.add_argument("--timesteps", type=int, default=1000, help="cosine schedule length T (default 1000)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--progress", action="store_true", help="show the samplers' progress bars")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import swiftunet
        if args.threads is not None:
            swiftunet.set_num_threads(args.threads)
        if args.n < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        model = swiftunet.DiffusionModel.load(args.weights) if args.weights else None
        samplers = _parse_samplers(args.samplers)
        result = evaluate(model, n=args.n, seed=args.seed, samplers=samplers, timesteps=args.timesteps,
                          progress=args.progress, log=lambda s: print(s, file=sys.stderr, flush=True))
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    source = args.weights or 'swiftunet.pretrained("digits")'
    print(f"model: {source}, {args.n} samples per sampler, "
          f"seed {args.seed}, {result['threads']} threads; real test accuracy of the logistic regression "
          f"{result['real_test']['accuracy']:.3f}\n")
    print(markdown(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
