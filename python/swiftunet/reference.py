"""Pure-numpy reference of the swiftunet model (docs/model.md section 1).

This module is the oracle of the parity tests: the Swift forward pass must agree
with `forward` here to ``max|swift - ref| <= 1e-4 * max|ref|``. It computes in
float64 by default (any float dtype may be asked for), keeps one function per
layer, and depends on numpy and the standard library only.

It also defines the weight names and shapes (`param_specs`, docs/model.md section 2) and
the seeded default initialisation (`init_params`) that the Swift side
reproduces bit for bit.
"""

import math

import numpy as np

__all__ = [
    "param_specs",
    "init_params",
    "splitmix64",
    "uniform01",
    "time_embedding",
    "linear",
    "gelu",
    "silu",
    "conv2d",
    "conv_transpose2d",
    "group_norm",
    "softmax",
    "time_mlp",
    "res_block",
    "self_attention",
    "down_block",
    "up_block",
    "forward",
    "infer_config",
]

GROUPS = 8          # GroupNorm groups everywhere
HEADS = 4           # attention heads in the bottleneck
EPS = 1e-5          # GroupNorm epsilon

# --------------------------------------------------------------------------
# Weight names and shapes (docs/model.md section 2)
# --------------------------------------------------------------------------


def _check_config(image_size, channels, hidden_dims, time_dim):
    d = [int(v) for v in hidden_dims]
    if len(d) < 2:
        raise ValueError("hidden_dims needs at least 2 entries")
    if any(v <= 0 or v % 8 for v in d):
        raise ValueError("every hidden_dims entry must be a positive multiple of 8")
    if d[-1] % HEADS:
        raise ValueError("hidden_dims[-1] must be divisible by 4")
    if int(channels) < 1:
        raise ValueError("channels must be >= 1")
    if int(time_dim) < 4 or int(time_dim) % 2:
        raise ValueError("time_dim must be even and >= 4")
    L = len(d) - 1
    if image_size is not None and (int(image_size) <= 0 or int(image_size) % (2 ** L)):
        raise ValueError("image_size must be a positive multiple of 2**L")
    return int(channels), d, int(time_dim)


def _res_block_layers(prefix, cin, cout, T):
    layers = [
        (prefix + "norm1", "norm", (cin,)),
        (prefix + "conv1", "conv", (cout, cin, 3, 3)),
        (prefix + "time_proj", "linear", (cout, T)),
        (prefix + "norm2", "norm", (cout,)),
        (prefix + "conv2", "conv", (cout, cout, 3, 3)),
    ]
    if cin != cout:
        layers.append((prefix + "skip", "conv", (cout, cin, 1, 1)))
    return layers


def _layers(channels, hidden_dims, time_dim):
    """The model's layers in state_dict order: (prefix, kind, weight shape).

    kind is one of "linear", "conv", "convT", "norm". Every layer has a
    `.weight` of the given shape and a `.bias` of its output size.
    """
    C, d, T = channels, list(hidden_dims), time_dim
    L = len(d) - 1
    layers = [
        ("time_mlp.fc1", "linear", (4 * T, T)),
        ("time_mlp.fc2", "linear", (T, 4 * T)),
        ("init_conv", "conv", (d[0], C, 3, 3)),
    ]
    for i in range(L):
        layers += _res_block_layers(f"down_blocks.{i}.res.", d[i], d[i + 1], T)
        layers.append((f"down_blocks.{i}.down", "conv", (d[i + 1], d[i + 1], 4, 4)))
    dL = d[L]
    layers += _res_block_layers("bottleneck.res1.", dL, dL, T)
    layers += [
        ("bottleneck.attn.norm", "norm", (dL,)),
        ("bottleneck.attn.qkv", "conv", (3 * dL, dL, 1, 1)),
        ("bottleneck.attn.proj", "conv", (dL, dL, 1, 1)),
    ]
    layers += _res_block_layers("bottleneck.res2.", dL, dL, T)
    for j in range(L):
        i = L - 1 - j
        layers.append((f"up_blocks.{j}.up", "convT", (d[i + 1], d[i + 1], 4, 4)))
        layers += _res_block_layers(f"up_blocks.{j}.res.", 2 * d[i + 1], d[i], T)
    layers += [
        ("out_norm", "norm", (d[0],)),
        ("out_conv", "conv", (C, d[0], 3, 3)),
    ]
    return layers


def _bias_size(kind, wshape):
    # ConvTranspose2d weights are [in, out, kh, kw]; all others put out first.
    return wshape[1] if kind == "convT" else wshape[0]


def _fan_in(kind, wshape):
    """PyTorch's fan_in: dim 1 times the receptive field (for every kind)."""
    if kind == "linear":
        return wshape[1]
    # Conv2d [out, in, kh, kw] -> in*kh*kw; ConvTranspose2d [in, out, kh, kw]
    # -> out*kh*kw (PyTorch's convention: dim 1 times receptive field).
    return wshape[1] * wshape[2] * wshape[3]


def param_specs(image_size, channels, hidden_dims=(32, 64, 128), time_dim=128):
    """[(name, shape), ...] of the state_dict, in docs/model.md section 2 order."""
    C, d, T = _check_config(image_size, channels, hidden_dims, time_dim)
    specs = []
    for prefix, kind, wshape in _layers(C, d, T):
        specs.append((prefix + ".weight", tuple(wshape)))
        specs.append((prefix + ".bias", (_bias_size(kind, wshape),)))
    return specs


# --------------------------------------------------------------------------
# Seeded initialisation
# --------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(seed, n):
    """The first `n` outputs of SplitMix64 started at state `seed` (uint64).

    state_k = seed + k*0x9E3779B97F4A7C15 (mod 2**64) for k = 1..n, then the
    usual mixing; numpy's uint64 arithmetic wraps, which is the mod 2**64.
    """
    n = int(n)
    seed = np.uint64(int(seed) & _MASK64)
    z = np.arange(1, n + 1, dtype=np.uint64)
    z *= _GOLDEN                                # in place: big streams stay cheap
    z += seed
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def uniform01(seed, n):
    """float32 uniforms in [0, 1): float32(next() >> 40) * 2**-24 (exact)."""
    top24 = splitmix64(seed, n) >> np.uint64(40)
    return top24.astype(np.float32) * np.float32(2.0 ** -24)


def init_params(image_size, channels, hidden_dims=(32, 64, 128), time_dim=128, seed=0):
    """The seeded default initialisation, as an ordered dict of float32 arrays.

    One SplitMix64 stream (state = seed) is consumed in state_dict order: for
    every conv/linear weight and then its bias, C order,
    v = (u*2 - 1) * float32(1/sqrt(fan_in)) in float32 arithmetic.
    GroupNorm weights are 1 and biases 0, and consume no draws.
    """
    C, d, T = _check_config(image_size, channels, hidden_dims, time_dim)
    layers = _layers(C, d, T)
    total = 0
    for _, kind, wshape in layers:
        if kind != "norm":
            total += int(np.prod(wshape)) + _bias_size(kind, wshape)
    u = uniform01(seed, total)
    signed = u * np.float32(2) - np.float32(1)          # exact in float32

    params = {}
    pos = 0
    for prefix, kind, wshape in layers:
        bshape = (_bias_size(kind, wshape),)
        if kind == "norm":
            params[prefix + ".weight"] = np.ones(wshape, dtype=np.float32)
            params[prefix + ".bias"] = np.zeros(bshape, dtype=np.float32)
            continue
        bound = np.float32(1.0 / math.sqrt(_fan_in(kind, wshape)))
        for name, shape in ((".weight", wshape), (".bias", bshape)):
            size = int(np.prod(shape))
            vals = signed[pos:pos + size] * bound            # float32 * float32
            params[prefix + name] = vals.reshape(shape).astype(np.float32, copy=True)
            pos += size
    assert pos == total
    return params


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------


def time_embedding(t, T, dtype=np.float64):
    """Sinusoidal encoding [B, T]: sin(t*freq) then cos(t*freq).

    a, sin and cos are computed in float64 and rounded to float32 once; the
    result is then cast to `dtype`.
    """
    t = np.asarray(t)
    if t.ndim != 1:
        raise ValueError("t must be one-dimensional")
    half = T // 2
    i = np.arange(half, dtype=np.float64)
    freq = np.exp(-math.log(10000.0) * i / (half - 1))
    a = t.astype(np.float64)[:, None] * freq[None, :]
    enc = np.concatenate([np.sin(a), np.cos(a)], axis=1).astype(np.float32)
    return enc.astype(dtype)


def linear(x, w, b):
    """PyTorch Linear: x [B, in], w [out, in], b [out] -> [B, out]."""
    return x @ w.T + b


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x):
    """Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2)))."""
    x = np.asarray(x)
    e = _erf(x.astype(np.float64) / math.sqrt(2.0)).astype(x.dtype)
    return 0.5 * x * (1 + e)


def silu(x):
    """x * sigmoid(x), with sigmoid(x) = exp(-log(1 + exp(-x))) (no overflow)."""
    return x * np.exp(-np.logaddexp(0, -x))


def conv2d(x, w, b, stride=1, padding=0):
    """PyTorch Conv2d (cross-correlation): x [B,Cin,H,W], w [Cout,Cin,kh,kw]."""
    B, Cin, H, W = x.shape
    Cout, Cin_w, kh, kw = w.shape
    assert Cin == Cin_w, (x.shape, w.shape)
    s, p = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    Ho = (H + 2 * p - kh) // s + 1
    Wo = (W + 2 * p - kw) // s + 1
    out = np.zeros((B, Cout, Ho, Wo), dtype=np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            # input pixels seen by kernel tap (i, j) for every output pixel
            xs = xp[:, :, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s]
            out += np.einsum("oc,bchw->bohw", w[:, :, i, j], xs, optimize=True)
    if b is not None:
        out += b[None, :, None, None]
    return out


def conv_transpose2d(x, w, b, stride=1, padding=0):
    """PyTorch ConvTranspose2d: x [B,Cin,H,W], w [Cin,Cout,kh,kw].

    Input pixel (h, w) adds x * w[:, :, i, j] to output pixel
    (h*stride - padding + i, w*stride - padding + j); output size
    (H-1)*stride - 2*padding + kh.
    """
    B, Cin, H, W = x.shape
    Cin_w, Cout, kh, kw = w.shape
    assert Cin == Cin_w, (x.shape, w.shape)
    s, p = stride, padding
    Hf, Wf = (H - 1) * s + kh, (W - 1) * s + kw      # before cropping the padding
    full = np.zeros((B, Cout, Hf, Wf), dtype=np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            full[:, :, i:i + s * (H - 1) + 1:s, j:j + s * (W - 1) + 1:s] += np.einsum(
                "co,bchw->bohw", w[:, :, i, j], x, optimize=True)
    out = np.ascontiguousarray(full[:, :, p:Hf - p, p:Wf - p])
    if b is not None:
        out += b[None, :, None, None]
    return out


def group_norm(x, groups, w, b, eps=EPS):
    """GroupNorm: biased variance over (channels of the group, H, W) per sample."""
    B, C, H, W = x.shape
    g = x.reshape(B, groups, (C // groups) * H * W)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(B, C, H, W)
    return y * w[None, :, None, None] + b[None, :, None, None]


def res_block(x, temb, params, prefix):
    """ResBlock(in, out); `prefix` ends with a dot, e.g. "bottleneck.res1."."""
    P = lambda name: params[prefix + name]  # noqa: E731
    h = silu(group_norm(x, GROUPS, P("norm1.weight"), P("norm1.bias")))
    h = conv2d(h, P("conv1.weight"), P("conv1.bias"), padding=1)
    h = h + linear(temb, P("time_proj.weight"), P("time_proj.bias"))[:, :, None, None]
    h = silu(group_norm(h, GROUPS, P("norm2.weight"), P("norm2.bias")))
    h = conv2d(h, P("conv2.weight"), P("conv2.bias"), padding=1)
    if prefix + "skip.weight" in params:
        skip = conv2d(x, P("skip.weight"), P("skip.bias"))
    else:
        skip = x
    return h + skip


def softmax(z, axis=-1):
    """Softmax with the max subtracted."""
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def self_attention(x, params, prefix, heads=HEADS):
    """SelfAttention(ch, heads); `prefix` ends with a dot, e.g. "bottleneck.attn."."""
    B, C, H, W = x.shape
    N, dh = H * W, C // heads
    P = lambda name: params[prefix + name]  # noqa: E731
    n = group_norm(x, GROUPS, P("norm.weight"), P("norm.bias"))
    qkv = conv2d(n, P("qkv.weight"), P("qkv.bias"))            # [B, 3C, H, W]
    qkv = qkv.reshape(B, 3, heads, dh, N)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]                 # [B, heads, dh, N]
    scores = np.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(dh)  # n: query, m: key
    attn = softmax(scores, axis=-1)
    o = np.einsum("bhnm,bhdm->bhdn", attn, v).reshape(B, C, H, W)
    return x + conv2d(o, P("proj.weight"), P("proj.bias"))


def down_block(h, temb, params, i):
    """DownBlock i: returns (downsampled h, skip s)."""
    s = res_block(h, temb, params, f"down_blocks.{i}.res.")
    pre = f"down_blocks.{i}.down."
    return conv2d(s, params[pre + "weight"], params[pre + "bias"], stride=2, padding=1), s


def up_block(h, skip, temb, params, j):
    """UpBlock j: upsample, concat [upsampled, skip] on channels, ResBlock."""
    pre = f"up_blocks.{j}.up."
    u = conv_transpose2d(h, params[pre + "weight"], params[pre + "bias"], stride=2, padding=1)
    return res_block(np.concatenate([u, skip], axis=1), temb, params, f"up_blocks.{j}.res.")


def time_mlp(t, params, T, dtype=np.float64):
    """Sinusoid -> fc1 -> GELU -> fc2: [B, T]."""
    e = time_embedding(t, T, dtype)
    e = gelu(linear(e, params["time_mlp.fc1.weight"], params["time_mlp.fc1.bias"]))
    return linear(e, params["time_mlp.fc2.weight"], params["time_mlp.fc2.bias"])


def infer_config(params):
    """(channels, hidden_dims, time_dim) from a state_dict's shapes."""
    w = params["init_conv.weight"]
    channels, d = int(w.shape[1]), [int(w.shape[0])]
    i = 0
    while f"down_blocks.{i}.down.weight" in params:
        d.append(int(params[f"down_blocks.{i}.down.weight"].shape[0]))
        i += 1
    T = int(params["time_mlp.fc1.weight"].shape[1])
    return channels, d, T


def forward(params, x, t, hidden_dims=None, time_dim=None, dtype=np.float64):
    """The model's forward pass: noise prediction [B, C, H, W] in `dtype`."""
    channels, d, T = infer_config(params)
    if hidden_dims is not None and [int(v) for v in hidden_dims] != d:
        raise ValueError(f"hidden_dims {list(hidden_dims)} disagree with the weights {d}")
    if time_dim is not None and int(time_dim) != T:
        raise ValueError(f"time_dim {time_dim} disagrees with the weights {T}")
    L = len(d) - 1
    p = {k: np.asarray(v, dtype=dtype) for k, v in params.items()}
    x = np.asarray(x, dtype=dtype)
    t = np.asarray(t)
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"x must be [B, {channels}, H, W], got {x.shape}")
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be [B] = [{x.shape[0]}], got {t.shape}")
    if t.size and t.dtype.kind not in "iu":
        raise TypeError(f"t must hold integers, got dtype {t.dtype}")
    if t.size and t.min() < 0:
        raise ValueError("timesteps must be >= 0")
    if x.shape[2] % (2 ** L) or x.shape[3] % (2 ** L) or x.shape[2] <= 0 or x.shape[3] <= 0:
        raise ValueError(f"H and W must be positive multiples of {2 ** L}")

    temb = time_mlp(t, p, T, dtype)
    h = conv2d(x, p["init_conv.weight"], p["init_conv.bias"], padding=1)
    skips = []
    for i in range(L):
        h, s = down_block(h, temb, p, i)
        skips.append(s)
    h = res_block(h, temb, p, "bottleneck.res1.")
    h = self_attention(h, p, "bottleneck.attn.")
    h = res_block(h, temb, p, "bottleneck.res2.")
    for j in range(L):
        h = up_block(h, skips[L - 1 - j], temb, p, j)
    h = silu(group_norm(h, GROUPS, p["out_norm.weight"], p["out_norm.bias"]))
    out = conv2d(h, p["out_conv.weight"], p["out_conv.bias"], padding=1)
    return np.ascontiguousarray(out, dtype=dtype)


# The sampling twins (schedules, randn, DDIM, DDPM) live beside this file. When
# this module is loaded by path rather than as part of the package, load them
# the same way so the reference stays importable on its own.
if __package__:
    from .reference_sampling import *  # noqa: E402,F401,F403
else:  # pragma: no cover - exercised by test_reference.py loading by path
    import importlib.util as _importlib_util
    import os as _os

    _spec = _importlib_util.spec_from_file_location(
        "_swiftunet_reference_sampling",
        _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "reference_sampling.py"))
    _sampling = _importlib_util.module_from_spec(_spec)
    _spec.loader.exec_module(_sampling)
    globals().update({k: getattr(_sampling, k) for k in _sampling.__all__})


# The training twins (the backward of every layer, loss_and_grad, clipping,
# AdamW, EMA, the training step) live in reference_training.py and are reached
# as reference.<name> on first use: importing them here eagerly would be
# circular, since they are built on this module.
def __getattr__(name):
    if __package__:
        from . import reference_training
        if name in reference_training.__all__:
            return getattr(reference_training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
