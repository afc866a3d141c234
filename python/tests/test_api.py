"""Tests of the Python surface of swiftunet (docs/model.md section 3) that could fail:
argument checks, state_dict round trips and atomicity, zero-copy, out=,
threading and the GIL. Numerical agreement with the reference lives in
test_parity.py.
"""

import copy
import gc
import pickle
import threading
import time

import numpy as np
import pytest

import swiftunet
from swiftunet import _swiftunet

# Small configuration: L = 1, fast.
SMALL = dict(image_size=8, channels=3, hidden_dims=[16, 32], time_dim=16)


def small_model(seed=0, **overrides):
    kwargs = dict(SMALL, seed=seed)
    kwargs.update(overrides)
    return swiftunet.DiffusionModel(**kwargs)


def rand_x(b=2, c=3, h=8, w=8, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((b, c, h, w)).astype(dtype)


def bits(sd):
    """A state_dict as raw bit patterns, to compare weights bit for bit."""
    return {k: v.view(np.uint32).copy() for k, v in sd.items()}


def assert_same_weights(model, expected_bits):
    now = bits(model.state_dict())
    assert list(now) == list(expected_bits)
    for k in now:
        assert np.array_equal(now[k], expected_bits[k]), k


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture
def restore_threads():
    before = swiftunet.get_num_threads()
    yield
    swiftunet.set_num_threads(before)


# ---------------------------------------------------------------------------
# module surface


def test_module_attributes():
    assert swiftunet.__version__ == "0.1.0"
    info = swiftunet.build_info()
    assert isinstance(info, str) and info
    assert _swiftunet.abi_version() == _swiftunet.ABI_VERSION == 1
    ref = swiftunet.reference
    assert ref.__name__ == "swiftunet.reference"
    assert callable(ref.forward)
    assert "reference" in dir(swiftunet)
    with pytest.raises(AttributeError):
        swiftunet.does_not_exist


def test_num_threads_roundtrip(restore_threads):
    swiftunet.set_num_threads(1)
    assert swiftunet.get_num_threads() == 1
    swiftunet.set_num_threads(2)
    assert swiftunet.get_num_threads() == 2
    swiftunet.set_num_threads(np.int64(3))
    assert swiftunet.get_num_threads() == 3


@pytest.mark.parametrize(
    "value, exc",
    [(0, ValueError), (-1, ValueError), (2**70, ValueError), (True, TypeError),
     (2.0, TypeError), ("2", TypeError), (None, TypeError)],
)
def test_num_threads_invalid(value, exc, restore_threads):
    before = swiftunet.get_num_threads()
    with pytest.raises(exc, match=r"\bn\b"):
        swiftunet.set_num_threads(value)
    assert swiftunet.get_num_threads() == before


def test_num_threads_does_not_change_results(model, restore_threads):
    x, t = rand_x(b=3), [0, 10, 999]
    swiftunet.set_num_threads(1)
    one = model(x, t)
    swiftunet.set_num_threads(2)
    two = model(x, t)
    np.testing.assert_array_equal(one, two)


# ---------------------------------------------------------------------------
# constructor


def test_properties_and_repr():
    m = swiftunet.DiffusionModel(16, 1, hidden_dims=(16, 32, 64), time_dim=32, seed=5)
    assert m.image_size == 16
    assert m.channels == 1
    assert m.hidden_dims == [16, 32, 64]
    assert m.time_dim == 32
    dims = m.hidden_dims
    dims.append(8)  # a copy: the model is unaffected
    assert m.hidden_dims == [16, 32, 64]
    sd = m.state_dict()
    assert m.num_parameters == sum(v.size for v in sd.values())
    r = repr(m)
    assert r.startswith("DiffusionModel(")
    for part in ("image_size=16", "channels=1", "hidden_dims=[16, 32, 64]", "time_dim=32",
                 f"{m.num_parameters:,}"):
        assert part in r, (part, r)


def test_default_hidden_dims():
    m = swiftunet.DiffusionModel(8, 3)
    assert m.hidden_dims == [32, 64, 128]
    assert m.time_dim == 128


def test_numpy_ints_accepted():
    m = swiftunet.DiffusionModel(np.int64(8), np.int32(3), hidden_dims=np.array([16, 32]),
                                 time_dim=np.uint16(16), seed=np.uint64(2**64 - 1))
    assert m.hidden_dims == [16, 32]


def test_seed_determines_weights():
    a, b, c = small_model(seed=1), small_model(seed=1), small_model(seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not all(np.array_equal(sa[k], sc[k]) for k in sa)
    small_model(seed=2**64 - 1)  # the whole range is accepted


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(hidden_dims=[32]), ValueError, "hidden_dims"),
        (dict(hidden_dims=[]), ValueError, "hidden_dims"),
        (dict(hidden_dims=[16, 36]), ValueError, r"hidden_dims\[1\]"),
        (dict(hidden_dims=[0, 32]), ValueError, r"hidden_dims\[0\]"),
        (dict(hidden_dims=[-16, 32]), ValueError, r"hidden_dims\[0\]"),
        (dict(hidden_dims=[16, 2**20]), ValueError, r"hidden_dims\[1\]"),
        (dict(hidden_dims=[16] * 17, image_size=2**16), ValueError, "hidden_dims"),
        (dict(hidden_dims=[16.0, 32]), TypeError, r"hidden_dims\[0\]"),
        (dict(hidden_dims=[True, 32]), TypeError, r"hidden_dims\[0\]"),
        (dict(hidden_dims="16,32"), TypeError, "hidden_dims"),
        (dict(hidden_dims=16), TypeError, "hidden_dims"),
        (dict(hidden_dims=None), TypeError, "hidden_dims"),
        (dict(time_dim=7), ValueError, "time_dim"),
        (dict(time_dim=2), ValueError, "time_dim"),
        (dict(time_dim=0), ValueError, "time_dim"),
        (dict(time_dim=-4), ValueError, "time_dim"),
        (dict(time_dim=2**20), ValueError, "time_dim"),
        (dict(time_dim=16.0), TypeError, "time_dim"),
        (dict(time_dim=None), TypeError, "time_dim"),
        (dict(channels=0), ValueError, "channels"),
        (dict(channels=-3), ValueError, "channels"),
        (dict(channels=True), TypeError, "channels"),
        (dict(channels=3.0), TypeError, "channels"),
        (dict(channels="3"), TypeError, "channels"),
        (dict(image_size=0), ValueError, "image_size"),
        (dict(image_size=-8), ValueError, "image_size"),
        (dict(image_size=7), ValueError, "image_size"),
        (dict(image_size=6, hidden_dims=[16, 32, 64]), ValueError, "image_size"),
        (dict(image_size=2**20), ValueError, "image_size"),
        (dict(image_size=8.0), TypeError, "image_size"),
        (dict(image_size=True), TypeError, "image_size"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=2**64), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(seed=True), TypeError, "seed"),
        (dict(seed=None), TypeError, "seed"),
    ],
)
def test_constructor_validation(kwargs, exc, name):
    args = dict(SMALL, seed=0)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        swiftunet.DiffusionModel(**args)


def test_handle_not_constructible():
    with pytest.raises(TypeError):
        _swiftunet.Model()


# ---------------------------------------------------------------------------
# forward: inputs


def test_call_is_forward(model):
    x = rand_x()
    a = model(x, [1, 2])
    b = model.forward(x, [1, 2])
    assert a.dtype == np.float32 and a.shape == x.shape
    assert a.flags.c_contiguous and a.flags.writeable
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()


def test_other_sizes_and_batches(model):
    for shape in [(1, 3, 8, 8), (3, 3, 2, 2), (2, 3, 4, 12), (1, 3, 16, 6)]:
        x = rand_x(*shape)
        y = model(x, np.arange(shape[0]))
        assert y.shape == shape
        assert np.isfinite(y).all()


def test_batch_is_independent(model):
    x = rand_x(b=3)
    t = np.array([5, 50, 500])
    whole = model(x, t)
    for i in range(3):
        np.testing.assert_allclose(model(x[i : i + 1], t[i : i + 1])[0], whole[i], rtol=1e-5, atol=1e-6)


def test_batch_zero(model):
    x = np.zeros((0, 3, 8, 8), np.float32)
    y = model(x, np.zeros(0, np.int64))
    assert y.shape == (0, 3, 8, 8) and y.dtype == np.float32
    y = model(x, [])
    assert y.shape == (0, 3, 8, 8)
    y = model(np.zeros((0, 3, 4, 4)), 7)  # scalar t with an empty batch
    assert y.shape == (0, 3, 4, 4) and y.dtype == np.float32
    out = np.empty((0, 3, 8, 8), np.float32)
    assert model(x, [], out=out) is out


def test_converted_inputs_agree(model):
    x32 = rand_x()
    t = np.array([3, 700])
    want = model(x32, t)
    # float64, non-contiguous, Fortran order, a list, big-endian: one conversion each.
    np.testing.assert_array_equal(model(x32.astype(np.float64), t), want)
    strided = np.zeros((2, 3, 8, 16), np.float32)
    strided[..., ::2] = x32
    np.testing.assert_array_equal(model(strided[..., ::2], t), want)
    np.testing.assert_array_equal(model(np.asfortranarray(x32), t), want)
    np.testing.assert_array_equal(model(x32.tolist(), t.tolist()), want)
    np.testing.assert_array_equal(model(x32.astype(">f4"), t), want)
    # Integer images are real numbers too.
    xi = np.arange(2 * 3 * 8 * 8).reshape(2, 3, 8, 8) % 5
    np.testing.assert_array_equal(model(xi, t), model(xi.astype(np.float32), t))


def test_unaligned_input_is_copied(model):
    x = rand_x()
    raw = np.zeros(x.nbytes + 1, np.uint8)
    unaligned = np.frombuffer(raw.data, dtype=np.float32, count=x.size, offset=1).reshape(x.shape)
    assert not unaligned.flags.aligned
    unaligned[...] = x
    np.testing.assert_array_equal(model(unaligned, [1, 2]), model(x, [1, 2]))


@pytest.mark.parametrize(
    "t_value",
    [np.array([4, 9], np.int8), np.array([4, 9], np.uint8), np.array([4, 9], np.int16),
     np.array([4, 9], np.uint16), np.array([4, 9], np.int32), np.array([4, 9], np.uint32),
     np.array([4, 9], np.uint64), np.array([4, 9], ">i8"), [4, 9], (4, 9),
     np.array([0, 4, 0, 9])[1::2]],
)
def test_timestep_dtypes(model, t_value):
    x = rand_x()
    np.testing.assert_array_equal(model(x, t_value), model(x, np.array([4, 9], np.int64)))


def test_scalar_t_broadcasts(model):
    x = rand_x(b=3)
    want = model(x, np.full(3, 17))
    for t in (17, np.int32(17), np.array(17), np.uint8(17)):
        np.testing.assert_array_equal(model(x, t), want)


def test_large_timesteps(model):
    x = rand_x()
    y = model(x, np.array([0, 2**53], np.uint64))
    assert np.isfinite(y).all()
    model(x, 2**53)


@pytest.mark.parametrize(
    "x, exc, name",
    [
        (np.zeros((3, 8, 8), np.float32), ValueError, "x"),
        (np.zeros((1, 1, 3, 8, 8), np.float32), ValueError, "x"),
        (np.zeros((2, 4, 8, 8), np.float32), ValueError, "channels"),
        (np.zeros((2, 3, 7, 8), np.float32), ValueError, "height"),
        (np.zeros((2, 3, 8, 9), np.float32), ValueError, "width"),
        (np.zeros((2, 3, 0, 8), np.float32), ValueError, "height"),
        (np.zeros((2, 3, 8, 8), np.complex64), TypeError, "x"),
        (np.zeros((2, 3, 8, 8), bool), TypeError, "x"),
        (np.zeros((2, 3, 8, 8), object), TypeError, "x"),
        (np.full((2, 3, 8, 8), "a"), TypeError, "x"),
        (np.zeros((2, 3, 8, 8), "datetime64[s]"), TypeError, "x"),
        ("not an array", TypeError, "x"),
        (None, TypeError, "x"),
        ([[1.0, 2.0], [3.0]], TypeError, "x"),
    ],
)
def test_forward_x_validation(model, x, exc, name):
    with pytest.raises(exc, match=name):
        model(x, [1, 2])


@pytest.mark.parametrize(
    "t, exc, name",
    [
        (np.array([[1, 2]]), ValueError, "t"),
        (np.array([1, 2, 3]), ValueError, "t"),
        (np.array([1]), ValueError, "t"),
        (np.array([1.0, 2.0]), TypeError, "t"),
        (np.array([1.5, 2.0]), TypeError, "t"),
        (1.0, TypeError, "t"),
        (np.array([True, False]), TypeError, "t"),
        (True, TypeError, "t"),
        (np.array([1 + 0j, 2]), TypeError, "t"),
        (np.array(["1", "2"]), TypeError, "t"),
        (None, TypeError, "t"),
        (np.array([-1, 2]), ValueError, "t"),
        (-1, ValueError, "t"),
        (np.array([1, 2**53 + 1], np.int64), ValueError, "t"),
        (np.array([1, 2**64 - 1], np.uint64), ValueError, "t"),
        (2**53 + 1, ValueError, "t"),
        (2**80, ValueError, "t"),
    ],
)
def test_forward_t_validation(model, t, exc, name):
    with pytest.raises(exc, match=rf"\b{name}\b"):
        model(rand_x(), t)


# ---------------------------------------------------------------------------
# forward: zero copy and out=


def test_zero_copy_input(model):
    x = rand_x()
    model(x, [1, 2])
    assert _swiftunet.debug_last_input() == x.ctypes.data
    x64 = x.astype(np.float64)
    model(x64, [1, 2])
    assert _swiftunet.debug_last_input() not in (0, x64.ctypes.data)


def test_readonly_input_read_in_place(model):
    x = rand_x()
    ro = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape)
    assert not ro.flags.writeable
    np.testing.assert_array_equal(model(ro, [1, 2]), model(x, [1, 2]))
    model(ro, [1, 2])
    assert _swiftunet.debug_last_input() == ro.ctypes.data


def test_main_module_runs():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "swiftunet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert swiftunet.__version__ in proc.stdout


def test_out_identity(model):
    x = rand_x()
    want = model(x, [3, 4])
    out = np.full(x.shape, np.nan, np.float32)
    got = model(x, [3, 4], out=out)
    assert got is out
    np.testing.assert_array_equal(out, want)
    # out is reused: written again, not reallocated
    got2 = model.forward(rand_x(seed=1), [3, 4], out=out)
    assert got2 is out
    np.testing.assert_array_equal(out, model(rand_x(seed=1), [3, 4]))


def test_out_equal_to_x_in_place(model):
    x = rand_x()
    want = model(x, [3, 4])
    buf = x.copy()
    assert model(buf, [3, 4], out=buf) is buf
    np.testing.assert_array_equal(buf, want)


@pytest.mark.parametrize(
    "make_out, exc",
    [
        (lambda s: np.zeros(s, np.float32).tolist(), TypeError),
        (lambda s: np.zeros(s, np.float64), TypeError),
        (lambda s: np.zeros(s, np.float16), TypeError),
        (lambda s: np.zeros((2, 3, 8, 4), np.float32), ValueError),
        (lambda s: np.zeros((2 * 3 * 8 * 8,), np.float32), ValueError),
        (lambda s: np.zeros((2, 3, 8, 16), np.float32)[..., ::2], ValueError),
        (lambda s: np.asfortranarray(np.zeros(s, np.float32)), ValueError),
        (lambda s: np.zeros(s, ">f4"), TypeError),
        (lambda s: np.broadcast_to(np.zeros(1, np.float32), s), ValueError),
        (lambda s: memoryview(np.zeros(s, np.float32)), TypeError),
    ],
)
def test_out_validation(model, make_out, exc):
    x = rand_x()
    with pytest.raises(exc, match="out"):
        model(x, [1, 2], out=make_out(x.shape))


def test_out_readonly(model):
    x = rand_x()
    out = np.zeros(x.shape, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out.*writable"):
        model(x, [1, 2], out=out)
    assert not out.any()


# ---------------------------------------------------------------------------
# state_dict / load_state_dict


def test_state_dict_layout(model):
    sd = model.state_dict()
    specs = swiftunet.reference.param_specs(**SMALL)
    assert [(k, v.shape) for k, v in sd.items()] == [(n, tuple(s)) for n, s in specs]
    assert list(sd)[:2] == ["time_mlp.fc1.weight", "time_mlp.fc1.bias"]
    assert list(sd)[-1] == "out_conv.bias"
    assert sd["init_conv.weight"].shape == (16, 3, 3, 3)
    assert sd["down_blocks.0.down.weight"].shape == (32, 32, 4, 4)
    assert "down_blocks.0.res.skip.weight" in sd
    assert "bottleneck.res1.skip.weight" not in sd
    for v in sd.values():
        assert v.dtype == np.float32 and v.flags.c_contiguous and v.flags.writeable
    np.testing.assert_array_equal(sd["out_norm.weight"], 1.0)
    np.testing.assert_array_equal(sd["out_norm.bias"], 0.0)


def test_state_dict_is_a_copy(model):
    sd = model.state_dict()
    before = bits(sd)
    for v in sd.values():
        v[...] = 123.0
    assert_same_weights(model, before)


def test_load_state_dict_roundtrip():
    a, b = small_model(seed=1), small_model(seed=2)
    x, t = rand_x(), [10, 20]
    assert not np.array_equal(a(x, t), b(x, t))
    result = b.load_state_dict(a.state_dict())
    assert tuple(result) == ([], [])
    np.testing.assert_array_equal(a(x, t), b(x, t))
    assert_same_weights(b, bits(a.state_dict()))


def test_load_state_dict_accepts_array_likes():
    a, b = small_model(seed=1), small_model(seed=2)
    sd = {k: (v.astype(np.float64) if i % 3 == 0 else v.tolist() if i % 3 == 1 else v)
          for i, (k, v) in enumerate(a.state_dict().items())}
    sd = dict(reversed(list(sd.items())))  # order does not matter
    b.load_state_dict(sd)
    assert_same_weights(b, bits(a.state_dict()))


def test_load_state_dict_non_strict():
    a, b = small_model(seed=1), small_model(seed=2)
    b_before = b.state_dict()
    sd = a.state_dict()
    del sd["out_conv.bias"]
    sd["extra.weight"] = np.zeros(3)
    missing, unexpected = b.load_state_dict(sd, strict=False)
    assert missing == ["out_conv.bias"]
    assert unexpected == ["extra.weight"]
    after = b.state_dict()
    np.testing.assert_array_equal(after["out_conv.bias"], b_before["out_conv.bias"])
    np.testing.assert_array_equal(after["out_conv.weight"], sd["out_conv.weight"])


def _bad_dicts(sd):
    def edited(fn):
        d = {k: v.copy() for k, v in sd.items()}
        fn(d)
        return d

    first, last = "time_mlp.fc1.weight", "out_conv.bias"
    nan = edited(lambda d: d[last].__setitem__(0, np.nan))
    inf = edited(lambda d: d[first].__setitem__((0, 0), -np.inf))
    return [
        ("missing", edited(lambda d: d.pop(last)), ValueError, last),
        ("unexpected", edited(lambda d: d.__setitem__("bogus.weight", np.zeros(2))), ValueError, "bogus.weight"),
        ("non-str key", edited(lambda d: d.__setitem__(7, np.zeros(2))), ValueError, "7"),
        ("shape", edited(lambda d: d.__setitem__(last, np.zeros(4, np.float32))), ValueError, last),
        ("transposed", edited(lambda d: d.__setitem__(first, d[first].T.copy())), ValueError, first),
        ("extra dim", edited(lambda d: d.__setitem__(last, d[last][None])), ValueError, last),
        ("nan", nan, ValueError, last),
        ("inf", inf, ValueError, first),
        ("float32 overflow", edited(lambda d: d.__setitem__(last, np.full(3, 1e300))), ValueError, last),
        ("strings", edited(lambda d: d.__setitem__(last, np.array(["1", "2", "3"]))), TypeError, last),
        ("complex", edited(lambda d: d.__setitem__(last, d[last].astype(np.complex64))), TypeError, last),
        ("object", edited(lambda d: d.__setitem__(last, np.array([1, None, 3], dtype=object))), TypeError, last),
        ("bool", edited(lambda d: d.__setitem__(last, np.ones(3, bool))), TypeError, last),
        ("None", edited(lambda d: d.__setitem__(last, None)), TypeError, last),
    ]


def test_load_state_dict_is_atomic():
    target = small_model(seed=3)
    good = small_model(seed=4).state_dict()
    before = bits(target.state_dict())
    x, t = rand_x(), [7, 8]
    y_before = target(x, t)
    for label, bad, exc, key in _bad_dicts(good):
        with pytest.raises(exc) as info:
            target.load_state_dict(bad)
        assert key in str(info.value), (label, str(info.value))
        assert_same_weights(target, before)
    np.testing.assert_array_equal(target(x, t), y_before)
    # The good dict still loads afterwards.
    target.load_state_dict(good)
    assert_same_weights(target, bits(good))


def test_load_state_dict_bad_non_strict_still_atomic():
    target = small_model(seed=3)
    before = bits(target.state_dict())
    bad = small_model(seed=4).state_dict()
    bad["out_norm.weight"] = np.zeros(5)  # a wrong shape is an error even when not strict
    bad["out_conv.bias"] = np.array([1.0, np.nan, 2.0])
    with pytest.raises(ValueError) as info:
        target.load_state_dict(bad, strict=False)
    assert "out_norm.weight" in str(info.value) and "out_conv.bias" in str(info.value)
    assert_same_weights(target, before)


def test_load_state_dict_argument_types(model):
    with pytest.raises(TypeError, match="state_dict"):
        model.load_state_dict([("a", 1)])
    with pytest.raises(TypeError, match="state_dict"):
        model.load_state_dict(None)
    with pytest.raises(TypeError, match="strict"):
        model.load_state_dict(model.state_dict(), strict="yes")


def test_copy_and_pickle():
    a = small_model(seed=9)
    x, t = rand_x(), [1, 999]
    for b in (copy.deepcopy(a), copy.copy(a), pickle.loads(pickle.dumps(a))):
        assert b is not a and b._handle is not a._handle
        assert repr(b) == repr(a)
        np.testing.assert_array_equal(b(x, t), a(x, t))


# ---------------------------------------------------------------------------
# the low-level binding never crashes on bad input


def test_binding_rejects_bad_buffers(model):
    h = model._handle
    x = rand_x()
    t = np.array([1, 2], np.int64)
    out = np.zeros_like(x)
    with pytest.raises(TypeError):
        _swiftunet.forward(object(), x, t, out, 2, 3, 8, 8)
    with pytest.raises(TypeError):
        _swiftunet.forward(h, x.astype(np.float64), t, out, 2, 3, 8, 8)
    with pytest.raises(TypeError):
        _swiftunet.forward(h, x, t.astype(np.int32), out, 2, 3, 8, 8)
    with pytest.raises(ValueError):
        _swiftunet.forward(h, x, t, out, 2, 3, 8, 16)  # sizes do not match the buffers
    with pytest.raises(ValueError):
        _swiftunet.forward(h, x, t, out, 2**40, 2**40, 2**40, 2**40)
    with pytest.raises(ValueError):
        _swiftunet.forward(h, x, t, out, -1, 3, 8, 8)
    with pytest.raises(ValueError):
        _swiftunet.forward(h, x, t, x, 2, 3, 8, 8)  # out overlaps x
    with pytest.raises(TypeError):
        _swiftunet.forward(h, x[..., :4].copy(), t, out[..., ::2], 2, 3, 8, 4)  # strided out
    ro = np.zeros_like(x)
    ro.flags.writeable = False
    with pytest.raises(TypeError):
        _swiftunet.forward(h, x, t, ro, 2, 3, 8, 8)
    with pytest.raises(ValueError):  # the library checks the timesteps as well
        _swiftunet.forward(h, x, np.array([-5, 1], np.int64), out, 2, 3, 8, 8)
    with pytest.raises(IndexError):
        _swiftunet.get_param(h, 10**6, np.zeros(1, np.float32))
    with pytest.raises(IndexError):
        _swiftunet.get_param(h, -1, np.zeros(1, np.float32))
    with pytest.raises(ValueError):
        _swiftunet.get_param(h, 0, np.zeros(1, np.float32))
    with pytest.raises(ValueError):
        _swiftunet.set_params(h, [])
    with pytest.raises(ValueError):  # the library rejects non-finite values
        sd = model.state_dict()
        sd["out_conv.bias"][1] = np.inf
        _swiftunet.set_params(h, list(sd.values()))
    with pytest.raises(ValueError):
        _swiftunet.create(8, 3, (16,), 16, 0)
    with pytest.raises(ValueError):
        _swiftunet.create(8, 3, (16, 32), 16, -1)


# ---------------------------------------------------------------------------
# threads and the GIL

# A configuration whose forward takes a while (about 0.1-0.3 s here).
SLOW = dict(image_size=32, channels=3, hidden_dims=[32, 64], time_dim=32)


def test_gil_released_two_models_overlap(restore_threads):
    swiftunet.set_num_threads(1)
    models = [swiftunet.DiffusionModel(**SLOW, seed=s) for s in (0, 1)]
    x = rand_x(b=8, h=32, w=32)
    t = np.arange(8)
    for m in models:
        m(x, t)  # warm up
    start = time.perf_counter()
    models[0](x, t)
    single = time.perf_counter() - start
    # Enough calls that each thread runs ~0.5 s however fast this CPU is.
    reps = max(3, int(0.5 / max(single, 1e-3)))
    barrier = threading.Barrier(3)
    intervals = [[], []]
    ticks = []

    def work(i):
        barrier.wait()
        for _ in range(reps):
            start = time.perf_counter()
            models[i](x, t)
            intervals[i].append((start, time.perf_counter()))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    barrier.wait()
    while any(th.is_alive() for th in threads):
        ticks.append(time.perf_counter())  # the main thread runs Python meanwhile
        time.sleep(0.001)
    for th in threads:
        th.join()

    # The calls of the two threads overlap in time for much of the run ...
    windows = [(max(a[0], b[0]), min(a[1], b[1])) for a in intervals[0] for b in intervals[1]]
    windows = [w for w in windows if w[1] > w[0]]
    together = sum(hi - lo for lo, hi in windows)
    busy = min(sum(e - s for s, e in iv) for iv in intervals)
    assert together > 0.3 * busy, (together, busy)
    # ... and that is not one thread waiting for the GIL while the other computes
    # (which also looks like overlapping intervals from Python): the main thread
    # kept running Python code inside the overlaps, about once a millisecond.
    # Counted over the whole run, so that one scheduling delay on a busy
    # machine does not decide the outcome; with the GIL held there would be none.
    inside = sum(1 for s in ticks if any(lo < s < hi for lo, hi in windows))
    assert inside > 0.2 * together / 0.001, (inside, together)


def test_gil_released_python_runs_during_forward():
    # The worker runs forwards back to back and records when each ran; the main
    # thread keeps ticking. Independent of how fast this CPU is: the worker goes
    # on until enough ticks landed inside forwards (or a generous time cap), and
    # with the GIL held through a forward no tick could land inside one.
    m = swiftunet.DiffusionModel(**SLOW)
    x = rand_x(b=8, h=32, w=32)
    t = np.arange(8)
    m(x, t)
    started = threading.Event()
    stop = threading.Event()
    intervals = []
    ticks = []

    def work():
        started.set()
        while not stop.is_set():
            lo = time.perf_counter()
            m(x, t)
            intervals.append((lo, time.perf_counter()))

    def ticks_inside():
        spans = list(intervals)
        return sum(1 for s in ticks if any(lo < s < hi for lo, hi in spans))

    th = threading.Thread(target=work)
    th.start()
    started.wait()
    deadline = time.perf_counter() + 30.0
    try:
        while time.perf_counter() < deadline:
            ticks.append(time.perf_counter())
            time.sleep(0.001)
            if len(ticks) % 50 == 0 and len(intervals) >= 2 and ticks_inside() >= 40:
                break
    finally:
        stop.set()
        th.join()
    inside = ticks_inside()
    # The main thread kept running Python code while the forwards ran.
    assert inside >= 40, (inside, len(ticks), len(intervals))
    assert inside >= 0.5 * len(ticks), (inside, len(ticks))


def test_concurrent_forward_on_one_model_matches_sequential():
    m = swiftunet.DiffusionModel(16, 3, hidden_dims=[16, 32, 64], time_dim=32, seed=11)
    inputs = [(rand_x(b=2, h=16, w=16, seed=i), np.array([i, 100 * i + 1])) for i in range(8)]
    sequential = [m(x, t) for x, t in inputs]
    results = [[None] * len(inputs) for _ in range(4)]
    errors = []
    barrier = threading.Barrier(4)

    def work(k):
        try:
            barrier.wait()
            for rep in range(3):
                for i in range(len(inputs)):
                    j = (i + k + rep) % len(inputs)
                    x, t = inputs[j]
                    y = m(x, t)
                    if results[k][j] is None:
                        results[k][j] = y
                    elif not np.array_equal(results[k][j], y):
                        errors.append((k, j, "changed between repeats"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for k in range(4):
        for j in range(len(inputs)):
            np.testing.assert_array_equal(results[k][j], sequential[j])


def test_concurrent_load_state_dict_and_forward():
    """Parameter updates wait for running forwards: each output is the output
    of one complete set of weights, never a mix."""
    a, b = small_model(seed=1), small_model(seed=2)
    sda, sdb = a.state_dict(), b.state_dict()
    x, t = rand_x(b=2), [5, 6]
    ya, yb = a(x, t), b(x, t)
    m = small_model(seed=1)
    stop = threading.Event()
    seen = []

    def reader():
        while not stop.is_set():
            seen.append(m(x, t))

    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(20):
            m.load_state_dict(sdb if i % 2 == 0 else sda)
    finally:
        stop.set()
        th.join()
    assert seen
    for y in seen:
        assert np.array_equal(y, ya) or np.array_equal(y, yb)


def test_delete_model_while_forward_runs():
    m = swiftunet.DiffusionModel(**SLOW)
    handle = m._handle
    x = rand_x(b=8, h=32, w=32)
    t = np.arange(8)
    want = m(x, t)
    out = np.empty_like(x)
    started = threading.Event()
    errors = []

    def work():
        try:
            started.set()
            _swiftunet.forward(handle_box.pop(), x, t, out, 8, 3, 32, 32)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    # The thread takes the only other reference out of handle_box; once the
    # model object and `handle` are dropped here, the running call is the
    # last user of the Swift model.
    handle_box = [handle]
    th = threading.Thread(target=work)
    th.start()
    started.wait()
    del m, handle
    gc.collect()
    th.join()
    assert not errors, errors
    np.testing.assert_array_equal(out, want)


def test_delete_model_object_while_forward_runs_public_api():
    m = swiftunet.DiffusionModel(**SLOW)
    x = rand_x(b=8, h=32, w=32)
    results = []
    th = threading.Thread(target=lambda f: results.append(f(x, 3)), args=(m.forward,))
    th.start()
    del m
    gc.collect()
    th.join()
    assert len(results) == 1 and np.isfinite(results[0]).all()


def test_many_models_created_and_freed():
    for seed in range(50):
        m = small_model(seed=seed)
        m(rand_x(b=1), 1)
        del m
    gc.collect()
