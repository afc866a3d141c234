"""Training from Python (docs/model.md section 5): DiffusionModel.loss_and_grad, swiftunet.Trainer
(step, fit, EMA, save / load, resume), swiftunet.training.draw, and the checks of
every argument. Tiny models only: every test here runs in well under a second.

What each group pins down:

* a step is the documented composition: draw(seed, step) -> q_sample -> loss_and_grad
  -> (clip) -> AdamW -> EMA, checked against numpy arithmetic on the values the
  library returns;
* reproducibility: bit-identical weights, EMA and moments at 1 and 2 threads and
  across save -> Trainer.load -> continue (for step loops and for fit), including
  a fit stopped by a real SIGINT;
* failures change nothing: a bad argument, a NaN image, a corrupt checkpoint, a
  failed save (atomic: no partial file, an existing file intact).
"""

import collections
import json
import os
import re
import signal
import struct
import threading

import numpy as np
import pytest

import swiftunet
import swiftunet.training as su_training
from swiftunet import _swiftunet
from swiftunet import io as su_io
from swiftunet import reference_sampling as rs

TINY = dict(image_size=8, channels=1, hidden_dims=[8, 16], time_dim=8)
TINY3 = dict(image_size=8, channels=2, hidden_dims=[8, 16, 16], time_dim=8)


def _dataset(n=16, channels=1, size=8, seed=0):
    """A fixed small data set of smooth patterns in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    imgs = [np.stack([np.sin(2 * np.pi * (a * xx + b * yy) + c) for c in rng.uniform(0, 3, channels)])
            for a, b in rng.uniform(0.2, 1.0, (n, 2))]
    return np.stack(imgs).astype(np.float32)


DATA = _dataset()


def _model(seed=0, cfg=TINY):
    return swiftunet.DiffusionModel(**cfg, seed=seed)


def _trainer(seed=0, model_seed=0, cfg=TINY, **kw):
    return swiftunet.Trainer(_model(model_seed, cfg), seed=seed, **kw)


def _flat(sd):
    return np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1) for v in sd.values()])


def _fingerprint(tr):
    """Raw bytes of everything a step may change."""
    st = tr.state_dict()
    return {
        "model": _flat(st["model"]).tobytes(),
        "ema": _flat(st["ema"]).tobytes(),
        "adam_m": _flat(st["adam_m"]).tobytes(),
        "adam_v": _flat(st["adam_v"]).tobytes(),
        "step_count": tr.step_count,
        "losses": np.array(tr.losses, dtype=np.float64).tobytes(),
    }


def _assert_same_state(a, b):
    fa, fb = _fingerprint(a), _fingerprint(b)
    for key in fa:
        assert fa[key] == fb[key], f"{key} differs"


def raises_naming(exc, pattern, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} does not match {pattern!r}"
    return info.value


# ---------------------------------------------------------------------------
# loss_and_grad


def test_loss_and_grad_matches_forward_and_state_dict_layout():
    m = _model(1)
    x, target = DATA[:3], np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    t = np.array([0, 500, 999])
    before = _flat(m.state_dict())
    loss, grads = m.loss_and_grad(x, t, target)
    assert isinstance(loss, float) and np.isfinite(loss)
    pred = m(x, t).astype(np.float64)
    np.testing.assert_allclose(loss, np.mean((pred - target) ** 2), rtol=1e-6)
    sd = m.state_dict()
    assert list(grads) == list(sd)
    for name in sd:
        assert grads[name].shape == sd[name].shape and grads[name].dtype == np.float32, name
        assert np.isfinite(grads[name]).all(), name
    # Views of one flat buffer, in state_dict order.
    base = grads["time_mlp.fc1.weight"].base
    assert base is not None and all(g.base is base for g in grads.values())
    np.testing.assert_array_equal(base, _flat(grads))
    assert np.any(_flat(grads) != 0)
    assert _flat(m.state_dict()).tobytes() == before.tobytes()  # weights unchanged


def test_loss_and_grad_is_a_gradient():
    """A directional finite difference along the gradient agrees with |g|^2."""
    m = _model(2)
    x, t = DATA[:2], np.array([100, 700])
    target = np.random.default_rng(2).standard_normal((2, 1, 8, 8)).astype(np.float32)
    loss, grads = m.loss_and_grad(x, t, target)
    g = _flat(grads).astype(np.float64)
    sd = m.state_dict()
    h = 1e-2 / np.linalg.norm(g)
    losses = []
    for sign in (+1, -1):
        m.load_state_dict({k: sd[k] + sign * h * grads[k] for k in sd})
        losses.append(float(np.mean((m(x, t).astype(np.float64) - target) ** 2)))
    m.load_state_dict(sd)
    slope = (losses[0] - losses[1]) / (2 * h)
    np.testing.assert_allclose(slope, g @ g, rtol=0.05)


def test_loss_and_grad_converts_like_asarray():
    m = _model(3)
    x = DATA[:2]
    t = [5, 6]
    target = np.random.default_rng(3).standard_normal((2, 1, 8, 8))
    l32, g32 = m.loss_and_grad(x, np.array(t, np.int64), target.astype(np.float32))
    l64, g64 = m.loss_and_grad(x.astype(np.float64).tolist(), np.array(t, np.uint8),
                               np.asfortranarray(target))  # lists, float64, other int dtypes, F order
    assert l32 == l64
    assert _flat(g32).tobytes() == _flat(g64).tobytes()
    # One scalar t is broadcast, as in forward.
    l_s, _ = m.loss_and_grad(x, 7, target)
    l_a, _ = m.loss_and_grad(x, [7, 7], target)
    assert l_s == l_a


def test_loss_and_grad_same_at_every_thread_count():
    m = _model(4)
    x, t, target = DATA[:4], np.arange(4) * 200, np.random.default_rng(4).standard_normal((4, 1, 8, 8))
    old = swiftunet.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            swiftunet.set_num_threads(n)
            loss, g = m.loss_and_grad(x, t, target)
            results.append((loss, _flat(g).tobytes()))
    finally:
        swiftunet.set_num_threads(old)
    assert results[0] == results[1]


# ---------------------------------------------------------------------------
# draw and the composition of a step


def _draw_numpy(seed, step, T, batch, per_image):
    """The documented draw, in plain Python/numpy."""
    mask = (1 << 64) - 1
    mix = int(rs._splitmix64((seed ^ ((step * 0xD1B54A32D192ED03) & mask)) & mask, 0, 1)[0])
    raw = rs._splitmix64(mix, 0, batch)
    t = np.array([(int(r) * T) >> 64 for r in raw], dtype=np.int64)
    stream = rs.GaussianStream(mix, libm=True)
    stream.draws = batch
    return t, stream.normal(batch * per_image)


@pytest.mark.parametrize("seed,step,T,batch,per_image",
                         [(0, 0, 1000, 4, 64), (7, 12, 1000, 3, 5), (2**64 - 1, 2**40, 17, 2, 3),
                          (123, 5, 1, 3, 2)])
def test_draw_matches_its_documentation(seed, step, T, batch, per_image):
    t, noise = su_training.draw(seed, step, T, batch, per_image)
    assert t.dtype == np.int64 and t.shape == (batch,) and noise.dtype == np.float32
    assert noise.shape == (batch * per_image,)
    assert t.min() >= 0 and t.max() < T
    t_ref, noise_ref = _draw_numpy(seed, step, T, batch, per_image)
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_array_equal(noise, noise_ref)


def test_draw_depends_on_seed_and_step_only():
    a = su_training.draw(3, 4, 1000, 8, 16)
    b = su_training.draw(3, 4, 1000, 8, 16)
    c = su_training.draw(3, 5, 1000, 8, 16)
    d = su_training.draw(4, 4, 1000, 8, 16)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[1], d[1])
    t0, n0 = su_training.draw(3, 4, 1000, 0, 16)
    assert t0.shape == (0,) and n0.shape == (0,)


@pytest.mark.parametrize("grad_clip,eps", [(None, 1e-8), (1e-2, 1e-4)])
def test_step_is_draw_qsample_loss_and_grad_then_adamw_and_ema(grad_clip, eps):
    """One Trainer step equals the documented composition computed from the library's
    own pieces and numpy float32 arithmetic."""
    lr, (b1, b2), wd, d = 2e-3, (0.8, 0.99), 0.05, 0.9
    tr = _trainer(seed=11, model_seed=5, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                  grad_clip=grad_clip, ema_decay=d)
    twin = _model(5)
    x0 = DATA[:4]
    s = tr.schedule
    w0 = _flat(twin.state_dict())
    for k in (1, 2):
        t, noise = su_training.draw(11, k - 1, s.num_timesteps, 4, 64)
        noise = noise.reshape(x0.shape)
        x_t = swiftunet.q_sample(x0, t, noise, schedule=s)
        want_loss, grads = twin.loss_and_grad(x_t, t, noise)
        loss = tr.step(x0)
        assert loss == want_loss  # same pass, same bits
        g = _flat(grads)
        if grad_clip is not None:
            norm = np.sqrt(np.sum(g.astype(np.float64) ** 2))
            assert norm > grad_clip  # the clipping path is exercised
            g = (g * np.float32(grad_clip / (norm + 1e-6))).astype(np.float32)
        st = tr.state_dict()
        if k == 1:
            m_prev = np.zeros_like(g)
            v_prev = np.zeros_like(g)
            ema_prev = w0
        f = np.float32
        m_new = f(b1) * m_prev + f(1 - b1) * g
        v_new = f(b2) * v_prev + f(1 - b2) * (g * g)
        step_size = f(lr / (1 - b1 ** k))
        corr2 = f(np.sqrt(1 - b2 ** k))
        w_new = w0 * f(1 - lr * wd) - step_size * (m_new / (np.sqrt(v_new) / corr2 + f(eps)))
        ema_new = f(d) * ema_prev + f(1 - d) * w_new
        np.testing.assert_allclose(_flat(st["adam_m"]), m_new, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(_flat(st["adam_v"]), v_new, rtol=1e-6, atol=1e-15)
        np.testing.assert_allclose(_flat(st["model"]), w_new, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(_flat(st["ema"]), ema_new, rtol=1e-6, atol=1e-7)
        # Continue the twin from the trainer's exact weights.
        twin.load_state_dict(st["model"])
        w0, m_prev, v_prev, ema_prev = _flat(st["model"]), _flat(st["adam_m"]), _flat(st["adam_v"]), _flat(st["ema"])


# ---------------------------------------------------------------------------
# Trainer.step


def test_step_returns_a_finite_float_and_changes_the_weights():
    tr = _trainer()
    before = tr.state_dict()
    loss = tr.step(DATA[:4])
    assert type(loss) is float and np.isfinite(loss)
    assert tr.step_count == 1 and tr.losses == [loss]
    after = tr.state_dict()
    assert not np.array_equal(_flat(before["model"]), _flat(after["model"]))
    assert after["step_count"] == 1
    assert tr.model.state_dict()["out_conv.bias"] is not None
    np.testing.assert_array_equal(_flat(tr.model.state_dict()), _flat(after["model"]))  # in place


def test_loss_decreases_on_a_tiny_model():
    tr = _trainer(lr=3e-3)
    for _ in range(30):
        tr.step(DATA)
    losses = np.array(tr.losses)
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.6 * losses[:5].mean(), losses


def test_losses_history():
    tr = _trainer()
    got = [tr.step(DATA[:2]) for _ in range(3)]
    assert tr.losses == got
    copy = tr.losses
    copy.append(123.0)
    assert tr.losses == got  # a copy each time
    fitted = tr.fit(DATA[:4], epochs=2, batch_size=2, progress=False)  # 4 steps in all, 3 already taken
    assert len(fitted) == 1 and tr.losses == got + fitted
    assert tr.step_count == len(tr.losses)


def test_ema_decay_zero_tracks_the_weights_and_one_keeps_the_initial_weights():
    tr0 = _trainer(ema_decay=0.0)
    tr1 = _trainer(ema_decay=1.0)
    initial = _flat(tr1.model.state_dict())
    for _ in range(3):
        tr0.step(DATA[:4])
        tr1.step(DATA[:4])
    s0, s1 = tr0.state_dict(), tr1.state_dict()
    assert _flat(s0["ema"]).tobytes() == _flat(s0["model"]).tobytes()
    assert _flat(s1["ema"]).tobytes() == initial.tobytes()
    assert _flat(s1["model"]).tobytes() != initial.tobytes()


def test_ema_model_is_a_new_model_with_the_ema_weights():
    tr = _trainer(cfg=TINY3, ema_decay=0.5)
    tr.step(_dataset(4, channels=2))
    ema = tr.ema_model()
    assert isinstance(ema, swiftunet.DiffusionModel) and ema is not tr.model
    assert ema.config() == tr.model.config()
    st = tr.state_dict()
    assert _flat(ema.state_dict()).tobytes() == _flat(st["ema"]).tobytes()
    assert _flat(st["ema"]).tobytes() != _flat(st["model"]).tobytes()
    imgs = swiftunet.sample(ema, n=2, steps=2, seed=0)
    assert imgs.shape == (2, 2, 8, 8) and np.isfinite(imgs).all()


def test_step_accepts_what_forward_accepts():
    x = DATA[:3]
    ref = _trainer()
    ref.step(x)
    for other in (x.astype(np.float64).tolist(), np.asfortranarray(x), x.astype(">f4"), x.astype(np.float64)):
        tr = _trainer()
        tr.step(other)  # converted once, as np.asarray would
        _assert_same_state(ref, tr)


def _threads_run(n_threads, steps=3):
    old = swiftunet.get_num_threads()
    try:
        swiftunet.set_num_threads(n_threads)
        tr = _trainer(cfg=TINY3, grad_clip=0.5)
        data = _dataset(6, channels=2)
        for _ in range(steps):
            tr.step(data)
        return tr
    finally:
        swiftunet.set_num_threads(old)


def test_bit_identical_at_one_and_two_threads():
    _assert_same_state(_threads_run(1), _threads_run(2))


def test_steps_from_several_threads_are_serialised():
    tr = _trainer()
    errors = []

    def work():
        try:
            for _ in range(3):
                tr.step(DATA[:2])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert tr.step_count == 9 and len(tr.losses) == 9
    # Same data each step: the result equals 9 sequential steps.
    ref = _trainer()
    for _ in range(9):
        ref.step(DATA[:2])
    _assert_same_state(tr, ref)


def test_trainer_keeps_its_model_alive():
    import gc
    tr = swiftunet.Trainer(swiftunet.DiffusionModel(**TINY))
    gc.collect()
    tr.step(DATA[:2])
    assert tr.model.num_parameters > 0
    handle = tr._handle
    del tr
    gc.collect()
    assert _swiftunet.trainer_step_count(handle) == 1  # the handle alone keeps everything alive
    del handle
    gc.collect()


def test_repr():
    tr = _trainer(grad_clip=1.0)
    tr.step(DATA[:2])
    r = repr(tr)
    for part in ("Trainer(", "DiffusionModel(", "lr=0.001", "betas=(0.9, 0.999)", "grad_clip=1.0",
                 "ema_decay=0.999", "NoiseSchedule.cosine(1000)", "seed=0", "step_count=1"):
        assert part in r, (part, r)


# ---------------------------------------------------------------------------
# fit


def _manual_fit(tr, data, epochs, batch_size, seed):
    n = data.shape[0]
    for e in range(epochs):
        perm = np.random.default_rng([seed, e]).permutation(n)
        for i in range(0, n, batch_size):
            tr.step(data[perm[i:i + batch_size]])


def test_fit_visits_the_seeded_permutation_in_batches():
    data = DATA[:10]
    a, b = _trainer(seed=3), _trainer(seed=3)
    got = a.fit(data, epochs=2, batch_size=4, progress=False)
    assert len(got) == 6 and a.step_count == 6  # ceil(10 / 4) = 3 steps per epoch, the last of 2 images
    _manual_fit(b, data, 2, 4, seed=3)
    _assert_same_state(a, b)
    assert got == b.losses
    # Another seed shuffles (and draws) differently.
    c = _trainer(seed=4)
    c.fit(data, epochs=2, batch_size=4, progress=False)
    assert _fingerprint(c)["model"] != _fingerprint(a)["model"]


def test_fit_epochs_is_the_total_and_resumes_from_step_count():
    data = DATA[:6]
    whole = _trainer(seed=1)
    whole.fit(data, epochs=3, batch_size=4, progress=False)
    part = _trainer(seed=1)
    assert len(part.fit(data, epochs=1, batch_size=4, progress=False)) == 2
    assert len(part.fit(data, epochs=3, batch_size=4, progress=False)) == 4  # the remaining two epochs
    assert part.fit(data, epochs=3, batch_size=4, progress=False) == []      # nothing left
    assert part.fit(data, epochs=0, batch_size=4, progress=False) == []
    _assert_same_state(whole, part)


def test_fit_accepts_other_dtypes():
    a, b = _trainer(), _trainer()
    a.fit(DATA[:5], epochs=1, batch_size=2, progress=False)
    b.fit(DATA[:5].astype(np.float64), epochs=1, batch_size=2, progress=False)
    _assert_same_state(a, b)
    c = _trainer()
    c.fit((np.arange(5 * 64).reshape(5, 1, 8, 8) % 3).astype(np.uint8), epochs=1, batch_size=5, progress=False)
    assert c.step_count == 1


class _FakeBar:
    instances = []

    def __init__(self, total, desc, initial=0, unit="step"):
        self.total, self.n, self.closed, self.postfix = total, initial, False, {}
        _FakeBar.instances.append(self)

    def update(self, k):
        self.n += k

    def set_postfix(self, ordered_dict=None, refresh=True, **kw):
        self.postfix = kw

    def close(self):
        self.closed = True


def test_fit_progress_bar(monkeypatch):
    _FakeBar.instances = []
    monkeypatch.setattr(su_training, "_make_bar", _FakeBar)
    tr = _trainer()
    tr.fit(DATA[:4], epochs=1, batch_size=2)
    tr.fit(DATA[:4], epochs=2, batch_size=2)
    first, second = _FakeBar.instances
    assert (first.total, first.n, first.closed) == (2, 2, True)
    assert (second.total, second.n, second.closed) == (4, 4, True)  # resumed: started at 2
    assert second.postfix["epoch"] == "2/2"
    assert float(second.postfix["loss"]) == pytest.approx(np.mean(tr.losses[2:]), rel=1e-3)
    _FakeBar.instances = []
    tr.fit(DATA[:4], epochs=3, batch_size=2, progress=False)
    assert _FakeBar.instances == []


def test_fit_plain_progress_bar_without_tqdm(monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    tr = _trainer()
    tr.fit(DATA[:4], epochs=1, batch_size=2)
    err = capsys.readouterr().err
    assert "training" in err and "2/2" in err and "loss=" in err and err.endswith("\n")


class _Interrupting(np.ndarray):
    """A data set whose k-th batch fetch raises KeyboardInterrupt, or sends SIGINT."""

    at = 3
    real_signal = False
    fetches = 0

    def __getitem__(self, index):
        if isinstance(index, np.ndarray):
            type(self).fetches += 1
            if type(self).fetches == type(self).at:
                if type(self).real_signal:
                    os.kill(os.getpid(), signal.SIGINT)
                else:
                    raise KeyboardInterrupt
        return np.asarray(super().__getitem__(index))


@pytest.mark.parametrize("real_signal", [False, True], ids=["raised", "sigint"])
def test_ctrl_c_stops_fit_cleanly_and_fit_resumes(monkeypatch, real_signal):
    if real_signal and signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this process")
    _FakeBar.instances = []
    monkeypatch.setattr(su_training, "_make_bar", _FakeBar)
    data = DATA[:8]
    interrupting = data.view(_Interrupting)
    _Interrupting.at, _Interrupting.real_signal, _Interrupting.fetches = 4, real_signal, 0
    tr = _trainer(seed=9)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(interrupting, epochs=2, batch_size=3)
    assert _FakeBar.instances[0].closed
    k = tr.step_count
    # Consistent: every completed step has its loss. A raised interrupt stops before the
    # 4th step; a signal is handled at the next check, before or just after that step.
    assert (3 <= k <= 4 if real_signal else k == 3) and len(tr.losses) == k
    tr.fit(data, epochs=2, batch_size=3, progress=False)
    ref = _trainer(seed=9)
    ref.fit(data, epochs=2, batch_size=3, progress=False)
    _assert_same_state(tr, ref)


# ---------------------------------------------------------------------------
# save / load


def test_save_load_continue_is_bit_identical_for_step_loops(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    x = DATA[:4]
    whole = _trainer(seed=5, grad_clip=1.0, ema_decay=0.9, lr=2e-3)
    for _ in range(6):
        whole.step(x)
    part = _trainer(seed=5, grad_clip=1.0, ema_decay=0.9, lr=2e-3)
    for _ in range(3):
        part.step(x)
    part.save(path)
    resumed = swiftunet.Trainer.load(path)
    _assert_same_state(part, resumed)
    assert resumed.hparams() == part.hparams()
    assert resumed.schedule == part.schedule
    for _ in range(3):
        resumed.step(x)
    _assert_same_state(whole, resumed)


def test_save_load_fit_split_across_a_resume(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    data = DATA[:7]
    whole = _trainer(seed=2)
    whole.fit(data, epochs=3, batch_size=3, progress=False)  # 3 steps per epoch
    # Split at an epoch boundary.
    part = _trainer(seed=2)
    part.fit(data, epochs=1, batch_size=3, progress=False)
    part.save(path)
    resumed = swiftunet.Trainer.load(path)
    assert len(resumed.fit(data, epochs=3, batch_size=3, progress=False)) == 6
    _assert_same_state(whole, resumed)
    # Split in the middle of an epoch (a fit stopped after its 5th step).
    interrupting = data.view(_Interrupting)
    _Interrupting.at, _Interrupting.real_signal, _Interrupting.fetches = 6, False, 0
    part = _trainer(seed=2)
    with pytest.raises(KeyboardInterrupt):
        part.fit(interrupting, epochs=3, batch_size=3, progress=False)
    assert part.step_count == 5
    part.save(str(path))
    resumed = swiftunet.Trainer.load(str(path))
    assert len(resumed.fit(data, epochs=3, batch_size=3, progress=False)) == 4
    _assert_same_state(whole, resumed)


def test_load_into_a_given_model(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    tr = _trainer(seed=1)
    tr.step(DATA[:2])
    tr.save(path)
    target = _model(seed=42)
    resumed = swiftunet.Trainer.load(path, model=target)
    assert resumed.model is target
    _assert_same_state(tr, resumed)
    # A model of another configuration is refused and left alone.
    other = _model(seed=1, cfg=dict(TINY, time_dim=16))
    before = _flat(other.state_dict()).tobytes()
    raises_naming(ValueError, r"\bmodel\b.*configuration", swiftunet.Trainer.load, path, model=other)
    assert _flat(other.state_dict()).tobytes() == before
    other_size = _model(seed=1, cfg=dict(TINY, image_size=16))
    raises_naming(ValueError, r"\bmodel\b.*configuration", swiftunet.Trainer.load, path, model=other_size)
    raises_naming(TypeError, r"\bmodel\b", swiftunet.Trainer.load, path, model="m")


def _read(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob


def test_checkpoint_format(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    tr = _trainer(seed=7, grad_clip=0.25, lr=3e-4, betas=(0.85, 0.98), eps=1e-7, weight_decay=0.0, ema_decay=0.99,
                  schedule=swiftunet.NoiseSchedule.linear(50))
    tr.step(DATA[:2])
    tr.step(DATA[:2])
    tr.save(path)
    header, _ = _read(path)
    md = header.pop("__metadata__")
    assert md["format"] == "swiftunet-trainer" and md["format_version"] == "1"
    assert json.loads(md["hidden_dims"]) == [8, 16] and md["image_size"] == "8" and md["channels"] == "1"
    assert md["time_dim"] == "8" and md["step_count"] == "2" and md["seed"] == "7"
    assert (float(md["lr"]), float(md["beta1"]), float(md["beta2"])) == (3e-4, 0.85, 0.98)
    assert (float(md["eps"]), float(md["weight_decay"]), float(md["grad_clip"]), float(md["ema_decay"])) == \
        (1e-7, 0.0, 0.25, 0.99)
    names = list(tr.model.state_dict())
    expected = [p + n for p in ("model.", "ema.", "adam_m.", "adam_v.") for n in names] + ["schedule.betas", "losses"]
    assert list(header) == expected
    assert all(header[k]["dtype"] == "F32" for k in expected[:-2])
    assert header["schedule.betas"]["dtype"] == "F64" and header["schedule.betas"]["shape"] == [50]
    assert header["losses"]["dtype"] == "F64" and header["losses"]["shape"] == [2]
    tensors, _ = su_io.load_safetensors(path, keep_float64=True)
    np.testing.assert_array_equal(tensors["schedule.betas"], tr.schedule.betas)
    np.testing.assert_array_equal(tensors["losses"], tr.losses)
    # No clipping is stored as "none".
    tr2 = _trainer()
    tr2.save(path)
    assert _read(path)[0]["__metadata__"]["grad_clip"] == "none"
    assert swiftunet.Trainer.load(path).grad_clip is None
    assert swiftunet.Trainer.load(path).losses == [] and swiftunet.Trainer.load(path).step_count == 0
    # DiffusionModel.load says what the file is.
    raises_naming(ValueError, r"Trainer\.load", swiftunet.DiffusionModel.load, path)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(b"previous contents")
    tr = _trainer()
    tr.step(DATA[:2])

    def boom(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(su_io.os, "fsync", boom)
    with pytest.raises(OSError, match="disk on fire"):
        tr.save(path)
    new = tmp_path / "new.safetensors"
    with pytest.raises(OSError, match="disk on fire"):
        tr.save(new)
    monkeypatch.undo()
    assert path.read_bytes() == b"previous contents"  # untouched
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]  # no temporary, no partial new file
    tr.save(path)
    _assert_same_state(tr, swiftunet.Trainer.load(path))


# Corrupt checkpoints: each mutation of (tensors, metadata) must give a ValueError naming it.


def _corrupt_cases():
    def set_md(key, value):
        def f(t, md):
            if value is None:
                md.pop(key)
            else:
                md[key] = value
        return f

    def drop(name):
        return lambda t, md: t.pop(name)

    def extra(t, md):
        t["model.extra.weight"] = np.zeros(3, np.float32)

    def reshape(name):
        def f(t, md):
            t[name] = t[name].reshape(-1)[:-1].copy()
        return f

    def poison(name, value):
        def f(t, md):
            a = t[name].copy()
            a.reshape(-1)[0] = value
            t[name] = a
        return f

    def losses_len(t, md):
        t["losses"] = t["losses"][:-1].copy()

    def betas_f32(t, md):
        t["schedule.betas"] = t["schedule.betas"].astype(np.float32)

    return [
        ("no_format", set_md("format", None), r"format"),
        ("model_format", set_md("format", "swiftunet"), r"format.*DiffusionModel\.load"),
        ("version", set_md("format_version", "9"), r"format_version"),
        ("no_step_count", set_md("step_count", None), r"step_count"),
        ("no_lr", set_md("lr", None), r"\blr\b"),
        ("bad_step_count", set_md("step_count", "two"), r"step_count"),
        ("negative_step_count", set_md("step_count", "-1"), r"step_count"),
        ("bad_lr", set_md("lr", "fast"), r"\blr\b"),
        ("negative_lr", set_md("lr", "-0.1"), r"\blr\b"),
        ("nan_eps", set_md("eps", "nan"), r"\beps\b"),
        ("beta1_one", set_md("beta1", "1.0"), r"betas\[0\]"),
        ("grad_clip_zero", set_md("grad_clip", "0"), r"grad_clip"),
        ("ema_decay", set_md("ema_decay", "2"), r"ema_decay"),
        ("seed", set_md("seed", "-3"), r"\bseed\b"),
        ("hidden_dims", set_md("hidden_dims", "[8, 12]"), r"hidden_dims"),
        ("no_time_dim", set_md("time_dim", None), r"time_dim"),
        ("missing_model_tensor", drop("model.out_conv.bias"), r"missing tensors: model\.out_conv\.bias"),
        ("missing_ema_tensor", drop("ema.init_conv.weight"), r"missing tensors: ema\.init_conv\.weight"),
        ("missing_betas", drop("schedule.betas"), r"schedule\.betas"),
        ("missing_losses", drop("losses"), r"losses"),
        ("unexpected", extra, r"unexpected tensors: model\.extra\.weight"),
        ("shape", reshape("adam_m.init_conv.weight"), r"adam_m\.init_conv\.weight.*shape"),
        ("nan_weight", poison("model.init_conv.bias", np.nan), r"model\.init_conv\.bias.*NaN"),
        ("inf_ema", poison("ema.out_conv.weight", np.inf), r"ema\.out_conv\.weight.*NaN or inf"),
        ("nan_m", poison("adam_m.out_norm.bias", np.nan), r"adam_m\.out_norm\.bias"),
        ("negative_v", poison("adam_v.out_norm.weight", -1.0), r"adam_v\.out_norm\.weight.*negative"),
        ("bad_beta", poison("schedule.betas", 1.5), r"schedule\.betas"),
        ("betas_f32", betas_f32, r"schedule\.betas.*F64"),
        ("losses_len", losses_len, r"losses.*step_count"),
        ("nan_loss", poison("losses", np.nan), r"losses.*NaN"),
    ]


CORRUPT = _corrupt_cases()


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good.safetensors"
    tr = _trainer(seed=3)
    tr.step(DATA[:2])
    tr.step(DATA[:2])
    tr.save(path)
    return path


@pytest.mark.parametrize("mutate,pattern", [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_corrupt_checkpoint_is_a_value_error_and_changes_nothing(saved_checkpoint, tmp_path, mutate, pattern):
    tensors, md = su_io.load_safetensors(saved_checkpoint, keep_float64=True)
    tensors = collections.OrderedDict(tensors)
    mutate(tensors, md)
    path = tmp_path / "bad.safetensors"
    su_io.save_safetensors(tensors, path, md, keep_float64=True)
    target = _model(seed=8)
    before = _flat(target.state_dict()).tobytes()
    raises_naming(ValueError, pattern, swiftunet.Trainer.load, path, model=target)
    assert _flat(target.state_dict()).tobytes() == before
    raises_naming(ValueError, pattern, swiftunet.Trainer.load, path)


def test_corrupt_checkpoint_baseline_loads(saved_checkpoint, tmp_path):
    tensors, md = su_io.load_safetensors(saved_checkpoint, keep_float64=True)
    path = tmp_path / "same.safetensors"
    su_io.save_safetensors(tensors, path, md, keep_float64=True)
    assert swiftunet.Trainer.load(path).step_count == 2


def test_load_damaged_and_missing_files(saved_checkpoint, tmp_path):
    blob = saved_checkpoint.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(blob[:len(blob) // 2])
    raises_naming(ValueError, r"not a valid safetensors", swiftunet.Trainer.load, cut)
    with pytest.raises(FileNotFoundError):
        swiftunet.Trainer.load(tmp_path / "absent.safetensors")
    plain = tmp_path / "model.safetensors"
    _model().save(plain)
    raises_naming(ValueError, r"format", swiftunet.Trainer.load, plain)


# ---------------------------------------------------------------------------
# bad arguments: each names the argument; failed steps change nothing


class _NoSwift:
    """Stands in for the binding: any use means Swift would have been entered."""

    def __getattr__(self, name):
        def entered(*args, **kwargs):
            raise AssertionError(f"_swiftunet.{name} was called: the bad argument reached Swift")

        return entered


BAD_LOSS_AND_GRAD = [
    # (id, x, t, target, exception, pattern); the model has 1 channel and L = 1
    ("batch0", np.zeros((0, 1, 8, 8)), [], np.zeros((0, 1, 8, 8)), ValueError, r"batch 0 has no mean"),
    ("x_3d", np.zeros((1, 8, 8)), [1], np.zeros((1, 8, 8)), ValueError, r"\bx\b.*4-D"),
    ("x_channels", np.zeros((1, 2, 8, 8)), [1], np.zeros((1, 2, 8, 8)), ValueError, r"\bx\b.*1 channels"),
    ("x_odd_height", np.zeros((1, 1, 7, 8)), [1], np.zeros((1, 1, 7, 8)), ValueError, r"height"),
    ("x_complex", np.zeros((1, 1, 8, 8), complex), [1], np.zeros((1, 1, 8, 8)), TypeError, r"\bx\b.*complex"),
    ("x_none", None, [1], np.zeros((1, 1, 8, 8)), TypeError, r"\bx\b"),
    ("t_float", np.zeros((2, 1, 8, 8)), [1.0, 2.0], np.zeros((2, 1, 8, 8)), TypeError, r"\bt\b.*integer"),
    ("t_len", np.zeros((2, 1, 8, 8)), [1], np.zeros((2, 1, 8, 8)), ValueError, r"len\(t\) = 1"),
    ("t_negative", np.zeros((2, 1, 8, 8)), [1, -2], np.zeros((2, 1, 8, 8)), ValueError, r"\bt\b.*>= 0"),
    ("t_bool", np.zeros((1, 1, 8, 8)), True, np.zeros((1, 1, 8, 8)), TypeError, r"\bt\b.*bool"),
    ("target_shape", np.zeros((2, 1, 8, 8)), [1, 2], np.zeros((2, 1, 8, 4)), ValueError,
     r"target must have x's shape \(2, 1, 8, 8\), got \(2, 1, 8, 4\)"),
    ("target_batch", np.zeros((2, 1, 8, 8)), [1, 2], np.zeros((1, 1, 8, 8)), ValueError, r"target.*\(2, 1, 8, 8\)"),
    ("target_scalar", np.zeros((2, 1, 8, 8)), [1, 2], 0.0, ValueError, r"target.*shape"),
    ("target_complex", np.zeros((1, 1, 8, 8)), [1], np.zeros((1, 1, 8, 8), complex), TypeError,
     r"target.*complex"),
    ("target_object", np.zeros((1, 1, 8, 8)), [1], np.empty((1, 1, 8, 8), object), TypeError, r"target.*dtype"),
    ("target_string", np.zeros((1, 1, 8, 8)), [1], "noise", TypeError, r"target.*dtype"),
    ("target_ragged", np.zeros((1, 1, 8, 8)), [1], [[1.0], [1.0, 2.0]], TypeError, r"target"),
    ("target_none", np.zeros((1, 1, 8, 8)), [1], None, TypeError, r"target"),
]


@pytest.mark.parametrize("x,t,target,exc,pattern", [c[1:] for c in BAD_LOSS_AND_GRAD],
                         ids=[c[0] for c in BAD_LOSS_AND_GRAD])
def test_bad_loss_and_grad_arguments_rejected_before_swift(monkeypatch, x, t, target, exc, pattern):
    m = _model()
    import swiftunet.model as su_model
    monkeypatch.setattr(su_model, "_swiftunet", _NoSwift())
    raises_naming(exc, pattern, m.loss_and_grad, x, t, target)


BAD_TRAINER = [
    # (id, keyword overrides, exception, pattern)
    ("lr_zero", dict(lr=0.0), ValueError, r"\blr\b.*> 0"),
    ("lr_negative", dict(lr=-1e-3), ValueError, r"\blr\b"),
    ("lr_nan", dict(lr=float("nan")), ValueError, r"\blr\b.*finite"),
    ("lr_inf", dict(lr=float("inf")), ValueError, r"\blr\b.*finite"),
    ("lr_str", dict(lr="0.1"), TypeError, r"\blr\b.*real number"),
    ("lr_bool", dict(lr=True), TypeError, r"\blr\b.*bool"),
    ("lr_none", dict(lr=None), TypeError, r"\blr\b"),
    ("lr_huge_int", dict(lr=10**400), ValueError, r"\blr\b.*finite"),
    ("betas_one", dict(betas=(0.9,)), ValueError, r"betas.*pair"),
    ("betas_three", dict(betas=(0.9, 0.99, 0.5)), ValueError, r"betas.*pair"),
    ("betas_str", dict(betas="ab"), TypeError, r"betas.*pair"),
    ("betas_none", dict(betas=None), TypeError, r"betas"),
    ("betas_scalar", dict(betas=0.9), TypeError, r"betas"),
    ("beta1_one", dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\].*\[0, 1\)"),
    ("beta2_negative", dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    ("beta2_str", dict(betas=(0.9, "x")), TypeError, r"betas\[1\]"),
    ("eps_zero", dict(eps=0), ValueError, r"\beps\b.*> 0"),
    ("eps_str", dict(eps="tiny"), TypeError, r"\beps\b"),
    ("weight_decay_negative", dict(weight_decay=-0.01), ValueError, r"weight_decay.*>= 0"),
    ("weight_decay_nan", dict(weight_decay=float("nan")), ValueError, r"weight_decay"),
    ("grad_clip_zero", dict(grad_clip=0.0), ValueError, r"grad_clip.*None.*> 0"),
    ("grad_clip_negative", dict(grad_clip=-1), ValueError, r"grad_clip"),
    ("grad_clip_inf", dict(grad_clip=float("inf")), ValueError, r"grad_clip.*finite"),
    ("grad_clip_str", dict(grad_clip="1"), TypeError, r"grad_clip"),
    ("ema_decay_big", dict(ema_decay=1.5), ValueError, r"ema_decay.*\[0, 1\]"),
    ("ema_decay_negative", dict(ema_decay=-0.1), ValueError, r"ema_decay"),
    ("ema_decay_list", dict(ema_decay=[0.9]), TypeError, r"ema_decay"),
    ("schedule_str", dict(schedule="cosine"), TypeError, r"schedule.*NoiseSchedule"),
    ("schedule_array", dict(schedule=np.full(10, 0.01)), TypeError, r"schedule"),
    ("seed_negative", dict(seed=-1), ValueError, r"\bseed\b"),
    ("seed_big", dict(seed=2**64), ValueError, r"\bseed\b"),
    ("seed_float", dict(seed=1.5), TypeError, r"\bseed\b"),
    ("seed_bool", dict(seed=False), TypeError, r"\bseed\b"),
]


@pytest.mark.parametrize("overrides,exc,pattern", [c[1:] for c in BAD_TRAINER], ids=[c[0] for c in BAD_TRAINER])
def test_bad_trainer_arguments_rejected_before_swift(monkeypatch, overrides, exc, pattern):
    m = _model()
    monkeypatch.setattr(su_training, "_swiftunet", _NoSwift())
    raises_naming(exc, pattern, swiftunet.Trainer, m, **overrides)


@pytest.mark.parametrize("bad", [None, "model", object(), np.zeros(3)])
def test_trainer_needs_a_model(bad):
    raises_naming(TypeError, r"\bmodel\b.*DiffusionModel", swiftunet.Trainer, bad)


def test_trainer_accepts_numpy_numbers():
    tr = swiftunet.Trainer(_model(), lr=np.float32(1e-3), betas=np.array([0.9, 0.99]), eps=np.float64(1e-8),
                           weight_decay=np.int64(0), grad_clip=np.float64(1.0), ema_decay=np.array(0.5),
                           seed=np.uint64(2**64 - 1))
    assert tr.seed == 2**64 - 1 and tr.weight_decay == 0.0 and tr.betas == (0.9, 0.99)
    assert isinstance(tr.lr, float) and tr.step_count == 0
    tr.step(DATA[:1])


BAD_X0 = [
    ("batch0", np.zeros((0, 1, 8, 8), np.float32), ValueError, r"x0.*at least one image"),
    ("ndim3", np.zeros((1, 8, 8), np.float32), ValueError, r"x0.*4-D"),
    ("channels", np.zeros((1, 3, 8, 8), np.float32), ValueError, r"x0.*1 channels"),
    ("odd_width", np.zeros((1, 1, 8, 5), np.float32), ValueError, r"x0's width"),
    ("bool", np.zeros((1, 1, 8, 8), bool), TypeError, r"x0.*bool"),
    ("complex", np.zeros((1, 1, 8, 8), np.complex64), TypeError, r"x0.*complex"),
    ("string", "images", TypeError, r"x0"),
    ("none", None, TypeError, r"x0"),
    ("ragged", [[1.0], [2.0, 3.0]], TypeError, r"x0"),
]


@pytest.mark.parametrize("x0,exc,pattern", [c[1:] for c in BAD_X0], ids=[c[0] for c in BAD_X0])
def test_bad_x0_rejected_before_swift_and_nothing_changes(monkeypatch, x0, exc, pattern):
    tr = _trainer()
    tr.step(DATA[:2])
    before = _fingerprint(tr)
    monkeypatch.setattr(su_training, "_swiftunet", _NoSwift())
    raises_naming(exc, pattern, tr.step, x0)
    monkeypatch.undo()
    assert _fingerprint(tr) == before


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e300])
def test_non_finite_x0_raises_and_changes_nothing(value):
    tr = _trainer()
    tr.step(DATA[:2])
    before = _fingerprint(tr)
    x = DATA[:3].astype(np.float64)
    x[1, 0, 2, 3] = value
    raises_naming(ValueError, r"x0.*non-finite", tr.step, x)
    assert _fingerprint(tr) == before
    # The trainer goes on exactly as if the failed step had not been tried.
    tr.step(DATA[:2])
    ref = _trainer()
    ref.step(DATA[:2])
    ref.step(DATA[:2])
    _assert_same_state(tr, ref)


def test_non_finite_loss_raises_and_changes_nothing():
    """Weights that overflow the forward make the loss non-finite: the step refuses."""
    m = _model()
    sd = m.state_dict()
    sd["out_conv.weight"] = np.full_like(sd["out_conv.weight"], 3e38)
    m.load_state_dict(sd)
    tr = swiftunet.Trainer(m)
    before = _fingerprint(tr)
    raises_naming(ValueError, r"not finite", tr.step, DATA[:2])
    assert _fingerprint(tr) == before


BAD_FIT = [
    # (id, data, keyword overrides, exception, pattern)
    ("data_3d", np.zeros((4, 8, 8), np.float32), {}, ValueError, r"data.*4-D"),
    ("data_empty", np.zeros((0, 1, 8, 8), np.float32), {}, ValueError, r"data.*at least one image"),
    ("data_channels", np.zeros((4, 2, 8, 8), np.float32), {}, ValueError, r"data.*1 channels"),
    ("data_height", np.zeros((4, 1, 7, 8), np.float32), {}, ValueError, r"data's height"),
    ("data_complex", np.zeros((4, 1, 8, 8), complex), {}, TypeError, r"data.*dtype"),
    ("data_bool", np.zeros((4, 1, 8, 8), bool), {}, TypeError, r"data.*dtype"),
    ("data_object", np.empty((4, 1, 8, 8), object), {}, TypeError, r"data.*dtype"),
    ("data_none", None, {}, TypeError, r"data"),
    ("data_ragged", [[1.0], [1.0, 2.0]], {}, TypeError, r"data"),
    ("data_nan", np.where(np.arange(4 * 64).reshape(4, 1, 8, 8) == 100, np.nan, 0.0), {}, ValueError,
     r"data.*finite.*image 1"),
    ("data_too_big_for_f32", np.full((2, 1, 8, 8), 1e300), {}, ValueError, r"data.*finite.*image 0"),
    ("epochs_negative", DATA[:4], dict(epochs=-1), ValueError, r"epochs.*>= 0"),
    ("epochs_float", DATA[:4], dict(epochs=1.5), TypeError, r"epochs"),
    ("batch_size_zero", DATA[:4], dict(batch_size=0), ValueError, r"batch_size.*>= 1"),
    ("batch_size_str", DATA[:4], dict(batch_size="8"), TypeError, r"batch_size"),
    ("progress_str", DATA[:4], dict(progress="yes"), TypeError, r"progress"),
]


@pytest.mark.parametrize("data,overrides,exc,pattern", [c[1:] for c in BAD_FIT], ids=[c[0] for c in BAD_FIT])
def test_bad_fit_arguments_change_nothing(monkeypatch, data, overrides, exc, pattern):
    tr = _trainer()
    tr.step(DATA[:2])
    before = _fingerprint(tr)
    monkeypatch.setattr(su_training, "_swiftunet", _NoSwift())
    raises_naming(exc, pattern, tr.fit, data, **dict(dict(progress=False), **overrides))
    monkeypatch.undo()
    assert _fingerprint(tr) == before


BAD_DRAW = [
    ("seed_negative", (-1, 0, 10, 1, 1), ValueError, r"\bseed\b"),
    ("seed_float", (0.5, 0, 10, 1, 1), TypeError, r"\bseed\b"),
    ("step_negative", (0, -1, 10, 1, 1), ValueError, r"\bstep\b"),
    ("step_big", (0, 2**63, 10, 1, 1), ValueError, r"\bstep\b"),
    ("T_zero", (0, 0, 0, 1, 1), ValueError, r"num_timesteps"),
    ("T_big", (0, 0, 2**21, 1, 1), ValueError, r"num_timesteps"),
    ("batch_negative", (0, 0, 10, -1, 1), ValueError, r"\bbatch\b"),
    ("batch_float", (0, 0, 10, 1.0, 1), TypeError, r"\bbatch\b"),
    ("per_image_negative", (0, 0, 10, 1, -1), ValueError, r"per_image"),
    ("too_many", (0, 0, 10, 2**20, 2**21), ValueError, r"batch \* per_image"),
]


@pytest.mark.parametrize("args,exc,pattern", [c[1:] for c in BAD_DRAW], ids=[c[0] for c in BAD_DRAW])
def test_bad_draw_arguments_rejected_before_swift(monkeypatch, args, exc, pattern):
    monkeypatch.setattr(su_training, "_swiftunet", _NoSwift())
    raises_naming(exc, pattern, su_training.draw, *args)


def test_binding_refuses_bad_buffers_without_crashing():
    """The C layer checks what it hands to the library, whatever Python gives it."""
    m = _model()
    tr = _trainer()
    total = m.num_parameters
    x = np.zeros((1, 1, 8, 8), np.float32)
    t = np.zeros(1, np.int64)
    grads = np.zeros(total, np.float32)
    with pytest.raises(ValueError):
        _swiftunet.loss_and_grad(m._handle, x, t, x, grads, 0, 1, 8, 8)            # batch 0
    with pytest.raises(ValueError):
        _swiftunet.loss_and_grad(m._handle, x, t, x, grads[:-1], 1, 1, 8, 8)       # short grads
    with pytest.raises(TypeError):
        _swiftunet.loss_and_grad(m._handle, x, t, x, grads.astype(np.float64), 1, 1, 8, 8)
    shared = np.zeros(total, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        _swiftunet.loss_and_grad(m._handle, shared[:64], t, x, shared, 1, 1, 8, 8)  # grads over x
    with pytest.raises(TypeError):
        _swiftunet.trainer_step(m._handle, x, 1, 1, 8, 8, [])                       # a model, not a trainer
    with pytest.raises(TypeError):
        _swiftunet.trainer_step(tr._handle, x, 1, 1, 8, 8, ())                      # losses must be a list
    with pytest.raises(ValueError):
        _swiftunet.trainer_step(tr._handle, x, 2, 1, 8, 8, [])                      # x0 too short
    with pytest.raises(ValueError):
        _swiftunet.trainer_get_state(tr._handle, 3, grads)                          # bad `which`
    with pytest.raises(ValueError):
        _swiftunet.trainer_set_state(tr._handle, grads, grads, grads, -1)           # negative step count
    v = grads.copy()
    v[0] = -1
    with pytest.raises(ValueError, match="adam_v"):
        _swiftunet.trainer_set_state(tr._handle, grads, grads, v, 0)
    with pytest.raises(ValueError):
        _swiftunet.trainer_create(m._handle, np.array([0.5, 1.5]), 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.9, 0)
    with pytest.raises(ValueError):
        _swiftunet.trainer_create(m._handle, np.full(10, 0.01), -1.0, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.9, 0)
    with pytest.raises(TypeError):
        _swiftunet.Trainer()  # not instantiable from Python
    assert tr.step_count == 0 and tr.losses == []
