"""DPM-Solver++ 2M, timestep spacings, Karras sigmas, the step-by-step
schedulers and sharded sampling (docs/sampling.md), checked against the numpy
reference (swiftunet.reference) driven by the Swift model's own forward, and
across processes."""

import multiprocessing as mp

import numpy as np
import pytest

import swiftunet
from swiftunet import reference as R

CFG = dict(image_size=16, channels=3, hidden_dims=[16, 32, 64], time_dim=32)
SHAPE = (3, 3, 16, 16)


@pytest.fixture(scope="module")
def model():
    return swiftunet.DiffusionModel(**CFG, seed=1)


@pytest.fixture(scope="module")
def cosine():
    return swiftunet.NoiseSchedule.cosine(1000)


def eps_fn_of(m):
    return lambda x, t: m(np.asarray(x, dtype=np.float32), t)


# ---------------------------------------------------------------------------
# spacings and the Karras plan


@pytest.mark.parametrize("T", [1, 2, 10, 999, 1000])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_timesteps_match_reference(T, spacing):
    s = swiftunet.NoiseSchedule.linear(T, 1e-4, 0.02) if T > 1 else swiftunet.NoiseSchedule([0.5])
    for S in sorted({1, 2, 3, 7, 16, 48, T // 3, T} & set(range(1, T + 1))):
        got = s.timesteps(S, spacing)
        np.testing.assert_array_equal(got, R.timesteps(T, S, spacing), err_msg=f"T={T} S={S}")
        assert got.dtype == np.int64 and len(got) == S
        assert (np.diff(got) < 0).all() and got.min() >= 0 and got.max() < T
    np.testing.assert_array_equal(s.timesteps(1), s.ddim_timesteps(1))


def test_spacing_values_and_validation(cosine):
    np.testing.assert_array_equal(cosine.timesteps(10, "leading"), np.arange(900, -1, -100))
    np.testing.assert_array_equal(cosine.timesteps(10, "trailing"), np.arange(999, 0, -100))
    with pytest.raises(ValueError, match="timestep_spacing"):
        cosine.timesteps(10, "uniform")
    with pytest.raises(TypeError, match="timestep_spacing"):
        cosine.timesteps(10, 1)
    with pytest.raises(ValueError, match="steps"):
        cosine.timesteps(1001, "trailing")


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20])
def test_karras_plan_matches_reference(cosine, steps):
    sched = swiftunet.DPMSolverMultistepScheduler(cosine, steps=steps, karras_sigmas=True)
    ts, ab = R.sampling_plan(cosine, steps, karras=True)
    np.testing.assert_array_equal(sched.timesteps, ts)
    np.testing.assert_array_equal(sched.alpha_bars, ab)
    # The Karras sigmas run from the schedule's largest sigma to its smallest.
    sig = np.sqrt((1 - sched.alpha_bars) / sched.alpha_bars)
    full = np.sqrt((1 - cosine.alphas_cumprod) / cosine.alphas_cumprod)
    assert sig[0] == pytest.approx(full[-1], rel=1e-12)
    if steps > 1:
        assert sig[-1] == pytest.approx(full[0], rel=1e-12)
        assert (np.diff(sig) < 0).all()


# ---------------------------------------------------------------------------
# DPM-Solver++ and the spacings against the reference, bit for bit


@pytest.mark.parametrize("steps", [1, 2, 3, 10])
@pytest.mark.parametrize("clip", [True, False])
def test_dpmpp_2m_matches_reference_bitwise(model, cosine, steps, clip):
    got = swiftunet.sample(model, n=3, sampler="dpmpp_2m", steps=steps, schedule=cosine, seed=5, clip=clip)
    ref = R.dpmpp_2m_sample(eps_fn_of(model), SHAPE, cosine, steps=steps, seed=5, clip=clip,
                            state_dtype=np.float32, libm=True)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("spacing,karras", [("leading", False), ("trailing", False), ("linspace", True)])
def test_dpmpp_2m_spacings_and_karras_match_reference(model, cosine, spacing, karras):
    got = swiftunet.sample(model, n=3, sampler="dpmpp_2m", steps=8, schedule=cosine, seed=2,
                           timestep_spacing=spacing, karras_sigmas=karras)
    ref = R.dpmpp_2m_sample(eps_fn_of(model), SHAPE, cosine, steps=8, seed=2, spacing=spacing, karras=karras,
                            state_dtype=np.float32, libm=True)
    np.testing.assert_array_equal(got, ref)


def test_dpmpp_2m_float64_reference_parity(model, cosine):
    # Against the float64-state reference: the only difference is Swift's float32
    # state after each step (the same amplification as DDIM at eta 0, see docs).
    got = swiftunet.sample(model, n=3, sampler="dpmpp_2m", steps=10, schedule=cosine, seed=5)
    ref = R.dpmpp_2m_sample(eps_fn_of(model), SHAPE, cosine, steps=10, seed=5)
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4  # measured 4.9e-6


def test_dpmpp_first_order_step_is_ddim(model, cosine):
    # One DPM-Solver++ step to the end is x0; two steps: the first is first order,
    # which is DDIM with eta 0 (Lu et al. 2022), so the two-step runs agree closely.
    a = swiftunet.sample(model, n=2, sampler="dpmpp_2m", steps=2, schedule=cosine, seed=4, clip=False)
    b = swiftunet.sample(model, n=2, sampler="ddim", steps=2, schedule=cosine, seed=4, clip=False)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    # From the third step on, the second-order correction makes them differ.
    a = swiftunet.sample(model, n=2, sampler="dpmpp_2m", steps=4, schedule=cosine, seed=4)
    b = swiftunet.sample(model, n=2, sampler="ddim", steps=4, schedule=cosine, seed=4)
    assert np.abs(a - b).max() > 1e-3 * np.abs(b).max()


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_spacings_match_reference_bitwise(model, cosine, spacing, eta):
    got = swiftunet.sample(model, n=3, steps=6, eta=eta, schedule=cosine, seed=8, timestep_spacing=spacing)
    ref = R.ddim_sample(eps_fn_of(model), SHAPE, cosine, steps=6, eta=eta, seed=8, spacing=spacing,
                        state_dtype=np.float32, libm=True)
    np.testing.assert_array_equal(got, ref)


def test_ddpm_every_spacing_is_every_timestep(model):
    s = swiftunet.NoiseSchedule.linear(12, 1e-3, 0.2)
    a = swiftunet.sample(model, n=2, sampler="ddpm", schedule=s, seed=1)
    for spacing in ("leading", "trailing"):
        np.testing.assert_array_equal(a, swiftunet.sample(model, n=2, sampler="ddpm", schedule=s, seed=1,
                                                          timestep_spacing=spacing))
    ref = R.ddpm_sample(eps_fn_of(model), (2, 3, 16, 16), s, seed=1, state_dtype=np.float32, libm=True)
    np.testing.assert_array_equal(a, ref)


def test_sampler_option_validation(model, cosine):
    with pytest.raises(ValueError, match="karras_sigmas"):
        swiftunet.sample(model, n=1, sampler="ddim", steps=3, karras_sigmas=True)
    with pytest.raises(ValueError, match="timestep_spacing"):
        swiftunet.sample(model, n=1, sampler="dpmpp_2m", steps=3, karras_sigmas=True, timestep_spacing="leading")
    with pytest.raises(ValueError, match="timestep_spacing"):
        swiftunet.sample(model, n=1, steps=3, timestep_spacing="even")
    with pytest.raises(ValueError, match="steps"):
        swiftunet.sample(model, n=1, sampler="dpmpp_2m", steps=0)
    with pytest.raises(TypeError, match="karras_sigmas"):
        swiftunet.sample(model, n=1, sampler="dpmpp_2m", steps=3, karras_sigmas=1)
    with pytest.raises(ValueError, match="start"):
        swiftunet.sample(model, n=1, steps=2, start=-1)
    with pytest.raises(ValueError, match="karras"):
        swiftunet.DPMSolverMultistepScheduler(swiftunet.NoiseSchedule([0.5]), steps=1, karras_sigmas=True)


# ---------------------------------------------------------------------------
# the step-by-step schedulers


def _loop(m, sched, n, seed, start=0, in_place=False):
    gen = swiftunet.Generator(seed, start=start)
    x = gen.randn((n, 3, 16, 16))
    for t in sched.timesteps:
        eps = m(x, t)
        if in_place:
            sched.step(eps, t, x, generator=gen, out=x)
        else:
            x = sched.step(eps, t, x, generator=gen)
    return x


SCHEDULERS = [
    ("ddim", dict(steps=7), lambda s: swiftunet.DDIMScheduler(s, steps=7)),
    ("ddim", dict(steps=6, eta=0.6, timestep_spacing="trailing"),
     lambda s: swiftunet.DDIMScheduler(s, steps=6, eta=0.6, spacing="trailing")),
    ("ddpm", {}, lambda s: swiftunet.DDPMScheduler(s)),
    ("dpmpp_2m", dict(steps=9), lambda s: swiftunet.DPMSolverMultistepScheduler(s, steps=9)),
    ("dpmpp_2m", dict(steps=6, karras_sigmas=True),
     lambda s: swiftunet.DPMSolverMultistepScheduler(s, steps=6, karras_sigmas=True)),
    ("dpmpp_2m", dict(timesteps=[997, 640, 639, 200, 3]),
     lambda s: swiftunet.DPMSolverMultistepScheduler(s, timesteps=[997, 640, 639, 200, 3])),
    ("ddim", dict(timesteps=[998, 500, 17], eta=0.8),
     lambda s: swiftunet.DDIMScheduler(s, timesteps=[998, 500, 17], eta=0.8)),
]


@pytest.mark.parametrize("name,kw,make", SCHEDULERS)
def test_scheduler_loop_equals_sample_bitwise(model, name, kw, make):
    s = swiftunet.NoiseSchedule.cosine(40) if name == "ddpm" else swiftunet.NoiseSchedule.cosine(1000)
    sched = make(s)
    want = swiftunet.sample(model, n=3, sampler=name, schedule=s, seed=21, **kw)
    np.testing.assert_array_equal(_loop(model, sched, 3, 21), want)
    # Again with the same scheduler (a step at timesteps[0] starts anew), in place.
    np.testing.assert_array_equal(_loop(model, sched, 3, 21, in_place=True), want)
    assert sched.step_index == sched.num_steps
    # Images 1..2 alone: a generator starting at image 1.
    np.testing.assert_array_equal(_loop(model, make(s), 2, 21, start=1), want[1:])


def test_scheduler_given_noise_and_validation(model, cosine):
    sched = swiftunet.DDIMScheduler(cosine, steps=4, eta=1.0)
    x = swiftunet.randn((2, 3, 16, 16), 0)
    t0 = int(sched.timesteps[0])
    eps = model(x, t0)
    with pytest.raises(ValueError, match="adds noise"):
        sched.step(eps, t0, x)
    z = swiftunet.randn((2, 3, 16, 16), 5)
    got = sched.step(eps, t0, x, noise=z)
    # The given noise enters as sigma*z: the reference DDIM step with that z.
    a, a_prev = cosine.alphas_cumprod[t0], cosine.alphas_cumprod[sched.timesteps[1]]
    sigma, direction = R.ddim_step_coefficients(float(a), float(a_prev), 1.0)
    x0 = np.clip((x.astype(np.float64) - np.sqrt(1 - a) * eps) / np.sqrt(a), -1, 1)
    ref = (np.sqrt(a_prev) * x0 + direction * eps.astype(np.float64) + sigma * z.astype(np.float64))
    np.testing.assert_array_equal(got, ref.astype(np.float32))
    with pytest.raises(ValueError, match="next timestep"):
        sched.step(eps, int(sched.timesteps[2]), got, noise=z)
    with pytest.raises(ValueError, match="shape"):
        sched.step(eps[:1], int(sched.timesteps[1]), got, noise=z)
    with pytest.raises(ValueError, match="noise must have"):
        sched.step(eps, int(sched.timesteps[1]), got, noise=z[:1])
    with pytest.raises(TypeError, match="generator"):
        sched.step(eps, int(sched.timesteps[1]), got, generator=5)
    with pytest.raises(ValueError, match="not both"):
        sched.step(eps, int(sched.timesteps[1]), got, generator=swiftunet.Generator(0), noise=z)
    with pytest.raises(TypeError, match="out"):
        sched.step(eps, int(sched.timesteps[1]), got, noise=z, out=np.empty((2, 3, 16, 16)))
    with pytest.raises(ValueError, match="out"):
        sched.step(eps, int(sched.timesteps[1]), got, noise=z, out=np.empty((2, 3, 16, 8), np.float32))
    with pytest.raises(ValueError, match="share memory"):
        sched.step(eps, int(sched.timesteps[1]), got, noise=z, out=eps)
    with pytest.raises(TypeError, match="bool"):
        sched.step(eps, True, got, noise=z)
    # The failed calls did not move the scheduler: the next step still works.
    assert sched.step_index == 1
    sched.step(eps, int(sched.timesteps[1]), got, noise=z)
    assert sched.step_index == 2
    sched.reset()
    assert sched.step_index == 0
    with pytest.raises(TypeError):
        swiftunet.DDIMScheduler(cosine, steps=4, clip=1)
    with pytest.raises(ValueError, match="eta"):
        swiftunet.DDIMScheduler(cosine, steps=4, eta=2.0)
    assert "DDIMScheduler" in repr(sched)


def test_dpm_scheduler_refuses_a_batch_change_mid_run(model, cosine):
    sched = swiftunet.DPMSolverMultistepScheduler(cosine, steps=5)
    x = swiftunet.randn((2, 3, 16, 16), 0)
    t0, t1 = (int(t) for t in sched.timesteps[:2])
    x = sched.step(model(x, t0), t0, x)
    with pytest.raises(ValueError, match="held"):
        sched.step(model(x[:1], t1), t1, x[:1])
    # Starting again at timesteps[0] with another batch is a new trajectory.
    y = swiftunet.randn((1, 3, 16, 16), 0)
    sched.step(model(y, t0), t0, y)
    assert sched.step_index == 1


def test_scheduler_accepts_per_image_timesteps_and_float64(model, cosine):
    sched = swiftunet.DDIMScheduler(cosine, steps=3)
    x = swiftunet.randn((2, 3, 16, 16), 3)
    t = np.full(2, sched.timesteps[0])
    a = sched.step(model(x, t), t, x.astype(np.float64))
    sched.reset()
    np.testing.assert_array_equal(a, sched.step(model(x, t), int(t[0]), x))


# ---------------------------------------------------------------------------
# sharding


def test_randn_start_is_rows_of_one_call():
    whole = swiftunet.randn((7, 3, 5), 9)
    for k in range(7):
        np.testing.assert_array_equal(swiftunet.randn((7 - k, 3, 5), 9, start=k), whole[k:])
    np.testing.assert_array_equal(R.start_noise(9, 3, (4, 3, 5), libm=True), whole[3:])
    with pytest.raises(ValueError, match="start"):
        swiftunet.randn(3, 0, start=-2)


@pytest.mark.parametrize("sampler,kw", [("ddim", dict(steps=5)), ("ddim", dict(steps=5, eta=1.0)),
                                        ("dpmpp_2m", dict(steps=5))])
def test_shards_concatenate_to_one_call(model, cosine, sampler, kw):
    whole = swiftunet.sample(model, n=6, sampler=sampler, schedule=cosine, seed=13, **kw)
    parts = [swiftunet.sample(model, n=b - a, sampler=sampler, schedule=cosine, seed=13, start=a, **kw)
             for a, b in [(0, 1), (1, 4), (4, 6)]]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_ddim_eta0_keeps_the_previous_stream(model, cosine):
    # Deterministic DDIM only uses x_T, which is still randn((n, C, H, W), seed):
    # its images are what they were before the per-image stream.
    a = swiftunet.sample(model, n=3, steps=4, schedule=cosine, seed=17)
    b = swiftunet.sample(model, x_T=swiftunet.randn((3, 3, 16, 16), 17), steps=4, schedule=cosine, seed=0)
    np.testing.assert_array_equal(a, b)


def _shard(args):
    start, n, sampler, kw = args
    m = swiftunet.DiffusionModel(**CFG, seed=1)
    s = swiftunet.NoiseSchedule.cosine(1000) if sampler != "ddpm" else swiftunet.NoiseSchedule.cosine(30)
    return swiftunet.sample(m, n=n, sampler=sampler, schedule=s, seed=99, start=start, **kw)


@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("dpmpp_2m", dict(steps=6))])
def test_shards_in_separate_processes_equal_one_call(sampler, kw):
    ranges = [(0, 2), (2, 1), (3, 3)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        parts = pool.map(_shard, [(a, n, sampler, kw) for a, n in ranges])
    whole = _shard((0, 6, sampler, kw))
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_dask_fan_out_equals_one_call():
    dask = pytest.importorskip("dask", reason="dask is not installed: the Dask fan-out example is not tested here")
    import dask.bag
    parts = dask.bag.from_sequence([(a, 2, "dpmpp_2m", dict(steps=4)) for a in (0, 2, 4)], npartitions=3) \
        .map(_shard).compute(scheduler="processes")
    np.testing.assert_array_equal(np.concatenate(parts), _shard((0, 6, "dpmpp_2m", dict(steps=4))))


def test_ray_fan_out_equals_one_call():
    ray = pytest.importorskip("ray", reason="ray is not installed: the Ray fan-out example is not tested here")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        remote = ray.remote(_shard)
        parts = ray.get([remote.remote((a, 2, "dpmpp_2m", dict(steps=4))) for a in (0, 2, 4)])
    finally:
        ray.shutdown()
    np.testing.assert_array_equal(np.concatenate(parts), _shard((0, 6, "dpmpp_2m", dict(steps=4))))


# ---------------------------------------------------------------------------
# custom timesteps


CUSTOM = [np.array([999, 948, 894, 836, 774, 706, 632, 547, 447, 316]), [700], [999, 998, 400, 0]]


@pytest.mark.parametrize("ts", CUSTOM, ids=["power", "one", "edges"])
@pytest.mark.parametrize("sampler,kw", [("dpmpp_2m", {}), ("dpmpp_2m", dict(clip=False)),
                                        ("ddim", {}), ("ddim", dict(eta=1.0))])
def test_custom_timesteps_match_reference_bitwise(model, cosine, ts, sampler, kw):
    got = swiftunet.sample(model, n=3, sampler=sampler, schedule=cosine, seed=4, timesteps=ts, **kw)
    fn = R.dpmpp_2m_sample if sampler == "dpmpp_2m" else R.ddim_sample
    want = fn(eps_fn_of(model), SHAPE, cosine, seed=4, timesteps=ts, state_dtype=np.float32, libm=True, **kw)
    np.testing.assert_array_equal(got, want)
    # `steps` is not used when timesteps are given, and shards still add up.
    again = swiftunet.sample(model, n=2, sampler=sampler, schedule=cosine, seed=4, timesteps=ts, steps=3,
                             start=1, **kw)
    np.testing.assert_array_equal(again, got[1:])


def test_custom_timesteps_equal_the_spacing_they_copy(model, cosine):
    # Giving the spacing's own timesteps explicitly changes nothing.
    for sampler, steps in [("ddim", 7), ("dpmpp_2m", 9)]:
        for spacing in ["linspace", "trailing"]:
            a = swiftunet.sample(model, n=2, sampler=sampler, steps=steps, schedule=cosine, seed=2,
                                 timestep_spacing=spacing)
            b = swiftunet.sample(model, n=2, sampler=sampler, schedule=cosine, seed=2,
                                 timesteps=cosine.timesteps(steps, spacing))
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [
    lambda m, s, ts, **kw: swiftunet.sample(m, n=1, sampler="dpmpp_2m", schedule=s, timesteps=ts, **kw),
    lambda m, s, ts, **kw: swiftunet.DPMSolverMultistepScheduler(s, timesteps=ts, **kw),
    lambda m, s, ts, **kw: swiftunet.DDIMScheduler(s, timesteps=ts, **kw),
], ids=["sample", "dpm_scheduler", "ddim_scheduler"])
def test_custom_timesteps_validation(model, cosine, make):
    for bad, exc, words in [([5, 5], ValueError, "strictly decreasing"), ([1, 2], ValueError, "strictly decreasing"),
                            ([1000, 3], ValueError, r"\[0, 1000\)"), ([3, -1], ValueError, r"\[0, 1000\)"),
                            ([], ValueError, "non-empty"), ([[3, 2]], ValueError, "1-D"),
                            ([3.0, 2.0], TypeError, "ints"), (np.array([True, False]), TypeError, "ints"),
                            ("99", TypeError, "ints")]:
        with pytest.raises(exc, match=words):
            make(model, cosine, bad)
    with pytest.raises(ValueError, match="timestep_spacing"):
        swiftunet.sample(model, n=1, sampler="dpmpp_2m", timesteps=[9, 3], timestep_spacing="trailing")
    with pytest.raises(ValueError, match="timestep_spacing"):
        swiftunet.DDIMScheduler(cosine, timesteps=[9, 3], spacing="leading")
    with pytest.raises(ValueError, match="karras"):
        swiftunet.DPMSolverMultistepScheduler(cosine, timesteps=[9, 3], karras_sigmas=True)
    with pytest.raises(ValueError, match="DDPM"):
        swiftunet.sample(model, n=1, sampler="ddpm", schedule=swiftunet.NoiseSchedule.cosine(10), timesteps=[9, 3])


def test_scheduler_repr_names_custom_timesteps(cosine):
    r = repr(swiftunet.DPMSolverMultistepScheduler(cosine, timesteps=[900, 10]))
    assert "timesteps=[900, 10]" in r and "steps=2" in r
    assert "spacing='trailing'" in repr(swiftunet.DDIMScheduler(cosine, steps=3, spacing="trailing"))


def test_power_timesteps():
    # Power 1: diffusers' DPMSolverMultistepScheduler "linspace" (S + 1 points, the last, t = 0, dropped).
    np.testing.assert_array_equal(swiftunet.power_timesteps(1000, 10, 1.0),
                                  [999, 899, 799, 699, 599, 500, 400, 300, 200, 100])
    ts = swiftunet.power_timesteps(1000, 10, 0.5)
    assert ts.dtype == np.int64 and ts[0] == 999 and (np.diff(ts) < 0).all()
    np.testing.assert_array_equal(ts, [round(999 * (1 - k / 10) ** 0.5) for k in range(10)])
    assert swiftunet.power_timesteps(1, 1, 0.5).tolist() == [0]
    with pytest.raises(ValueError, match="repeat"):
        swiftunet.power_timesteps(20, 20, 0.3)
    for args, words in [((1000, 0, 0.5), "steps"), ((1000, 1001, 0.5), "steps"), ((1000, 10, 0.0), "power"),
                        ((1000, 10, float("nan")), "power"), ((0, 1, 0.5), "num_timesteps")]:
        with pytest.raises(ValueError, match=words):
            swiftunet.power_timesteps(*args)
