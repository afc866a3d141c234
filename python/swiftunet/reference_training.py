"""Pure-numpy reference of training (docs/model.md section 5).

The oracle of the gradient and training parity tests, in float64, one function
per layer, numpy and the standard library only. Reached through
``swiftunet.reference`` too: every name here is also ``swiftunet.reference.<name>``.

Conventions:

* Element-wise and simple layers have ``<layer>_backward(dy, <inputs>)``: it
  takes the gradient of the loss with respect to the layer's output and the
  layer's inputs, and returns the gradients with respect to the inputs and
  weights (``(dx, dw, db)``), as PyTorch's autograd would.
* Composite layers (ResBlock, SelfAttention, the down and up blocks, the time
  MLP, the whole model) have ``<layer>_forward_cache(...) -> (out, cache)``,
  which computes exactly what ``reference.<layer>`` computes and keeps the
  intermediate values, and ``<layer>_backward(dout, cache, params, ...)``,
  which returns the input gradients and a dict of weight gradients named as in
  the state_dict.
* ``loss_and_grad(params, x, t, target)`` is the model's MSE loss and its
  gradient for every parameter; ``train_step`` is one training step (draw,
  q_sample, loss and gradient, clipping, AdamW, EMA), with ``clip_grad_norm``,
  ``adamw_step``, ``ema_update`` and ``train_step_draw`` as separate pieces.

Notation: for a layer y = f(x), ``dy`` is dL/dy and ``dx`` is dL/dx, the
vector-Jacobian product dx = J_f(x)^T dy.
"""

import math

import numpy as np

if __package__:
    from .reference import (EPS, GROUPS, HEADS, _erf, conv2d, conv_transpose2d, gelu, group_norm,
                            infer_config, linear, silu, softmax, splitmix64, time_embedding)
    from .reference_sampling import GaussianStream, alphas_cumprod
else:  # pragma: no cover - loaded by path (the tests do this to run without the compiled library)
    import importlib.util as _importlib_util
    import os as _os

    def _load_sibling(module_name, file_name):
        path = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), file_name)
        spec = _importlib_util.spec_from_file_location(module_name, path)
        mod = _importlib_util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    # reference.py loaded by path brings reference_sampling.py's names with it.
    _ref = _load_sibling("_swiftunet_reference_for_training", "reference.py")
    EPS, GROUPS, HEADS, _erf = _ref.EPS, _ref.GROUPS, _ref.HEADS, _ref._erf
    conv2d, conv_transpose2d, gelu, group_norm = _ref.conv2d, _ref.conv_transpose2d, _ref.gelu, _ref.group_norm
    infer_config, linear, silu, softmax = _ref.infer_config, _ref.linear, _ref.silu, _ref.softmax
    splitmix64, time_embedding = _ref.splitmix64, _ref.time_embedding
    GaussianStream, alphas_cumprod = _ref.GaussianStream, _ref.alphas_cumprod

__all__ = [
    # element-wise and simple layers
    "linear_backward",
    "gelu_backward",
    "silu_backward",
    "conv2d_backward",
    "conv_transpose2d_backward",
    "group_norm_backward",
    "softmax_backward",
    # composite layers
    "time_mlp_forward_cache",
    "time_mlp_backward",
    "res_block_forward_cache",
    "res_block_backward",
    "self_attention_forward_cache",
    "self_attention_backward",
    "down_block_forward_cache",
    "down_block_backward",
    "up_block_forward_cache",
    "up_block_backward",
    # the whole model
    "forward_cache",
    "backward",
    "mse_loss",
    "mse_loss_backward",
    "loss_and_grad",
    # the training step
    "global_grad_norm",
    "clip_grad_norm",
    "adamw_step",
    "ema_update",
    "init_train_state",
    "train_step_draw",
    "q_sample64",
    "train_step",
]

_MASK64 = (1 << 64) - 1
_DRAW_STEP_MULTIPLIER = 0xD1B54A32D192ED03   # step multiplier of the training draw


# --------------------------------------------------------------------------
# Element-wise and simple layers
# --------------------------------------------------------------------------


def linear_backward(dy, x, w):
    """Backward of PyTorch's Linear y = x @ w.T + b (x [B, in], w [out, in]).

    dx = dy @ w, dw = dy.T @ x, db = sum of dy over the batch.
    Returns (dx, dw, db).
    """
    return dy @ w, dy.T @ x, dy.sum(axis=0)


def gelu_backward(dy, x):
    """Backward of the exact GELU, gelu(x) = x * Phi(x) (PyTorch's approximate='none').

    d gelu / dx = Phi(x) + x * phi(x), with Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))
    the standard normal CDF and phi(x) = exp(-x**2 / 2) / sqrt(2 pi) its density.
    """
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (cdf + x * pdf)


def silu_backward(dy, x):
    """Backward of SiLU, silu(x) = x * s(x) with s the logistic sigmoid.

    d silu / dx = s(x) + x * s(x) * (1 - s(x)) = s(x) * (1 + x * (1 - s(x))).
    """
    s = np.exp(-np.logaddexp(0, -x))          # sigmoid, as reference.silu computes it
    return dy * s * (1.0 + x * (1.0 - s))


def conv2d_backward(dy, x, w, stride=1, padding=0):
    """Backward of PyTorch's Conv2d (cross-correlation), as `reference.conv2d` computes it.

    Forward: out[b, o, y, x'] = bias[o] + sum_{c, i, j} w[o, c, i, j] *
    xpad[b, c, y*stride + i, x'*stride + j], xpad = x zero-padded by `padding`.
    So for every kernel tap (i, j), with xs the strided window of xpad that tap
    reads: dw[:, :, i, j] = sum over b, y, x' of dy * xs, and dy spread back
    through w[:, :, i, j] adds to the same window of dxpad; dx is dxpad without
    its padding; db = sum of dy over (b, y, x').
    x [B, Cin, H, W], w [Cout, Cin, kh, kw], dy [B, Cout, Ho, Wo]. Returns (dx, dw, db).
    """
    B, Cin, H, W = x.shape
    Cout, _, kh, kw = w.shape
    s, p = stride, padding
    _, _, Ho, Wo = dy.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            window = (slice(None), slice(None), slice(i, i + s * (Ho - 1) + 1, s), slice(j, j + s * (Wo - 1) + 1, s))
            dw[:, :, i, j] = np.einsum("bohw,bchw->oc", dy, xp[window], optimize=True)
            dxp[window] += np.einsum("oc,bohw->bchw", w[:, :, i, j], dy, optimize=True)
    dx = dxp[:, :, p:p + H, p:p + W]
    return np.ascontiguousarray(dx), dw, dy.sum(axis=(0, 2, 3))


def conv_transpose2d_backward(dy, x, w, stride=1, padding=0):
    """Backward of PyTorch's ConvTranspose2d (weight [Cin, Cout, kh, kw]), as
    `reference.conv_transpose2d` computes it.

    Forward: input pixel (h, w') adds x[b, c, h, w'] * w[c, :, i, j] to the
    uncropped output pixel (h*stride + i, w'*stride + j); the output is that
    array without `padding` rows and columns on each side, plus the bias. So,
    with dfull = dy zero-padded back to the uncropped size and, for every tap
    (i, j), dwin its strided window that the tap wrote:
    dx += sum over o of w[c, o, i, j] * dwin[b, o], dw[:, :, i, j] = sum over
    b, h, w' of x * dwin, db = sum of dy over (b, y, x').
    Returns (dx, dw, db).
    """
    B, Cin, H, W = x.shape
    _, Cout, kh, kw = w.shape
    s, p = stride, padding
    Hf, Wf = (H - 1) * s + kh, (W - 1) * s + kw
    dfull = np.zeros((B, Cout, Hf, Wf), dtype=dy.dtype)
    dfull[:, :, p:Hf - p, p:Wf - p] = dy
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            dwin = dfull[:, :, i:i + s * (H - 1) + 1:s, j:j + s * (W - 1) + 1:s]
            dx += np.einsum("co,bohw->bchw", w[:, :, i, j], dwin, optimize=True)
            dw[:, :, i, j] = np.einsum("bchw,bohw->co", x, dwin, optimize=True)
    return dx, dw, dy.sum(axis=(0, 2, 3))


def group_norm_backward(dy, x, groups, w, eps=EPS):
    """Backward of PyTorch's GroupNorm y = xhat * w + b (per channel affine).

    Per sample and group, over its n = (C/groups)*H*W elements:
    xhat = (x - mean) / sqrt(var + eps) with the biased variance. With
    g = dy * w (the gradient reaching xhat):
    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps);
    dw = sum over (b, h, w') of dy * xhat; db = sum over (b, h, w') of dy.
    Returns (dx, dw, db).
    """
    B, C, H, W = x.shape
    xg = x.reshape(B, groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (xg - mean) * inv_std                                   # [B, groups, n]
    dw = (dy * xhat.reshape(B, C, H, W)).sum(axis=(0, 2, 3))
    db = dy.sum(axis=(0, 2, 3))
    g = (dy * w[None, :, None, None]).reshape(B, groups, -1)
    dx = (g - g.mean(axis=2, keepdims=True) - xhat * (g * xhat).mean(axis=2, keepdims=True)) * inv_std
    return dx.reshape(B, C, H, W), dw, db


def softmax_backward(dy, y, axis=-1):
    """Backward of y = softmax(z) along `axis`, from the output y:
    dz = y * (dy - sum(dy * y, axis))."""
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


# --------------------------------------------------------------------------
# The time MLP
# --------------------------------------------------------------------------


def time_mlp_forward_cache(t, params, T):
    """`reference.time_mlp` (sinusoid -> fc1 -> GELU -> fc2) in float64, and its cache."""
    e = time_embedding(t, T, np.float64)
    z = linear(e, params["time_mlp.fc1.weight"], params["time_mlp.fc1.bias"])
    a = gelu(z)
    temb = linear(a, params["time_mlp.fc2.weight"], params["time_mlp.fc2.bias"])
    return temb, {"e": e, "z": z, "a": a}


def time_mlp_backward(dtemb, cache, params):
    """Weight gradients of the time MLP from dL/dtemb [B, T].

    The sinusoidal encoding of the integer timesteps has no gradient (t is not
    a differentiable input), so only fc1 and fc2 receive gradients.
    """
    grads = {}
    da, grads["time_mlp.fc2.weight"], grads["time_mlp.fc2.bias"] = linear_backward(
        dtemb, cache["a"], params["time_mlp.fc2.weight"])
    dz = gelu_backward(da, cache["z"])
    _, dw1, db1 = linear_backward(dz, cache["e"], params["time_mlp.fc1.weight"])
    return {"time_mlp.fc1.weight": dw1, "time_mlp.fc1.bias": db1, **grads}


# --------------------------------------------------------------------------
# ResBlock
# --------------------------------------------------------------------------


def res_block_forward_cache(x, temb, params, prefix):
    """`reference.res_block`, and its cache. `prefix` ends with a dot."""
    P = lambda name: params[prefix + name]  # noqa: E731
    n1 = group_norm(x, GROUPS, P("norm1.weight"), P("norm1.bias"))
    a1 = silu(n1)
    h1 = conv2d(a1, P("conv1.weight"), P("conv1.bias"), padding=1)
    h2 = h1 + linear(temb, P("time_proj.weight"), P("time_proj.bias"))[:, :, None, None]
    n2 = group_norm(h2, GROUPS, P("norm2.weight"), P("norm2.bias"))
    a2 = silu(n2)
    h3 = conv2d(a2, P("conv2.weight"), P("conv2.bias"), padding=1)
    if prefix + "skip.weight" in params:
        skip = conv2d(x, P("skip.weight"), P("skip.bias"))
    else:
        skip = x
    cache = {"x": x, "temb": temb, "n1": n1, "a1": a1, "h2": h2, "n2": n2, "a2": a2}
    return h3 + skip, cache


def res_block_backward(dout, cache, params, prefix):
    """Backward of a ResBlock: returns (dx, dtemb, grads), grads named prefix + weight name.

    out = conv2(silu(norm2(h2))) + skip(x), h2 = conv1(silu(norm1(x))) + time_proj(temb);
    the gradient reaches x through both the main path and the skip (a 1x1
    conv, or the identity when in == out).
    """
    P = lambda name: params[prefix + name]  # noqa: E731
    g = {}
    da2, g["conv2.weight"], g["conv2.bias"] = conv2d_backward(dout, cache["a2"], P("conv2.weight"), 1, 1)
    dn2 = silu_backward(da2, cache["n2"])
    dh2, g["norm2.weight"], g["norm2.bias"] = group_norm_backward(dn2, cache["h2"], GROUPS, P("norm2.weight"))
    dproj = dh2.sum(axis=(2, 3))                                   # the broadcast over H, W
    dtemb, g["time_proj.weight"], g["time_proj.bias"] = linear_backward(dproj, cache["temb"],
                                                                         P("time_proj.weight"))
    da1, g["conv1.weight"], g["conv1.bias"] = conv2d_backward(dh2, cache["a1"], P("conv1.weight"), 1, 1)
    dn1 = silu_backward(da1, cache["n1"])
    dx, g["norm1.weight"], g["norm1.bias"] = group_norm_backward(dn1, cache["x"], GROUPS, P("norm1.weight"))
    if prefix + "skip.weight" in params:
        dx_skip, g["skip.weight"], g["skip.bias"] = conv2d_backward(dout, cache["x"], P("skip.weight"), 1, 0)
        dx = dx + dx_skip
    else:
        dx = dx + dout
    order = ["norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias", "time_proj.weight",
             "time_proj.bias", "norm2.weight", "norm2.bias", "conv2.weight", "conv2.bias",
             "skip.weight", "skip.bias"]
    return dx, dtemb, {prefix + k: g[k] for k in order if k in g}


# --------------------------------------------------------------------------
# SelfAttention
# --------------------------------------------------------------------------


def self_attention_forward_cache(x, params, prefix, heads=HEADS):
    """`reference.self_attention`, and its cache. `prefix` ends with a dot."""
    B, C, H, W = x.shape
    N, dh = H * W, C // heads
    P = lambda name: params[prefix + name]  # noqa: E731
    n = group_norm(x, GROUPS, P("norm.weight"), P("norm.bias"))
    qkv = conv2d(n, P("qkv.weight"), P("qkv.bias")).reshape(B, 3, heads, dh, N)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]                         # [B, heads, dh, N]
    attn = softmax(np.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(dh), axis=-1)  # n: query, m: key
    o = np.einsum("bhnm,bhdm->bhdn", attn, v).reshape(B, C, H, W)
    out = x + conv2d(o, P("proj.weight"), P("proj.bias"))
    return out, {"x": x, "n": n, "q": q, "k": k, "v": v, "attn": attn, "o": o}


def self_attention_backward(dout, cache, params, prefix, heads=HEADS):
    """Backward of SelfAttention: returns (dx, grads).

    Per head, with scores = q^T k / sqrt(dh) [N queries, N keys],
    attn = softmax over keys, o = v attn^T:
    d attn = do^T v, dv = do attn, d scores = softmax_backward(d attn, attn),
    dq = k d scores^T / sqrt(dh), dk = q d scores / sqrt(dh); then back through
    the 1x1 qkv conv and the GroupNorm; the residual adds dout to dx.
    """
    x, attn, q, k, v = cache["x"], cache["attn"], cache["q"], cache["k"], cache["v"]
    B, C, H, W = x.shape
    N, dh = H * W, C // heads
    P = lambda name: params[prefix + name]  # noqa: E731
    g = {}
    do, g["proj.weight"], g["proj.bias"] = conv2d_backward(dout, cache["o"], P("proj.weight"), 1, 0)
    do = do.reshape(B, heads, dh, N)
    dattn = np.einsum("bhdn,bhdm->bhnm", do, v)
    dv = np.einsum("bhnm,bhdn->bhdm", attn, do)
    dscores = softmax_backward(dattn, attn, axis=-1) / math.sqrt(dh)
    dq = np.einsum("bhnm,bhdm->bhdn", dscores, k)
    dk = np.einsum("bhnm,bhdn->bhdm", dscores, q)
    dqkv = np.stack([dq, dk, dv], axis=1).reshape(B, 3 * C, H, W)
    dn, g["qkv.weight"], g["qkv.bias"] = conv2d_backward(dqkv, cache["n"], P("qkv.weight"), 1, 0)
    dx, g["norm.weight"], g["norm.bias"] = group_norm_backward(dn, x, GROUPS, P("norm.weight"))
    order = ["norm.weight", "norm.bias", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    return dx + dout, {prefix + name: g[name] for name in order}


# --------------------------------------------------------------------------
# Down and up blocks
# --------------------------------------------------------------------------


def down_block_forward_cache(h, temb, params, i):
    """`reference.down_block` i: returns (downsampled h, skip s, cache)."""
    s, res_cache = res_block_forward_cache(h, temb, params, f"down_blocks.{i}.res.")
    pre = f"down_blocks.{i}.down."
    out = conv2d(s, params[pre + "weight"], params[pre + "bias"], stride=2, padding=1)
    return out, s, {"res": res_cache, "s": s}


def down_block_backward(dout, dskip, cache, params, i):
    """Backward of DownBlock i: returns (dh, dtemb, grads).

    `dskip` is the gradient reaching the pushed skip s from the up block that
    concatenates it; s also feeds the stride-2 down conv, so dL/ds is the sum.
    """
    pre = f"down_blocks.{i}.down."
    ds, dw, db = conv2d_backward(dout, cache["s"], params[pre + "weight"], 2, 1)
    dh, dtemb, grads = res_block_backward(ds + dskip, cache["res"], params, f"down_blocks.{i}.res.")
    grads[pre + "weight"], grads[pre + "bias"] = dw, db
    return dh, dtemb, grads


def up_block_forward_cache(h, skip, temb, params, j):
    """`reference.up_block` j (upsample, concat [upsampled, skip], ResBlock) and its cache."""
    pre = f"up_blocks.{j}.up."
    u = conv_transpose2d(h, params[pre + "weight"], params[pre + "bias"], stride=2, padding=1)
    out, res_cache = res_block_forward_cache(np.concatenate([u, skip], axis=1), temb, params,
                                             f"up_blocks.{j}.res.")
    return out, {"h": h, "res": res_cache, "up_channels": u.shape[1]}


def up_block_backward(dout, cache, params, j):
    """Backward of UpBlock j: returns (dh, dskip, dtemb, grads).

    The concatenation's gradient splits on the channel axis: the first
    channels go to the upsampled u (then through the transposed conv), the
    rest to the skip.
    """
    dcat, dtemb, res_grads = res_block_backward(dout, cache["res"], params, f"up_blocks.{j}.res.")
    cu = cache["up_channels"]
    du, dskip = dcat[:, :cu], dcat[:, cu:]
    pre = f"up_blocks.{j}.up."
    dh, dw, db = conv_transpose2d_backward(du, cache["h"], params[pre + "weight"], 2, 1)
    grads = {pre + "weight": dw, pre + "bias": db, **res_grads}
    return dh, np.ascontiguousarray(dskip), dtemb, grads


# --------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------


def _check_inputs(params, x, t, hidden_dims, time_dim):
    """The checks of `reference.forward`; returns (float64 params, float64 x, t, channels, d, T)."""
    channels, d, T = infer_config(params)
    if hidden_dims is not None and [int(v) for v in hidden_dims] != d:
        raise ValueError(f"hidden_dims {list(hidden_dims)} disagree with the weights {d}")
    if time_dim is not None and int(time_dim) != T:
        raise ValueError(f"time_dim {time_dim} disagrees with the weights {T}")
    L = len(d) - 1
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t)
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"x must be [B, {channels}, H, W], got {x.shape}")
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be [B] = [{x.shape[0]}], got {t.shape}")
    if t.size and t.dtype.kind not in "iu":
        raise TypeError(f"t must hold integers, got dtype {t.dtype}")
    if t.size and t.min() < 0:
        raise ValueError("timesteps must be >= 0")
    if x.shape[2] <= 0 or x.shape[3] <= 0 or x.shape[2] % (2 ** L) or x.shape[3] % (2 ** L):
        raise ValueError(f"H and W must be positive multiples of {2 ** L}")
    return p, x, t, channels, d, T


def forward_cache(params, x, t, hidden_dims=None, time_dim=None):
    """`reference.forward` in float64, and the cache `backward` needs: (out, cache)."""
    p, x, t, _, d, T = _check_inputs(params, x, t, hidden_dims, time_dim)
    L = len(d) - 1
    cache = {"L": L, "x": x}
    temb, cache["time_mlp"] = time_mlp_forward_cache(t, p, T)
    h = conv2d(x, p["init_conv.weight"], p["init_conv.bias"], padding=1)
    skips, cache["down"] = [], []
    for i in range(L):
        h, s, c = down_block_forward_cache(h, temb, p, i)
        skips.append(s)
        cache["down"].append(c)
    h, cache["res1"] = res_block_forward_cache(h, temb, p, "bottleneck.res1.")
    h, cache["attn"] = self_attention_forward_cache(h, p, "bottleneck.attn.")
    h, cache["res2"] = res_block_forward_cache(h, temb, p, "bottleneck.res2.")
    cache["up"] = []
    for j in range(L):
        h, c = up_block_forward_cache(h, skips[L - 1 - j], temb, p, j)   # the skip of level L-1-j
        cache["up"].append(c)
    n = group_norm(h, GROUPS, p["out_norm.weight"], p["out_norm.bias"])
    a = silu(n)
    out = conv2d(a, p["out_conv.weight"], p["out_conv.bias"], padding=1)
    cache.update(h_out=h, n_out=n, a_out=a)
    return out, cache


def backward(dout, cache, params):
    """Gradients of every parameter from dL/d(prediction) [B, C, H, W], given
    `forward_cache`'s cache: a dict name -> float64 array, in `params`' order.

    The time embedding feeds every ResBlock's time_proj, so dL/dtemb is the
    sum over all ResBlocks; each pushed skip gets its gradient from the up
    block that concatenates it.
    """
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    L = cache["L"]
    grads = {}
    da, grads["out_conv.weight"], grads["out_conv.bias"] = conv2d_backward(
        dout, cache["a_out"], p["out_conv.weight"], 1, 1)
    dn = silu_backward(da, cache["n_out"])
    dh, grads["out_norm.weight"], grads["out_norm.bias"] = group_norm_backward(
        dn, cache["h_out"], GROUPS, p["out_norm.weight"])
    dtemb = 0.0
    dskips = [None] * L
    for j in reversed(range(L)):
        dh, dskips[L - 1 - j], dt, g = up_block_backward(dh, cache["up"][j], p, j)
        dtemb = dtemb + dt
        grads.update(g)
    dh, dt, g = res_block_backward(dh, cache["res2"], p, "bottleneck.res2.")
    dtemb = dtemb + dt
    grads.update(g)
    dh, g = self_attention_backward(dh, cache["attn"], p, "bottleneck.attn.")
    grads.update(g)
    dh, dt, g = res_block_backward(dh, cache["res1"], p, "bottleneck.res1.")
    dtemb = dtemb + dt
    grads.update(g)
    for i in reversed(range(L)):
        dh, dt, g = down_block_backward(dh, dskips[i], cache["down"][i], p, i)
        dtemb = dtemb + dt
        grads.update(g)
    _, grads["init_conv.weight"], grads["init_conv.bias"] = conv2d_backward(
        dh, cache["x"], p["init_conv.weight"], 1, 1)
    grads.update(time_mlp_backward(dtemb, cache["time_mlp"], p))
    if set(grads) != set(params):
        raise AssertionError(f"gradient names {sorted(set(grads) ^ set(params))} do not match the weights")
    return {name: grads[name] for name in params}


def mse_loss(pred, target):
    """PyTorch's F.mse_loss(pred, target) (reduction "mean"): mean((pred - target)**2)
    over every element, in float64, as a Python float."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    return float(np.mean(diff * diff))


def mse_loss_backward(pred, target):
    """d mse_loss / d pred = 2 (pred - target) / numel, float64."""
    pred = np.asarray(pred, dtype=np.float64)
    return 2.0 * (pred - np.asarray(target, dtype=np.float64)) / pred.size


def loss_and_grad(params, x, t, target, hidden_dims=None, time_dim=None):
    """The training loss and its gradient, in float64: (loss, grads).

    loss = mean((forward(params, x, t) - target)**2) over every element (docs/model.md
    section 5, PyTorch's F.mse_loss); grads is a dict name -> float64 array
    with the same keys, key order and shapes as `params` (the state_dict's),
    holding d loss / d weight. `params`, x, t are what `reference.forward`
    takes (any float dtype, computed in float64); target has x's shape.
    """
    x = np.asarray(x)
    target = np.asarray(target, dtype=np.float64)
    if x.ndim == 4 and x.shape[0] < 1:
        raise ValueError("x must hold at least one image (the mean of nothing is undefined)")
    if target.shape != x.shape:
        raise ValueError(f"target must have x's shape {x.shape}, got {target.shape}")
    pred, cache = forward_cache(params, x, t, hidden_dims, time_dim)
    return mse_loss(pred, target), backward(mse_loss_backward(pred, target), cache, params)


# --------------------------------------------------------------------------
# The training step (docs/model.md section 5)
# --------------------------------------------------------------------------


def global_grad_norm(grads):
    """sqrt(sum of g**2 over every entry of every tensor), float64."""
    return math.sqrt(sum(float(np.sum(np.asarray(g, dtype=np.float64) ** 2)) for g in grads.values()))


def clip_grad_norm(grads, max_norm):
    """PyTorch's torch.nn.utils.clip_grad_norm_(parameters, max_norm) (L2 norm):
    returns (clipped grads, n) with n = sqrt(sum g**2) over all parameters.

    As docs/model.md states it: if n > max_norm every gradient is multiplied by
    max_norm / (n + 1e-6), else they are returned unchanged (PyTorch multiplies
    by min(1, max_norm / (n + 1e-6)), which differs only for n within 1e-6 of
    max_norm). The input dict is not modified.
    """
    n = global_grad_norm(grads)
    if n > max_norm:
        scale = max_norm / (n + 1e-6)
        return {k: np.asarray(g, dtype=np.float64) * scale for k, g in grads.items()}, n
    return {k: np.asarray(g, dtype=np.float64).copy() for k, g in grads.items()}, n


def adamw_step(params, grads, m, v, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    """One step of PyTorch's torch.optim.AdamW (decoupled weight decay, no amsgrad),
    applied to every parameter, in float64: returns (new params, new m, new v).

    `step` is k, 1-based (the k-th update). Per entry:
    w <- w - lr * wd * w; m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g**2;
    w <- w - lr * (m / (1 - b1**k)) / (sqrt(v / (1 - b2**k)) + eps).
    The input dicts are not modified.
    """
    k = int(step)
    if k < 1:
        raise ValueError(f"step is 1-based, got {k}")
    b1, b2 = betas
    new_w, new_m, new_v = {}, {}, {}
    for name, w in params.items():
        w = np.asarray(w, dtype=np.float64)
        g = np.asarray(grads[name], dtype=np.float64)
        w = w - lr * weight_decay * w
        mk = b1 * np.asarray(m[name], dtype=np.float64) + (1 - b1) * g
        vk = b2 * np.asarray(v[name], dtype=np.float64) + (1 - b2) * g * g
        m_hat = mk / (1 - b1 ** k)
        v_hat = vk / (1 - b2 ** k)
        new_w[name] = w - lr * m_hat / (np.sqrt(v_hat) + eps)
        new_m[name], new_v[name] = mk, vk
    return new_w, new_m, new_v


def ema_update(ema, params, decay):
    """ema <- decay * ema + (1 - decay) * w for every tensor, float64 (a new dict)."""
    return {name: decay * np.asarray(e, dtype=np.float64) + (1 - decay) * np.asarray(params[name], dtype=np.float64)
            for name, e in ema.items()}


def init_train_state(params):
    """The state before the first step: AdamW moments m = v = 0, EMA = the weights (float64)."""
    return {
        "m": {k: np.zeros(np.shape(w), dtype=np.float64) for k, w in params.items()},
        "v": {k: np.zeros(np.shape(w), dtype=np.float64) for k, w in params.items()},
        "ema": {k: np.array(w, dtype=np.float64) for k, w in params.items()},
    }


def train_step_draw(seed, step, num_timesteps, batch, per_image, libm=True):
    """The t and noise of training step `step` (0-based) of a trainer seeded with `seed`
    (the definition of swiftunet_trainer_draw in swiftunet.h): (t int64 [batch],
    noise float32 [batch * per_image]).

    A SplitMix64 stream whose state is mix = the first output of SplitMix64
    seeded with seed ^ (step * 0xD1B54A32D192ED03 mod 2**64); from it,
    t[b] = the high 64 bits of the 128-bit product next() * num_timesteps for
    b in order (so t is uniform on [0, num_timesteps)); then the noise from the
    Gaussian generator of docs/sampling.md continuing the same stream (pairs of
    draws, Box-Muller in float64, each value rounded to float32, C order
    z0, z1, ...; an odd count drops the last z1).
    ``libm=True`` computes log/cos/sin with Python's math module (the C
    library, what Swift calls: bit for bit); False uses numpy's (may differ by
    one float32 ulp, rarely).
    """
    seed, step, T = int(seed) & _MASK64, int(step), int(num_timesteps)
    batch, per_image = int(batch), int(per_image)
    mix = int(splitmix64(seed ^ ((step * _DRAW_STEP_MULTIPLIER) & _MASK64), 1)[0])
    t = np.array([(int(u) * T) >> 64 for u in splitmix64(mix, batch)], dtype=np.int64)
    stream = GaussianStream(mix, libm=libm)
    stream.draws = batch                  # the noise continues after the `batch` draws of t
    noise = stream.normal(batch * per_image)
    return t, noise


def q_sample64(x0, t, noise, alphas_cumprod_):
    """The forward process in float64: x_t = sqrt(ab[t]) x0 + sqrt(1 - ab[t]) noise,
    one t per image (the library rounds this to float32 once)."""
    ab = np.asarray(alphas_cumprod_, dtype=np.float64)[np.asarray(t, dtype=np.int64)]
    x0 = np.asarray(x0, dtype=np.float64)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return np.sqrt(ab).reshape(shape) * x0 + np.sqrt(1.0 - ab).reshape(shape) * np.asarray(noise, np.float64)


def train_step(params, state, x0, seed, step, schedule_alphas_cumprod, lr=1e-3, betas=(0.9, 0.999),
               eps=1e-8, weight_decay=1e-2, grad_clip=None, ema_decay=0.999, libm=True):
    """One training step (docs/model.md section 5, docs/training.md), float64: (loss, new params, new state).

    `state` is {"m", "v", "ema"} (dicts name -> array) or None for a fresh one
    (`init_train_state`); `step` is the 0-based index of this step: the draw
    is train_step_draw(seed, step, T, B, C*H*W) and AdamW's k is step + 1.
    In order: draw t and noise; x_t = q_sample64(x0, t, noise); loss and
    gradient of mean((model(x_t, t) - noise)**2); clip_grad_norm when
    grad_clip is not None; adamw_step; ema_update with the new weights.
    `schedule_alphas_cumprod`: alpha_bar [T] (e.g. swiftunet.NoiseSchedule's
    alphas_cumprod or reference.alphas_cumprod(betas)).
    The returned state also holds the step's "t", "noise", "grads" (after
    clipping) and "grad_norm" (before clipping), for the tests.
    """
    if state is None:
        state = init_train_state(params)
    ab = np.asarray(schedule_alphas_cumprod, dtype=np.float64)
    x0 = np.asarray(x0, dtype=np.float64)
    B = x0.shape[0]
    per_image = int(np.prod(x0.shape[1:]))
    t, noise = train_step_draw(seed, step, len(ab), B, per_image, libm=libm)
    noise = noise.reshape(x0.shape)
    x_t = q_sample64(x0, t, noise, ab)
    loss, grads = loss_and_grad(params, x_t, t, noise)
    norm = global_grad_norm(grads)
    if grad_clip is not None:
        grads, _ = clip_grad_norm(grads, grad_clip)
    new_params, m, v = adamw_step(params, grads, state["m"], state["v"], int(step) + 1, lr=lr, betas=betas,
                                  eps=eps, weight_decay=weight_decay)
    ema = ema_update(state["ema"], new_params, ema_decay)
    new_state = {"m": m, "v": v, "ema": ema, "t": t, "noise": noise, "grads": grads, "grad_norm": norm}
    return loss, new_params, new_state
