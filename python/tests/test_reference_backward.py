"""The numpy reference backward (swiftunet.reference_training, also reached as
swiftunet.reference.<name>) against central finite differences in float64.

This is what makes the reference an oracle for the gradient parity tests: each
layer's backward, and the whole model's loss_and_grad on a tiny configuration,
agree with (f(p + h) - f(p - h)) / 2h of the reference's own forward."""

import numpy as np
import pytest

import swiftunet
from swiftunet import reference_training as rt
from swiftunet import reference

H = 1e-6  # float64 central differences: truncation ~H^2, rounding ~1e-16 / H


def _central_difference(f, a, idx):
    """(f(a + H e_idx) - f(a - H e_idx)) / 2H, perturbing a in place and restoring it."""
    old = a[idx]
    a[idx] = old + H
    up = f()
    a[idx] = old - H
    down = f()
    a[idx] = old
    return (up - down) / (2 * H)


def _random_entries(shape, rng, picks):
    return {tuple(int(rng.integers(0, n)) for n in shape) for _ in range(picks)}


def _fd_check(f, arrays, grads, rng, picks=6, rtol=1e-6):
    """For a scalar f() of the arrays (perturbed in place), compare grads[i] with
    central differences at `picks` random entries of each array."""
    for a, g in zip(arrays, grads):
        assert g.shape == a.shape
        scale = max(float(np.abs(g).max()), 1e-3)
        for idx in _random_entries(a.shape, rng, picks):
            fd = _central_difference(f, a, idx)
            assert abs(fd - g[idx]) <= rtol * scale, (idx, fd, g[idx], scale)


def _weighted(out_fn, shape, rng):
    """A scalar loss sum(w * out) with fixed random w, and its gradient dL/dout = w."""
    w = rng.standard_normal(shape)
    return (lambda: float((w * out_fn()).sum())), w


def test_the_training_twins_are_reached_through_swiftunet_reference():
    for name in ("loss_and_grad", "conv2d_backward", "group_norm_backward", "adamw_step", "train_step"):
        assert getattr(reference, name) is getattr(rt, name)
    with pytest.raises(AttributeError):
        reference.no_such_function


@pytest.mark.parametrize("stride,padding,k", [(1, 1, 3), (2, 1, 4), (1, 0, 1)])
def test_conv2d_backward_matches_finite_differences(stride, padding, k):
    rng = np.random.default_rng(k * 10 + stride)
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, k, k))
    b = rng.standard_normal(4)
    out_shape = reference.conv2d(x, w, b, stride=stride, padding=padding).shape
    f, dy = _weighted(lambda: reference.conv2d(x, w, b, stride=stride, padding=padding), out_shape, rng)
    dx, dw, db = rt.conv2d_backward(dy, x, w, stride=stride, padding=padding)
    _fd_check(f, [x, w, b], [dx, dw, db], rng)


def test_conv_transpose2d_backward_matches_finite_differences():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 3, 4))
    w = rng.standard_normal((3, 2, 4, 4))  # [Cin, Cout, k, k] as PyTorch's ConvTranspose2d
    b = rng.standard_normal(2)
    out_shape = reference.conv_transpose2d(x, w, b, stride=2, padding=1).shape
    assert out_shape == (2, 2, 6, 8)
    f, dy = _weighted(lambda: reference.conv_transpose2d(x, w, b, stride=2, padding=1), out_shape, rng)
    dx, dw, db = rt.conv_transpose2d_backward(dy, x, w, stride=2, padding=1)
    _fd_check(f, [x, w, b], [dx, dw, db], rng)


def test_group_norm_backward_matches_finite_differences():
    rng = np.random.default_rng(8)
    x = 2.0 + 3.0 * rng.standard_normal((2, 16, 3, 3))
    w = 1.0 + 0.5 * rng.standard_normal(16)
    b = rng.standard_normal(16)
    f, dy = _weighted(lambda: reference.group_norm(x, 8, w, b), x.shape, rng)
    dx, dw, db = rt.group_norm_backward(dy, x, 8, w)
    _fd_check(f, [x, w, b], [dx, dw, db], rng, picks=10)


@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_activation_backward_matches_finite_differences(name):
    rng = np.random.default_rng(9)
    x = 3.0 * rng.standard_normal((3, 7))
    f, dy = _weighted(lambda: getattr(reference, name)(x), x.shape, rng)
    dx = getattr(rt, name + "_backward")(dy, x)
    _fd_check(f, [x], [dx], rng, picks=12)


def test_linear_and_softmax_backward_match_finite_differences():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 5))
    w = rng.standard_normal((4, 5))
    b = rng.standard_normal(4)
    f, dy = _weighted(lambda: reference.linear(x, w, b), (3, 4), rng)
    dx, dw, db = rt.linear_backward(dy, x, w)
    _fd_check(f, [x, w, b], [dx, dw, db], rng)
    s = rng.standard_normal((2, 3, 6))
    f, dy = _weighted(lambda: reference.softmax(s, axis=-1), s.shape, rng)
    ds = rt.softmax_backward(dy, reference.softmax(s, axis=-1), axis=-1)
    _fd_check(f, [s], [ds], rng, picks=10)


@pytest.mark.parametrize("hidden_dims,batch,height,width", [([8, 16], 2, 8, 8), ([8, 8, 16], 1, 8, 4)])
def test_model_loss_and_grad_matches_finite_differences(hidden_dims, batch, height, width):
    """Every parameter tensor of a tiny model (attention, time MLP, skips and
    GroupNorm affines away from 1/0 included), at a few entries each."""
    rng = np.random.default_rng(len(hidden_dims))
    params = reference.init_params(height, 1, hidden_dims=hidden_dims, time_dim=8, seed=3)
    for k in params:
        scale = 0.3 if "norm" in k else 0.05
        params[k] = params[k].astype(np.float64) + scale * rng.standard_normal(params[k].shape)
    x = rng.standard_normal((batch, 1, height, width))
    target = rng.standard_normal(x.shape)
    t = rng.integers(0, 1000, batch)
    loss, grads = rt.loss_and_grad(params, x, t, target)
    assert list(grads) == list(params)
    overall = max(float(np.abs(g).max()) for g in grads.values())

    def f():
        pred = reference.forward(params, x, t, dtype=np.float64)
        return float(np.mean((pred - target) ** 2))

    assert abs(f() - loss) <= 1e-12 * abs(loss)
    for name, p in params.items():
        g = grads[name]
        # as the parity bound: relative to the tensor's largest gradient, floored
        # at a small fraction of the model's (tensors whose gradient is ~0)
        scale = max(float(np.abs(g).max()), 1e-3 * overall)
        for idx in _random_entries(p.shape, rng, 2):
            fd = _central_difference(f, p, idx)
            assert abs(fd - g[idx]) <= 1e-5 * scale, (name, idx, fd, g[idx], scale)
