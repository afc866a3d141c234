"""Sampling: noise schedules, q_sample, the seeded Gaussian generator, the
DDIM / DDPM / DPM-Solver++ 2M loops (docs/model.md section 3) and their step-by-step
schedulers. Every loop runs in Swift with the GIL released; docs/sampling.md
gives the exact formulas and random stream, and ``swiftunet.reference`` has
numpy twins of all of it.

    s = swiftunet.NoiseSchedule.cosine(1000)
    imgs = swiftunet.sample(model, n=16, sampler="dpmpp_2m", steps=10, schedule=s, seed=0)
    imgs = swiftunet.sample(model, n=4, seed=0, start=12)      # images 12..15 of seed 0
    x_t = swiftunet.q_sample(x0, t, noise, schedule=s)

    sched = swiftunet.DDIMScheduler(s, steps=50)              # a loop of your own
    gen = swiftunet.Generator(seed=0)
    x = gen.randn((n, C, H, W))
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, generator=gen)     # == sample(model, n, seed=0)
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np

from . import _swiftunet
from .model import _int_arg as _int

__all__ = ["NoiseSchedule", "q_sample", "randn", "sample", "SAMPLERS", "SPACINGS", "Generator",
           "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler"]

#: The sampler names `sample` accepts.
SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")
_SAMPLER_CODES = {"ddim": 0, "ddpm": 1, "dpmpp_2m": 2}
#: The timestep spacings (diffusers' `timestep_spacing`).
SPACINGS = ("linspace", "leading", "trailing")
_SPACING_CODES = {"linspace": 0, "leading": 1, "trailing": 2}
#: Longest schedule accepted (NoiseSchedule.maximumTimesteps in Swift).
MAX_TIMESTEPS = 1 << 20


def _real(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got bool {value!r}")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        return float(value)
    raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")


def _seed(value: Any) -> int:
    seed = _int("seed", value)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------
# schedules


class NoiseSchedule:
    """A forward-process noise schedule: ``betas`` and ``alphas_cumprod``
    (float64 arrays of ``num_timesteps`` values, read-only).

    ``NoiseSchedule.cosine(T)`` (Nichol & Dhariwal 2021), ``NoiseSchedule.linear(T,
    beta_start=1e-4, beta_end=0.02)`` (Ho et al. 2020), or ``NoiseSchedule(betas)``
    for any betas in (0, 1). Computed by the Swift library, in float64;
    ``alphas_cumprod`` is the running product of ``1 - betas``.
    """

    __slots__ = ("_betas", "_alphas_cumprod", "_kind")

    def __init__(self, betas: Any) -> None:
        try:
            b = np.array(betas, dtype=np.float64, order="C", copy=True)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"betas must be a 1-D array of real numbers: {exc}") from None
        if b.ndim != 1:
            raise ValueError(f"betas must be 1-D, got shape {b.shape}")
        if not 1 <= b.shape[0] <= MAX_TIMESTEPS:
            raise ValueError(f"betas must have between 1 and {MAX_TIMESTEPS} entries, got {b.shape[0]}")
        ab = np.empty_like(b)
        _swiftunet.schedule_from_betas(b, ab)
        self._init(b, ab, "custom")

    def _init(self, betas: np.ndarray, ab: np.ndarray, kind: str) -> None:
        self._betas = _readonly(betas)
        self._alphas_cumprod = _readonly(ab)
        self._kind = kind

    @staticmethod
    def _check_T(num_timesteps: Any) -> int:
        T = _int("num_timesteps", num_timesteps)
        if not 1 <= T <= MAX_TIMESTEPS:
            raise ValueError(f"num_timesteps must be between 1 and {MAX_TIMESTEPS}, got {T}")
        return T

    @classmethod
    def cosine(cls, num_timesteps: int = 1000) -> "NoiseSchedule":
        """f(u) = cos(((u/T) + 0.008)/1.008 * pi/2)**2, beta_t = min(1 - f(t+1)/f(t), 0.999)."""
        T = cls._check_T(num_timesteps)
        b, ab = np.empty(T), np.empty(T)
        _swiftunet.schedule("cosine", T, 0.0, 0.0, b, ab)
        s = cls.__new__(cls)
        s._init(b, ab, f"cosine({T})")
        return s

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """betas evenly spaced from beta_start to beta_end (as numpy.linspace)."""
        T = cls._check_T(num_timesteps)
        start, end = _real("beta_start", beta_start), _real("beta_end", beta_end)
        for name, v in (("beta_start", start), ("beta_end", end)):
            if not 0 < v < 1:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        b, ab = np.empty(T), np.empty(T)
        _swiftunet.schedule("linear", T, start, end, b, ab)
        s = cls.__new__(cls)
        s._init(b, ab, f"linear({T}, beta_start={start!r}, beta_end={end!r})")
        return s

    @property
    def betas(self) -> np.ndarray:
        return self._betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return self._alphas_cumprod

    @property
    def num_timesteps(self) -> int:
        return int(self._betas.shape[0])

    def __len__(self) -> int:
        return self.num_timesteps

    def ddim_timesteps(self, steps: int) -> np.ndarray:
        """The timesteps a DDIM run of `steps` steps visits (descending, int64).

        round(i*(T-1)/(S-1)) for i = S-1 .. 0, exact, ties to even; steps=1 is [T-1].
        """
        return self.timesteps(steps, "linspace")

    def timesteps(self, steps: int, spacing: str = "linspace") -> np.ndarray:
        """The timesteps a run of `steps` steps visits under `spacing` (descending, int64).

        "linspace": round(i*(T-1)/(S-1)) for i = S-1 .. 0 (the default);
        "leading": k*(T//S) for k = S-1 .. 0; "trailing": round(k*T/S) - 1 for
        k = S .. 1 (exact, ties to even), as diffusers' DDIMScheduler.
        """
        S = _int("steps", steps)
        code = _spacing_arg(spacing)
        T = self.num_timesteps
        if not 1 <= S <= T:
            raise ValueError(f"steps must be between 1 and the schedule's num_timesteps = {T}, got {S}")
        out = np.empty(S, dtype=np.int64)
        _swiftunet.ddim_timesteps(T, S, out, code)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoiseSchedule):
            return NotImplemented
        return np.array_equal(self._betas, other._betas)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self._kind == "custom":
            return f"NoiseSchedule(betas=<{self.num_timesteps} values>)"
        return f"NoiseSchedule.{self._kind}"

    def __reduce__(self):
        return (NoiseSchedule, (np.array(self._betas),))


_DEFAULT_SCHEDULE: Optional[NoiseSchedule] = None


def _spacing_arg(spacing: Any) -> int:
    if not isinstance(spacing, str):
        raise TypeError(f"timestep_spacing must be a str, one of {SPACINGS}, got {type(spacing).__name__}")
    if spacing not in _SPACING_CODES:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")
    return _SPACING_CODES[spacing]


def _schedule_arg(schedule: Any) -> NoiseSchedule:
    global _DEFAULT_SCHEDULE
    if schedule is None:
        if _DEFAULT_SCHEDULE is None:
            _DEFAULT_SCHEDULE = NoiseSchedule.cosine(1000)
        return _DEFAULT_SCHEDULE
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(
            "schedule must be a swiftunet.NoiseSchedule (e.g. NoiseSchedule.cosine(1000)) or None, "
            f"got {type(schedule).__name__}"
        )
    return schedule


# --------------------------------------------------------------------------
# q_sample and randn


def _float_array(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name} must be a real-valued array: {exc}") from None
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def q_sample(x0: Any, t: Any, noise: Any, schedule: Optional[NoiseSchedule] = None) -> np.ndarray:
    """The forward process: x_t = sqrt(ab_t)*x0 + sqrt(1 - ab_t)*noise.

    x0 and noise: arrays of one shape [B, ...]; t: an int or B integer
    timesteps in [0, num_timesteps). float64 arithmetic, float32 result.
    schedule defaults to NoiseSchedule.cosine(1000).
    """
    s = _schedule_arg(schedule)
    x = _float_array("x0", x0)
    z = _float_array("noise", noise)
    if x.ndim < 1:
        raise ValueError("x0 must have a batch dimension, got a scalar")
    if z.shape != x.shape:
        raise ValueError(f"noise must have x0's shape {x.shape}, got {z.shape}")
    if isinstance(t, (bool, np.bool_)):
        raise TypeError("t must hold integer timesteps, got a bool")
    ta = np.asarray(t)
    if ta.size == 0 and ta.dtype.kind == "f":
        ta = ta.astype(np.int64)
    if ta.dtype.kind not in "iu":
        raise TypeError(f"t must hold integers, got dtype {ta.dtype}")
    if ta.ndim == 0:
        ta = np.broadcast_to(ta, (x.shape[0],))
    if ta.shape != (x.shape[0],):
        raise ValueError(f"t must be an int or have one timestep per image ({x.shape[0]}), got shape {ta.shape}")
    if ta.size and (ta.min() < 0 or ta.max() >= s.num_timesteps):
        raise ValueError(f"t must be in [0, {s.num_timesteps}), got values from {ta.min()} to {ta.max()}")
    ta = np.ascontiguousarray(ta, dtype=np.int64)
    out = np.empty(x.shape, dtype=np.float32)
    batch = x.shape[0]
    per_image = int(np.prod(x.shape[1:], dtype=np.int64))
    _swiftunet.q_sample(np.ascontiguousarray(s.betas), x, ta, z, out, batch, per_image)
    return out


def _shape_arg(shape: Any) -> Tuple[int, ...]:
    if isinstance(shape, (numbers.Integral, np.integer)) and not isinstance(shape, bool):
        dims = (int(shape),)
    else:
        try:
            dims = tuple(_int(f"shape[{i}]", d) for i, d in enumerate(shape))
        except TypeError as exc:
            if "shape[" in str(exc):
                raise
            raise TypeError(f"shape must be an int or a sequence of ints, got {type(shape).__name__}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must not have negative dimensions, got {dims}")
    return dims


def _start_arg(start: Any) -> int:
    k = _int("start", start)
    if not 0 <= k < 2**62:
        raise ValueError(f"start must be in [0, 2**62), got {k}")
    return k


def randn(shape: Union[int, Sequence[int]], seed: int = 0, start: int = 0) -> np.ndarray:
    """float32 standard normals of `shape` from the library's seeded generator.

    SplitMix64(seed) + Box-Muller, filled in C order (docs/sampling.md); the
    same values `sample` starts from: ``sample(m, n, seed=s)`` begins at
    ``randn((n, C, H, W), s)``. `start` skips that many rows of the first axis:
    ``randn((n, ...), s, start=k)`` is rows k .. k+n-1 of ``randn((k+n, ...), s)``.
    """
    dims = _shape_arg(shape)
    s = _seed(seed)
    k = _start_arg(start)
    out = np.empty(dims, dtype=np.float32)
    row = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
    if k and k * row >= 2**62:
        raise ValueError(f"start = {k} rows of {row} values is beyond the random stream")
    if out.size:
        _swiftunet.randn(s, out, k * row)
    return out


# --------------------------------------------------------------------------
# the progress bar


class _StderrBar:
    """A minimal progress bar on stderr for when tqdm is not installed.

    Implements the part of tqdm's interface that sampling and training use:
    ``update(k)``, ``set_postfix(**values)`` and ``close()``; `initial` is the
    count already done (a resumed run), as in tqdm."""

    def __init__(self, total: int, desc: str, initial: int = 0) -> None:
        self.total, self.desc, self.n = total, desc, initial
        self.initial = initial
        self.postfix = ""
        self.start = time.monotonic()
        self.last = -1.0
        self.drawn = -1
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.1 and self.n < self.total:
            return
        if self.n == self.drawn and self.last >= 0 and not force:
            return
        self.last, self.drawn = now, self.n
        width = 30
        frac = min(1.0, self.n / self.total) if self.total else 1.0
        filled = int(width * frac)
        elapsed = now - self.start
        done = self.n - self.initial
        rate = f"{done / elapsed:.2f} it/s" if elapsed > 0 and done else "? it/s"
        postfix = f", {self.postfix}" if self.postfix else ""
        sys.stderr.write(f"\r{self.desc}: {100 * frac:3.0f}%|{'#' * filled}{' ' * (width - filled)}| "
                         f"{self.n}/{self.total} [{elapsed:.1f}s, {rate}{postfix}]")
        sys.stderr.flush()

    def update(self, k: int) -> None:
        self.n += k
        self._draw()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        """Text shown after the rate, e.g. ``set_postfix(loss="0.0312")`` (tqdm's signature)."""
        items = dict(ordered_dict or {}, **values)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())
        if refresh:
            self._draw()

    def close(self) -> None:
        if self.drawn != self.n:
            self._draw(force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()


def _make_bar(total: int, desc: str, initial: int = 0, unit: str = "step"):
    """A progress bar of `total` items, `initial` of them already done: tqdm's
    (tqdm.auto) when it is importable, else a plain one on stderr."""
    try:
        from tqdm.auto import tqdm  # type: ignore
    except Exception:
        return _StderrBar(total, desc, initial)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial)


# --------------------------------------------------------------------------
# sample


def _size_arg(image_size: Any, model) -> Tuple[int, int]:
    if image_size is None:
        return model.image_size, model.image_size
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
        h, w = _int("image_size[0]", image_size[0]), _int("image_size[1]", image_size[1])
    else:
        h = w = _int("image_size", image_size)
    f = 2 ** (len(model.hidden_dims) - 1)
    for name, v in (("height", h), ("width", w)):
        if v <= 0 or v % f != 0:
            raise ValueError(f"image_size: the {name} must be a positive multiple of 2**L = {f}, got {v}")
    return h, w


def _check_sampler_options(name: str, T: int, steps: int, eta: float, spacing: str, karras: bool) -> None:
    if name in ("ddim", "dpmpp_2m") and not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and the schedule's num_timesteps = {T}, got {steps}")
    if name == "ddim" and not 0.0 <= eta <= 1.0:  # also refuses NaN
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if karras and name != "dpmpp_2m":
        raise ValueError(f"karras_sigmas applies to sampler 'dpmpp_2m' only, not {name!r}")
    if karras and spacing != "linspace":
        raise ValueError("timestep_spacing has no effect with karras_sigmas=True (the Karras sigmas fix the "
                         "timesteps); leave it at 'linspace'")
    if karras and T < 2:
        raise ValueError("karras_sigmas needs a schedule of at least 2 timesteps")


def _timesteps_arg(timesteps: Any, T: int, name: str, spacing: str, karras: bool) -> Optional[np.ndarray]:
    """Custom timesteps as a C-contiguous int64 array, checked, or None."""
    if timesteps is None:
        return None
    if name == "ddpm":
        raise ValueError("timesteps: DDPM visits every timestep; custom timesteps are for 'ddim' and 'dpmpp_2m'")
    if karras:
        raise ValueError("timesteps: karras_sigmas fix their own timesteps; give one or the other")
    if spacing != "linspace":
        raise ValueError("timesteps: timestep_spacing has no effect with custom timesteps; leave it at 'linspace'")
    try:
        a = np.asarray(timesteps)
    except Exception as exc:
        raise TypeError(f"timesteps must be a 1-D sequence of ints: {exc}") from None
    if a.dtype.kind not in "iufb":
        raise TypeError(f"timesteps must hold ints, got dtype {a.dtype}")
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"timesteps must hold ints, got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= T:
        raise ValueError(f"timesteps must be in [0, {T}) (the schedule's timesteps), got min {a.min()}, max {a.max()}")
    if a.shape[0] > 1 and not (np.diff(a.astype(np.int64)) < 0).all():
        i = int(np.nonzero(np.diff(a.astype(np.int64)) >= 0)[0][0]) + 1
        raise ValueError(f"timesteps must be strictly decreasing, got {a[i - 1]} then {a[i]} at index {i}")
    return np.ascontiguousarray(a, dtype=np.int64)


def power_timesteps(num_timesteps: int, steps: int, power: float = 0.5) -> np.ndarray:
    """Timesteps ``round((T-1)·(1 - k/S)**power)`` for k = 0 .. S-1 (int64, descending),
    for ``sample(..., timesteps=)`` and the schedulers' ``timesteps=``.

    power 1 is even spacing without t = 0 (diffusers' DPMSolverMultistepScheduler
    ``"linspace"``); power < 1 puts more steps at high noise and ends the run at a
    larger t, from where the last step jumps to the predicted x0. docs/sampling.md
    measures what this does for few-step sampling (power 0.5 with 10 DPM-Solver++
    steps on the digits model). Raises ValueError when two timesteps round to the
    same value (too many steps for T at that power).
    """
    T = _int("num_timesteps", num_timesteps)
    S = _int("steps", steps)
    p = _real("power", power)
    if T < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {T}")
    if not 1 <= S <= T:
        raise ValueError(f"steps must be between 1 and num_timesteps = {T}, got {S}")
    if not (math.isfinite(p) and p > 0):
        raise ValueError(f"power must be a positive finite number, got {p}")
    k = np.arange(S, dtype=np.float64)
    ts = np.round((T - 1) * (1.0 - k / S) ** p).astype(np.int64)
    if S > 1 and not (np.diff(ts) < 0).all():
        raise ValueError(f"power_timesteps: {S} steps at power {p} repeat a timestep of T = {T}; "
                         "use fewer steps or a power nearer 1")
    return ts


def sample(
    model,
    n: Optional[int] = None,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    schedule: Optional[NoiseSchedule] = None,
    seed: int = 0,
    x_T: Any = None,
    clip: bool = True,
    progress: Union[bool, Callable[[int, int], Any]] = False,
    image_size: Union[None, int, Tuple[int, int]] = None,
    timestep_spacing: str = "linspace",
    karras_sigmas: bool = False,
    start: int = 0,
    timesteps: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Generates images with `model`; returns float32 [n, C, H, W] (about [-1, 1]).

    n: number of images (default 16; with x_T, x_T's batch, and n must agree
    if given); n = 0 returns an empty array.
    sampler: "ddim" (`steps` in [1, T], `eta` in [0, 1]: 0 is deterministic,
    1 is DDPM-like), "ddpm" (ancestral, all T steps; `steps` and `eta` are
    not used) or "dpmpp_2m" (DPM-Solver++ 2M, `steps` in [1, T]; deterministic,
    `eta` not used; good images in about 10 steps).
    schedule: a NoiseSchedule (default NoiseSchedule.cosine(1000)).
    seed: the generator seed; x_T (unless given) and every step's noise come
    from it, so the same seed gives the same images on every run and thread count.
    x_T: the starting noise [n, C, H, W] (any real dtype; copied as float32).
    clip: clip the predicted x0 to [-1, 1] at every step.
    progress: True for a progress bar (tqdm when installed, else stderr), or a
    callable(done, total) called between steps (done = 0 .. total).
    image_size: int or (height, width); default the model's image_size
    (positive multiples of 2**L only).
    timestep_spacing: "linspace" (default), "leading" or "trailing" (as
    diffusers; see NoiseSchedule.timesteps). DDPM visits all T timesteps under each.
    karras_sigmas: dpmpp_2m only: Karras et al.'s sigmas (rho 7) instead of
    the schedule's (then timestep_spacing must stay "linspace").
    timesteps: ddim and dpmpp_2m: the timesteps to visit, in place of the
    spacing's (diffusers' ``set_timesteps(timesteps=...)``): ints, strictly
    decreasing, in [0, T); their number is the number of steps (`steps` is then
    not used). See power_timesteps.
    start: the index of the first image: images start .. start+n-1 of `seed`,
    so ``sample(m, n=a, seed=s)`` followed by ``sample(m, n=b, seed=s, start=a)``
    equals ``sample(m, n=a+b, seed=s)`` bit for bit (sharded sampling).

    The loop runs in Swift with the GIL released. Ctrl-C (or an exception
    from a progress callable) stops it between steps and raises; the model
    stays usable.
    """
    if not hasattr(model, "_handle") or not hasattr(model, "hidden_dims"):
        raise TypeError(f"model must be a swiftunet.DiffusionModel, got {type(model).__name__}")
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a str, one of {SAMPLERS}, got {type(sampler).__name__}")
    name = sampler.lower()
    if name not in _SAMPLER_CODES:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    s = _schedule_arg(schedule)
    T = s.num_timesteps
    steps_i = _int("steps", steps)
    eta_f = _real("eta", eta)
    spacing_code = _spacing_arg(timestep_spacing)
    if not isinstance(karras_sigmas, (bool, np.bool_)):
        raise TypeError(f"karras_sigmas must be a bool, got {type(karras_sigmas).__name__}")
    ts = _timesteps_arg(timesteps, T, name, timestep_spacing, bool(karras_sigmas))
    if ts is not None:
        steps_i = int(ts.shape[0])
    _check_sampler_options(name, T, steps_i, eta_f, timestep_spacing, bool(karras_sigmas))
    if name == "ddpm":
        steps_i, eta_f = T, 0.0
    first = _start_arg(start)
    seed_i = _seed(seed)
    if not isinstance(clip, (bool, np.bool_)):
        raise TypeError(f"clip must be a bool, got {type(clip).__name__}")
    if not (isinstance(progress, (bool, np.bool_)) or callable(progress)):
        raise TypeError(f"progress must be a bool or a callable(done, total), got {type(progress).__name__}")

    C = model.channels
    if x_T is not None:
        if image_size is not None:
            raise ValueError("give either x_T or image_size, not both (x_T fixes the size)")
        try:
            xa = np.asarray(x_T)
        except Exception as exc:
            raise TypeError(f"x_T must be a real-valued array [n, C, H, W]: {exc}") from None
        if xa.dtype.kind not in "iuf":
            raise TypeError(f"x_T must hold real numbers, got dtype {xa.dtype}")
        if xa.ndim != 4 or xa.shape[1] != C:
            raise ValueError(f"x_T must have shape [n, {C}, H, W], got {xa.shape}")
        f = 2 ** (len(model.hidden_dims) - 1)
        if xa.shape[2] <= 0 or xa.shape[3] <= 0 or xa.shape[2] % f or xa.shape[3] % f:
            raise ValueError(f"x_T's height and width must be positive multiples of 2**L = {f}, got {xa.shape}")
        if n is not None and _int("n", n) != xa.shape[0]:
            raise ValueError(f"n = {n} disagrees with x_T's batch {xa.shape[0]}")
        xa = np.array(xa, dtype=np.float32, order="C", copy=True)
        if not np.isfinite(xa).all():
            raise ValueError("x_T must be finite (it contains NaN or infinity)")
        count, (h, w) = xa.shape[0], xa.shape[2:]
    else:
        xa = None
        count = 16 if n is None else _int("n", n)
        if count < 0:
            raise ValueError(f"n must be >= 0, got {count}")
        h, w = _size_arg(image_size, model)

    out = np.empty((count, C, h, w), dtype=np.float32)
    if count == 0:
        return out

    bar = None
    hook = None
    if callable(progress) and not isinstance(progress, (bool, np.bool_)):
        hook = progress
    elif progress:
        def hook(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = _make_bar(total, f"{name} sampling")
            if done:
                bar.update(1)

    try:
        _swiftunet.sample(model._handle, np.ascontiguousarray(s.betas), _SAMPLER_CODES[name], steps_i, eta_f,
                          bool(clip), seed_i, xa, out, count, h, w, hook, spacing_code, bool(karras_sigmas), first,
                          ts)
    finally:
        if bar is not None:
            bar.close()
    return out


# --------------------------------------------------------------------------
# the step-by-step API


class Generator:
    """The per-image random stream of sampling: images ``start, start+1, ...`` of `seed`.

    ``gen.randn((n, C, H, W))`` is the x_T that ``sample(m, n, seed=seed,
    start=start)`` starts from, and a scheduler's ``step(..., generator=gen)``
    draws each image's step noise from the same addresses `sample` does, so a
    loop of one's own reproduces `sample` bit for bit. The generator has no
    state: which step's noise is drawn follows from the scheduler's step.
    (diffusers/PyTorch equivalent: a list of one torch.Generator per image.)
    """

    __slots__ = ("seed", "start")

    def __init__(self, seed: int = 0, start: int = 0) -> None:
        self.seed = _seed(seed)
        self.start = _start_arg(start)

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        """x_T of images start .. start + shape[0] - 1: ``randn(shape, seed, start)``."""
        return randn(shape, self.seed, self.start)

    def __repr__(self) -> str:
        return f"Generator(seed={self.seed}, start={self.start})"


class _Scheduler:
    """Shared part of the schedulers: a Swift scheduler handle and argument checks."""

    _sampler = ""

    def __init__(self, schedule: Optional[NoiseSchedule], steps: int, eta: float, spacing: str, karras: bool,
                 clip: bool, timesteps: Optional[Sequence[int]] = None) -> None:
        self.schedule = _schedule_arg(schedule)
        T = self.schedule.num_timesteps
        steps_i = _int("steps", steps)
        eta_f = _real("eta", eta)
        code = _spacing_arg(spacing)
        if not isinstance(clip, (bool, np.bool_)):
            raise TypeError(f"clip must be a bool, got {type(clip).__name__}")
        if not isinstance(karras, (bool, np.bool_)):
            raise TypeError(f"karras_sigmas must be a bool, got {type(karras).__name__}")
        custom = _timesteps_arg(timesteps, T, self._sampler, spacing, bool(karras))
        self._custom = custom is not None
        if custom is not None:
            steps_i = int(custom.shape[0])
        _check_sampler_options(self._sampler, T, steps_i, eta_f, spacing, bool(karras))
        if self._sampler == "ddpm":
            steps_i, eta_f = T, 0.0
        self.eta, self.spacing, self.clip = eta_f, spacing, bool(clip)
        self._handle = _swiftunet.scheduler_create(np.ascontiguousarray(self.schedule.betas),
                                                   _SAMPLER_CODES[self._sampler], steps_i, eta_f, code,
                                                   bool(karras), bool(clip), custom)
        S = _swiftunet.scheduler_num_steps(self._handle)
        ts, ab = np.empty(S, dtype=np.int64), np.empty(S, dtype=np.float64)
        _swiftunet.scheduler_plan(self._handle, ts, ab)
        self._timesteps, self._alpha_bars = _readonly(ts), _readonly(ab)

    @property
    def timesteps(self) -> np.ndarray:
        """The timesteps of the steps, in order (int64, read-only)."""
        return self._timesteps

    @property
    def alpha_bars(self) -> np.ndarray:
        """The alpha_bar each step's update uses (the schedule's at the timestep;
        with Karras sigmas 1/(1 + sigma**2)), float64, read-only."""
        return self._alpha_bars

    @property
    def num_steps(self) -> int:
        return int(self._timesteps.shape[0])

    @property
    def step_index(self) -> int:
        """The index of the next step (num_steps when all are done)."""
        return _swiftunet.scheduler_step_index(self._handle)

    def reset(self) -> None:
        """Starts a new trajectory (a step at timesteps[0] does so too)."""
        _swiftunet.scheduler_reset(self._handle)

    def step(self, eps: Any, t: Any, x: Any, generator: Optional[Generator] = None, noise: Any = None,
             out: Optional[np.ndarray] = None) -> np.ndarray:
        """One step: x (at timestep `t`) and the model's prediction `eps` -> the next x.

        eps, x: real arrays [n, C, H, W] of one shape (copied to float32 if
        needed). `t` must be the next of `timesteps` (or timesteps[0], which
        starts a new trajectory). A step that adds noise (DDIM with eta > 0,
        DDPM at t > 0) takes it from `generator` (a swiftunet.Generator: the
        same noise `sample` draws) or `noise` (an array of x's shape); other
        steps ignore both. `out`: a float32 C-contiguous array of x's shape
        to write into (it may be x itself); returned.
        """
        if isinstance(t, (bool, np.bool_)):
            raise TypeError("t must be an integer timestep, got a bool")
        if isinstance(t, np.ndarray) and t.ndim == 1 and t.size >= 1 and (t == t.flat[0]).all():
            t = t.flat[0]  # one timestep per image, all equal (as the model takes them)
        t_i = _int("t", t)
        xa = _float_array("x", x)
        ea = _float_array("eps", eps)
        if xa.ndim != 4:
            raise ValueError(f"x must have shape [n, C, H, W], got {xa.shape}")
        if ea.shape != xa.shape:
            raise ValueError(f"eps must have x's shape {xa.shape}, got {ea.shape}")
        if generator is not None and noise is not None:
            raise ValueError("give generator or noise, not both")
        if generator is not None and not isinstance(generator, Generator):
            raise TypeError(f"generator must be a swiftunet.Generator, got {type(generator).__name__}")
        za = None
        if noise is not None:
            za = _float_array("noise", noise)
            if za.shape != xa.shape:
                raise ValueError(f"noise must have x's shape {xa.shape}, got {za.shape}")
        if out is None:
            out = np.empty(xa.shape, dtype=np.float32)
        else:
            if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous \
                    or not out.flags.writeable:
                raise TypeError("out must be a writable C-contiguous float32 numpy array")
            if out.shape != xa.shape:
                raise ValueError(f"out must have x's shape {xa.shape}, got {out.shape}")
            if np.shares_memory(out, ea) or (za is not None and np.shares_memory(out, za)):
                raise ValueError("out must not share memory with eps or noise")
            if np.shares_memory(out, xa) and not (out.ctypes.data == xa.ctypes.data):
                raise ValueError("out must be x itself or not overlap it")
        n = xa.shape[0]
        per_image = int(np.prod(xa.shape[1:], dtype=np.int64))
        if za is not None:
            kind, seed, first = 1, 0, 0
        elif generator is not None:
            kind, seed, first = 2, generator.seed, generator.start
        else:
            kind, seed, first = 0, 0, 0
        _swiftunet.scheduler_step(self._handle, t_i, ea, xa, out, n, per_image, kind, za, seed, first)
        return out

    def __repr__(self) -> str:
        plan = f"timesteps={self._timesteps.tolist()}" if self._custom else f"spacing={self.spacing!r}"
        return (f"{type(self).__name__}({self.schedule!r}, steps={self.num_steps}, {plan}"
                f"{self._repr_extra()}, clip={self.clip})")

    def _repr_extra(self) -> str:
        return ""


class DDIMScheduler(_Scheduler):
    """DDIM one step at a time (diffusers' ``DDIMScheduler(clip_sample=clip,
    set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing)`` with
    ``step(..., eta=eta)``; docs/sampling.md says where the previous timestep differs).

        sched = swiftunet.DDIMScheduler(schedule, steps=50, eta=0.0)
        for t in sched.timesteps:
            x = sched.step(model(x, t), t, x, generator=gen)
    """

    _sampler = "ddim"

    def __init__(self, schedule: Optional[NoiseSchedule] = None, steps: int = 50, eta: float = 0.0,
                 spacing: str = "linspace", clip: bool = True, timesteps: Optional[Sequence[int]] = None) -> None:
        super().__init__(schedule, steps, eta, spacing, False, clip, timesteps)

    def _repr_extra(self) -> str:
        return f", eta={self.eta}"


class DDPMScheduler(_Scheduler):
    """DDPM ancestral sampling one step at a time, over all T timesteps (diffusers'
    ``DDPMScheduler(variance_type="fixed_small", clip_sample=clip)``). Every
    step but the last adds noise: pass ``generator=`` or ``noise=``."""

    _sampler = "ddpm"

    def __init__(self, schedule: Optional[NoiseSchedule] = None, spacing: str = "linspace",
                 clip: bool = True) -> None:
        super().__init__(schedule, 1, 0.0, spacing, False, clip)


class DPMSolverMultistepScheduler(_Scheduler):
    """DPM-Solver++ 2M one step at a time (diffusers' ``DPMSolverMultistepScheduler(
    algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero",
    use_karras_sigmas=karras_sigmas)`` with the timesteps of `spacing`, or
    ``set_timesteps(timesteps=timesteps)`` when `timesteps` is given). It
    keeps the previous step's x0, so one scheduler follows one trajectory at a time."""

    _sampler = "dpmpp_2m"

    def __init__(self, schedule: Optional[NoiseSchedule] = None, steps: int = 10, spacing: str = "linspace",
                 karras_sigmas: bool = False, clip: bool = True, timesteps: Optional[Sequence[int]] = None) -> None:
        super().__init__(schedule, steps, 0.0, spacing, karras_sigmas, clip, timesteps)
        self.karras_sigmas = bool(karras_sigmas)

    def _repr_extra(self) -> str:
        return f", karras_sigmas={self.karras_sigmas}"
