"""swiftunet's samplers against diffusers' schedulers (docs/sampling.md, "diffusers").

Runs only where both diffusers and torch are installed; elsewhere every test is
reported as skipped with that reason. Each trajectory is driven by the same
Swift model on both sides (eps = model(x, t)), so only the scheduler
arithmetic is compared: swiftunet's in float64 with a float32 state, diffusers'
in float32 (its alphas_cumprod, sigmas and samples are float32 tensors).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: no diffusers interop check here")
diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed: no interop check here")

import swiftunet

T = 1000
CFG = dict(image_size=16, channels=1, hidden_dims=[16, 32], time_dim=16)
# Float32 rounding of diffusers' coefficients and state, carried along a
# trajectory; relative to max|x| (measured 4e-7 to 1.3e-4, docs/sampling.md).
TRAJECTORY_BOUND = 1e-3


@pytest.fixture(scope="module")
def model():
    return swiftunet.DiffusionModel(**CFG, seed=4)


def schedules():
    return {
        "cosine": (swiftunet.NoiseSchedule.cosine(T), dict(beta_schedule="squaredcos_cap_v2")),
        "linear": (swiftunet.NoiseSchedule.linear(T, 1e-4, 0.02),
                   dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
    }


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / np.abs(b).max())


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_betas_match_diffusers(name):
    ours, cfg = schedules()[name]
    theirs = diffusers.DDPMScheduler(num_train_timesteps=T, **cfg)
    np.testing.assert_allclose(ours.betas, theirs.betas.numpy().astype(np.float64), rtol=2e-7, atol=1e-9)
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy().astype(np.float64),
                               rtol=2e-5, atol=1e-12)


def _our_trajectory(model, sched, x, generator=None):
    states = [x]
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, generator=generator)
        states.append(x)
    return states


def _their_trajectory(model, sched, x, **step_kw):
    states = [x]
    xt = torch.from_numpy(x.copy())
    for t in sched.timesteps:
        eps = torch.from_numpy(model(xt.numpy().astype(np.float32), int(t)))
        xt = sched.step(eps, t, xt, **step_kw).prev_sample
        states.append(xt.numpy())
    return states


def _compare(ours, theirs, bound=TRAJECTORY_BOUND):
    assert len(ours) == len(theirs)
    worst = max(rel(a, b) for a, b in zip(ours[1:], theirs[1:]))
    assert worst <= bound, f"largest relative difference along the trajectory {worst:.3g}"
    return worst


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_eta0_trajectory(model, name, spacing, clip):
    ours_s, cfg = schedules()[name]
    steps = 10  # divides T: diffusers' previous timestep t - T//S is then the next visited one
    sched = swiftunet.DDIMScheduler(ours_s, steps=steps, spacing=spacing, clip=clip)
    theirs = diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=clip, set_alpha_to_one=True,
                                     steps_offset=0, timestep_spacing=spacing, **cfg)
    theirs.set_timesteps(steps)
    np.testing.assert_array_equal(sched.timesteps, theirs.timesteps.numpy())
    x = swiftunet.randn((2, 1, 16, 16), 3)
    _compare(_our_trajectory(model, sched, x), _their_trajectory(model, theirs, x, eta=0.0))


def test_ddim_timesteps_of_every_spacing_match_diffusers():
    theirs = diffusers.DDIMScheduler(num_train_timesteps=T, steps_offset=0)
    s = swiftunet.NoiseSchedule.cosine(T)
    for spacing in ("leading", "trailing", "linspace"):
        theirs.register_to_config(timestep_spacing=spacing)
        for steps in (1, 4, 10, 20, 25, 50, 100, 250, 1000):
            theirs.set_timesteps(steps)
            if spacing == "linspace" and steps == 1:
                # numpy.linspace(0, T-1, 1) is [0]: diffusers' one step is at t = 0,
                # the SPEC's at T-1 (docs/sampling.md).
                assert theirs.timesteps.numpy().tolist() == [0] and s.timesteps(1).tolist() == [T - 1]
                continue
            np.testing.assert_array_equal(s.timesteps(steps, spacing), theirs.timesteps.numpy(),
                                          err_msg=f"{spacing} {steps}")


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("exact_schedule", [False, True])
def test_ddpm_step_with_given_noise(model, name, exact_schedule, monkeypatch):
    ours_s, cfg = schedules()[name]
    theirs = diffusers.DDPMScheduler(num_train_timesteps=T, clip_sample=True, variance_type="fixed_small", **cfg)
    theirs.set_timesteps(T)
    if exact_schedule:
        # diffusers' formulas on swiftunet's float64 schedule and float64 inputs:
        # only the formulas are compared (then only our float32 output rounding remains).
        theirs.alphas_cumprod = torch.from_numpy(np.array(ours_s.alphas_cumprod))
        theirs.one = torch.tensor(1.0, dtype=torch.float64)
    import diffusers.schedulers.scheduling_ddpm as ddpm_module
    worst = 0.0
    for t in (999, 700, 300, 50, 1, 0):
        x = swiftunet.randn((2, 1, 16, 16), t + 1)
        z = swiftunet.randn((2, 1, 16, 16), t + 2)
        eps = model(x, t)
        ours = _ddpm_one_step(ours_s, eps, t, x, z)
        dtype = np.float64 if exact_schedule else np.float32
        monkeypatch.setattr(ddpm_module, "randn_tensor", lambda *a, **k: torch.from_numpy(z.astype(dtype)))
        got = theirs.step(torch.from_numpy(eps.astype(dtype)), t, torch.from_numpy(x.astype(dtype))).prev_sample
        worst = max(worst, rel(ours, got.numpy()))
    # Stock diffusers: float32 alphas_cumprod, whose 1 - ab near t = 0 keeps only
    # a few significant bits (ab[0] = 1 - 4e-5 in float32 is off by up to 1.5e-3
    # relative in 1 - ab), so its posterior coefficients differ that much.
    assert worst <= (1e-6 if exact_schedule else 1e-3), worst


def _ddpm_one_step(schedule, eps, t, x, z):
    """swiftunet's DDPM step at timestep t with noise z: a DDPM scheduler on the
    schedule's first t+1 timesteps ends its run at t, with the same coefficients."""
    head = swiftunet.NoiseSchedule(schedule.betas[: t + 1])
    sched = swiftunet.DDPMScheduler(head)
    assert sched.timesteps[0] == t
    return sched.step(eps, t, x, noise=z)


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpmpp_2m_trajectory(model, name, spacing, steps):
    ours_s, cfg = schedules()[name]
    sched = swiftunet.DPMSolverMultistepScheduler(ours_s, steps=steps, spacing=spacing, clip=False)
    theirs = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, algorithm_type="dpmsolver++",
                                                   solver_order=2, final_sigmas_type="zero",
                                                   lower_order_final=True, **cfg)
    # diffusers' own "linspace" for this scheduler drops t = 0 (docs/sampling.md):
    # give it ours explicitly. "trailing" is the same rule on both sides.
    if spacing == "trailing":
        theirs.register_to_config(timestep_spacing="trailing")
        theirs.set_timesteps(steps)
        np.testing.assert_array_equal(sched.timesteps, theirs.timesteps.numpy())
    else:
        theirs.set_timesteps(timesteps=[int(t) for t in sched.timesteps])
    x = swiftunet.randn((2, 1, 16, 16), 7)
    _compare(_our_trajectory(model, sched, x), _their_trajectory(model, theirs, x))


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("steps", [5, 10])
def test_dpmpp_2m_custom_timesteps_trajectory(model, name, steps):
    # diffusers' own "linspace" for DPM-Solver++ (S + 1 points, t = 0 dropped), given
    # to swiftunet as timesteps=, and power_timesteps given to both.
    ours_s, cfg = schedules()[name]
    kw = dict(num_train_timesteps=T, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero",
              lower_order_final=True, **cfg)
    theirs = diffusers.DPMSolverMultistepScheduler(**kw)
    theirs.set_timesteps(steps)
    np.testing.assert_array_equal(theirs.timesteps.numpy(), swiftunet.power_timesteps(T, steps, 1.0))
    for ts in [theirs.timesteps.numpy(), swiftunet.power_timesteps(T, steps, 0.5)]:
        theirs = diffusers.DPMSolverMultistepScheduler(**kw)
        theirs.set_timesteps(timesteps=[int(t) for t in ts])
        sched = swiftunet.DPMSolverMultistepScheduler(ours_s, timesteps=ts, clip=False)
        x = swiftunet.randn((2, 1, 16, 16), 9)
        _compare(_our_trajectory(model, sched, x), _their_trajectory(model, theirs, x))


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpmpp_2m_karras_trajectory(model, steps):
    ours_s = swiftunet.NoiseSchedule.cosine(T)
    sched = swiftunet.DPMSolverMultistepScheduler(ours_s, steps=steps, karras_sigmas=True, clip=False)
    # trained_betas rather than beta_schedule="squaredcos_cap_v2": with the latter
    # diffusers keeps the Karras timesteps fractional, which an integer-timestep
    # model cannot take; otherwise it rounds them, as swiftunet does.
    theirs = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=ours_s.betas.tolist(),
                                                   algorithm_type="dpmsolver++", solver_order=2,
                                                   final_sigmas_type="zero", use_karras_sigmas=True)
    theirs.set_timesteps(steps)
    # The Karras timesteps repeat near T-1 on this schedule; diffusers would then
    # begin at the second of the repeats (its img2img rule) unless told to begin at 0.
    theirs.set_begin_index(0)
    np.testing.assert_array_equal(sched.timesteps, theirs.timesteps.numpy())
    # diffusers' sigmas come from its float32 alphas_cumprod (see the DDPM test).
    np.testing.assert_allclose(np.sqrt((1 - sched.alpha_bars) / sched.alpha_bars), theirs.sigmas.numpy()[:-1],
                               rtol=1e-3)
    x = swiftunet.randn((2, 1, 16, 16), 8)
    _compare(_our_trajectory(model, sched, x), _their_trajectory(model, theirs, x))
