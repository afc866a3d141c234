"""Property-based fuzzing of the Python API, in a child process.

Hypothesis (in pytest, the parent) draws batches of cases: random shapes,
dtypes, memory layouts (Fortran order, transposes, slices, negative and zero
strides, unaligned and byte-swapped buffers, lists), timesteps of every
dtype and range, `out=` buffers of every kind (including x itself and views
overlapping it), constructor arguments inside and outside the valid
configurations, corrupted state_dicts, and saved model files with random
byte-level damage (bit flips, overwritten, inserted and deleted bytes,
truncation, in the length, the header or the data). The parent sends each batch as
JSON to a child Python (this same file run as a script), which runs the
cases one by one and prints a JSON line when it starts a case and one with
its outcome. A crash (segfault, Swift trap, abort) is a dead child, reported
with the case it had started; a hang is a timeout, reported the same way.

The property checked for every case:

* it returns, or raises ValueError, TypeError or MemoryError, nothing else;
* it returns exactly when docs/model.md says the input is valid (an oracle
  written from docs/model.md sections 1 and 3, `predict_*` below), so bad input is
  never silently accepted and good input never refused;
* a returned array is float32, has x's shape, holds no +-inf, *is* `out`
  when one was given, and is bit-identical to the result for the same
  values passed as a fresh C-contiguous float32 array with int64 timesteps
  (so layout and dtype conversions are right);
* a failed load_state_dict leaves the weights bit-identical; a successful
  one installs exactly the given values.
* a damaged file loads into a working model with finite weights, or raises
  ValueError.

Runs are reproducible (derandomize=True). The size is set by environment
variables (see docs/robustness.md):

  SWIFTUNET_FUZZ_BATCHES  number of hypothesis examples (child processes), default 80
  SWIFTUNET_FUZZ_CASES    cases per batch, default 75
  SWIFTUNET_FUZZ_SEED     unset: derandomized; an int: a different fixed stream
  SWIFTUNET_FUZZ_SHRINK   1 to let hypothesis shrink a failing batch
"""

import json
import math
import os
import sys
import warnings

import numpy as np

# Small valid models: (image_size, channels, hidden_dims, time_dim). L = 1 or 2.
MODELS = [
    (8, 3, [8, 16], 8),
    (8, 1, [8, 16, 16], 4),
    (4, 2, [16, 8], 6),
]

X_DTYPES = [
    "float32", "float32", "float32", "float64", "float16", "longdouble", ">f4", "<f8",
    "int8", "int32", "int64", "uint8", "uint64",
    "bool", "complex64", "complex128", "object", "<U3", "|S2", "datetime64[s]", "V4",
]
T_DTYPES = [
    "int64", "int64", "int8", "int16", "int32", "uint8", "uint16", "uint32", "uint64", ">i8",
    "float32", "float64", "bool", "object", "<U4", "complex64",
]
LAYOUTS = ["c", "c", "c", "fortran", "transpose", "slice", "negstride", "unaligned", "broadcast",
           "readonly", "list", "tuple_shape", "memoryview"]
FILLS = ["normal", "normal", "normal", "nan", "inf", "huge", "zeros", "tiny"]
OUT_FORMS = [None, None, None, "good", "good", "wrong_shape", "wrong_dtype", "noncontig", "readonly",
             "fortran", "alias_x", "overlap", "list", "unaligned", "byteswapped"]
T_FORMS = ["array", "array", "array", "list", "scalar_int", "scalar_np", "zero_d", "two_d", "none",
           "string", "float_scalar", "bool_scalar"]
T_VALUES = ["small", "small", "small", "edge", "neg", "over", "dtype_max", "dtype_min"]

MAX_DIM = 1 << 16
MAX_TIMESTEP = 2**53
REAL_KINDS = "iuf"


# ===========================================================================
# the child: builds each case's objects, runs it, checks it, reports it


_LAST = {}  # the outcome of the case being run: "returned" or the exception's name


def _rng(case):
    return np.random.default_rng(case.get("seed", 0))


def _fill(arr_shape, dtype, fill, rng):
    dt = np.dtype(dtype)
    n = int(np.prod(arr_shape)) if arr_shape else 1
    if dt.kind == "f":
        base = rng.standard_normal(n)
        if fill == "nan" and n:
            base[rng.integers(n)] = np.nan
        elif fill == "inf" and n:
            base[rng.integers(n)] = np.inf if rng.random() < 0.5 else -np.inf
        elif fill == "huge":
            base = base * (1e38 if dt.itemsize <= 4 else 1e300)
        elif fill == "zeros":
            base[:] = 0
        elif fill == "tiny":
            base = base * 1e-40
        with np.errstate(all="ignore"):
            return base.astype(dt).reshape(arr_shape)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(info.min, -100), min(info.max, 100)
        return rng.integers(lo, hi + 1, size=n).astype(dt).reshape(arr_shape)
    if dt.kind == "b":
        return (rng.random(n) < 0.5).reshape(arr_shape)
    if dt.kind == "c":
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dt).reshape(arr_shape)
    if dt.kind == "O":
        vals = np.empty(n, dtype=object)
        for i in range(n):
            vals[i] = float(rng.standard_normal()) if rng.random() < 0.9 else None
        return vals.reshape(arr_shape)
    return np.zeros(arr_shape, dtype=dt)


def build_x(spec, rng):
    """The x object of a case, and its values as np.asarray would see them."""
    shape = tuple(spec["shape"])
    dtype, layout = spec["dtype"], spec["layout"]
    ndim = len(shape)
    if layout == "fortran" and ndim:
        x = np.asfortranarray(_fill(shape, dtype, spec["fill"], rng))
    elif layout == "transpose" and ndim >= 2:
        perm = list(rng.permutation(ndim))
        inv = list(np.argsort(perm))
        base = _fill(tuple(shape[p] for p in perm), dtype, spec["fill"], rng)
        x = base.transpose(inv)
        assert x.shape == shape
    elif layout == "slice" and ndim:
        axis = int(rng.integers(ndim))
        big = list(shape)
        big[axis] *= 2
        x = _fill(tuple(big), dtype, spec["fill"], rng)[(slice(None),) * axis + (slice(None, None, 2),)]
    elif layout == "negstride" and ndim:
        axis = int(rng.integers(ndim))
        x = _fill(shape, dtype, spec["fill"], rng)[(slice(None),) * axis + (slice(None, None, -1),)]
    elif layout == "unaligned" and np.dtype(dtype).kind in "iufc" and np.dtype(dtype).itemsize > 1:
        good = _fill(shape, dtype, spec["fill"], rng)
        raw = np.zeros(good.nbytes + 1, np.uint8)
        x = raw[1:].view(good.dtype).reshape(shape)
        x[...] = good
    elif layout == "broadcast" and ndim:
        small_shape = tuple(1 if i == ndim - 1 else s for i, s in enumerate(shape))
        x = np.broadcast_to(_fill(small_shape, dtype, spec["fill"], rng), shape)
    elif layout == "readonly":
        x = _fill(shape, dtype, spec["fill"], rng)
        x.flags.writeable = False
    elif layout == "list":
        x = _fill(shape, dtype, spec["fill"], rng).tolist()
    elif layout == "memoryview" and np.dtype(dtype).kind in "iuf" and np.dtype(dtype).byteorder in "=|<":
        x = memoryview(np.ascontiguousarray(_fill(shape, dtype, spec["fill"], rng)))
    else:
        x = _fill(shape, dtype, spec["fill"], rng)
    return x


def build_t(spec, batch, rng):
    form, dtype, values = spec["form"], spec["dtype"], spec["values"]
    n = max(0, batch + spec["len_delta"])
    dt = np.dtype(dtype)
    if form == "none":
        return None
    if form == "string":
        return "12"
    if form == "float_scalar":
        return 3.0
    if form == "bool_scalar":
        return True
    if dt.kind in "iu":
        info = np.iinfo(dt)
        top = min(info.max, MAX_TIMESTEP)
        if values == "small":
            v = rng.integers(0, min(1000, info.max) + 1, size=n)
        elif values == "edge":
            v = rng.choice([0, top], size=n)
        elif values == "neg" and info.min < 0:
            v = rng.integers(0, 5, size=n)
            if n:
                v[rng.integers(n)] = -1
        elif values == "over" and info.max > MAX_TIMESTEP:
            v = np.zeros(n, dtype=np.uint64)
            if n:
                v[rng.integers(n)] = MAX_TIMESTEP + 1
        elif values == "dtype_max":
            v = np.full(n, info.max, dtype=dt)
        elif values == "dtype_min":
            v = np.full(n, info.min, dtype=dt)
        else:
            v = rng.integers(0, 50, size=n)
        arr = np.asarray(v).astype(dt)
    elif dt.kind == "f":
        arr = rng.integers(0, 100, size=n).astype(dt)
    elif dt.kind == "b":
        arr = np.zeros(n, bool)
    elif dt.kind == "O":
        arr = np.array([int(i) for i in rng.integers(0, 100, size=n)] or [], dtype=object)
    elif dt.kind == "c":
        arr = np.arange(n).astype(dt)
    else:
        arr = np.array(["1"] * n, dtype=dt)
    if form == "list":
        return arr.tolist()
    if form == "scalar_int":
        return int(arr[0]) if n and dt.kind in "iu" else 7
    if form == "scalar_np":
        return arr[0] if n else dt.type(0) if dt.kind in "iuf" else np.int64(0)
    if form == "zero_d":
        return np.asarray(arr[0] if n else np.zeros((), dt))
    if form == "two_d":
        return arr.reshape(1, -1)
    return arr


def build_out(form, x_shape, x_obj, rng):
    if form is None:
        return None
    shape = x_shape
    if form == "good":
        return np.full(shape, 7.0, np.float32)
    if form == "wrong_shape":
        s = list(shape) or [1]
        s[int(rng.integers(len(s)))] += 1
        return np.zeros(s, np.float32)
    if form == "wrong_dtype":
        return np.zeros(shape, np.float64)
    if form == "noncontig":
        if not shape:
            return np.zeros((), np.float32)
        big = list(shape)
        big[-1] *= 2
        return np.zeros(big, np.float32)[..., ::2]
    if form == "readonly":
        a = np.zeros(shape, np.float32)
        a.flags.writeable = False
        return a
    if form == "fortran":
        return np.zeros(shape, np.float32, order="F")
    if form == "alias_x":
        return x_obj
    if form == "overlap":
        # A view of a buffer that holds x's values too, shifted by a few floats.
        if not isinstance(x_obj, np.ndarray) or x_obj.dtype != np.float32 or not x_obj.flags.c_contiguous \
                or not x_obj.flags.writeable:
            return np.zeros(shape, np.float32)
        return "overlap"
    if form == "list":
        return np.zeros(shape, np.float32).tolist()
    if form == "unaligned":
        raw = np.zeros(int(np.prod(shape)) * 4 + 1, np.uint8)
        return raw[1:].view(np.float32).reshape(shape)
    if form == "byteswapped":
        return np.zeros(shape, ">f4")
    raise AssertionError(form)


def _asarray_or_none(obj):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(obj)
    except Exception:
        return None


def predict_x(x, channels, factor):
    """None if x is valid by docs/model.md, else a reason."""
    arr = _asarray_or_none(x)
    if arr is None:
        return "x not convertible"
    if arr.dtype.kind not in REAL_KINDS:
        return f"x dtype {arr.dtype}"
    if arr.ndim != 4:
        return "x ndim"
    b, c, h, w = arr.shape
    if c != channels:
        return "x channels"
    if h <= 0 or w <= 0 or h % factor or w % factor:
        return "x height/width"
    return None


def predict_t(t, batch):
    if isinstance(t, (bool, np.bool_)):
        return "t bool"
    if isinstance(t, int) and not 0 <= t <= MAX_TIMESTEP:
        return "t out of range"
    if isinstance(t, np.ndarray):
        arr = t
    else:
        arr = _asarray_or_none(t)
        if arr is None:
            return "t not convertible"
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.int64)  # np.asarray([]) is float64: an empty list is fine
    if arr.dtype.kind not in "iu":
        return f"t dtype {arr.dtype}"
    if arr.ndim > 1:
        return "t ndim"
    n = batch if arr.ndim == 0 else arr.shape[0]
    if n != batch:
        return "t length"
    if batch and arr.size:
        if int(arr.min()) < 0 or int(arr.max()) > MAX_TIMESTEP:
            return "t out of range"
    return None


def predict_out(out, shape):
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        return "out not ndarray"
    if out.dtype != np.float32:
        return "out dtype"
    if out.shape != shape:
        return "out shape"
    if not (out.flags.c_contiguous and out.flags.writeable and out.flags.aligned):
        return "out layout"
    return None


def _same(a, b):
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def run_forward(case, models):
    import swiftunet

    rng = _rng(case)
    m = models[case["model"]]
    channels, factor = m.channels, 2 ** m.num_levels
    x = build_x(case["x"], rng)
    xa = _asarray_or_none(x)
    batch = xa.shape[0] if xa is not None and xa.ndim >= 1 else 0
    t = build_t(case["t"], batch, rng)
    reason = predict_x(x, channels, factor) or predict_t(t, batch)
    out = None
    if reason is None:
        out = build_out(case["out"], xa.shape, x, rng)
        if isinstance(out, str) and out == "overlap":
            n = x.size
            buf = np.empty(n + 3, np.float32)
            buf[:n] = x.reshape(-1)
            x = buf[:n].reshape(x.shape)
            out = buf[3:].reshape(x.shape)
            xa = x
        reason = predict_out(out, xa.shape)
    # The expected result: the same values as a fresh float32 C array, on one
    # thread (results must not depend on the thread count either).
    expected = None
    swiftunet.set_num_threads(1)
    if reason is None:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xc = np.array(np.asarray(x), dtype=np.float32, order="C", copy=True)
            ta = np.asarray(t) if not isinstance(t, list) or len(t) else np.zeros(0, np.int64)
            tc = np.array(np.broadcast_to(ta, (batch,)), dtype=np.int64)
            expected = m(xc, tc)
    swiftunet.set_num_threads(case.get("threads", 2))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            y = m(x, t) if out is None and case["out"] is None else m(x, t, out=out)
            _LAST["outcome"] = "returned"
        except (ValueError, TypeError, MemoryError) as exc:
            _LAST["outcome"] = type(exc).__name__
            if reason is None:
                return f"valid input rejected: {type(exc).__name__}: {exc}"
            return None
    if reason is not None:
        return f"invalid input accepted ({reason})"
    if not isinstance(y, np.ndarray) or y.dtype != np.float32:
        return f"returned {type(y).__name__} {getattr(y, 'dtype', '')}"
    if y.shape != xa.shape:
        return f"returned shape {y.shape}, x has {xa.shape}"
    if out is not None and y is not out:
        return "did not return out"
    if np.isinf(y).any():
        return "output has inf"
    if not _same(y, expected):
        return "result differs from the same values as a C-contiguous float32 array"
    return None


def predict_target(target, shape):
    arr = _asarray_or_none(target)
    if arr is None:
        return "target not convertible"
    if arr.dtype.kind not in REAL_KINDS:
        return f"target dtype {arr.dtype}"
    if arr.shape != shape:
        return "target shape"
    return None


def run_train(case, models, trainers):
    """loss_and_grad(x, t, target) on a model, or Trainer.step(x0) on a trainer:
    it returns exactly when the input is valid, the result equals the one for
    the same values as fresh float32/int64 C arrays at one thread, and a call
    that raises changes nothing (weights; for the trainer also its step count
    and losses)."""
    import swiftunet

    rng = _rng(case)
    trainer = trainers[case["model"]] if case["op"] == "step" else None
    m = trainer.model if trainer is not None else models[case["model"]]
    channels, factor = m.channels, 2 ** m.num_levels
    x = build_x(case["x"], rng)
    xa = _asarray_or_none(x)
    batch = xa.shape[0] if xa is not None and xa.ndim >= 1 else 0
    reason = predict_x(x, channels, factor) or (None if batch >= 1 else "batch 0")
    before = _bits(m.state_dict())
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xc = None if reason else np.array(np.asarray(x), dtype=np.float32, order="C", copy=True)
    if trainer is not None:
        count, losses = trainer.step_count, len(trainer.losses)
        # x0 must be finite; a finite x0 whose loss or gradient overflows may be refused too.
        may_fail = reason is None and not np.isfinite(xc).all()
        may_fail_anyway = reason is None and not may_fail and float(np.abs(xc).max()) > 1e15
        swiftunet.set_num_threads(case.get("threads", 2))
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss = trainer.step(x)
            _LAST["outcome"] = "returned"
        except (ValueError, TypeError, MemoryError) as exc:
            _LAST["outcome"] = type(exc).__name__
            if reason is None and not may_fail and not may_fail_anyway:
                return f"valid x0 rejected: {type(exc).__name__}: {exc}"
            if _bits_differ(_bits(m.state_dict()), before) or trainer.step_count != count or len(trainer.losses) != losses:
                return "a refused step changed the trainer"
            return None
        if reason is not None or may_fail:
            return f"invalid x0 accepted ({reason or 'non-finite'})"
        if not (isinstance(loss, float) and math.isfinite(loss)) or trainer.step_count != count + 1:
            return f"step returned {loss!r}, step count {trainer.step_count} (was {count})"
        return None

    t = build_t(case["t"], batch, rng)
    reason = reason or predict_t(t, batch)
    target = build_x(case["target"], rng) if case["target"] is not None else (
        _fill(xa.shape, "float32", "normal", rng) if xa is not None and xa.ndim == 4 else np.zeros(1, np.float32))
    if reason is None:
        reason = predict_target(target, xa.shape)
    expected = None
    if reason is None:
        swiftunet.set_num_threads(1)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ta = np.asarray(t) if not isinstance(t, list) or len(t) else np.zeros(0, np.int64)
            tc = np.array(np.broadcast_to(ta, (batch,)), dtype=np.int64)
            yc = np.array(np.asarray(target), dtype=np.float32, order="C", copy=True)
            expected = m.loss_and_grad(xc, tc, yc)
    swiftunet.set_num_threads(case.get("threads", 2))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            loss, grads = m.loss_and_grad(x, t, target)
            _LAST["outcome"] = "returned"
        except (ValueError, TypeError, MemoryError) as exc:
            _LAST["outcome"] = type(exc).__name__
            if _bits_differ(_bits(m.state_dict()), before):
                return "a refused loss_and_grad changed the weights"
            if reason is None:
                return f"valid input rejected: {type(exc).__name__}: {exc}"
            return None
    if reason is not None:
        return f"invalid input accepted ({reason})"
    if _bits_differ(_bits(m.state_dict()), before):
        return "loss_and_grad changed the weights"
    sd = m.state_dict()
    if list(grads) != list(sd) or any(g.dtype != np.float32 or g.shape != sd[k].shape for k, g in grads.items()):
        return "grads do not have the state_dict's names, shapes and dtype"
    if not (isinstance(loss, float) and (loss == expected[0] or (math.isnan(loss) and math.isnan(expected[0])))):
        return f"loss {loss!r} differs from the C-contiguous float32 result {expected[0]!r}"
    if not all(_same(g, expected[1][k]) for k, g in grads.items()):
        return "grads differ from the C-contiguous float32 result at one thread"
    return None


def _valid_int(v):
    return type(v) is int


def predict_config(cfg):
    dims = cfg["hidden_dims"]
    for k in ("image_size", "channels", "time_dim", "seed"):
        if not _valid_int(cfg[k]):
            return f"{k} not int"
    if not isinstance(dims, list) or not all(_valid_int(d) for d in dims):
        return "hidden_dims not ints"
    if not 2 <= len(dims) <= 16:
        return "hidden_dims length"
    if any(d <= 0 or d % 8 or d > MAX_DIM for d in dims) or dims[-1] % 4:
        return "hidden_dims values"
    if not 1 <= cfg["channels"] <= MAX_DIM:
        return "channels"
    if cfg["time_dim"] < 4 or cfg["time_dim"] % 2 or cfg["time_dim"] > MAX_DIM:
        return "time_dim"
    f = 2 ** (len(dims) - 1)
    if cfg["image_size"] <= 0 or cfg["image_size"] % f or cfg["image_size"] > MAX_DIM:
        return "image_size"
    if not 0 <= cfg["seed"] < 2**64:
        return "seed"
    return None


def weight_bytes(cfg):
    """About how many bytes a valid configuration's weights take."""
    d, t, c = cfg["hidden_dims"], cfg["time_dim"], cfg["channels"]
    n = 8 * t * t + 18 * c * d[0] + 22 * d[-1] ** 2
    n += sum(40 * d[i + 1] ** 2 + 9 * d[i] * d[i + 1] for i in range(len(d) - 1))
    return 4 * n


def run_construct(case):
    import swiftunet

    cfg = case["config"]
    reason = predict_config(cfg)
    dims = cfg["hidden_dims"]
    if isinstance(dims, list) and case.get("dims_as") == "tuple":
        dims = tuple(dims)
    try:
        m = swiftunet.DiffusionModel(cfg["image_size"], cfg["channels"], hidden_dims=dims,
                                     time_dim=cfg["time_dim"], seed=cfg["seed"])
        _LAST["outcome"] = "returned"
    except (ValueError, TypeError, MemoryError) as exc:
        _LAST["outcome"] = type(exc).__name__
        if reason is None and not (isinstance(exc, MemoryError) and weight_bytes(cfg) > 1e9):
            return f"valid config rejected: {type(exc).__name__}: {exc}"
        return None
    if reason is not None:
        return f"invalid config accepted ({reason})"
    if m.config() != {k: cfg[k] for k in ("image_size", "channels", "hidden_dims", "time_dim")}:
        return f"config() {m.config()} differs"
    if cfg["channels"] <= 64:
        f = 2 ** m.num_levels
        y = m(np.ones((1, cfg["channels"], f, f), np.float32), 1)
        if not np.isfinite(y).all():
            return "non-finite output from a fresh model"
    return None


def _bits(sd):
    return {k: v.view(np.uint32).copy() for k, v in sd.items()}


def _bits_differ(a, b):
    return list(a) != list(b) or any(not np.array_equal(a[k], b[k]) for k in a)


def run_load(case, models):
    rng = _rng(case)
    m = models[case["model"]]
    sd = m.state_dict()
    before = _bits(sd)
    names = list(sd)
    new = {k: (v + np.float32(0.5)) for k, v in sd.items()}  # distinct values
    name = names[case["which"] % len(names)]
    shape = new[name].shape
    kind, strict = case["mutation"], case["strict"]
    reason = None
    if kind == "none":
        pass
    elif kind == "drop":
        del new[name]
        reason = "missing" if strict else None
    elif kind == "extra":
        new["not.a.weight"] = np.zeros(2, np.float32)
        reason = "unexpected" if strict else None
    elif kind == "nan":
        new[name] = new[name].copy()
        new[name].flat[int(rng.integers(new[name].size))] = np.nan
        reason = "nan"
    elif kind == "inf":
        new[name] = new[name].astype(np.float64)
        new[name].flat[0] = 1e300
        reason = "overflow"
    elif kind == "shape":
        new[name] = np.zeros(shape + (1,), np.float32)
        reason = "shape"
    elif kind == "flat":
        new[name] = new[name].reshape(-1) if len(shape) > 1 else new[name].reshape(1, -1)
        reason = "shape"
    elif kind == "float64":
        new[name] = new[name].astype(np.float64)
    elif kind == "int":
        new[name] = np.ones(shape, np.int16)
    elif kind == "list":
        new[name] = new[name].tolist()
    elif kind == "strings":
        new[name] = np.full(shape, "x")
        reason = "dtype"
    elif kind == "object":
        new[name] = None
        reason = "dtype"
    elif kind == "bool":
        new[name] = np.ones(shape, bool)
        reason = "dtype"
    elif kind == "complex":
        new[name] = np.ones(shape, np.complex64)
        reason = "dtype"
    elif kind == "fortran":
        new[name] = np.asfortranarray(new[name])
    elif kind == "strided":
        big = np.repeat(new[name][..., None], 2, axis=-1)
        new[name] = big[..., 0]
    else:
        raise AssertionError(kind)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.load_state_dict(new, strict=strict)
        _LAST["outcome"] = "returned"
    except (ValueError, TypeError) as exc:
        _LAST["outcome"] = type(exc).__name__
        after = _bits(m.state_dict())
        if any(not np.array_equal(after[k], before[k]) for k in before):
            return f"failed load changed the weights ({kind})"
        if reason is None:
            return f"valid state_dict rejected ({kind}): {type(exc).__name__}: {exc}"
        return None
    if reason is not None:
        return f"invalid state_dict accepted ({reason})"
    got = m.state_dict()
    for k in got:
        want = np.asarray(new[k], dtype=np.float32) if k in new else sd[k]
        if not np.array_equal(got[k], want):
            return f"weight {k} not installed exactly ({kind})"
    m.load_state_dict(sd)  # restore for the next cases
    return None


_FILES = {}


def _good_file(models, mi):
    """A valid safetensors file of model `mi` (written once per child)."""
    if mi not in _FILES:
        import tempfile

        fd, path = tempfile.mkstemp(suffix=".safetensors")
        os.close(fd)
        models[mi].save(path)
        with open(path, "rb") as f:
            _FILES[mi] = f.read()
        os.unlink(path)
    return _FILES[mi]


def run_file(case, models):
    """A saved model file with random byte-level damage: load returns a
    working model or raises ValueError."""
    import struct
    import tempfile

    import swiftunet

    blob = bytearray(_good_file(models, case["model"]))
    (n,) = struct.unpack("<Q", bytes(blob[:8]))
    regions = {"length": (0, 8), "header": (8, 8 + n), "data": (8 + n, len(blob)), "any": (0, len(blob))}
    for op in case["ops"]:
        lo, hi = regions[op["where"]]
        hi = min(hi, len(blob))
        if hi <= lo:
            continue
        pos = lo + int(op["pos"] * (hi - lo - 1))
        if op["op"] == "set":
            blob[pos] = op["byte"]
        elif op["op"] == "flip":
            blob[pos] ^= 1 << (op["byte"] % 8)
        elif op["op"] == "truncate":
            del blob[pos:]
        elif op["op"] == "insert":
            blob[pos:pos] = bytes([op["byte"]]) * (1 + op["byte"] % 9)
        elif op["op"] == "delete":
            del blob[pos:pos + 1 + op["byte"] % 9]
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(blob))
        try:
            m = swiftunet.DiffusionModel.load(path)
            _LAST["outcome"] = "returned"
        except ValueError:
            _LAST["outcome"] = "ValueError"
            return None
    finally:
        os.unlink(path)
    sd = m.state_dict()
    if not all(np.isfinite(v).all() for v in sd.values()):
        return "loaded non-finite weights"
    f = 2 ** m.num_levels
    y = m(np.ones((1, m.channels, f, f), np.float32), 1)
    if y.shape != (1, m.channels, f, f) or np.isinf(y).any():
        return "a loaded model's forward is wrong"
    return None


def child_main():
    import faulthandler

    faulthandler.enable()
    import swiftunet

    cases = json.loads(sys.stdin.read())
    models = [swiftunet.DiffusionModel(s, c, hidden_dims=d, time_dim=t, seed=i)
              for i, (s, c, d, t) in enumerate(MODELS)]
    trainers = [swiftunet.Trainer(swiftunet.DiffusionModel(s, c, hidden_dims=d, time_dim=t, seed=i), seed=i)
                for i, (s, c, d, t) in enumerate(MODELS)]
    emit = sys.stdout.write
    selftest = os.environ.get("SWIFTUNET_FUZZ_SELFTEST") == "1"
    for i, case in enumerate(cases):
        _LAST.clear()
        emit(json.dumps({"start": i}) + "\n")
        sys.stdout.flush()
        try:
            if selftest and case["kind"] == "__abort__":
                os.abort()
            if selftest and case["kind"] == "__raise__":
                raise KeyError("selftest")
            if case["kind"] == "forward":
                problem = run_forward(case, models)
            elif case["kind"] == "construct":
                problem = run_construct(case)
            elif case["kind"] == "file":
                problem = run_file(case, models)
            elif case["kind"] == "train":
                problem = run_train(case, models, trainers)
            else:
                problem = run_load(case, models)
        except BaseException as exc:  # anything but ValueError/TypeError/MemoryError from the API
            import traceback

            problem = f"unexpected {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
        emit(json.dumps({"done": i, "problem": problem, "outcome": _LAST.get("outcome", "-")}) + "\n")
        sys.stdout.flush()


def binding_child_main(seed_value, calls):
    """Random arguments, of random count, to every function of the private
    binding `swiftunet._swiftunet` (reachable by any user): each call returns
    or raises ValueError/TypeError/MemoryError/IndexError/OverflowError."""
    import faulthandler
    import random

    faulthandler.enable()
    import swiftunet
    from swiftunet import _swiftunet as binding

    m = swiftunet.DiffusionModel(4, 1, hidden_dims=[8, 16], time_dim=4)
    handle = m._handle
    rng = random.Random(seed_value)
    ints = [0, 1, -1, 2, 3, 4, 8, 16, 2**31, 2**63 - 1, -2**63, 2**64, 10**30]

    def array():
        n = rng.choice([0, 1, 2, 3, 4, 16, 64, 1000])
        dt = rng.choice([np.float32, np.float64, np.int64, np.int32, np.uint8, np.float16, bool])
        k = rng.randrange(8)
        if k == 0:
            return np.zeros(n, dt)
        if k == 1:
            return np.zeros(2 * n, dt)[::2]
        if k == 2:
            return np.zeros((n, 2), dt).T
        if k == 3:
            a = np.zeros(n, dt)
            a.flags.writeable = False
            return a
        if k == 4:
            return b"\0" * (4 * n)
        if k == 5:
            return bytearray(4 * n)
        if k == 6:
            return memoryview(np.zeros(n, np.float32))
        return np.zeros(n, np.float32)

    def argument():
        k = rng.randrange(6)
        if k in (0, 1):
            return rng.choice(ints)
        if k == 2:
            return handle
        if k == 3:
            return array()
        if k == 4:
            return rng.choice([None, "cosine", "linear", "ddim", 1.5, float("nan"), [], (8, 16), (8,), [handle],
                               [np.zeros(4, np.float32)], lambda *a: 0, object()])
        return rng.choice(ints)

    functions = sorted(n for n in dir(binding) if callable(getattr(binding, n)) and not n.startswith("_")
                       and n not in ("Model", "set_num_threads"))
    def arity(name):
        # From the docstring's first line, "name(a, b, c) -> ...".
        doc = (getattr(binding, name).__doc__ or "").split("\n")[0]
        if "(" not in doc or ")" not in doc:
            return None
        inner = doc[doc.index("(") + 1:doc.index(")")].strip()
        return len(inner.split(",")) if inner else 0

    arities = {n: arity(n) for n in functions}
    allowed = (ValueError, TypeError, MemoryError, IndexError, OverflowError)
    for i in range(calls):
        name = rng.choice(functions)
        n_args = arities[name] if arities[name] is not None and rng.random() < 0.8 else rng.randrange(0, 15)
        args = [argument() for _ in range(n_args)]
        sys.stdout.write(json.dumps({"start": i, "call": name, "args": [type(a).__name__ for a in args]}) + "\n")
        sys.stdout.flush()
        try:
            getattr(binding, name)(*args)
            problem = None
        except allowed:
            problem = None
        except BaseException as exc:
            problem = f"{name}({', '.join(type(a).__name__ for a in args)}) raised {type(exc).__name__}: {exc}"
        sys.stdout.write(json.dumps({"done": i, "problem": problem}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__" and "--child" in sys.argv:
    child_main()
    sys.exit(0)
if __name__ == "__main__" and "--binding" in sys.argv:
    binding_child_main(int(sys.argv[2]), int(sys.argv[3]))
    sys.exit(0)


# ===========================================================================
# the parent: pytest + hypothesis

if __name__ != "__main__":
    import subprocess
    import time

    import pytest
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st

    BATCHES = int(os.environ.get("SWIFTUNET_FUZZ_BATCHES", "80"))
    CASES = int(os.environ.get("SWIFTUNET_FUZZ_CASES", "75"))
    FUZZ_SEED = os.environ.get("SWIFTUNET_FUZZ_SEED")
    SHRINK = os.environ.get("SWIFTUNET_FUZZ_SHRINK", "0") not in ("", "0")
    CHILD_TIMEOUT = 60 + 0.5 * CASES

    dim = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 12, 16])

    @st.composite
    def x_specs(draw, channels):
        ndim = draw(st.sampled_from([4] * 12 + [0, 1, 2, 3, 5]))
        if ndim == 4:
            b = draw(st.sampled_from([0, 1, 1, 2, 2, 3, 4]))
            c = draw(st.sampled_from([channels] * 8 + [0, 1, 2, 3, 4]))
            h, w = draw(dim), draw(dim)
            shape = [b, c, h, w]
        else:
            shape = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4]), min_size=ndim, max_size=ndim))
        return {
            "shape": shape,
            "dtype": draw(st.sampled_from(X_DTYPES)),
            "layout": draw(st.sampled_from(LAYOUTS)),
            "fill": draw(st.sampled_from(FILLS)),
        }

    t_specs = st.fixed_dictionaries({
        "form": st.sampled_from(T_FORMS),
        "dtype": st.sampled_from(T_DTYPES),
        "values": st.sampled_from(T_VALUES),
        "len_delta": st.sampled_from([0] * 10 + [-1, 1, 2]),
    })

    @st.composite
    def valid_x_specs(draw, channels, factor):
        sizes = [factor * k for k in (1, 2, 3, 4) if factor * k <= 16]
        return {
            "shape": [draw(st.sampled_from([0, 1, 1, 2, 2, 3])), channels,
                      draw(st.sampled_from(sizes)), draw(st.sampled_from(sizes))],
            "dtype": draw(st.sampled_from([d for d in X_DTYPES if np.dtype(d).kind in REAL_KINDS])),
            "layout": draw(st.sampled_from(LAYOUTS)),
            "fill": draw(st.sampled_from(FILLS)),
        }

    valid_t_specs = st.fixed_dictionaries({
        "form": st.sampled_from(["array", "array", "list", "scalar_int", "scalar_np", "zero_d"]),
        "dtype": st.sampled_from([d for d in T_DTYPES if np.dtype(d).kind in "iu"]),
        "values": st.sampled_from(["small", "small", "edge"]),
        "len_delta": st.just(0),
    })

    @st.composite
    def forward_cases(draw):
        """Half near-valid (every layout, fill, dtype and out= that should
        work), the rest with one or all fields drawn from the wild."""
        mi = draw(st.integers(0, len(MODELS) - 1))
        image_size, channels, dims, _ = MODELS[mi]
        factor = 2 ** (len(dims) - 1)
        mode = draw(st.sampled_from(["valid"] * 5 + ["one_bad"] * 3 + ["wild"] * 2))
        xs = draw(valid_x_specs(channels, factor))
        ts = draw(valid_t_specs)
        out = draw(st.sampled_from([None, None, "good", "good", "alias_x", "overlap"]))
        if mode == "one_bad":
            which = draw(st.sampled_from(["x", "x", "t", "out"]))
            if which == "x":
                xs = draw(x_specs(channels))
            elif which == "t":
                ts = draw(t_specs)
            else:
                out = draw(st.sampled_from(OUT_FORMS))
        elif mode == "wild":
            xs, ts, out = draw(x_specs(channels)), draw(t_specs), draw(st.sampled_from(OUT_FORMS))
        return {
            "kind": "forward",
            "model": mi,
            "seed": draw(st.integers(0, 2**32 - 1)),
            "x": xs,
            "t": ts,
            "out": out,
            "threads": draw(st.sampled_from([1, 2, 2, 3, 4])),
        }

    weird_int = st.sampled_from([-8, -1, 0, 1, 2, 3, 4, 6, 7, 8, 12, 16, 24, 32, 40, 64,
                                 MAX_DIM, MAX_DIM + 8, 2**31, 2**63, 2**64 + 8])
    weird_value = st.one_of(weird_int, st.sampled_from([8.0, 2.5, True, False, None, "8", [8]]))
    small_dim = st.sampled_from([8, 16, 24, 32])

    @st.composite
    def construct_cases(draw):
        """Valid configurations, valid ones with one field from the wild, and
        wild ones."""
        dims = draw(st.lists(small_dim, min_size=2, max_size=4))
        f = 2 ** (len(dims) - 1)
        cfg = {
            "image_size": draw(st.sampled_from([f, 2 * f, 3 * f])),
            "channels": draw(st.sampled_from([1, 2, 3, 4])),
            "hidden_dims": dims,
            "time_dim": draw(st.sampled_from([4, 6, 8, 16])),
            "seed": draw(st.sampled_from([0, 1, 2**64 - 1])),
        }
        wild = {
            "image_size": weird_value,
            "channels": weird_value,
            "hidden_dims": st.one_of(st.lists(st.one_of(small_dim, weird_value), min_size=0, max_size=5),
                                     weird_value),
            "time_dim": weird_value,
            "seed": weird_value,
        }
        mode = draw(st.sampled_from(["valid", "one_bad", "one_bad", "wild"]))
        if mode == "one_bad":
            k = draw(st.sampled_from(sorted(wild)))
            cfg[k] = draw(wild[k])
        elif mode == "wild":
            cfg = {k: draw(v) for k, v in wild.items()}
        return {"kind": "construct", "config": cfg, "dims_as": draw(st.sampled_from(["list", "tuple"]))}

    load_cases = st.fixed_dictionaries({
        "kind": st.just("load"),
        "model": st.integers(0, len(MODELS) - 1),
        "seed": st.integers(0, 2**32 - 1),
        "which": st.integers(0, 1000),
        "mutation": st.sampled_from(["none", "drop", "extra", "nan", "inf", "shape", "flat", "float64",
                                     "int", "list", "strings", "object", "bool", "complex", "fortran",
                                     "strided"]),
        "strict": st.booleans(),
    })

    file_cases = st.fixed_dictionaries({
        "kind": st.just("file"),
        "model": st.integers(0, len(MODELS) - 1),
        "ops": st.lists(st.fixed_dictionaries({
            "op": st.sampled_from(["set", "flip", "flip", "truncate", "insert", "delete"]),
            "where": st.sampled_from(["length", "header", "header", "header", "data", "any"]),
            "pos": st.floats(0, 1),
            "byte": st.integers(0, 255),
        }), min_size=0, max_size=4),
    })

    @st.composite
    def train_cases(draw):
        """loss_and_grad and Trainer.step with near-valid and wild inputs (as forward_cases)."""
        mi = draw(st.integers(0, len(MODELS) - 1))
        image_size, channels, dims, _ = MODELS[mi]
        factor = 2 ** (len(dims) - 1)
        mode = draw(st.sampled_from(["valid"] * 5 + ["one_bad"] * 3 + ["wild"] * 2))
        xs, ts, target = draw(valid_x_specs(channels, factor)), draw(valid_t_specs), None
        if draw(st.booleans()):  # a target of x's shape in its own dtype and layout
            target = dict(draw(valid_x_specs(channels, factor)), shape=xs["shape"])
        if mode == "one_bad":
            which = draw(st.sampled_from(["x", "x", "t", "target"]))
            if which == "x":
                xs = draw(x_specs(channels))
            elif which == "t":
                ts = draw(t_specs)
            else:
                target = draw(x_specs(channels))
        elif mode == "wild":
            xs, ts, target = draw(x_specs(channels)), draw(t_specs), draw(x_specs(channels))
        return {
            "kind": "train",
            "op": draw(st.sampled_from(["loss_and_grad", "loss_and_grad", "step"])),
            "model": mi,
            "seed": draw(st.integers(0, 2**32 - 1)),
            "x": xs,
            "t": ts,
            "target": target,
            "threads": draw(st.sampled_from([1, 2, 3])),
        }

    any_case = st.one_of(
        forward_cases(), forward_cases(), forward_cases(), forward_cases(), forward_cases(),
        forward_cases(), forward_cases(), construct_cases(), load_cases, file_cases,
        train_cases(), train_cases(),
    )

    def run_batch(cases, selftest=False):
        """Runs the cases in a child; returns (results by index, error text or None)."""
        env = dict(os.environ)
        env.pop("SWIFTUNET_FUZZ_SELFTEST", None)
        if selftest:
            env["SWIFTUNET_FUZZ_SELFTEST"] = "1"
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        try:
            out, err = proc.communicate(json.dumps(cases), timeout=CHILD_TIMEOUT)
            hung = False
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            hung = True
        started, done = -1, {}
        for line in out.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "start" in msg:
                started = msg["start"]
            elif "done" in msg:
                done[msg["done"]] = msg["problem"]
                key = (cases[msg["done"]].get("kind"), msg.get("outcome"))
                OUTCOMES[key] = OUTCOMES.get(key, 0) + 1
        if hung or proc.returncode != 0 or len(done) != len(cases):
            last = cases[started] if 0 <= started < len(cases) else None
            what = "hung (timeout)" if hung else f"died with exit status {proc.returncode}"
            return done, (f"the child {what} in case {started}:\n{json.dumps(last)}\n"
                          f"--- child stderr (tail) ---\n{err[-4000:]}")
        return done, None

    TOTALS = {"cases": 0, "batches": 0, "seconds": 0.0}
    OUTCOMES = {}  # (kind, outcome) -> count, for the summary

    settings_kwargs = dict(
        max_examples=BATCHES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else []),
        derandomize=FUZZ_SEED is None,
    )

    def _fuzz(cases):
        start = time.monotonic()
        done, crash = run_batch(cases)
        TOTALS["cases"] += len(done)
        TOTALS["batches"] += 1
        TOTALS["seconds"] += time.monotonic() - start
        problems = [(i, p) for i, p in sorted(done.items()) if p]
        report = []
        if crash:
            report.append(crash)
        for i, p in problems[:5]:
            report.append(f"case {i}: {p}\n  {json.dumps(cases[i])}")
        assert not report, "\n\n".join(report)

    test_fuzz_python_api = settings(**settings_kwargs)(
        given(st.lists(any_case, min_size=CASES, max_size=CASES))(_fuzz)
    )
    if FUZZ_SEED is not None:
        test_fuzz_python_api = seed(int(FUZZ_SEED))(test_fuzz_python_api)

    def test_fuzz_ran_enough_cases():
        """Runs after the fuzz test (same module, file order) and checks it did
        real work; prints the totals for the CI log."""
        if TOTALS["batches"] == 0:
            pytest.skip("the fuzz test did not run in this session")
        print(f"\nfuzz: {TOTALS['cases']} cases in {TOTALS['batches']} child processes, "
              f"{TOTALS['seconds']:.1f} s")
        for (kind, outcome), n in sorted(OUTCOMES.items(), key=str):
            print(f"  {kind:9s} {outcome:14s} {n}")
        assert TOTALS["cases"] >= min(BATCHES * CASES, 1000)

    def test_child_crash_is_reported():
        """The harness itself: a child that dies mid-batch is reported with
        the case it had started, and a case that raises something other than
        ValueError/TypeError/MemoryError is a problem, not a crash."""
        good = {"kind": "construct", "dims_as": "list",
                "config": {"image_size": 8, "channels": 1, "hidden_dims": [8, 16], "time_dim": 4, "seed": 0}}
        done, crash = run_batch([good, {"kind": "__abort__"}, good], selftest=True)
        assert crash is not None and "died" in crash and "in case 1" in crash, crash
        assert done == {0: None}
        done, crash = run_batch([good, {"kind": "__raise__"}, good], selftest=True)
        assert crash is None
        assert done[0] is None and done[2] is None and "unexpected KeyError" in done[1]


    BINDING_CALLS = int(os.environ.get("SWIFTUNET_FUZZ_BINDING_CALLS", "20000"))

    @pytest.mark.parametrize("stream", [0, 1])
    def test_fuzz_raw_binding(stream):
        """Random argument lists thrown at every function of swiftunet._swiftunet."""
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--binding", str(int(FUZZ_SEED or 0) * 2 + stream),
             str(BINDING_CALLS)],
            capture_output=True, text=True, timeout=60 + BINDING_CALLS / 50,
        )
        started, problems, done = None, [], 0
        for line in proc.stdout.splitlines():
            msg = json.loads(line)
            if "start" in msg:
                started = msg
            else:
                done += 1
                if msg["problem"]:
                    problems.append(msg["problem"])
        assert proc.returncode == 0 and done == BINDING_CALLS, (
            f"the child died ({proc.returncode}) in call {started}\n{proc.stderr[-3000:]}")
        assert not problems, problems[:5]
