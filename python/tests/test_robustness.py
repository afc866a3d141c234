"""No input may crash the interpreter or corrupt a model (docs/model.md section 3).

Each test here fails if the protection it is about is removed:

* argument checks happen in Python, *before* Swift is entered (the binding is
  replaced by a stub that fails the test if it is called), and each error is a
  ValueError/TypeError whose message names the argument;
* absurd sizes give MemoryError, refused before anything is allocated (run in
  a child process with an address-space limit, so a regression is a failed
  test rather than an OOM-killed machine);
* NaN/Inf inputs propagate, batch 0 works;
* failed weight loads leave the model bit-identical;
* hostile safetensors files raise ValueError (needs DiffusionModel.save/load
  from swiftunet/io.py; those tests are skipped, with a reason, until it exists);
* threads: concurrent forwards equal sequential ones, the GIL is released,
  error messages stay per thread, and dropping a model in use is safe.

The inputs and the exception each gets are tabulated in docs/robustness.md.
"""

import gc
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import swiftunet
import swiftunet.model as su_model
from swiftunet import _swiftunet

# L = 1 (sizes are multiples of 2) and L = 2 (multiples of 4) tiny models.
TINY = dict(image_size=8, channels=3, hidden_dims=[8, 16], time_dim=8)
TINY2 = dict(image_size=8, channels=3, hidden_dims=[8, 16, 16], time_dim=8)


def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.fixture(scope="module")
def model():
    return swiftunet.DiffusionModel(**TINY2, seed=3)


class _NoSwift:
    """Stands in for the binding: any use means Swift would have been entered."""

    def __getattr__(self, name):
        def entered(*args, **kwargs):
            raise AssertionError(f"_swiftunet.{name} was called: the bad argument reached Swift")

        return entered


@pytest.fixture
def no_swift(monkeypatch):
    monkeypatch.setattr(su_model, "_swiftunet", _NoSwift())


def raises_naming(exc, pattern, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} does not match {pattern!r}"
    return info.value


# ---------------------------------------------------------------------------
# forward: x and t are checked before Swift


def _x(shape, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


BAD_X = [
    # (id, x, exception, the message must match)
    ("ndim3", _x((3, 8, 8)), ValueError, r"\bx\b.*4-D"),
    ("ndim5", _x((1, 1, 3, 8, 8)), ValueError, r"\bx\b.*4-D"),
    ("ndim0", np.float32(1.0), ValueError, r"\bx\b.*4-D"),
    ("channels", _x((2, 4, 8, 8)), ValueError, r"\bx\b.*3 channels"),
    ("channels0", _x((2, 0, 8, 8)), ValueError, r"\bx\b.*3 channels"),
    ("height_not_multiple", _x((2, 3, 6, 8)), ValueError, r"height.*multiple.*4"),
    ("width_not_multiple", _x((2, 3, 8, 10)), ValueError, r"width.*multiple.*4"),
    ("height0", _x((2, 3, 0, 8)), ValueError, r"height.*positive"),
    ("width0", _x((2, 3, 8, 0)), ValueError, r"width.*positive"),
    ("batch0_bad_height", _x((0, 3, 5, 8)), ValueError, r"height"),
    ("object", np.empty((2, 3, 8, 8), dtype=object), TypeError, r"\bx\b.*dtype"),
    ("object_none", None, TypeError, r"\bx\b"),
    ("complex", _x((2, 3, 8, 8), np.complex64), TypeError, r"\bx\b.*complex"),
    ("string", np.full((2, 3, 8, 8), "a"), TypeError, r"\bx\b.*dtype"),
    ("bytes", np.full((2, 3, 8, 8), b"a"), TypeError, r"\bx\b.*dtype"),
    ("bool", _x((2, 3, 8, 8), bool), TypeError, r"\bx\b.*bool"),
    ("datetime", np.zeros((2, 3, 8, 8), "datetime64[s]"), TypeError, r"\bx\b.*dtype"),
    ("void", np.zeros((2, 3, 8, 8), "V4"), TypeError, r"\bx\b.*dtype"),
    ("structured", np.zeros((2, 3, 8, 8), [("a", "f4")]), TypeError, r"\bx\b.*dtype"),
    ("ragged_list", [[1.0, 2.0], [3.0]], TypeError, r"\bx\b"),
    ("string_scalar", "images", TypeError, r"\bx\b"),
]


@pytest.mark.parametrize("x,exc,pattern", [c[1:] for c in BAD_X], ids=[c[0] for c in BAD_X])
def test_bad_x_rejected_before_swift(model, no_swift, x, exc, pattern):
    raises_naming(exc, pattern, model.forward, x, 1)


BAD_T = [
    # (id, t, exception, pattern); x has batch 2
    ("batch_mismatch_long", np.arange(3), ValueError, r"len\(t\) = 3.*batch = 2"),
    ("batch_mismatch_short", [1], ValueError, r"len\(t\) = 1.*batch = 2"),
    ("batch_mismatch_empty", [], ValueError, r"len\(t\) = 0.*batch = 2"),
    ("negative", [1, -1], ValueError, r"\bt\b.*>= 0.*-1"),
    ("negative_scalar", -5, ValueError, r"\bt\b.*-5"),
    ("negative_int8", np.array([3, -128], np.int8), ValueError, r"\bt\b.*-128"),
    ("too_large", [0, 2**53 + 1], ValueError, r"\bt\b.*2\*\*53"),
    ("too_large_scalar", 2**53 + 1, ValueError, r"\bt\b.*2\*\*53"),
    ("too_large_uint64", np.array([0, 2**64 - 1], np.uint64), ValueError, r"\bt\b.*2\*\*53"),
    ("too_large_int64", np.array([2**63 - 1, 0], np.int64), ValueError, r"\bt\b.*2\*\*53"),
    ("python_int_beyond_int64", 2**64, ValueError, r"\bt\b"),
    ("float_dtype", np.array([1.0, 2.0]), TypeError, r"\bt\b.*integer dtype.*float64"),
    ("float_list", [1.0, 2.0], TypeError, r"\bt\b.*integer"),
    ("float_scalar", 1.5, TypeError, r"\bt\b.*integer"),
    ("float_nan", float("nan"), TypeError, r"\bt\b.*integer"),
    ("bool_scalar", True, TypeError, r"\bt\b.*bool"),
    ("bool_array", np.array([True, False]), TypeError, r"\bt\b.*bool"),
    ("complex", np.array([1 + 0j, 2]), TypeError, r"\bt\b.*complex"),
    ("object", np.array([1, None], dtype=object), TypeError, r"\bt\b.*object"),
    ("string", "12", TypeError, r"\bt\b"),
    ("none", None, TypeError, r"\bt\b"),
    ("two_d", np.zeros((2, 1), np.int64), ValueError, r"\bt\b.*1-D"),
    ("ragged", [[1], [2, 3]], TypeError, r"\bt\b"),
]


@pytest.mark.parametrize("t,exc,pattern", [c[1:] for c in BAD_T], ids=[c[0] for c in BAD_T])
def test_bad_t_rejected_before_swift(model, no_swift, t, exc, pattern):
    raises_naming(exc, pattern, model.forward, rand((2, 3, 8, 8)), t)


def test_timestep_bounds_are_inclusive(model):
    x = rand((3, 3, 8, 8))
    y = model(x, np.array([0, 2**53, 1000], np.uint64))
    assert y.shape == x.shape and np.isfinite(y).all()


def _readonly(shape):
    a = np.zeros(shape, np.float32)
    a.flags.writeable = False
    return a


BAD_OUT = [
    ("wrong_shape", lambda: np.zeros((2, 3, 8, 4), np.float32), ValueError, r"\bout\b.*shape"),
    ("wrong_batch", lambda: np.zeros((1, 3, 8, 8), np.float32), ValueError, r"\bout\b.*shape"),
    ("flat", lambda: np.zeros(2 * 3 * 8 * 8, np.float32), ValueError, r"\bout\b.*shape"),
    ("float64", lambda: np.zeros((2, 3, 8, 8), np.float64), TypeError, r"\bout\b.*float32.*float64"),
    ("float16", lambda: np.zeros((2, 3, 8, 8), np.float16), TypeError, r"\bout\b.*float32"),
    ("int32", lambda: np.zeros((2, 3, 8, 8), np.int32), TypeError, r"\bout\b.*float32"),
    ("big_endian", lambda: np.zeros((2, 3, 8, 8), ">f4"), TypeError, r"\bout\b.*float32"),
    ("sliced", lambda: np.zeros((2, 3, 8, 16), np.float32)[..., ::2], ValueError, r"\bout\b.*C-contiguous"),
    ("transposed", lambda: np.zeros((8, 8, 3, 2), np.float32).T, ValueError, r"\bout\b.*C-contiguous"),
    ("fortran", lambda: np.zeros((2, 3, 8, 8), np.float32, order="F"), ValueError, r"\bout\b.*C-contiguous"),
    ("readonly", lambda: _readonly((2, 3, 8, 8)), ValueError, r"\bout\b.*writable"),
    ("list", lambda: np.zeros((2, 3, 8, 8), np.float32).tolist(), TypeError, r"\bout\b.*ndarray"),
    ("memoryview", lambda: memoryview(np.zeros((2, 3, 8, 8), np.float32)), TypeError, r"\bout\b.*ndarray"),
]


@pytest.mark.parametrize("make_out,exc,pattern", [c[1:] for c in BAD_OUT], ids=[c[0] for c in BAD_OUT])
def test_bad_out_rejected_before_swift(model, no_swift, make_out, exc, pattern):
    out = make_out()
    before = np.array(out, copy=True) if isinstance(out, np.ndarray) else None
    raises_naming(exc, pattern, model.forward, rand((2, 3, 8, 8)), [1, 2], out=out)
    if before is not None:
        assert np.array_equal(out, before), "a rejected out was written to"


def test_unaligned_out_rejected(model, no_swift):
    raw = np.zeros(2 * 3 * 8 * 8 * 4 + 1, np.uint8)
    out = raw[1:].view(np.float32).reshape(2, 3, 8, 8)
    assert not out.flags.aligned
    raises_naming(ValueError, r"\bout\b.*aligned", model.forward, rand((2, 3, 8, 8)), [1, 2], out=out)


def test_out_overlapping_x_is_still_correct(model):
    """out sharing memory with x (in place, or shifted by one image) must give
    the result of a separate output, not read half-overwritten input."""
    x = rand((3, 3, 8, 8), seed=4)
    t = [1, 2, 3]
    want = model(x, t)
    buf = np.concatenate([x, np.zeros((1, 3, 8, 8), np.float32)])
    got = model(buf[:3], t, out=buf[1:])  # out starts one image after x
    np.testing.assert_array_equal(got, want)
    same = x.copy()
    np.testing.assert_array_equal(model(same, t, out=same), want)


# ---------------------------------------------------------------------------
# the constructor: configurations outside docs/model.md's valid set

BAD_CONFIG = [
    # (id, overrides of TINY, exception, pattern)
    ("hidden_empty", dict(hidden_dims=[]), ValueError, r"hidden_dims.*at least 2"),
    ("hidden_short", dict(hidden_dims=[16]), ValueError, r"hidden_dims.*at least 2"),
    ("hidden_not_multiple_of_8", dict(hidden_dims=[12, 16]), ValueError, r"hidden_dims\[0\].*multiple of 8"),
    ("hidden_last_not_multiple", dict(hidden_dims=[16, 20]), ValueError, r"hidden_dims\[1\]"),
    ("hidden_zero", dict(hidden_dims=[0, 16]), ValueError, r"hidden_dims\[0\]"),
    ("hidden_negative", dict(hidden_dims=[16, -16]), ValueError, r"hidden_dims\[1\]"),
    ("hidden_huge", dict(hidden_dims=[16, 2**70]), ValueError, r"hidden_dims\[1\]"),
    ("hidden_too_many", dict(image_size=2**17, hidden_dims=[8] * 18), ValueError, r"hidden_dims"),
    ("hidden_float", dict(hidden_dims=[16.0, 32]), TypeError, r"hidden_dims\[0\].*int"),
    ("hidden_bool", dict(hidden_dims=[16, True]), TypeError, r"hidden_dims\[1\].*bool"),
    ("hidden_str_item", dict(hidden_dims=[16, "32"]), TypeError, r"hidden_dims\[1\]"),
    ("hidden_none_item", dict(hidden_dims=[16, None]), TypeError, r"hidden_dims\[1\]"),
    ("hidden_string", dict(hidden_dims="16,32"), TypeError, r"hidden_dims"),
    ("hidden_int", dict(hidden_dims=16), TypeError, r"hidden_dims"),
    ("hidden_none", dict(hidden_dims=None), TypeError, r"hidden_dims"),
    ("hidden_2d_array", dict(hidden_dims=np.array([[16, 32]])), TypeError, r"hidden_dims\[0\]"),
    ("time_odd", dict(time_dim=7), ValueError, r"time_dim.*even"),
    ("time_small", dict(time_dim=2), ValueError, r"time_dim.*>= 4"),
    ("time_zero", dict(time_dim=0), ValueError, r"time_dim"),
    ("time_negative", dict(time_dim=-8), ValueError, r"time_dim"),
    ("time_huge", dict(time_dim=2**40), ValueError, r"time_dim"),
    ("time_float", dict(time_dim=8.0), TypeError, r"time_dim.*int"),
    ("time_bool", dict(time_dim=True), TypeError, r"time_dim.*bool"),
    ("channels_zero", dict(channels=0), ValueError, r"channels.*>= 1"),
    ("channels_negative", dict(channels=-3), ValueError, r"channels"),
    ("channels_huge", dict(channels=2**63), ValueError, r"channels"),
    ("channels_float", dict(channels=3.0), TypeError, r"channels.*int"),
    ("channels_bool", dict(channels=True), TypeError, r"channels.*bool"),
    ("channels_str", dict(channels="3"), TypeError, r"channels"),
    ("image_zero", dict(image_size=0), ValueError, r"image_size.*positive multiple"),
    ("image_negative", dict(image_size=-8), ValueError, r"image_size"),
    ("image_not_multiple", dict(image_size=6, hidden_dims=[8, 16, 16]), ValueError, r"image_size.*multiple.*4"),
    ("image_float", dict(image_size=8.5), TypeError, r"image_size.*int"),
    ("image_none", dict(image_size=None), TypeError, r"image_size"),
    ("image_huge", dict(image_size=2**64), ValueError, r"image_size"),
    ("seed_negative", dict(seed=-1), ValueError, r"seed"),
    ("seed_too_big", dict(seed=2**64), ValueError, r"seed"),
    ("seed_float", dict(seed=1.5), TypeError, r"seed"),
    ("seed_bool", dict(seed=False), TypeError, r"seed"),
]


@pytest.mark.parametrize("overrides,exc,pattern", [c[1:] for c in BAD_CONFIG], ids=[c[0] for c in BAD_CONFIG])
def test_bad_config_rejected_before_swift(no_swift, overrides, exc, pattern):
    raises_naming(exc, pattern, swiftunet.DiffusionModel, **dict(TINY, **overrides))


def test_numpy_integers_accepted_as_config():
    m = swiftunet.DiffusionModel(np.int64(8), np.uint8(3), hidden_dims=np.array([8, 16]), time_dim=np.int32(8))
    assert m.hidden_dims == [8, 16]


# ---------------------------------------------------------------------------
# absurd sizes: MemoryError, before anything big is allocated

# Run in a child so that a regression (the library trying to allocate and
# touch tens of GB) is a failed test and not an OOM-killed pytest or machine:
# the child's address space is capped, and its peak RSS is reported.
_MEMORY_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    import swiftunet

    def peak_mb():
        # VmHWM, not ru_maxrss: the latter survives exec, so it would report
        # the (large) pytest process this child was forked from.
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    case = sys.argv[2]
    result = {}
    try:
        if case == "weights":
            swiftunet.DiffusionModel(32, 3, hidden_dims=[65536, 65536])
        elif case == "weights_16k":
            swiftunet.DiffusionModel(32, 3, hidden_dims=[16384, 16384], time_dim=16384)
        elif case == "weights_medium":
            # ~4.8 GB of weights: fits in the machine, not under the child's limit.
            swiftunet.DiffusionModel(32, 3, hidden_dims=[4096, 4096], time_dim=4)
        else:
            m = swiftunet.DiffusionModel(2, 1, hidden_dims=[8, 16], time_dim=4)
            x_small = np.ones((1, 1, 2, 2), np.float32)
            before = m(x_small, 3)
            if case == "batch":
                # 2**22 images of 1x2x2: x is 64 MB, the activations ~54 GB.
                x = np.ones((1 << 22, 1, 2, 2), np.float32)
                t = np.zeros(1 << 22, np.int64)
            elif case in ("batch_medium", "sample_medium"):
                # 400,000 images: x is 6 MB, the activations ~5 GB, which fit in
                # the machine but not under the child's address-space limit.
                x = np.ones((400_000, 1, 2, 2), np.float32)
                t = np.zeros(400_000, np.int64)
            else:
                # One 1x4096x4096 image: x is 64 MB, the activations ~45 GB.
                x = np.ones((1, 1, 4096, 4096), np.float32)
                t = 0
            before_rss = peak_mb()
            try:
                if case == "sample_medium":
                    swiftunet.sample(m, x_T=x, steps=2, schedule=swiftunet.NoiseSchedule.cosine(10))
                else:
                    m(x, t)
                result["outcome"] = "returned"
            except Exception as exc:
                result["outcome"] = type(exc).__name__
                result["message"] = str(exc)
            result["rss_growth_mb"] = peak_mb() - before_rss
            del x
            # The model still works, and gives the same answer, afterwards.
            result["still_works"] = bool(np.array_equal(m(x_small, 3), before))
        result.setdefault("outcome", "returned")
    except Exception as exc:
        result["outcome"] = type(exc).__name__
        result["message"] = str(exc)
    result["peak_mb"] = peak_mb()
    print(json.dumps(result))
    """
)


def _run_memory_child(case, limit_gb=4):
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(limit_gb << 30), case],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case,limit_gb", [("weights", 4), ("weights_16k", 4), ("weights_medium", 2)])
def test_absurd_model_is_memory_error(case, limit_gb):
    """weights_medium needs less than the machine has but more than the
    process may take (RLIMIT_AS): refused up front too, like a request
    beyond MemAvailable, instead of being allocated until something gives."""
    r = _run_memory_child(case, limit_gb)
    assert r["outcome"] == "MemoryError", r
    assert "memory" in r["message"].lower() or "allocate" in r["message"].lower(), r
    # Refused before allocating: the child stayed small.
    assert r["peak_mb"] < 1500, r


@pytest.mark.parametrize("case,limit_gb", [("batch", 4), ("image", 4), ("batch_medium", 2), ("sample_medium", 2)])
def test_absurd_forward_is_memory_error(case, limit_gb):
    r = _run_memory_child(case, limit_gb)
    assert r["outcome"] == "MemoryError", r
    assert r["still_works"] is True, r
    # The activations were refused up front, not allocated piecewise until
    # the address-space limit stopped them.
    assert r["rss_growth_mb"] < 500, r


# ---------------------------------------------------------------------------
# NaN, Inf, batch 0


def test_nan_and_inf_propagate_without_exception(model):
    x = rand((3, 3, 8, 8), seed=1)
    t = [5, 6, 7]
    clean = model(x, t)
    assert np.isfinite(clean).all()
    for bad in (np.nan, np.inf, -np.inf):
        y_in = x.copy()
        y_in[1, 2, 3, 4] = bad
        y = model(y_in, t)
        assert y.dtype == np.float32 and y.shape == x.shape
        assert np.isnan(y[1]).any(), bad
        # Images are independent: the poisoned one does not leak into the others.
        np.testing.assert_array_equal(y[0], clean[0])
        np.testing.assert_array_equal(y[2], clean[2])
    all_nan = np.full((1, 3, 8, 8), np.nan, np.float32)
    assert np.isnan(model(all_nan, 0)).all()


def test_float64_overflow_to_inf_propagates(model):
    x = rand((1, 3, 8, 8)).astype(np.float64)
    x[0, 0, 0, 0] = 1e300  # becomes inf in float32
    with np.errstate(over="ignore"):  # numpy's cast warns of the overflow, as np.asarray would
        y = model(x, 1)
    assert y.dtype == np.float32 and np.isnan(y).any()


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (0, 3, 4, 12)])
def test_batch_zero_returns_empty(model, shape):
    x = np.zeros(shape, np.float32)
    y = model(x, np.zeros(0, np.int64))
    assert y.shape == shape and y.dtype == np.float32
    out = np.zeros(shape, np.float32)
    assert model(x, [], out=out) is out
    assert model(x.astype(np.float64), np.array([], np.uint8)).shape == shape


# ---------------------------------------------------------------------------
# weights: a failed load leaves the model bit-identical


def _bits(sd):
    return {k: v.view(np.uint32).copy() for k, v in sd.items()}


def _fingerprint(m):
    x = rand((2, 3, 8, 8), seed=11)
    return _bits(m.state_dict()), m(x, [3, 900]).view(np.uint32).copy()


def _assert_unchanged(m, fp):
    bits, y = _fingerprint(m)
    assert list(bits) == list(fp[0])
    for k in bits:
        assert np.array_equal(bits[k], fp[0][k]), f"{k} changed"
    assert np.array_equal(y, fp[1]), "forward output changed"


def _good_sd():
    return swiftunet.DiffusionModel(**TINY2, seed=99).state_dict()


def _sd_missing():
    sd = _good_sd()
    del sd["bottleneck.attn.qkv.weight"]
    return sd


def _sd_unexpected():
    sd = _good_sd()
    sd["bottleneck.attn.extra"] = np.zeros(3, np.float32)
    return sd


def _sd_set(name, value):
    sd = _good_sd()
    sd[name] = value
    return sd


def _sd_last(value_fn):
    """A good state_dict whose *last* entry is bad, so a loader that copies
    as it goes would already have changed everything else."""
    sd = _good_sd()
    sd["out_conv.bias"] = value_fn(sd["out_conv.bias"])
    return sd


def _with(arr, index, value, dtype=None):
    a = np.array(arr, dtype=dtype or arr.dtype, copy=True)
    a.flat[index] = value
    return a


class _ExplodingMapping(dict):
    """A mapping that fails while being read, after some entries were read."""

    def __getitem__(self, key):
        if key == "out_norm.weight":
            raise RuntimeError("storage went away")
        return super().__getitem__(key)


BAD_SD = [
    # (id, make state_dict, strict, exception, pattern)
    ("missing", _sd_missing, True, ValueError, r"missing keys: bottleneck\.attn\.qkv\.weight"),
    ("unexpected", _sd_unexpected, True, ValueError, r"unexpected keys: bottleneck\.attn\.extra"),
    ("non_str_key", lambda: dict(_good_sd(), **{}) | {3: np.zeros(1)}, True, ValueError, r"unexpected keys: 3"),
    ("misshaped", lambda: _sd_set("init_conv.weight", np.zeros((8, 3, 3), np.float32)), True, ValueError,
     r"init_conv\.weight.*shape \[8, 3, 3, 3\]"),
    ("transposed", lambda: _sd_last(lambda b: b.reshape(1, 3)), True, ValueError, r"out_conv\.bias.*shape"),
    ("scalar", lambda: _sd_last(lambda b: np.float32(0)), True, ValueError, r"out_conv\.bias.*shape"),
    ("nan_last", lambda: _sd_last(lambda b: _with(b, 2, np.nan)), True, ValueError, r"out_conv\.bias.*NaN"),
    ("inf_last", lambda: _sd_last(lambda b: _with(b, 0, np.inf)), True, ValueError, r"out_conv\.bias"),
    ("neg_inf_first", lambda: _sd_set("time_mlp.fc1.weight", _with(_good_sd()["time_mlp.fc1.weight"], 0, -np.inf)),
     True, ValueError, r"time_mlp\.fc1\.weight"),
    ("float64_overflow", lambda: _sd_last(lambda b: _with(b, 1, 1e300, np.float64)), True, ValueError,
     r"out_conv\.bias.*too large"),
    ("string_array", lambda: _sd_last(lambda b: np.array(["a", "b", "c"])), True, TypeError, r"out_conv\.bias.*dtype"),
    ("object_none", lambda: _sd_last(lambda b: None), True, TypeError, r"out_conv\.bias"),
    ("complex", lambda: _sd_last(lambda b: b.astype(np.complex64)), True, TypeError, r"out_conv\.bias.*complex"),
    ("bool", lambda: _sd_last(lambda b: np.ones(3, bool)), True, TypeError, r"out_conv\.bias.*bool"),
    ("ragged_list", lambda: _sd_last(lambda b: [[1.0], [2.0, 3.0]]), True, (TypeError, ValueError), r"out_conv\.bias"),
    ("dict_value", lambda: _sd_last(lambda b: {"a": 1}), True, TypeError, r"out_conv\.bias"),
    ("nan_non_strict", lambda: {"out_conv.bias": np.array([0.0, np.nan, 0.0], np.float32)}, False, ValueError,
     r"out_conv\.bias"),
    ("misshaped_non_strict", lambda: {"out_conv.weight": np.zeros((3, 8, 3), np.float32)}, False, ValueError,
     r"out_conv\.weight"),
    ("not_a_mapping", lambda: list(_good_sd().items()), True, TypeError, r"state_dict"),
    ("exploding_mapping", lambda: _ExplodingMapping(_good_sd()), True, RuntimeError, r"storage went away"),
]


@pytest.mark.parametrize("make,strict,exc,pattern", [c[1:] for c in BAD_SD], ids=[c[0] for c in BAD_SD])
def test_failed_load_state_dict_leaves_model_bit_identical(make, strict, exc, pattern):
    m = swiftunet.DiffusionModel(**TINY2, seed=5)
    fp = _fingerprint(m)
    sd = make()
    raises_naming(exc, pattern, m.load_state_dict, sd, strict=strict)
    _assert_unchanged(m, fp)
    # ... and the model still accepts a good load afterwards.
    m.load_state_dict(_good_sd())
    assert not np.array_equal(_fingerprint(m)[1], fp[1])


def test_load_state_dict_does_not_alias_the_callers_arrays():
    m = swiftunet.DiffusionModel(**TINY2, seed=5)
    sd = _good_sd()
    m.load_state_dict(sd)
    fp = _fingerprint(m)
    for v in sd.values():
        v[...] = np.nan  # the caller scribbles over its arrays afterwards
    _assert_unchanged(m, fp)


# ---------------------------------------------------------------------------
# hostile safetensors files (DiffusionModel.save / DiffusionModel.load, io.py)

def _io_functions():
    """(save(model, path), load(path)): DiffusionModel.save/load when they
    exist, else swiftunet.io.save_model/load_model, else None."""
    cls = swiftunet.DiffusionModel
    if callable(getattr(cls, "load", None)) and callable(getattr(cls, "save", None)):
        return (lambda m, p: m.save(p)), cls.load
    try:
        from swiftunet import io as su_io
    except ImportError:
        return None
    return su_io.save_model, su_io.load_model


IO = _io_functions()
HAVE_IO = IO is not None
needs_io = pytest.mark.skipif(
    not HAVE_IO, reason="DiffusionModel.save/load (python/swiftunet/io.py) are not implemented yet"
)


def _save(m, path):
    IO[0](m, str(path))


def _load(path):
    return IO[1](str(path))


def _parse(blob):
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _assemble(header, data, pad=True):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    if not HAVE_IO:
        pytest.skip("DiffusionModel.save/load (python/swiftunet/io.py) are not implemented yet")
    m = swiftunet.DiffusionModel(**TINY, seed=8)
    path = tmp_path_factory.mktemp("st") / "good.safetensors"
    _save(m, path)
    blob = path.read_bytes()
    header, data = _parse(blob)
    tensors = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    return dict(blob=blob, header=header, data=data, tensors=tensors, model=m)


def _mutate(saved, fn):
    header = json.loads(json.dumps(saved["header"]))
    data = saved["data"]
    result = fn(header, data, saved["tensors"])
    if isinstance(result, bytes):
        return result
    header, data = result
    return _assemble(header, data)


def _set(field, value, which=0):
    def fn(h, d, names):
        h[names[which]][field] = value
        return h, d

    return fn


def _first_two_overlap(h, d, names):
    a, b = names[0], names[1]
    h[b]["data_offsets"] = list(h[a]["data_offsets"])
    h[b]["shape"] = list(h[a]["shape"])
    return h, d


def _shift_offsets_beyond(h, d, names):
    last = names[-1]
    s, e = h[last]["data_offsets"]
    h[last]["data_offsets"] = [s + len(d), e + len(d)]
    return h, d


def _gap(h, d, names):
    # Start the first tensor 4 bytes late: offsets no longer tile the buffer.
    s, e = h[names[0]]["data_offsets"]
    h[names[0]]["data_offsets"] = [s + 4, e + 4]
    return h, d + b"\0\0\0\0"


def _overflowing_shape(h, d, names):
    h[names[0]]["shape"] = [2**32, 2**32, 2**32, 2**32]
    return h, d


def _shape_product_wraps(h, d, names):
    # 2**62 * 4 == 2**64: the byte size wraps to 0 in 64-bit arithmetic.
    h[names[0]]["shape"] = [2**62, 4]
    h[names[0]]["data_offsets"] = [0, 0]
    return h, d


def _drop_metadata(h, d, names):
    h.pop("__metadata__", None)
    return h, d


def _metadata(value):
    def fn(h, d, names):
        h["__metadata__"] = value
        return h, d

    return fn


def _metadata_field(key, value):
    def fn(h, d, names):
        meta = dict(h.get("__metadata__") or {})
        meta[key] = value
        h["__metadata__"] = meta
        return h, d

    return fn


def _drop_tensor(h, d, names):
    # Remove the last tensor and its bytes: a valid file, but a weight is missing.
    last = names[-1]
    s, _ = h.pop(last)["data_offsets"]
    return h, d[:s]


def _extra_tensor(h, d, names):
    h["bottleneck.attn.bonus"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(d), len(d) + 4]}
    return h, d + b"\0\0\0\0"


def _nan_weight(h, d, names):
    s, _ = h[names[0]]["data_offsets"]
    return h, d[:s] + struct.pack("<f", float("nan")) + d[s + 4 :]


def _header_len(n):
    return lambda h, d, names: struct.pack("<Q", n) + json.dumps(h).encode() + d


HOSTILE = [
    # (id, mutation returning (header, data) or raw bytes)
    ("empty_file", lambda h, d, n: b""),
    ("four_bytes", lambda h, d, n: b"\x10\0\0\0"),
    ("only_length", lambda h, d, n: struct.pack("<Q", 100)),
    ("truncated_header", lambda h, d, n: _assemble(h, d)[: 8 + 20]),
    ("truncated_data", lambda h, d, n: _assemble(h, d)[:-7]),
    ("truncated_data_half", lambda h, d, n: _assemble(h, d[: len(d) // 2])),
    ("header_len_past_eof", lambda h, d, n: _header_len(len(json.dumps(h)) + len(d) + 100)(h, d, n)),
    ("header_len_2_63", _header_len(2**63)),
    ("header_len_max", _header_len(2**64 - 1)),
    ("header_len_zero", _header_len(0)),
    ("header_not_json", lambda h, d, n: _assemble(b"{this is not json", d)),
    ("header_not_utf8", lambda h, d, n: _assemble(b'{"\xff\xfe": 1}', d)),
    ("header_is_list", lambda h, d, n: _assemble(b"[1, 2, 3]", d)),
    ("header_is_null", lambda h, d, n: _assemble(b"null", d)),
    ("entry_not_object", _set("data_offsets", None)),
    # (F64/F16/BF16 are converted when their byte sizes are right; with an
    # F32-sized buffer they are inconsistent.)
    ("dtype_f64_f32_bytes", _set("dtype", "F64")),
    ("dtype_f16_f32_bytes", _set("dtype", "F16")),
    ("dtype_i32", _set("dtype", "I32")),
    ("dtype_bool", _set("dtype", "BOOL")),
    ("dtype_lowercase", _set("dtype", "f32")),
    ("dtype_number", _set("dtype", 32)),
    ("dtype_garbage", _set("dtype", "F32; DROP TABLE")),
    ("dtype_missing", lambda h, d, n: (h, d) if h[n[0]].pop("dtype") else (h, d)),
    ("shape_wrong", _set("shape", [1, 2, 3])),
    ("shape_negative", _set("shape", [-1, 8])),
    ("shape_float", _set("shape", [2.5, 8])),
    ("shape_string", _set("shape", "big")),
    ("shape_overflow", _overflowing_shape),
    ("shape_product_wraps", _shape_product_wraps),
    ("offsets_negative", _set("data_offsets", [-8, 0])),
    ("offsets_reversed", lambda h, d, n: _set("data_offsets", list(reversed(h[n[0]]["data_offsets"])))(h, d, n)),
    ("offsets_too_many", _set("data_offsets", [0, 4, 8])),
    ("offsets_huge", _set("data_offsets", [2**63, 2**64 + 7])),
    ("offsets_beyond_data", _shift_offsets_beyond),
    ("offsets_overlap", _first_two_overlap),
    ("offsets_gap", _gap),
    ("offsets_lie_about_length", lambda h, d, n: _set("data_offsets", [0, 8])(h, d, n)),
    ("metadata_not_object", _metadata([1, 2])),
    ("metadata_non_string_value", _metadata_field("channels", 3)),
    ("metadata_bad_hidden_dims", _metadata_field("hidden_dims", "[7, 9]")),
    ("metadata_hidden_dims_floats", _metadata_field("hidden_dims", "[8.0, 16.0]")),
    ("metadata_other_hidden_dims", _metadata_field("hidden_dims", "[16, 32]")),
    ("metadata_bad_image_size", _metadata_field("image_size", "8.5")),
    ("metadata_huge_image_size", _metadata_field("image_size", str(2**80))),
    ("metadata_other_time_dim", _metadata_field("time_dim", "16")),
    ("metadata_garbage_hidden_dims", _metadata_field("hidden_dims", "not json")),
    ("metadata_bad_channels", _metadata_field("channels", "-3")),
    ("missing_tensor", _drop_tensor),
    ("unexpected_tensor", _extra_tensor),
    ("nan_weight", _nan_weight),
    ("duplicate_key", lambda h, d, n: _assemble(
        json.dumps(h)[:-1].encode() + b', "__metadata__": {}}', d)),
]


@needs_io
@pytest.mark.parametrize("mutate", [c[1] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_safetensors_raise_value_error(saved, tmp_path, mutate):
    blob = _mutate(saved, mutate)
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ValueError):
        _load(path)


@needs_io
def test_hostile_safetensors_baseline_loads(saved, tmp_path):
    """The unmutated re-assembly loads, so the hostile cases fail for their
    mutation and not for how the test writes files."""
    path = tmp_path / "same.safetensors"
    path.write_bytes(_mutate(saved, lambda h, d, n: (h, d)))
    m = _load(path)
    x = rand((1, 3, 8, 8))
    np.testing.assert_array_equal(m(x, 4), saved["model"](x, 4))


@needs_io
@pytest.mark.parametrize("mutate", [_drop_metadata, _metadata({})], ids=["no_metadata", "empty_metadata"])
def test_safetensors_without_metadata(saved, tmp_path, mutate):
    """A file without the configuration (e.g. written from a PyTorch
    state_dict): io.py infers the configuration from the weights' shapes
    (its documented choice); the result must then be the same network, or
    a ValueError."""
    path = tmp_path / "nometa.safetensors"
    path.write_bytes(_mutate(saved, mutate))
    try:
        m = _load(path)
    except ValueError:
        return
    x = rand((1, 3, 8, 8))
    np.testing.assert_array_equal(m(x, 4), saved["model"](x, 4))


_HUGE_CONFIG_CHILD = textwrap.dedent(
    """
    import json, resource, struct, sys
    limit = 3 << 29  # 1.5 GB: a regression costs at most that, not 19 GB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import swiftunet
    from swiftunet import io as su_io
    src, dst = sys.argv[1], sys.argv[2]
    blob = open(src, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    header["__metadata__"]["hidden_dims"] = "[8192, 8192]"
    header["__metadata__"]["time_dim"] = "4096"
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    open(dst, "wb").write(struct.pack("<Q", len(raw)) + raw + blob[8 + n:])
    load = getattr(swiftunet.DiffusionModel, "load", None) or su_io.load_model
    try:
        load(dst)
        outcome = "returned"
    except Exception as exc:
        outcome = type(exc).__name__
    with open("/proc/self/status") as f:  # VmHWM: ru_maxrss would include the forking parent's
        peak = [int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:")][0]
    print(json.dumps({"outcome": outcome, "peak_mb": peak}))
    """
)


@needs_io
def test_safetensors_claiming_a_huge_config_is_refused_cheaply(saved, tmp_path):
    """A small file whose __metadata__ claims hidden_dims [8192, 8192]: the
    weights in the file do not match, so the load must fail with ValueError
    *before* the ~19 GB model is built."""
    src = tmp_path / "good.safetensors"
    src.write_bytes(saved["blob"])
    proc = subprocess.run([sys.executable, "-c", _HUGE_CONFIG_CHILD, str(src), str(tmp_path / "huge.safetensors")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["outcome"] == "ValueError" and r["peak_mb"] < 500, r


@needs_io
def test_load_missing_file_and_directory(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError)):
        _load(tmp_path / "nope.safetensors")
    with pytest.raises((IsADirectoryError, ValueError, PermissionError)):
        _load(tmp_path)


# ---------------------------------------------------------------------------
# threads

JOIN_TIMEOUT = 120.0


def _run_threads(targets):
    """Starts daemon threads, joins them with a timeout; a deadlock fails the test."""
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for th in threads:
        th.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    stuck = [th for th in threads if th.is_alive()]
    assert not stuck, f"{len(stuck)} threads still running after {JOIN_TIMEOUT} s: deadlock?"


def _inputs(n, shape=(2, 3, 8, 8)):
    return [(rand(shape, seed=i), np.array([7 * i, 100 + i])) for i in range(n)]


def test_eight_threads_one_model_match_sequential():
    m = swiftunet.DiffusionModel(**TINY2, seed=21)
    inputs = _inputs(16)
    want = [m(x, t) for x, t in inputs]
    errors, barrier = [], threading.Barrier(8)

    def work(k):
        def run():
            try:
                barrier.wait()
                for rep in range(6):
                    for i in range(len(inputs)):
                        j = (i * (k + 1) + rep) % len(inputs)
                        x, t = inputs[j]
                        out = np.empty_like(x) if (i + k) % 2 else None
                        y = m(x, t, out=out)
                        if not np.array_equal(y, want[j]):
                            errors.append((k, j))
            except Exception as exc:
                errors.append(exc)

        return run

    _run_threads([work(k) for k in range(8)])
    assert not errors, errors[:5]


def test_eight_threads_several_models_match_sequential():
    configs = [TINY, TINY2, dict(TINY, hidden_dims=[16, 24], time_dim=12)]
    models = [swiftunet.DiffusionModel(**c, seed=i) for i, c in enumerate(configs)]
    inputs = _inputs(6)
    want = [[m(x, t) for x, t in inputs] for m in models]
    errors, barrier = [], threading.Barrier(8)

    def work(k):
        def run():
            try:
                barrier.wait()
                for rep in range(10):
                    mi = (k + rep) % len(models)
                    j = (k * 3 + rep) % len(inputs)
                    if not np.array_equal(models[mi](*inputs[j]), want[mi][j]):
                        errors.append((k, mi, j))
            except Exception as exc:
                errors.append(exc)

        return run

    _run_threads([work(k) for k in range(8)])
    assert not errors, errors[:5]


def test_errors_in_threads_keep_their_own_messages():
    """The library's error message is per thread: eight threads failing at
    once in Swift (negative timesteps passed straight to the binding) each get
    the message about their own call, interleaved with successful calls."""
    m = swiftunet.DiffusionModel(**TINY, seed=2)
    x = rand((1, 3, 8, 8))
    good = m(x, 1)
    errors, barrier = [], threading.Barrier(8)

    def work(k):
        def run():
            try:
                barrier.wait()
                for i in range(50):
                    out = np.empty_like(x)
                    bad = np.array([-(1000 * k + i + 1)], np.int64)
                    try:
                        _swiftunet.forward(m._handle, x, bad, out, 1, 3, 8, 8)
                        errors.append((k, i, "no error"))
                    except ValueError as exc:
                        if f"got {bad[0]}" not in str(exc):
                            errors.append((k, i, str(exc)))
                    if not np.array_equal(m(x, 1), good):
                        errors.append((k, i, "wrong result"))
            except Exception as exc:
                errors.append(exc)

        return run

    _run_threads([work(k) for k in range(8)])
    assert not errors, errors[:5]


# A configuration whose forward takes a noticeable time.
SLOW = dict(image_size=32, channels=3, hidden_dims=[32, 64], time_dim=32)


def test_forward_releases_the_gil():
    """Two threads forwarding on one model overlap in time, and the main
    thread keeps running Python code while they do."""
    m = swiftunet.DiffusionModel(**SLOW)
    x, t = rand((4, 3, 32, 32)), np.arange(4)
    start = time.perf_counter()
    m(x, t)
    single = time.perf_counter() - start
    reps = max(2, int(0.6 / max(single, 1e-3)))
    intervals = [[], []]
    ticks = []
    barrier = threading.Barrier(3)

    def work(i):
        def run():
            barrier.wait()
            for _ in range(reps):
                s = time.perf_counter()
                m(x, t)
                intervals[i].append((s, time.perf_counter()))

        return run

    threads = [threading.Thread(target=work(i), daemon=True) for i in range(2)]
    for th in threads:
        th.start()
    barrier.wait()
    while any(th.is_alive() for th in threads):
        ticks.append(time.perf_counter())
        time.sleep(0.0005)
    for th in threads:
        th.join()
    # Time during which both threads were inside forward.
    both = 0.0
    for a0, a1 in intervals[0]:
        for b0, b1 in intervals[1]:
            both += max(0.0, min(a1, b1) - max(a0, b0))
    busy = min(sum(e - s for s, e in iv) for iv in intervals)
    assert both > 0.3 * busy, (both, busy)
    # The main thread was never starved for long (with the GIL held through
    # Swift it would wait a whole forward between ticks).
    span = max(e for iv in intervals for _, e in iv) - min(s for iv in intervals for s, _ in iv)
    assert len(ticks) > 10
    assert np.diff(ticks).max() < max(0.05, 0.5 * single), (np.diff(ticks).max(), single)
    assert span > 0


def test_dropping_models_while_threads_use_them():
    """Each round: a model is created, four threads start forwarding with it,
    and the creator drops its reference at once. Results stay right and
    nothing crashes; the last call to finish frees the model."""
    x, t = rand((2, 3, 8, 8), seed=3), [4, 5]
    want = swiftunet.DiffusionModel(**TINY2, seed=6)(x, t)
    errors = []
    for _ in range(10):
        m = swiftunet.DiffusionModel(**TINY2, seed=6)
        fwd = m.forward
        handle = m._handle
        threads = []
        for k in range(4):
            if k % 2:
                def run(f=fwd):
                    try:
                        for _ in range(5):
                            if not np.array_equal(f(x, t), want):
                                errors.append("wrong")
                    except Exception as exc:
                        errors.append(exc)
            else:
                box = [handle]

                def run(box=box):
                    try:
                        h = box.pop()
                        for _ in range(5):
                            out = np.empty_like(x)
                            _swiftunet.forward(h, x, np.array(t, np.int64), out, 2, 3, 8, 8)
                            if not np.array_equal(out, want):
                                errors.append("wrong (binding)")
                    except Exception as exc:
                        errors.append(exc)
            threads.append(threading.Thread(target=run, daemon=True))
        for th in threads:
            th.start()
        del m, fwd, handle, box
        gc.collect()
        for th in threads:
            th.join(JOIN_TIMEOUT)
            assert not th.is_alive(), "deadlock"
    assert not errors, errors[:5]


def test_load_state_dict_races_forwards_from_eight_threads():
    a = swiftunet.DiffusionModel(**TINY, seed=1)
    b = swiftunet.DiffusionModel(**TINY, seed=2)
    sda, sdb = a.state_dict(), b.state_dict()
    x, t = rand((2, 3, 8, 8)), [9, 10]
    ya, yb = a(x, t), b(x, t)
    m = swiftunet.DiffusionModel(**TINY, seed=1)
    stop = threading.Event()
    errors, counts = [], [0] * 7

    def reader(k):
        def run():
            try:
                while not stop.is_set():
                    y = m(x, t)
                    counts[k] += 1
                    if not (np.array_equal(y, ya) or np.array_equal(y, yb)):
                        errors.append("mixed weights")
            except Exception as exc:
                errors.append(exc)

        return run

    def writer():
        try:
            for i in range(40):
                m.load_state_dict(sdb if i % 2 == 0 else sda)
                if i % 5 == 0:
                    # Failed loads interleaved: they must not disturb anything.
                    bad = dict(sda)
                    bad["out_conv.bias"] = np.full(3, np.nan, np.float32)
                    try:
                        m.load_state_dict(bad)
                        errors.append("NaN weights accepted")
                    except ValueError:
                        pass
        except Exception as exc:
            errors.append(exc)
        finally:
            stop.set()

    _run_threads([reader(k) for k in range(7)] + [writer])
    assert not errors, errors[:5]
    assert sum(counts) > 0


def _two_weight_sets(cfg):
    a = swiftunet.DiffusionModel(**cfg, seed=1).state_dict()
    b = swiftunet.DiffusionModel(**cfg, seed=2).state_dict()
    return a, b


# Large enough tensors (up to 128x128x4x4) that a copy and a replacement overlap in time.
WIDE = dict(image_size=8, channels=3, hidden_dims=[64, 128], time_dim=64)


def test_state_dict_is_one_snapshot_while_weights_change():
    """state_dict() racing load_state_dict() returns one whole set of weights:
    never a tensor half old and half new, nor tensors from different loads."""
    a, b = _two_weight_sets(WIDE)
    m = swiftunet.DiffusionModel(**WIDE, seed=1)
    stop = threading.Event()
    problems, reads = [], [0]

    def writer():
        try:
            for i in range(150):
                m.load_state_dict(b if i % 2 == 0 else a)
        finally:
            stop.set()

    def reader():
        while not stop.is_set():
            sd = m.state_dict()
            reads[0] += 1
            from_a = [np.array_equal(sd[k], a[k]) for k in sd]
            from_b = [np.array_equal(sd[k], b[k]) for k in sd]
            if not (all(from_a) or all(from_b)):
                torn = [k for k, x, y in zip(sd, from_a, from_b) if not (x or y)]
                problems.append(f"torn tensors {torn[:3]}" if torn else "tensors from different loads")

    _run_threads([writer, reader, reader])
    assert reads[0] > 0
    assert not problems, problems[:5]


def test_get_param_never_sees_a_half_replaced_tensor():
    """The same at the binding (what C users of the library see): a
    get_param racing set_params copies either the old or the new tensor."""
    a, b = _two_weight_sets(WIDE)
    m = swiftunet.DiffusionModel(**WIDE, seed=1)
    names = list(a)
    big = max(range(len(names)), key=lambda i: a[names[i]].size)
    name = names[big]
    lists = [list(a.values()), list(b.values())]
    stop = threading.Event()
    problems, reads = [], [0]

    def writer():
        try:
            for i in range(300):
                _swiftunet.set_params(m._handle, lists[(i + 1) % 2])
        finally:
            stop.set()

    def reader():
        dst = np.empty_like(a[name])
        while not stop.is_set():
            _swiftunet.get_param(m._handle, big, dst)
            reads[0] += 1
            if not (np.array_equal(dst, a[name]) or np.array_equal(dst, b[name])):
                problems.append(name)

    _run_threads([writer, reader])
    assert reads[0] > 0
    assert not problems, f"{len(problems)} torn copies of {name}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forward_in_a_forked_child():
    """multiprocessing's fork start method (DataLoader workers, ...): a model
    used in the parent works in a forked child, whatever worker threads or
    locks the library keeps, instead of hanging there."""
    m = swiftunet.DiffusionModel(**TINY2, seed=4)
    x = rand((2, 3, 8, 8), seed=9)
    want = m(x, [3, 4])
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 when the result is right
        code = 1
        try:
            y = m(x, [3, 4])
            m.load_state_dict(m.state_dict())
            fresh = swiftunet.DiffusionModel(**TINY2, seed=4)
            code = 0 if np.array_equal(y, want) and np.array_equal(fresh(x, [3, 4]), want) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in forward (60 s)")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"


_NO_THREADS_CHILD = textwrap.dedent(
    """
    import json, resource
    import numpy as np
    import swiftunet

    swiftunet.set_num_threads(1)
    m = swiftunet.DiffusionModel(16, 3, hidden_dims=[16, 32], time_dim=16)
    x = np.ones((4, 3, 16, 16), np.float32)
    want = m(x, 1)

    def vm_size():
        with open("/proc/self/status") as f:
            return [int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:")][0]

    # Leave no room for a worker's stack: starting the pool's threads fails.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + (256 << 10), hard))
    swiftunet.set_num_threads(2)
    try:
        result = "same" if np.array_equal(m(x, 1), want) else "different"
    except MemoryError:
        result = "MemoryError"
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    after = "same" if np.array_equal(m(x, 1), want) else "different"
    print(json.dumps({"under_limit": result, "after": after}))
    """
)


def test_thread_creation_failure_is_not_a_crash():
    """When the pool cannot start a worker thread (thread or memory limits of a
    container), forward runs with fewer threads or raises MemoryError; it used
    to trap in Swift (fatalError), killing the interpreter."""
    proc = subprocess.run([sys.executable, "-c", _NO_THREADS_CHILD], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["under_limit"] in ("same", "MemoryError"), r
    assert r["after"] == "same", r


def test_set_num_threads_while_forwards_run():
    """Changing the thread count while other threads are inside forward:
    results stay those of sequential calls (the count only changes how the
    work is split), nothing hangs or crashes."""
    m = swiftunet.DiffusionModel(**dict(TINY2, image_size=16), seed=12)
    inputs = _inputs(4, shape=(2, 3, 16, 16))
    before = swiftunet.get_num_threads()
    want = [m(x, t) for x, t in inputs]
    stop = threading.Event()
    errors = []

    def toggler():
        try:
            k = 0
            while not stop.is_set():
                swiftunet.set_num_threads(1 + k % 4)
                k += 1
                time.sleep(0.0005)
        except Exception as exc:
            errors.append(exc)

    def worker(j):
        def run():
            try:
                for rep in range(15):
                    x, t = inputs[(j + rep) % len(inputs)]
                    if not np.array_equal(m(x, t), want[(j + rep) % len(inputs)]):
                        errors.append("different result")
            except Exception as exc:
                errors.append(exc)

        return run

    toggle = threading.Thread(target=toggler, daemon=True)
    toggle.start()
    try:
        _run_threads([worker(j) for j in range(4)])
    finally:
        stop.set()
        toggle.join(10)
        swiftunet.set_num_threads(before)
    assert not errors, errors[:5]
