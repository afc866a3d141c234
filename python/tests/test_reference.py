"""Tests of the pure-numpy reference itself (python/swiftunet/reference.py).

The reference is the oracle of the parity tests, so its layers are checked here
against direct, loop-level definitions. These tests need no compiled extension.
"""

import importlib.util
import math
import os
import statistics
import sys
import warnings

import numpy as np
import pytest


def _load_reference():
    """The repository's reference.py, whether or not swiftunet is installed/built."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        os.pardir, "swiftunet", "reference.py")
    if os.path.exists(path):
        name = "_swiftunet_reference_under_test"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    from swiftunet import reference  # installed package, tests run elsewhere
    return reference


ref = _load_reference()
RNG = np.random.default_rng(20240601)


# ----------------------------------------------------------------------------
# direct (loop) definitions
# ----------------------------------------------------------------------------

def naive_conv2d(x, w, b, stride, padding):
    B, Cin, H, W = x.shape
    Cout, _, kh, kw = w.shape
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    out = np.zeros((B, Cout, Ho, Wo))
    for n in range(B):
        for o in range(Cout):
            for y in range(Ho):
                for xx in range(Wo):
                    acc = 0.0 if b is None else float(b[o])
                    for c in range(Cin):
                        for i in range(kh):
                            for j in range(kw):
                                yy = y * stride - padding + i
                                xi = xx * stride - padding + j
                                if 0 <= yy < H and 0 <= xi < W:
                                    acc += float(x[n, c, yy, xi]) * float(w[o, c, i, j])
                    out[n, o, y, xx] = acc
    return out


def naive_conv_transpose2d(x, w, b, stride, padding):
    """Scatter definition: every input pixel adds x * kernel to the output."""
    B, Cin, H, W = x.shape
    _, Cout, kh, kw = w.shape
    Ho = (H - 1) * stride - 2 * padding + kh
    Wo = (W - 1) * stride - 2 * padding + kw
    out = np.zeros((B, Cout, Ho, Wo))
    for n in range(B):
        for c in range(Cin):
            for y in range(H):
                for xx in range(W):
                    for o in range(Cout):
                        for i in range(kh):
                            for j in range(kw):
                                oy = y * stride - padding + i
                                ox = xx * stride - padding + j
                                if 0 <= oy < Ho and 0 <= ox < Wo:
                                    out[n, o, oy, ox] += float(x[n, c, y, xx]) * float(w[c, o, i, j])
    if b is not None:
        out += np.asarray(b)[None, :, None, None]
    return out


def py_splitmix64_stream(seed):
    M = (1 << 64) - 1
    state = seed & M
    while True:
        state = (state + 0x9E3779B97F4A7C15) & M
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        yield z ^ (z >> 31)


def py_splitmix64(seed, n):
    stream = py_splitmix64_stream(seed)
    return [next(stream) for _ in range(n)]


# ----------------------------------------------------------------------------
# conv2d / conv_transpose2d
# ----------------------------------------------------------------------------

CONV_CASES = [(k, s, p) for k in (1, 3, 4) for s in (1, 2) for p in (0, 1)]


@pytest.mark.parametrize("k,stride,padding", CONV_CASES)
def test_conv2d_matches_loops(k, stride, padding):
    x = RNG.standard_normal((2, 3, 7, 6))
    w = RNG.standard_normal((4, 3, k, k))
    b = RNG.standard_normal(4)
    got = ref.conv2d(x, w, b, stride=stride, padding=padding)
    want = naive_conv2d(x, w, b, stride, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv2d_no_bias_and_shapes():
    x = RNG.standard_normal((1, 2, 8, 8))
    w = RNG.standard_normal((5, 2, 4, 4))
    y = ref.conv2d(x, w, None, stride=2, padding=1)
    assert y.shape == (1, 5, 4, 4)               # the down-sampling conv halves H, W
    np.testing.assert_allclose(y, naive_conv2d(x, w, None, 2, 1), rtol=1e-12, atol=1e-12)


def test_conv2d_is_cross_correlation_not_convolution():
    # one input pixel, an asymmetric kernel: the output must be the kernel flipped
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0
    w = np.arange(9.0).reshape(1, 1, 3, 3)
    y = ref.conv2d(x, w, None, padding=1)
    np.testing.assert_array_equal(y[0, 0], w[0, 0, ::-1, ::-1])


@pytest.mark.parametrize("k,stride,padding", [c for c in CONV_CASES if not (c[0] == 1 and c[2] == 1)])
def test_conv_transpose2d_matches_scatter(k, stride, padding):
    x = RNG.standard_normal((2, 3, 5, 4))
    w = RNG.standard_normal((3, 2, k, k))        # [in, out, kh, kw]
    b = RNG.standard_normal(2)
    got = ref.conv_transpose2d(x, w, b, stride=stride, padding=padding)
    want = naive_conv_transpose2d(x, w, b, stride, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv_transpose2d_k1_padding1_crops():
    x = RNG.standard_normal((1, 2, 5, 4))
    w = RNG.standard_normal((2, 3, 1, 1))
    got = ref.conv_transpose2d(x, w, None, stride=1, padding=1)
    assert got.shape == (1, 3, 3, 2)
    np.testing.assert_allclose(got, naive_conv_transpose2d(x, w, None, 1, 1), rtol=1e-12, atol=1e-12)


def test_conv_transpose2d_upsampling_doubles():
    x = RNG.standard_normal((2, 4, 3, 5))
    w = RNG.standard_normal((4, 4, 4, 4))
    y = ref.conv_transpose2d(x, w, RNG.standard_normal(4), stride=2, padding=1)
    assert y.shape == (2, 4, 6, 10)


@pytest.mark.parametrize("k,stride,padding", CONV_CASES)
def test_conv_transpose_is_adjoint_of_conv(k, stride, padding):
    # <conv(x), y> == <x, conv_transpose(y)> with the same weight tensor
    H = W = None
    for n in range(6, 12):                      # sizes where the shapes round-trip
        if (n + 2 * padding - k) % stride == 0 and n + 2 * padding >= k:
            H = n if H is None else H
            W = n if n != H else W
    W = W or H
    x = RNG.standard_normal((2, 3, H, W))
    w = RNG.standard_normal((4, 3, k, k))        # conv: [out=4, in=3]; convT: [in=4, out=3]
    cx = ref.conv2d(x, w, None, stride=stride, padding=padding)
    y = RNG.standard_normal(cx.shape)
    ty = ref.conv_transpose2d(y, w, None, stride=stride, padding=padding)
    assert ty.shape == x.shape
    lhs, rhs = float(np.sum(cx * y)), float(np.sum(x * ty))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


# ----------------------------------------------------------------------------
# group_norm, activations, linear, softmax
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("C,groups", [(8, 8), (16, 8), (24, 8), (4, 2)])
def test_group_norm_by_hand(C, groups):
    B, H, W = 2, 3, 5
    x = RNG.standard_normal((B, C, H, W)) * 3 + 1.5
    w = RNG.uniform(0.5, 1.5, C)
    b = RNG.uniform(-0.5, 0.5, C)
    got = ref.group_norm(x, groups, w, b, eps=1e-5)
    cpg = C // groups
    for n in range(B):
        for g in range(groups):
            vals = [float(v) for v in x[n, g * cpg:(g + 1) * cpg].ravel()]
            mean = statistics.fmean(vals)
            var = statistics.pvariance(vals, mean)          # biased
            for c in range(g * cpg, (g + 1) * cpg):
                want = (x[n, c] - mean) / math.sqrt(var + 1e-5) * w[c] + b[c]
                np.testing.assert_allclose(got[n, c], want, rtol=1e-11, atol=1e-11)


def test_group_norm_eps_matters_for_constant_groups():
    x = np.full((1, 8, 2, 2), 3.0)
    x[0, 0] = [[0.0, 0.0], [0.0, 2e-3]]
    y = ref.group_norm(x, 8, np.ones(8), np.zeros(8))
    np.testing.assert_array_equal(y[0, 1:], 0.0)
    # var = 3/16 * 4e-6 = 7.5e-7; with eps 1e-5 the normalised max is 1.5e-3/sqrt(1.075e-5)
    assert y[0, 0, 1, 1] == pytest.approx(1.5e-3 / math.sqrt(7.5e-7 + 1e-5), rel=1e-12)


def test_gelu_is_exact_erf_form():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(ref.gelu(x), want, rtol=0, atol=1e-15)
    assert ref.gelu(np.array([1.0]))[0] == pytest.approx(0.8413447460685429, abs=1e-15)
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    assert np.max(np.abs(tanh_form - ref.gelu(x))) > 1e-4   # not the tanh approximation
    assert ref.gelu(np.zeros((0, 5))).shape == (0, 5)


def test_silu_values_and_no_overflow():
    x = np.array([-1000.0, -40.0, -1.0, 0.0, 1.0, 40.0, 1000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ref.silu(x)
    want = [v / (1 + math.exp(-v)) if v > -700 else 0.0 for v in x]
    np.testing.assert_allclose(y, want, rtol=1e-14, atol=1e-300)


def test_linear_and_softmax():
    x = RNG.standard_normal((3, 5))
    w = RNG.standard_normal((4, 5))
    b = RNG.standard_normal(4)
    want = [[sum(x[n, i] * w[o, i] for i in range(5)) + b[o] for o in range(4)] for n in range(3)]
    np.testing.assert_allclose(ref.linear(x, w, b), want, rtol=1e-12, atol=1e-12)
    z = np.array([[1000.0, 1001.0, 999.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = ref.softmax(z)
    e = [math.exp(-1), 1.0, math.exp(-2)]
    np.testing.assert_allclose(s[0], np.array(e) / sum(e), rtol=1e-14)


# ----------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------

def test_self_attention_matches_position_loop():
    B, C, H, W, heads = 2, 16, 3, 4, 4
    dh, N = C // heads, H * W
    pre = "blk.attn."
    p = {
        pre + "norm.weight": RNG.uniform(0.5, 1.5, C),
        pre + "norm.bias": RNG.uniform(-0.5, 0.5, C),
        pre + "qkv.weight": RNG.standard_normal((3 * C, C, 1, 1)) * 0.5,
        pre + "qkv.bias": RNG.standard_normal(3 * C) * 0.1,
        pre + "proj.weight": RNG.standard_normal((C, C, 1, 1)) * 0.5,
        pre + "proj.bias": RNG.standard_normal(C) * 0.1,
    }
    x = RNG.standard_normal((B, C, H, W))
    got = ref.self_attention(x, p, pre, heads=heads)

    n = ref.group_norm(x, 8, p[pre + "norm.weight"], p[pre + "norm.bias"])
    wq = p[pre + "qkv.weight"][:, :, 0, 0]
    wp = p[pre + "proj.weight"][:, :, 0, 0]
    want = np.empty_like(x)
    for b in range(B):
        feats = n[b].reshape(C, N)                           # position index = y*W + x
        qkv = wq @ feats + p[pre + "qkv.bias"][:, None]     # [3C, N]
        o = np.zeros((C, N))
        for h in range(heads):
            q = qkv[h * dh:(h + 1) * dh]
            k = qkv[C + h * dh:C + (h + 1) * dh]
            v = qkv[2 * C + h * dh:2 * C + (h + 1) * dh]
            for i in range(N):                               # query position
                scores = [sum(q[d, i] * k[d, j] for d in range(dh)) / math.sqrt(dh) for j in range(N)]
                mx = max(scores)
                e = [math.exp(s - mx) for s in scores]
                tot = sum(e)
                for d in range(dh):
                    o[h * dh + d, i] = sum(e[j] / tot * v[d, j] for j in range(N))
        out = wp @ o + p[pre + "proj.bias"][:, None]
        want[b] = x[b] + out.reshape(C, H, W)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


# ----------------------------------------------------------------------------
# time embedding
# ----------------------------------------------------------------------------

def test_time_embedding_layout():
    T = 32
    t = np.array([0, 1, 7, 999])
    e = ref.time_embedding(t, T)
    assert e.shape == (4, T) and e.dtype == np.float64
    half = T // 2
    np.testing.assert_array_equal(e[0, :half], 0.0)         # sin(0) first ...
    np.testing.assert_array_equal(e[0, half:], 1.0)         # ... then cos(0)
    for row, tv in enumerate(t):
        assert e[row, 0] == np.float32(math.sin(tv))        # freq[0] = 1
        assert e[row, half] == np.float32(math.cos(tv))
        last = tv * math.exp(-math.log(10000.0))            # freq[half-1] = 1e-4
        assert e[row, half - 1] == pytest.approx(float(np.float32(math.sin(last))), rel=1e-7)
        assert e[row, T - 1] == pytest.approx(float(np.float32(math.cos(last))), rel=1e-7)
    # rounded to float32 exactly once
    np.testing.assert_array_equal(e, e.astype(np.float32).astype(np.float64))
    a = 999 * np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
    np.testing.assert_array_equal(e[3], np.concatenate([np.sin(a), np.cos(a)]).astype(np.float32))


def test_time_embedding_any_int_dtype_and_empty():
    base = ref.time_embedding(np.array([0, 5, 127], dtype=np.int64), 8)
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.uint64):
        np.testing.assert_array_equal(ref.time_embedding(np.array([0, 5, 127]).astype(dt), 8), base)
    assert ref.time_embedding(np.zeros(0, dtype=np.int64), 8).shape == (0, 8)


# ----------------------------------------------------------------------------
# param_specs
# ----------------------------------------------------------------------------

def _res_names(prefix, cin, cout, T):
    out = [
        (prefix + "norm1.weight", (cin,)), (prefix + "norm1.bias", (cin,)),
        (prefix + "conv1.weight", (cout, cin, 3, 3)), (prefix + "conv1.bias", (cout,)),
        (prefix + "time_proj.weight", (cout, T)), (prefix + "time_proj.bias", (cout,)),
        (prefix + "norm2.weight", (cout,)), (prefix + "norm2.bias", (cout,)),
        (prefix + "conv2.weight", (cout, cout, 3, 3)), (prefix + "conv2.bias", (cout,)),
    ]
    if cin != cout:
        out += [(prefix + "skip.weight", (cout, cin, 1, 1)), (prefix + "skip.bias", (cout,))]
    return out


def test_param_specs_smallest_config_written_out():
    # C=1, hidden_dims [8, 16] (L = 1), T = 4, written out from docs/model.md section 2
    want = [
        ("time_mlp.fc1.weight", (16, 4)), ("time_mlp.fc1.bias", (16,)),
        ("time_mlp.fc2.weight", (4, 16)), ("time_mlp.fc2.bias", (4,)),
        ("init_conv.weight", (8, 1, 3, 3)), ("init_conv.bias", (8,)),
        ("down_blocks.0.res.norm1.weight", (8,)), ("down_blocks.0.res.norm1.bias", (8,)),
        ("down_blocks.0.res.conv1.weight", (16, 8, 3, 3)), ("down_blocks.0.res.conv1.bias", (16,)),
        ("down_blocks.0.res.time_proj.weight", (16, 4)), ("down_blocks.0.res.time_proj.bias", (16,)),
        ("down_blocks.0.res.norm2.weight", (16,)), ("down_blocks.0.res.norm2.bias", (16,)),
        ("down_blocks.0.res.conv2.weight", (16, 16, 3, 3)), ("down_blocks.0.res.conv2.bias", (16,)),
        ("down_blocks.0.res.skip.weight", (16, 8, 1, 1)), ("down_blocks.0.res.skip.bias", (16,)),
        ("down_blocks.0.down.weight", (16, 16, 4, 4)), ("down_blocks.0.down.bias", (16,)),
        ("bottleneck.res1.norm1.weight", (16,)), ("bottleneck.res1.norm1.bias", (16,)),
        ("bottleneck.res1.conv1.weight", (16, 16, 3, 3)), ("bottleneck.res1.conv1.bias", (16,)),
        ("bottleneck.res1.time_proj.weight", (16, 4)), ("bottleneck.res1.time_proj.bias", (16,)),
        ("bottleneck.res1.norm2.weight", (16,)), ("bottleneck.res1.norm2.bias", (16,)),
        ("bottleneck.res1.conv2.weight", (16, 16, 3, 3)), ("bottleneck.res1.conv2.bias", (16,)),
        ("bottleneck.attn.norm.weight", (16,)), ("bottleneck.attn.norm.bias", (16,)),
        ("bottleneck.attn.qkv.weight", (48, 16, 1, 1)), ("bottleneck.attn.qkv.bias", (48,)),
        ("bottleneck.attn.proj.weight", (16, 16, 1, 1)), ("bottleneck.attn.proj.bias", (16,)),
        ("bottleneck.res2.norm1.weight", (16,)), ("bottleneck.res2.norm1.bias", (16,)),
        ("bottleneck.res2.conv1.weight", (16, 16, 3, 3)), ("bottleneck.res2.conv1.bias", (16,)),
        ("bottleneck.res2.time_proj.weight", (16, 4)), ("bottleneck.res2.time_proj.bias", (16,)),
        ("bottleneck.res2.norm2.weight", (16,)), ("bottleneck.res2.norm2.bias", (16,)),
        ("bottleneck.res2.conv2.weight", (16, 16, 3, 3)), ("bottleneck.res2.conv2.bias", (16,)),
        ("up_blocks.0.up.weight", (16, 16, 4, 4)), ("up_blocks.0.up.bias", (16,)),
        ("up_blocks.0.res.norm1.weight", (32,)), ("up_blocks.0.res.norm1.bias", (32,)),
        ("up_blocks.0.res.conv1.weight", (8, 32, 3, 3)), ("up_blocks.0.res.conv1.bias", (8,)),
        ("up_blocks.0.res.time_proj.weight", (8, 4)), ("up_blocks.0.res.time_proj.bias", (8,)),
        ("up_blocks.0.res.norm2.weight", (8,)), ("up_blocks.0.res.norm2.bias", (8,)),
        ("up_blocks.0.res.conv2.weight", (8, 8, 3, 3)), ("up_blocks.0.res.conv2.bias", (8,)),
        ("up_blocks.0.res.skip.weight", (8, 32, 1, 1)), ("up_blocks.0.res.skip.bias", (8,)),
        ("out_norm.weight", (8,)), ("out_norm.bias", (8,)),
        ("out_conv.weight", (1, 8, 3, 3)), ("out_conv.bias", (1,)),
    ]
    assert ref.param_specs(8, 1, [8, 16], 4) == want


def test_param_specs_default_config():
    T, C = 128, 3
    specs = ref.param_specs(32, C, [32, 64, 128], T)
    assert specs == ref.param_specs(32, C)                     # the defaults
    want = [("time_mlp.fc1.weight", (512, 128)), ("time_mlp.fc1.bias", (512,)),
            ("time_mlp.fc2.weight", (128, 512)), ("time_mlp.fc2.bias", (128,)),
            ("init_conv.weight", (32, 3, 3, 3)), ("init_conv.bias", (32,))]
    want += _res_names("down_blocks.0.res.", 32, 64, T)
    want += [("down_blocks.0.down.weight", (64, 64, 4, 4)), ("down_blocks.0.down.bias", (64,))]
    want += _res_names("down_blocks.1.res.", 64, 128, T)
    want += [("down_blocks.1.down.weight", (128, 128, 4, 4)), ("down_blocks.1.down.bias", (128,))]
    want += _res_names("bottleneck.res1.", 128, 128, T)
    want += [("bottleneck.attn.norm.weight", (128,)), ("bottleneck.attn.norm.bias", (128,)),
             ("bottleneck.attn.qkv.weight", (384, 128, 1, 1)), ("bottleneck.attn.qkv.bias", (384,)),
             ("bottleneck.attn.proj.weight", (128, 128, 1, 1)), ("bottleneck.attn.proj.bias", (128,))]
    want += _res_names("bottleneck.res2.", 128, 128, T)
    want += [("up_blocks.0.up.weight", (128, 128, 4, 4)), ("up_blocks.0.up.bias", (128,))]
    want += _res_names("up_blocks.0.res.", 256, 64, T)
    want += [("up_blocks.1.up.weight", (64, 64, 4, 4)), ("up_blocks.1.up.bias", (64,))]
    want += _res_names("up_blocks.1.res.", 128, 32, T)
    want += [("out_norm.weight", (32,)), ("out_norm.bias", (32,)),
             ("out_conv.weight", (3, 32, 3, 3)), ("out_conv.bias", (3,))]
    assert specs == want
    d = dict(specs)
    assert "bottleneck.res1.skip.weight" not in d
    assert "bottleneck.res2.skip.bias" not in d
    assert d["down_blocks.0.res.skip.weight"] == (64, 32, 1, 1)
    assert d["up_blocks.1.res.skip.weight"] == (32, 128, 1, 1)
    assert "down_blocks.2.res.norm1.weight" not in d and "up_blocks.2.up.weight" not in d


def test_param_specs_length4_config():
    T, C = 32, 1
    d = [8, 16, 24, 32]
    specs = ref.param_specs(16, C, d, T)
    names = [n for n, _ in specs]
    assert len(names) == len(set(names))
    dd = dict(specs)
    for i in range(3):
        assert dd[f"down_blocks.{i}.res.skip.weight"] == (d[i + 1], d[i], 1, 1)
        assert dd[f"down_blocks.{i}.down.weight"] == (d[i + 1], d[i + 1], 4, 4)
    for j in range(3):
        i = 2 - j
        assert dd[f"up_blocks.{j}.up.weight"] == (d[i + 1], d[i + 1], 4, 4)
        assert dd[f"up_blocks.{j}.up.bias"] == (d[i + 1],)
        assert dd[f"up_blocks.{j}.res.norm1.weight"] == (2 * d[i + 1],)
        assert dd[f"up_blocks.{j}.res.conv1.weight"] == (d[i], 2 * d[i + 1], 3, 3)
        assert dd[f"up_blocks.{j}.res.skip.weight"] == (d[i], 2 * d[i + 1], 1, 1)
    assert "bottleneck.res1.skip.weight" not in dd
    assert dd["bottleneck.attn.qkv.weight"] == (96, 32, 1, 1)
    # order: every down block, then the bottleneck, then the up blocks 0, 1, 2
    idx = {n: k for k, n in enumerate(names)}
    assert idx["down_blocks.2.down.bias"] < idx["bottleneck.res1.norm1.weight"]
    assert idx["bottleneck.res2.conv2.bias"] < idx["up_blocks.0.up.weight"]
    assert idx["up_blocks.0.res.skip.bias"] < idx["up_blocks.1.up.weight"] < idx["up_blocks.2.up.weight"]
    assert names[-4:] == ["out_norm.weight", "out_norm.bias", "out_conv.weight", "out_conv.bias"]


def test_param_specs_skip_only_when_channels_change():
    dd = dict(ref.param_specs(8, 2, [16, 16, 32], 8))
    assert "down_blocks.0.res.skip.weight" not in dd           # 16 -> 16
    assert "down_blocks.1.res.skip.weight" in dd               # 16 -> 32
    assert "up_blocks.1.res.skip.weight" in dd                 # 32 -> 16
    dd = dict(ref.param_specs(8, 2, [32, 16], 8))
    assert "up_blocks.0.res.skip.weight" not in dd             # 2*16 -> 32


@pytest.mark.parametrize("args", [
    (32, 3, [32], 128),            # L = 0
    (32, 3, [32, 60], 128),        # not a multiple of 8
    (32, 3, [32, 0], 128),         # not positive
    (32, 3, [8, 16], 2),           # time_dim < 4
    (32, 3, [32, 64], 7),          # odd time_dim
    (32, 0, [32, 64], 128),        # no channels
    (31, 3, [32, 64], 128),        # image_size not a multiple of 2**L
    (12, 3, [8, 16, 24, 32], 8),   # 12 not a multiple of 8
    (0, 3, [32, 64], 128),         # image_size not positive
])
def test_param_specs_rejects_invalid(args):
    with pytest.raises(ValueError):
        ref.param_specs(*args)


# ----------------------------------------------------------------------------
# SplitMix64 and init_params
# ----------------------------------------------------------------------------

def test_splitmix64_seed0_known_values():
    z = ref.splitmix64(0, 3)
    assert z.dtype == np.uint64
    assert [int(v) for v in z] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("seed", [0, 1, 42, 0x9E3779B97F4A7C15, 2 ** 64 - 1])
def test_splitmix64_vectorised_equals_scalar(seed):
    assert [int(v) for v in ref.splitmix64(seed, 200)] == py_splitmix64(seed, 200)


def test_uniform01_exact():
    u = ref.uniform01(7, 1000)
    assert u.dtype == np.float32
    want = [np.float32(z >> 40) * np.float32(2.0 ** -24) for z in py_splitmix64(7, 1000)]
    np.testing.assert_array_equal(u, np.array(want, dtype=np.float32))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert float(ref.uniform01(0, 1)[0]) == (0xE220A8397B1DCDAF >> 40) / 2.0 ** 24


def _fan_in(name, shape):
    if len(shape) == 2:
        return shape[1]
    return shape[1] * shape[2] * shape[3]   # also [in, out, k, k] of the transposed conv


def _scalar_init(channels, hidden_dims, T, seed):
    """init_params written straight from the prose, one draw at a time."""
    stream = py_splitmix64_stream(seed)
    out = {}
    specs = ref.param_specs(None, channels, hidden_dims, T)
    shapes = dict(specs)
    for name, shape in specs:
        layer = name.rsplit(".", 1)[0]
        if layer.rsplit(".", 1)[-1].startswith("norm") or layer == "out_norm":
            out[name] = np.full(shape, 1.0 if name.endswith("weight") else 0.0, dtype=np.float32)
            continue
        wshape = shapes[layer + ".weight"]
        bound = np.float32(1.0 / math.sqrt(_fan_in(layer + ".weight", wshape)))
        vals = []
        for _ in range(int(np.prod(shape))):
            u = np.float32(next(stream) >> 40) * np.float32(2.0 ** -24)
            vals.append((u * np.float32(2) - np.float32(1)) * bound)
        out[name] = np.array(vals, dtype=np.float32).reshape(shape)
    return out


@pytest.mark.parametrize("channels,hidden_dims,T,seed", [
    (1, [8, 16], 4, 0),
    (3, [8, 16, 24], 8, 123456789),
    (2, [16, 8], 6, 2 ** 64 - 1),
])
def test_init_params_equals_one_draw_at_a_time(channels, hidden_dims, T, seed):
    got = ref.init_params(8, channels, hidden_dims, T, seed)
    want = _scalar_init(channels, hidden_dims, T, seed)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == np.float32 and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_init_params_first_values_from_the_stream():
    p = ref.init_params(8, 1, [8, 16], 4, 0)
    z = py_splitmix64(0, 1000)
    u = [np.float32(v >> 40) * np.float32(2.0 ** -24) for v in z]
    bound = np.float32(1 / math.sqrt(4))
    assert p["time_mlp.fc1.weight"][0, 0] == (u[0] * np.float32(2) - np.float32(1)) * bound
    assert p["time_mlp.fc1.weight"][0, 1] == (u[1] * np.float32(2) - np.float32(1)) * bound
    assert p["time_mlp.fc1.bias"][0] == (u[64] * np.float32(2) - np.float32(1)) * bound
    b2 = np.float32(1 / math.sqrt(16))
    assert p["time_mlp.fc2.weight"][0, 0] == (u[80] * np.float32(2) - np.float32(1)) * b2


def test_init_params_properties():
    cfg = (32, 3, [32, 64, 128], 128)
    a = ref.init_params(*cfg, seed=5)
    b = ref.init_params(*cfg, seed=5)
    c = ref.init_params(*cfg, seed=6)
    specs = ref.param_specs(*cfg)
    assert [(k, v.shape) for k, v in a.items()] == specs
    for name, shape in specs:
        assert a[name].dtype == np.float32
        np.testing.assert_array_equal(a[name], b[name])
        layer = name.rsplit(".", 1)[0]
        last = layer.rsplit(".", 1)[-1]
        if last.startswith("norm") or layer == "out_norm":
            np.testing.assert_array_equal(a[name], 1.0 if name.endswith("weight") else 0.0)
            continue
        assert not np.array_equal(a[name], c[name]), name
        wshape = dict(specs)[layer + ".weight"]
        bound = np.float32(1.0 / math.sqrt(_fan_in(layer + ".weight", wshape)))
        assert np.all(np.abs(a[name]) <= bound), name
        if a[name].size >= 1000:
            assert np.abs(a[name]).max() > 0.99 * bound
            assert abs(float(a[name].mean())) < 0.05 * bound


def test_init_params_default_size_is_fast():
    import time
    t0 = time.perf_counter()
    p = ref.init_params(32, 3, [64, 128, 256], 128, 0)
    assert time.perf_counter() - t0 < 5.0      # ~0.2-0.4 s on an idle machine
    assert sum(v.size for v in p.values()) > 5_000_000


# ----------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------

def _random_params(channels, hidden_dims, T, seed):
    p = ref.init_params(8 * 2 ** len(hidden_dims), channels, hidden_dims, T, seed)
    rng = np.random.default_rng(seed)
    for k in p:
        if "norm" in k:
            p[k] = (rng.uniform(0.5, 1.5, p[k].shape) if k.endswith("weight")
                    else rng.uniform(-0.5, 0.5, p[k].shape)).astype(np.float32)
    return p


def test_forward_shapes_dtypes_batch0():
    p = _random_params(3, [8, 16, 24], 8, 1)
    x = RNG.standard_normal((2, 3, 8, 12)).astype(np.float32)
    y = ref.forward(p, x, np.array([0, 999]))
    assert y.shape == (2, 3, 8, 12) and y.dtype == np.float64 and np.all(np.isfinite(y))
    y32 = ref.forward(p, x, np.array([0, 999]), dtype=np.float32)
    assert y32.dtype == np.float32
    assert np.max(np.abs(y32 - y)) <= 1e-5 * np.max(np.abs(y))
    y0 = ref.forward(p, x[:0], np.zeros(0, dtype=np.int64))
    assert y0.shape == (0, 3, 8, 12)
    assert ref.forward(p, x, [0, 999], hidden_dims=[8, 16, 24], time_dim=8).shape == y.shape
    with pytest.raises(ValueError):
        ref.forward(p, x, np.array([0, 999]), hidden_dims=[8, 16])
    with pytest.raises(ValueError):
        ref.forward(p, x[:, :, :6], np.array([0, 999]))          # 6 not a multiple of 4
    with pytest.raises(ValueError):
        ref.forward(p, x, np.array([0, 1, 2]))
    with pytest.raises(TypeError):
        ref.forward(p, x, np.array([0.0, 1.5]))
    with pytest.raises(ValueError):
        ref.forward(p, x, np.array([0, -1]))
    assert ref.forward(p, x[:0], []).shape == (0, 3, 8, 12)


def test_forward_batch_items_independent_and_t_matters():
    p = _random_params(1, [8, 16], 16, 2)
    x = RNG.standard_normal((3, 1, 4, 6))
    t = np.array([0, 17, 999])
    y = ref.forward(p, x, t)
    for i in range(3):
        np.testing.assert_allclose(ref.forward(p, x[i:i + 1], t[i:i + 1])[0], y[i], rtol=1e-12, atol=1e-12)
    y2 = ref.forward(p, x, np.array([1, 17, 999]))
    assert np.max(np.abs(y2[0] - y[0])) > 1e-6
    np.testing.assert_array_equal(y2[1:], y[1:])


def test_res_block_identity_and_conv_skips():
    T = 4
    temb = RNG.standard_normal((2, T))

    def block(cin, cout):
        p = {k: v.astype(np.float64) for k, v in
             ref.init_params(8, 1, [cin, cout], T, 3).items() if k.startswith("down_blocks.0.res.")}
        p["down_blocks.0.res.conv2.weight"][:] = 0
        p["down_blocks.0.res.conv2.bias"][:] = 0
        return p

    x = RNG.standard_normal((2, 16, 4, 4))
    p = block(16, 16)                     # identity skip, residual branch zeroed
    np.testing.assert_array_equal(ref.res_block(x, temb, p, "down_blocks.0.res."), x)
    p = block(16, 24)                     # 1x1 conv skip
    want = ref.conv2d(x, p["down_blocks.0.res.skip.weight"], p["down_blocks.0.res.skip.bias"])
    np.testing.assert_allclose(ref.res_block(x, temb, p, "down_blocks.0.res."), want, rtol=0, atol=1e-14)


def test_up_block_concatenates_upsampled_first():
    T = 4
    p = {k: v.astype(np.float64) for k, v in ref.init_params(8, 1, [8, 16], T, 9).items()}
    h = RNG.standard_normal((1, 16, 2, 2))
    skip = RNG.standard_normal((1, 16, 4, 4))
    temb = RNG.standard_normal((1, T))
    # zero the skip half of conv1/skip weights: the output must not depend on `skip`
    for k in ("up_blocks.0.res.conv1.weight", "up_blocks.0.res.skip.weight"):
        p[k][:, 16:] = 0
    p["up_blocks.0.res.norm1.weight"][16:] = 0
    p["up_blocks.0.res.norm1.bias"][16:] = 0
    a = ref.up_block(h, skip, temb, p, 0)
    b = ref.up_block(h, skip * 3 + 1, temb, p, 0)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    c = ref.up_block(h * 2, skip, temb, p, 0)
    assert np.max(np.abs(c - a)) > 1e-3


def test_forward_default_model_is_fast():
    import time
    p = ref.init_params(32, 3, [64, 128, 256], 128, 0)
    x = RNG.standard_normal((3, 3, 32, 32)).astype(np.float32)
    t0 = time.perf_counter()
    y = ref.forward(p, x, np.array([0, 500, 999]))
    assert time.perf_counter() - t0 < 15.0
    assert y.shape == x.shape and np.all(np.isfinite(y))
