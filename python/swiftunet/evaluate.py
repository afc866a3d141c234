"""How good the digits model's samples are: ``python3 -m swiftunet evaluate``.

    python3 -m swiftunet evaluate                       # the shipped model, 1,000 samples per sampler
    python3 -m swiftunet evaluate --weights d.safetensors --n 200 --samplers ddim:20

Needs scikit-learn. For each sampler (default DDIM with 10, 20 and 50 steps
and DDPM with all T steps; `dpmpp_2m:STEPS` adds DPM-Solver++ 2M) it draws `n` samples (seed `--seed`, the same
starting noise for every sampler), brings them back to the 8x8 digits'
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
- nearest: the mean Euclidean distance (0..16 scale, 64 pixels) from each
  image to its nearest training digit, and the fraction nearer than the 5th
  percentile of the real test digits' distances (about 5% when the model
  does not copy its training images, more when it does).
"""

from __future__ import annotations

import argparse
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
        "nearest_mean": float(dist.mean()),
        "nearer_than_test_p5": float((dist < near_threshold).mean()),
    }


def _parse_samplers(text: str) -> List[Tuple[str, Optional[int]]]:
    """"ddim:10,dpmpp_2m:10,ddpm" -> [("ddim", 10), ("dpmpp_2m", 10), ("ddpm", None)]."""
    out = []
    for item in text.split(","):
        item = item.strip()
        name, _, steps_text = item.partition(":")
        if item == "ddpm":
            out.append(("ddpm", None))
            continue
        if name in ("ddim", "dpmpp_2m") and steps_text:
            try:
                steps = int(steps_text)
            except ValueError:
                steps = 0
            if steps >= 1:
                out.append((name, steps))
                continue
        raise ValueError(f"--samplers: bad entry {item!r} (ddim:STEPS, dpmpp_2m:STEPS or ddpm)")
    return out


def evaluate(model=None, n: int = 1000, seed: int = 0, samplers="ddim:10,ddim:20,ddim:50,ddpm",
             timesteps: int = 1000, progress: bool = False, log=None) -> Dict[str, Any]:
    """Runs the evaluation; returns {"real_test": measures, "samplers": [measures + name, steps, seconds]}."""
    import swiftunet
    from .digits import downsample_8, load_digits_8

    if model is None:
        model = swiftunet.pretrained("digits")
    if (model.image_size, model.channels) != (16, 1):
        raise ValueError(f"evaluate needs a 16x16, 1-channel model, got image_size {model.image_size}, "
                         f"channels {model.channels}")
    if isinstance(samplers, str):
        samplers = _parse_samplers(samplers)
    train8, y_train = load_digits_8("train", return_labels=True)
    test8, y_test = load_digits_8("test", return_labels=True)
    lr, mlp = _classifiers(train8, y_train)
    test_dist = _nearest(test8, train8)
    threshold = float(np.percentile(test_dist, 5))
    real = measure(test8, lr, mlp, train8, threshold)
    real["accuracy"] = float((lr.predict(test8 / 16.0) == y_test).mean())
    schedule = swiftunet.NoiseSchedule.cosine(timesteps)
    rows = []
    for sampler, steps in samplers:
        start = time.perf_counter()
        imgs = swiftunet.sample(model, n=n, sampler=sampler, steps=steps if steps else 50, schedule=schedule,
                                seed=seed, progress=progress)
        seconds = time.perf_counter() - start
        row = measure(downsample_8(imgs), lr, mlp, train8, threshold)
        row.update({"sampler": sampler, "steps": steps if steps else timesteps, "seconds": seconds})
        rows.append(row)
        if log is not None:
            log(f"{sampler} {row['steps']} steps: {seconds:.1f} s, confident {row['confident']:.3f}")
    return {"real_test": real, "samplers": rows, "n": n, "seed": seed, "threads": swiftunet.get_num_threads(),
            "test_p5_distance": threshold}


def markdown(result: Dict[str, Any]) -> str:
    real = result["real_test"]
    lines = [
        f"| images | time (s) | confident (LR) | vs real | confident (MLP) | min class | max class "
        f"| entropy (bits) | nearest train (mean) | nearer than test p5 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(name, m, seconds):
        f = m["class_freq"]
        ratio = m["confident"] / real["confident"] if real["confident"] else float("nan")
        return (f"| {name} | {seconds} | {m['confident']:.3f} | {ratio:.2f} | {m['confident_mlp']:.3f} "
                f"| {min(f):.3f} | {max(f):.3f} | {m['entropy_bits']:.3f} | {m['nearest_mean']:.2f} "
                f"| {m['nearer_than_test_p5']:.3f} |")

    lines.append(row(f"real test digits ({real['n']})", real, "-"))
    for m in result["samplers"]:
        name = f"{m['sampler'].upper()}-{m['steps']} ({m['n']})"
        lines.append(row(name, m, f"{m['seconds']:.1f}"))
    lines += ["", "Class frequencies (logistic regression's predictions, digits 0-9):", "",
              "| images | " + " | ".join(str(d) for d in range(10)) + " |",
              "| --- |" + " ---: |" * 10]
    for name, m in [("real test", real)] + [(f"{m['sampler'].upper()}-{m['steps']}", m) for m in result["samplers"]]:
        lines.append(f"| {name} | " + " | ".join(f"{f:.3f}" for f in m["class_freq"]) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m swiftunet evaluate",
                                description="Quality of a 16x16 digits model's samples (needs scikit-learn).")
    p.add_argument("--weights", default=None, help="a model file (default: swiftunet.pretrained('digits'))")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--samplers", default="ddim:10,ddim:20,ddim:50,ddpm",
                   help="comma-separated ddim:STEPS, dpmpp_2m:STEPS (DPM-Solver++ 2M) or ddpm "
                        "(default ddim:10,ddim:20,ddim:50,ddpm)")
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
