"""Parity of the Swift model with the pure-numpy reference (docs/model.md sections 3, 4).

Every forward here is compared with `swiftunet.reference.forward` in float64:
    max|swift - ref| <= 1e-4 * max|ref|
and the seeded initialisation must equal `reference.init_params` bit for bit.
"""

import numpy as np
import pytest

import swiftunet
from swiftunet import reference as ref

BOUND = 1e-4


def parity_ratio(got, want):
    got = np.asarray(got, dtype=np.float64)
    scale = float(np.max(np.abs(want)))
    err = float(np.max(np.abs(got - want)))
    return err / scale, err, scale


def assert_parity(got, want, what=""):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite output"
    ratio, err, scale = parity_ratio(got, want)
    assert ratio <= BOUND, (
        f"{what}: max|swift - ref| / max|ref| = {ratio:.3e} > {BOUND:g} "
        f"(max|swift - ref| = {err:.3e}, max|ref| = {scale:.3e})")
    return ratio


def randomise(sd, rng):
    """GroupNorm affine weights to non-trivial values, and a few conv biases."""
    sd = {k: np.array(v, dtype=np.float32, copy=True) for k, v in sd.items()}
    for k in sd:
        layer, kind = k.rsplit(".", 1)
        last = layer.rsplit(".", 1)[-1]
        if last.startswith("norm") or layer == "out_norm":
            if kind == "weight":
                sd[k] = rng.uniform(0.5, 1.5, sd[k].shape).astype(np.float32)
            else:
                sd[k] = rng.uniform(-0.5, 0.5, sd[k].shape).astype(np.float32)
    for k in ("init_conv.bias", "out_conv.bias", "bottleneck.attn.qkv.bias",
              "bottleneck.attn.proj.bias", "up_blocks.0.up.bias", "down_blocks.0.down.bias",
              "bottleneck.res1.conv2.bias"):
        sd[k] = rng.uniform(-0.5, 0.5, sd[k].shape).astype(np.float32)
    return sd


def timesteps(B, rng, case_index):
    """B timesteps that include 0 and 999 (alternating when B == 1)."""
    if B == 1:
        return np.array([(0, 999, 500)[case_index % 3]], dtype=np.int64)
    t = rng.integers(1, 999, size=B)
    t[0], t[-1] = 0, 999
    return t.astype(np.int64)


# (channels, hidden_dims, time_dim, batch, H, W, image_size): every value of the
# brief's matrix appears; plus edge configurations (identity skips, 1x1 and
# 32x32 bottlenecks, 8-channel attention with dh = 2, large t).
CASES = [
    (1, [8, 16], 32, 1, 8, 8, 8),
    (3, [8, 16], 128, 3, 16, 24, 16),
    (1, [16, 32], 128, 3, 24, 16, 16),
    (3, [16, 32], 32, 1, 32, 32, 32),
    (1, [32, 64, 128], 32, 3, 8, 16, 8),
    (3, [32, 64, 128], 128, 1, 16, 16, 16),
    (3, [32, 64, 128], 32, 3, 32, 32, 32),
    (1, [32, 64, 128], 128, 1, 16, 8, 16),
    (1, [8, 16, 24, 32], 32, 1, 16, 16, 16),
    (3, [8, 16, 24, 32], 128, 3, 8, 16, 8),
    (3, [8, 16, 24, 32], 32, 3, 24, 8, 8),
    (1, [8, 16, 24, 32], 128, 3, 32, 32, 32),
    (2, [16, 16, 32], 32, 2, 16, 16, 16),      # identity skip in down_blocks.0.res
    (1, [32, 16], 32, 2, 8, 8, 8),             # identity skip in up_blocks.0.res
    (4, [8, 8], 128, 2, 2, 2, 2),              # 1x1 bottleneck, dh = 2
    (3, [8, 16], 32, 1, 64, 64, 64),           # 32x32 = 1024 attention positions
    (3, [16, 32, 64], 4, 5, 8, 8, 8),          # smallest time_dim, batch 5
]


def _case_id(c):
    C, d, T, B, H, W, _ = c
    return f"C{C}-d{'_'.join(map(str, d))}-T{T}-B{B}-{H}x{W}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_forward_parity(case):
    C, dims, T, B, H, W, image_size = case
    idx = CASES.index(case)
    rng = np.random.default_rng(1000 + idx)
    m = swiftunet.DiffusionModel(image_size, C, hidden_dims=dims, time_dim=T, seed=idx)
    loaded = randomise(m.state_dict(), rng)
    m.load_state_dict(loaded)
    sd = m.state_dict()
    assert list(sd) == list(loaded)
    for k in sd:
        np.testing.assert_array_equal(sd[k], loaded[k], err_msg=f"load_state_dict did not store {k}")

    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    t = timesteps(B, rng, idx)
    if idx == len(CASES) - 1:
        t[1:3] = [4000, 12345]                 # any integer >= 0 is a timestep
    got = m(x, t)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    want = ref.forward(sd, x, t)
    assert_parity(got, want, _case_id(case) + f" t={t.tolist()}")


def test_every_matrix_value_is_covered():
    seen = {"C": set(), "L": set(), "T": set(), "B": set(), "shape": set()}
    for C, d, T, B, H, W, _ in CASES:
        seen["C"].add(C)
        seen["L"].add(len(d))
        seen["T"].add(T)
        seen["B"].add(B)
        seen["shape"].add("square" if H == W else "non-square")
    assert {1, 3} <= seen["C"] and {2, 3, 4} <= seen["L"] and {32, 128} <= seen["T"]
    assert {1, 3} <= seen["B"] and seen["shape"] == {"square", "non-square"}
    for L in (2, 3, 4):
        assert any(len(d) == L and H != W for _, d, _, _, H, W, _ in CASES)


# ----------------------------------------------------------------------------
# initialisation and state_dict layout
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("image_size,C,dims,T,seed", [
    (32, 3, [32, 64, 128], 128, 0),
    (16, 1, [8, 16, 24, 32], 32, 2 ** 64 - 1),
    (8, 2, [16, 16, 32], 4, 123456789),
])
def test_init_equals_reference_bitwise(image_size, C, dims, T, seed):
    sd = swiftunet.DiffusionModel(image_size, C, hidden_dims=dims, time_dim=T, seed=seed).state_dict()
    want = ref.init_params(image_size, C, dims, T, seed)
    assert list(sd) == list(want)
    for k in want:
        assert sd[k].dtype == np.float32 and sd[k].shape == want[k].shape, k
        np.testing.assert_array_equal(sd[k].view(np.uint32), want[k].view(np.uint32), err_msg=k)


def test_default_seed_is_zero_and_seeds_differ():
    a = swiftunet.DiffusionModel(16, 1, hidden_dims=[8, 16], time_dim=8).state_dict()
    b = ref.init_params(16, 1, [8, 16], 8, 0)
    c = swiftunet.DiffusionModel(16, 1, hidden_dims=[8, 16], time_dim=8, seed=1).state_dict()
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(a["init_conv.weight"], c["init_conv.weight"])


@pytest.mark.parametrize("image_size,C,dims,T", [
    (32, 3, [32, 64, 128], 128),
    (16, 1, [8, 16, 24, 32], 32),
    (8, 2, [16, 16, 32], 8),
    (8, 1, [32, 16], 4),
    (2, 5, [8, 8], 16),
])
def test_state_dict_layout_matches_param_specs(image_size, C, dims, T):
    sd = swiftunet.DiffusionModel(image_size, C, hidden_dims=dims, time_dim=T).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == ref.param_specs(image_size, C, dims, T)
    assert all(v.dtype == np.float32 for v in sd.values())


# ----------------------------------------------------------------------------
# the default model and the Python surface
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_model():
    return swiftunet.DiffusionModel(32, 3, hidden_dims=[64, 128, 256], time_dim=128)


def test_default_model_parity(default_model):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    t = np.array([0, 999])
    assert_parity(default_model(x, t), ref.forward(default_model.state_dict(), x, t), "default model")


def test_batch_zero(default_model):
    x = np.zeros((0, 3, 32, 32), dtype=np.float32)
    y = default_model(x, np.zeros(0, dtype=np.int64))
    assert isinstance(y, np.ndarray) and y.shape == (0, 3, 32, 32) and y.dtype == np.float32
    y = default_model(np.zeros((0, 3, 16, 8), dtype=np.float32), np.zeros(0, dtype=np.int32))
    assert y.shape == (0, 3, 16, 8)


def test_forward_out_returns_buf(default_model):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    t = np.array([3, 998])
    buf = np.full(x.shape, np.nan, dtype=np.float32)
    r = default_model.forward(x, t, out=buf)
    assert r is buf
    np.testing.assert_array_equal(buf, default_model(x, t))
    assert_parity(buf, ref.forward(default_model.state_dict(), x, t), "out=")


def test_zero_copy_input(default_model):
    from swiftunet import _swiftunet
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    t = np.array([10])
    y = default_model(x, t)
    assert _swiftunet.debug_last_input() == x.ctypes.data, "float32 C-contiguous x was copied"

    x64 = x.astype(np.float64)
    y64 = default_model(x64, t)
    addr = _swiftunet.debug_last_input()
    assert addr not in (0, x64.ctypes.data), "a float64 x cannot be read in place"
    np.testing.assert_array_equal(y64, y)

    xf = np.asfortranarray(x)                     # same values, not C-contiguous
    yf = default_model(xf, t)
    assert _swiftunet.debug_last_input() != xf.ctypes.data
    np.testing.assert_array_equal(yf, y)


def test_float64_input_matches_float32_cast():
    rng = np.random.default_rng(10)
    m = swiftunet.DiffusionModel(16, 3, hidden_dims=[16, 32, 64], time_dim=32, seed=3)
    x64 = rng.standard_normal((2, 3, 16, 16))
    t = np.array([0, 999])
    a = m(x64, t)
    b = m(x64.astype(np.float32), t)
    assert a.dtype == np.float32
    assert parity_ratio(a, b.astype(np.float64))[0] <= BOUND
    assert_parity(a, ref.forward(m.state_dict(), x64.astype(np.float32), t), "float64 x")


def test_timestep_integer_dtypes():
    rng = np.random.default_rng(11)
    m = swiftunet.DiffusionModel(8, 1, hidden_dims=[8, 16], time_dim=32, seed=4)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    t = np.array([0, 77, 127])
    base = m(x, t.astype(np.int64))
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.uint64):
        np.testing.assert_array_equal(m(x, t.astype(dt)), base, err_msg=str(np.dtype(dt)))
    assert_parity(base, ref.forward(m.state_dict(), x, t), "int t")


def test_thread_counts_agree():
    rng = np.random.default_rng(12)
    m = swiftunet.DiffusionModel(16, 3, hidden_dims=[16, 32, 64], time_dim=32, seed=5)
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    t = np.array([0, 500, 999])
    want = ref.forward(m.state_dict(), x, t)
    old = swiftunet.get_num_threads()
    try:
        for n in (1, 2, 3):
            swiftunet.set_num_threads(n)
            assert_parity(m(x, t), want, f"{n} threads")
    finally:
        swiftunet.set_num_threads(old)
