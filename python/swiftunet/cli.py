"""The command line: ``python3 -m swiftunet {info,sample,bench,train-digits,evaluate}``.

    python3 -m swiftunet info
    python3 -m swiftunet sample --weights m.safetensors --n 16 --steps 50 --sampler ddim --seed 0 --out grid.png
    python3 -m swiftunet sample --out grid.png          # the built-in model: swiftunet.pretrained("digits")
    python3 -m swiftunet sample --random --out grid.png # the random DiffusionModel(32, 3, [64, 128, 256])
    python3 -m swiftunet bench [args for benchmarks/bench.py]
    python3 -m swiftunet train-digits [...]             # swiftunet.train_digits (needs scikit-learn)
    python3 -m swiftunet evaluate [...]                 # swiftunet.evaluate (needs scikit-learn)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

#: The random model of `bench` and of `sample --random`.
DEFAULT_MODEL = {"image_size": 32, "channels": 3, "hidden_dims": [64, 128, 256], "time_dim": 128, "seed": 0}
#: The model `sample` uses without --weights or --random (swiftunet.pretrained).
DEFAULT_PRETRAINED = "digits"

#: Subcommands that are whole programs of their own: the rest of the command
#: line goes to that module's main(argv).
DELEGATED = {
    "train-digits": ("swiftunet.train_digits", "train the shipped digits model (needs scikit-learn)"),
    "evaluate": ("swiftunet.evaluate", "quality of the digits model's samples (needs scikit-learn)"),
}


def _default_model():
    import swiftunet
    return swiftunet.DiffusionModel(**DEFAULT_MODEL)


def cmd_info(args) -> int:
    import swiftunet
    d = swiftunet.info()
    print(f"swiftunet {d['version']}")
    print(f"build: {d['build']}")
    print(f"vector ISA: {d['isa']} (compiled for; target-cpu {d['target_cpu']}); "
          f"kernel variant: {d['kernel_variant']} (register blocks {d['register_blocks']})")
    print(f"kernel variants: {d['variant_choice']}")
    print(f"cpu: {d['cpu'] or 'unknown'}; vector features: {' '.join(d['cpu_features']) or 'unknown'}")
    print(f"abi version: {d['abi_version']}")
    print(f"threads: {d['threads']} (cpus: {d['cpus']})")
    print(f"numpy {d['numpy']}, python {d['python']}")
    print(f"package: {d['package']}")
    print(f"swift runtime: {d['swift_runtime'] or 'unknown'}")
    return 0


def cmd_sample(args) -> int:
    import numpy as np

    import swiftunet
    from swiftunet.images import grid_columns, image_grid, write_png
    if args.n < 1:
        raise ValueError(f"--n must be at least 1 (the number of images in the grid), got {args.n}")
    if args.nrow is not None and args.nrow < 1:
        raise ValueError(f"--nrow must be at least 1, got {args.nrow}")
    if args.threads is not None:
        swiftunet.set_num_threads(args.threads)
    if args.weights and args.random:
        raise ValueError("--weights and --random exclude each other")
    if args.weights:
        model = swiftunet.DiffusionModel.load(args.weights)
        source = args.weights
    elif args.random:
        model = _default_model()
        source = "random model DiffusionModel(32, 3, [64, 128, 256], 128, seed=0)"
    else:
        model = swiftunet.pretrained(DEFAULT_PRETRAINED)
        source = f'swiftunet.pretrained("{DEFAULT_PRETRAINED}")'
    if args.schedule == "cosine":
        schedule = swiftunet.NoiseSchedule.cosine(args.timesteps)
    else:
        schedule = swiftunet.NoiseSchedule.linear(args.timesteps)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    extra = {}
    if args.timestep_power is not None:
        if args.sampler == "ddpm":
            raise ValueError("--timestep-power applies to ddim and dpmpp_2m, not ddpm (it visits every timestep)")
        extra["timesteps"] = swiftunet.power_timesteps(schedule.num_timesteps, args.steps, args.timestep_power)
    start = time.perf_counter()
    imgs = swiftunet.sample(model, n=args.n, sampler=args.sampler, steps=args.steps, eta=args.eta,
                            schedule=schedule, seed=args.seed, clip=not args.no_clip, progress=progress,
                            image_size=args.image_size, **extra)
    elapsed = time.perf_counter() - start
    grid = image_grid(imgs, nrow=args.nrow or grid_columns(args.n))
    write_png(args.out, grid)
    if args.npy:
        np.save(args.npy, imgs)
    steps = schedule.num_timesteps if args.sampler == "ddpm" else args.steps
    print(f"{args.n} images ({args.sampler}, {steps} steps, seed {args.seed}) from {source} "
          f"in {elapsed:.2f} s -> {args.out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


def _find_bench() -> Optional[Path]:
    candidates = [Path.cwd() / "benchmarks" / "bench.py",
                  Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"]
    for c in candidates:
        if c.is_file():
            return c
    return None


def cmd_bench(args, extra: List[str]) -> int:
    bench = _find_bench()
    if bench is not None and not args.quick_forward:
        print(f"running {bench}", flush=True)
        return subprocess.call([sys.executable, str(bench)] + extra)
    if bench is None and not args.quick_forward:
        print("benchmarks/bench.py not found (it lives in the source tree); quick forward timing instead",
              flush=True)
    import numpy as np

    import swiftunet
    if args.threads is not None:
        swiftunet.set_num_threads(args.threads)
    model = _default_model()
    b = args.batch
    x = swiftunet.randn((b, 3, 32, 32), seed=1)
    t = np.full(b, 500, dtype=np.int64)
    out = np.empty_like(x)
    model(x, t, out=out)  # warm-up
    times = []
    deadline = time.perf_counter() + 2.0
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 50):
        t0 = time.perf_counter()
        model(x, t, out=out)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    print(f"forward, {DEFAULT_MODEL['hidden_dims']} 32x32x3, batch {b}, {swiftunet.get_num_threads()} threads: "
          f"median {med * 1e3:.2f} ms over {len(times)} calls ({b / med:.1f} images/s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m swiftunet", description="swiftunet: a diffusion U-Net in Swift.")
    sub = p.add_subparsers(dest="command")

    sub.add_parser("info", help="version, vector ISA, kernel variant (and the variants carried), CPU features, threads")

    s = sub.add_parser("sample", help="generate images and save them as a PNG grid")
    s.add_argument("--weights", help="a .safetensors (from model.save) or .npz state_dict; "
                                     "default: the built-in digits model, swiftunet.pretrained('digits')")
    s.add_argument("--random", action="store_true",
                   help="sample the randomly initialised DiffusionModel(32, 3, [64, 128, 256], 128, seed=0)")
    s.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    s.add_argument("--steps", type=int, default=50,
                   help="DDIM or DPM-Solver++ steps (default 50; ddpm uses all timesteps)")
    s.add_argument("--sampler", choices=["ddim", "ddpm", "dpmpp_2m"], default="ddim",
                   help="ddim (deterministic at eta 0, --steps steps), ddpm (ancestral, all timesteps) or "
                        "dpmpp_2m (DPM-Solver++ 2M, deterministic, --steps steps); default ddim")
    s.add_argument("--timestep-power", type=float, default=None, metavar="P",
                   help="ddim and dpmpp_2m: visit swiftunet.power_timesteps(T, steps, P) instead of the "
                        "linspace timesteps; --sampler dpmpp_2m --steps 10 --timestep-power 0.5 matches "
                        "50 DDIM steps on the digits model")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default 0)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the starting noise and of any sampler noise: same seed, same images (default 0)")
    s.add_argument("--schedule", choices=["cosine", "linear"], default="cosine",
                   help="noise schedule: cosine (Nichol & Dhariwal) or linear 1e-4..0.02 (default cosine)")
    s.add_argument("--timesteps", type=int, default=1000, help="schedule length T (default 1000)")
    s.add_argument("--image-size", type=int, default=None,
                   help="side of the sampled images, a multiple of 2**L (default: the model's image_size)")
    s.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    s.add_argument("--nrow", type=int, default=None,
                   help="images per grid row (default: a row length that fills the grid, e.g. 4x2 for 8)")
    s.add_argument("--out", default="samples.png", help="PNG file to write (default samples.png)")
    s.add_argument("--npy", default=None, help="also save the float32 images [n, C, H, W] to this .npy")
    s.add_argument("--threads", type=int, default=None,
                   help="worker threads (default: SWIFTUNET_NUM_THREADS, else the CPUs available); "
                        "the images do not depend on it")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None, help="show a progress bar")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (default: a bar when stderr is a terminal)")

    b = sub.add_parser("bench", help="run benchmarks/bench.py when present, else a quick forward timing",
                       description="Runs benchmarks/bench.py (from the source tree) with any further "
                                   "arguments; without it, or with --quick-forward, times forward passes "
                                   "of the default model.")
    b.add_argument("--quick-forward", action="store_true", help="only the quick forward timing")
    b.add_argument("--batch", type=int, default=16, help="batch of the quick timing (default 16)")
    b.add_argument("--threads", type=int, default=None, help="threads of the quick timing")
    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)  # listed here; parsed by the module itself
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        import importlib
        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args, extra = parser.parse_known_args(argv)
    if args.command != "bench" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command in (None, "info"):
            return cmd_info(args)
        if args.command == "sample":
            return cmd_sample(args)
        return cmd_bench(args, extra)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
