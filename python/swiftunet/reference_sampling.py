"""Pure-numpy reference of sampling (docs/model.md section 3, docs/sampling.md).

The oracle of the sampling parity tests. It depends on numpy and the standard
library only and imports nothing from the rest of the package, so it can be
imported on its own or re-exported by ``swiftunet.reference``.

Contents:

* noise schedules (`cosine_schedule`, `linear_schedule`, `alphas_cumprod`),
  in float64, and `q_sample`;
* the seeded Gaussian generator (`randn`, `GaussianStream`): vectorised
  SplitMix64 on numpy uint64 plus Box-Muller, exactly the Swift one;
* the per-image addressing of that stream (`start_noise`, `step_noise`):
  images k..k+n of a seed are the same whichever call draws them;
* the timestep spacings (`timesteps`) and Karras sigmas (`karras_sigmas`,
  `sigma_to_timestep`, `sampling_plan`);
* the samplers `ddim_sample`, `ddpm_sample` and `dpmpp_2m_sample`, driven by any
  ``eps_fn(x, t)`` callable (x [n, C, H, W], t an int64 array [n]), so the
  tests can drive them with the Swift model's forward and compare only the
  sampler arithmetic.

All sampler arithmetic is float64. With ``state_dtype=np.float32`` the state
is rounded to float32 after every step, as the Swift loop does (then the two
agree bit for bit, given the same eps_fn); with the default float64 the state
stays float64 and only eps_fn sees it (callers cast it).
"""

import math

import numpy as np

__all__ = [
    "cosine_schedule",
    "linear_schedule",
    "alphas_cumprod",
    "ddim_timesteps",
    "q_sample",
    "randn",
    "randn_libm",
    "GaussianStream",
    "ddim_sample",
    "ddpm_sample",
    "dpmpp_2m_sample",
    "ddim_step_coefficients",
    "ddpm_step",
    "timesteps",
    "karras_sigmas",
    "sigma_to_timestep",
    "sampling_plan",
    "start_noise",
    "step_noise",
]

# --------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------


def alphas_cumprod(betas):
    """prod_{s <= t} (1 - beta_s), left to right, float64."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def cosine_schedule(T):
    """Nichol & Dhariwal (2021): betas float64 [T].

    f(u) = cos(((u/T) + 0.008) / 1.008 * pi/2)**2,
    beta_t = min(1 - f(t+1)/f(t), 0.999).
    """
    T = int(T)
    u = np.arange(T + 1, dtype=np.float64)
    f = np.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], 0.999)


def linear_schedule(T, beta_start=1e-4, beta_end=0.02):
    """betas evenly spaced from beta_start to beta_end (numpy.linspace), float64 [T]."""
    return np.linspace(beta_start, beta_end, int(T), dtype=np.float64)


def ddim_timesteps(T, steps):
    """round(i*(T-1)/(S-1)) for i = S-1 .. 0, exact rational, ties to even.

    S = 1 gives the single timestep T-1 (docs/model.md's formula divides by zero there).
    """
    T, S = int(T), int(steps)
    if not 1 <= S <= T:
        raise ValueError(f"steps must be between 1 and {T}, got {S}")
    if S == 1:
        return np.array([T - 1], dtype=np.int64)
    # Python's round() on a Fraction is exact and rounds ties to even.
    from fractions import Fraction
    return np.array([round(Fraction(i * (T - 1), S - 1)) for i in range(S - 1, -1, -1)], dtype=np.int64)


def timesteps(T, steps, spacing="linspace"):
    """The timesteps of a run of `steps` steps under `spacing` (descending, int64).

    "linspace": ddim_timesteps; "leading": k*(T//S) for k = S-1 .. 0;
    "trailing": round(k*T/S) - 1 for k = S .. 1, exact, ties to even.
    """
    from fractions import Fraction
    T, S = int(T), int(steps)
    if not 1 <= S <= T:
        raise ValueError(f"steps must be between 1 and {T}, got {S}")
    if spacing == "linspace":
        return ddim_timesteps(T, S)
    if spacing == "leading":
        return np.array([k * (T // S) for k in range(S - 1, -1, -1)], dtype=np.int64)
    if spacing == "trailing":
        return np.array([round(Fraction(k * T, S)) - 1 for k in range(S, 0, -1)], dtype=np.int64)
    raise ValueError(f"unknown spacing {spacing!r}")


def karras_sigmas(ab, steps, rho=7.0):
    """Karras et al. (2022): (smax^(1/rho) + r*(smin^(1/rho) - smax^(1/rho)))^rho,
    r = linspace(0, 1, S), from the schedule's largest sigma to its smallest
    (sigma_t = sqrt((1 - ab_t)/ab_t)). Scalar libm arithmetic, as Swift."""
    ab = np.asarray(ab, dtype=np.float64)
    smin = math.sqrt((1 - ab[0]) / ab[0])
    smax = math.sqrt((1 - ab[-1]) / ab[-1])
    lo, hi = math.pow(smin, 1 / rho), math.pow(smax, 1 / rho)
    S = int(steps)
    ramp = [1.0 if (i == S - 1 and S > 1) else i * (1.0 / (S - 1) if S > 1 else 0.0) for i in range(S)]
    return np.array([math.pow(hi + r * (lo - hi), rho) for r in ramp])


def sigma_to_timestep(sigma, ab):
    """The timestep of `sigma`: interpolated linearly in log sigma between the two
    neighbouring timesteps of the schedule (diffusers' `_sigma_to_t`), rounded
    to the nearest integer, ties to even."""
    ab = [float(a) for a in np.asarray(ab, dtype=np.float64)]
    T = len(ab)
    log_sigmas = [math.log(math.sqrt((1 - a) / a)) for a in ab]
    ls = math.log(max(float(sigma), 1e-10))
    low = 0
    for t in range(T):
        if ls - log_sigmas[t] >= 0:
            low = t
    low = min(low, T - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = min(max((lo - ls) / (lo - hi), 0.0), 1.0)
    return int(round((1 - w) * low + w * (low + 1)))


def sampling_plan(schedule, steps, spacing="linspace", karras=False, custom=None):
    """(timesteps, alpha_bars) of a DDIM / DPM-Solver++ run: the schedule's
    alpha_bar at each timestep, or with Karras sigmas 1/(1 + sigma**2) and the
    sigma's timestep. `custom`, when given, are the run's timesteps (then
    `steps` and `spacing` are not used)."""
    ab = alphas_cumprod(_betas_of(schedule))
    if custom is not None:
        ts = np.asarray(custom, dtype=np.int64)
        return ts, ab[ts]
    if karras:
        sig = karras_sigmas(ab, steps)
        ts = np.array([sigma_to_timestep(v, ab) for v in sig], dtype=np.int64)
        return ts, np.array([1 / (1 + v * v) for v in sig])
    ts = timesteps(len(ab), steps, spacing)
    return ts, ab[ts]


def q_sample(x0, t, noise, betas):
    """x_t = sqrt(ab_t)*x0 + sqrt(1-ab_t)*noise, one t per image, float64 then float32."""
    ab = alphas_cumprod(betas)
    x0 = np.asarray(x0, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    t = np.broadcast_to(np.asarray(t, dtype=np.int64), (x0.shape[0],))
    a = ab[t]
    shape = (-1,) + (1,) * (x0.ndim - 1)
    out = np.sqrt(a).reshape(shape) * x0 + np.sqrt(1.0 - a).reshape(shape) * noise
    return out.astype(np.float32)


# --------------------------------------------------------------------------
# the Gaussian generator
# --------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_M53 = 2.0 ** -53


def _splitmix64(seed, start, n):
    """Outputs start+1 .. start+n of SplitMix64 seeded with `seed` (uint64 [n]).

    The k-th output (k >= 1) mixes state seed + k*0x9E3779B97F4A7C15 (mod 2**64).
    """
    k = np.arange(start + 1, start + n + 1, dtype=np.uint64)
    z = k * _GOLDEN + np.uint64(int(seed) & (2**64 - 1))
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def _uniform_pairs(seed, start, pairs):
    raw = _splitmix64(seed, start, 2 * pairs)
    u1 = ((raw[0::2] >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * _TWO_POW_M53  # (0, 1]
    u2 = (raw[1::2] >> np.uint64(11)).astype(np.float64) * _TWO_POW_M53                    # [0, 1)
    return u1, u2


def _box_muller(seed, start, count, libm):
    pairs = (count + 1) // 2
    u1, u2 = _uniform_pairs(seed, start, pairs)
    if libm:
        # The C library's log/cos/sin, exactly what Swift calls (slow: tests only).
        r = np.array([math.sqrt(-2.0 * math.log(v)) for v in u1.tolist()])
        a = [(2.0 * math.pi) * v for v in u2.tolist()]
        z0 = r * np.array([math.cos(v) for v in a])
        z1 = r * np.array([math.sin(v) for v in a])
    else:
        r = np.sqrt(-2.0 * np.log(u1))
        a = (2.0 * math.pi) * u2
        z0 = r * np.cos(a)
        z1 = r * np.sin(a)
    z = np.empty(2 * pairs, dtype=np.float32)
    z[0::2] = z0
    z[1::2] = z1
    return z[:count], 2 * pairs


def _shape(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


class GaussianStream:
    """The sampling run's random stream: whole tensors drawn one after another.

    Each `normal(shape)` continues the SplitMix64 stream where the previous one
    stopped and starts a new Box-Muller pair (an odd count drops its last z1).
    ``libm=True`` uses Python's math module (the C library) for log/cos/sin,
    which is what Swift calls, and so matches it bit for bit; numpy's
    vectorised versions may differ from the C library in the last bit of a
    float64, which very rarely moves a float32 result by one ulp.
    """

    def __init__(self, seed, libm=False):
        self.seed = int(seed) & (2**64 - 1)
        self.draws = 0
        self.libm = bool(libm)

    def normal(self, shape):
        shape = _shape(shape)
        count = int(np.prod(shape, dtype=np.int64))
        z, used = _box_muller(self.seed, self.draws, count, self.libm)
        self.draws += used
        return z.reshape(shape)


def randn(shape, seed=0):
    """float32 standard normals of `shape` from the seeded generator (numpy math)."""
    return GaussianStream(seed).normal(shape)


def randn_libm(shape, seed=0):
    """Like `randn` with the C library's log/cos/sin (bitwise the Swift values)."""
    return GaussianStream(seed, libm=True).normal(shape)


_STEP_NOISE_BASE = 2**63


def start_noise(seed, first_image, shape, libm=False):
    """x_T of images first_image .. first_image + n - 1 (shape [n, ...]): rows of
    randn((N, ...), seed), i.e. normals from first_image * P on (P values per image)."""
    shape = _shape(shape)
    per = int(np.prod(shape[1:], dtype=np.int64))
    first = int(first_image) * per
    count = int(np.prod(shape, dtype=np.int64))
    # Normal j is element j % 2 of pair j // 2, pair p uses outputs 2p, 2p + 1.
    skip = first % 2
    z, _ = _box_muller(seed, first - skip, count + skip, libm)
    return z[skip:skip + count].reshape(shape)


def step_noise(seed, first_image, shape, step, steps, libm=False):
    """The noise of step `step` (of `steps`) for images first_image .. + n - 1:
    image i's tensor of P normals starts at SplitMix64 output
    2**63 + (i*steps + step) * P' (P' = P rounded up to even)."""
    shape = _shape(shape)
    per = int(np.prod(shape[1:], dtype=np.int64))
    stride = per + (per & 1)
    rows = []
    for r in range(shape[0]):
        slot = (int(first_image) + r) * int(steps) + int(step)
        skip = (_STEP_NOISE_BASE + slot * stride) % 2**64
        rows.append(_box_muller(seed, skip, per, libm)[0])
    return np.stack(rows).reshape(shape) if rows else np.zeros(shape, np.float32)


# --------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------


def _start(shape, x_T, seed, start, libm):
    if x_T is not None:
        return np.array(x_T, dtype=np.float32)
    return start_noise(seed, start, shape, libm)


def _betas_of(schedule):
    betas = getattr(schedule, "betas", schedule)
    return np.asarray(betas, dtype=np.float64)


def _predict_x0(x, eps, sqrt_ab, sqrt_1mab, clip):
    x0 = (x - sqrt_1mab * eps) / sqrt_ab
    return np.clip(x0, -1.0, 1.0) if clip else x0


def ddim_step_coefficients(a, a_prev, eta):
    """(sigma, direction) of a DDIM step from alpha_bar a to a_prev."""
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
    return sigma, math.sqrt(max(0.0, 1 - a_prev - sigma * sigma))


def ddim_sample(eps_fn, shape, schedule, steps=50, eta=0.0, seed=0, x_T=None, clip=True,
                state_dtype=np.float64, libm=False, spacing="linspace", start=0, timesteps=None):
    """DDIM (Song et al. 2021) with docs/model.md's timesteps and the Swift random stream.

    eps_fn(x, t) -> predicted noise; schedule: betas (or an object with .betas).
    Per step, in float64: x0 = (x - sqrt(1-ab)*eps) / sqrt(ab), clipped;
    sigma = eta*sqrt((1-ab_prev)/(1-ab))*sqrt(1-ab/ab_prev);
    x = sqrt(ab_prev)*x0 + sqrt(1-ab_prev-sigma**2)*eps + sigma*z (z drawn only
    when sigma > 0); ab_prev = 1 after the last timestep. `start`: the index of
    the first image in the seed's per-image stream; `timesteps`: custom timesteps.
    """
    ts, abs_ = sampling_plan(schedule, steps, spacing, custom=timesteps)
    x = _start(shape, x_T, seed, start, libm).astype(state_dtype)
    n = x.shape[0]
    for k, t in enumerate(ts):
        a = float(abs_[k])
        a_prev = float(abs_[k + 1]) if k + 1 < len(ts) else 1.0
        sigma, direction = ddim_step_coefficients(a, a_prev, eta)
        eps = np.asarray(eps_fn(x, np.full(n, t, dtype=np.int64)), dtype=np.float64)
        x0 = _predict_x0(x.astype(np.float64), eps, math.sqrt(a), math.sqrt(1 - a), clip)
        new = math.sqrt(a_prev) * x0 + direction * eps
        if sigma > 0:
            new = new + sigma * step_noise(seed, start, x.shape, k, len(ts), libm).astype(np.float64)
        x = new.astype(state_dtype)
    return x


def ddpm_step(x, eps, t, betas, clip=True, noise=None):
    """One DDPM step at timestep t in float64 (noise: the z of t > 0, else unused)."""
    ab = alphas_cumprod(betas)
    a = float(ab[t])
    a_prev = float(ab[t - 1]) if t > 0 else 1.0
    beta = float(betas[t])
    mean_x0 = beta * math.sqrt(a_prev) / (1 - a)
    mean_xt = (1 - a_prev) * math.sqrt(1 - beta) / (1 - a)
    xt = np.asarray(x, dtype=np.float64)
    x0 = _predict_x0(xt, np.asarray(eps, dtype=np.float64), math.sqrt(a), math.sqrt(1 - a), clip)
    new = mean_x0 * x0 + mean_xt * xt
    if t > 0:
        std = math.sqrt(beta * (1 - a_prev) / (1 - a))
        new = new + std * np.asarray(noise, dtype=np.float32).astype(np.float64)
    return new


def ddpm_sample(eps_fn, shape, schedule, seed=0, x_T=None, clip=True, state_dtype=np.float64, libm=False,
                start=0):
    """DDPM ancestral sampling (Ho et al. 2020) over all T timesteps.

    Per step t = T-1 .. 0, in float64: x0 as in DDIM (clipped);
    mean = beta_t*sqrt(ab_prev)/(1-ab)*x0 + (1-ab_prev)*sqrt(1-beta_t)/(1-ab)*x_t;
    x = mean + sqrt(beta_t*(1-ab_prev)/(1-ab))*z for t > 0, x = mean at t = 0.
    """
    betas = _betas_of(schedule)
    T = len(betas)
    x = _start(shape, x_T, seed, start, libm).astype(state_dtype)
    n = x.shape[0]
    for k, t in enumerate(range(T - 1, -1, -1)):
        eps = eps_fn(x, np.full(n, t, dtype=np.int64))
        z = step_noise(seed, start, x.shape, k, T, libm) if t > 0 else None
        x = ddpm_step(x, eps, t, betas, clip, z).astype(state_dtype)
    return x


def dpmpp_2m_sample(eps_fn, shape, schedule, steps=10, seed=0, x_T=None, clip=True, state_dtype=np.float64,
                    spacing="linspace", karras=False, libm=False, start=0, timesteps=None):
    """DPM-Solver++ 2M (Lu et al. 2022): multistep, second order, data prediction.

    With alpha = sqrt(ab), sigma = sqrt(1-ab), lambda = log(alpha) - log(sigma)
    at each step's alpha_bar (sampling_plan), x0 predicted (and clipped) as in
    DDIM, and h = lambda_next - lambda:
      first step:  x = (sigma_next/sigma)*x + alpha_next*(1 - exp(-h))*x0
      later steps: the same + 0.5*alpha_next*(1 - exp(-h))/r*(x0 - x0_prev),
                   r = (lambda - lambda_prev)/h
      last step:   x = x0 (to sigma 0).
    `timesteps`: custom timesteps (sampling_plan).
    """
    ts, abs_ = sampling_plan(schedule, steps, spacing, karras, custom=timesteps)
    x = _start(shape, x_T, seed, start, libm).astype(state_dtype)
    n = x.shape[0]
    lam = lambda a: math.log(math.sqrt(a)) - math.log(math.sqrt(1 - a))
    prev = None
    S = len(ts)
    for k, t in enumerate(ts):
        a = float(abs_[k])
        eps = np.asarray(eps_fn(x, np.full(n, t, dtype=np.int64)), dtype=np.float64)
        xs = x.astype(np.float64)
        x0 = _predict_x0(xs, eps, math.sqrt(a), math.sqrt(1 - a), clip)
        if k == S - 1:
            new = x0
        else:
            a_next = float(abs_[k + 1])
            h = lam(a_next) - lam(a)
            ratio = math.sqrt(1 - a_next) / math.sqrt(1 - a)
            w = math.sqrt(a_next) * -math.expm1(-h)
            new = ratio * xs + w * x0
            if k > 0:
                r = (lam(a) - lam(float(abs_[k - 1]))) / h
                new = new + (0.5 * w / r) * (x0 - prev)
        prev = x0
        x = new.astype(state_dtype)
    return x
