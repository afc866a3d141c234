"""Nothing leaks: forwards, model lifetimes and error paths, repeated.

Two measures are used after a warm-up:

* RSS from /proc/self/statm, with the generous bound of the brief (growth
  < 20 MB), which catches leaking whole arrays or activation arenas;
* glibc's mallinfo2() bytes in use (when available), which is exact to the
  byte and catches small per-call leaks (an error message that is never
  freed, a Swift object that is retained once too often) that RSS cannot see
  (a 64-byte leak per call is 640 KB over 10,000 calls). Python's small objects live in pymalloc
  arenas that malloc does not see, so this measures the native side.

The reference counts of every argument are checked as well: a missing
Py_DECREF or PyBuffer_Release in the binding shows up there first.
"""

import ctypes
import ctypes.util
import gc
import sys

import numpy as np
import pytest

import swiftunet
from swiftunet import _swiftunet

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")

TINY = dict(image_size=4, channels=2, hidden_dims=[8, 16], time_dim=4)
RSS_BOUND = 20 << 20  # bytes
MALLOC_BOUND = 256 << 10  # bytes: ~26 bytes per call over 10,000 calls


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def _load_mallinfo2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


_mallinfo2 = _load_mallinfo2()


def malloc_bytes():
    """Bytes handed out by malloc and not yet freed (None without mallinfo2)."""
    if _mallinfo2 is None:
        return None
    info = _mallinfo2()
    return info.uordblks + info.hblkhd


class Meter:
    """Runs `body(i)` n times after a warm-up; reports native memory growth."""

    def __init__(self, body, n, warmup=None):
        self.body, self.n, self.warmup = body, n, warmup if warmup is not None else max(50, n // 10)

    def run(self):
        for i in range(self.warmup):
            self.body(i)
        gc.collect()
        r0, m0 = rss_bytes(), malloc_bytes()
        for i in range(self.n):
            self.body(i)
        gc.collect()
        r1, m1 = rss_bytes(), malloc_bytes()
        self.rss_growth = r1 - r0
        self.malloc_growth = None if m0 is None else m1 - m0
        return self

    def check(self, what):
        assert self.rss_growth < RSS_BOUND, f"{what}: RSS grew by {self.rss_growth / 2**20:.1f} MB"
        if self.malloc_growth is not None:
            assert self.malloc_growth < MALLOC_BOUND, (
                f"{what}: malloc'd bytes grew by {self.malloc_growth} over {self.n} calls "
                f"({self.malloc_growth / self.n:.1f} bytes per call)"
            )


def refcounts(*objs):
    return [sys.getrefcount(o) for o in objs]


@pytest.fixture(scope="module")
def model():
    return swiftunet.DiffusionModel(**TINY, seed=1)


def test_forward_10000_calls(model):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    x64 = x.astype(np.float64)
    xs = np.zeros((2, 2, 4, 8), np.float32)[..., ::2]  # strided: the copy path
    xs[...] = x
    t = np.array([3, 4], np.int64)
    t8 = np.array([3, 4], np.uint8)
    out = np.empty_like(x)
    want = model(x, t)
    before = refcounts(x, x64, xs, t, t8, out, model, model._handle)

    def call(i):
        k = i % 4
        if k == 0:
            y = model(x, t)
        elif k == 1:
            y = model(x, t, out=out)
        elif k == 2:
            y = model(x64, t8)
        else:
            y = model(xs, t)
        if i % 997 == 0:
            assert np.array_equal(y, want)

    Meter(call, 10_000).run().check("10,000 forwards")
    # (Computed outside the assert: pytest's assertion rewriting holds
    # references to the subexpressions it evaluates.)
    after = refcounts(x, x64, xs, t, t8, out, model, model._handle)
    assert after == before


def test_create_destroy_1000_cycles():
    x = np.ones((1, 2, 4, 4), np.float32)

    def cycle(i):
        m = swiftunet.DiffusionModel(**TINY, seed=i)
        if i % 2:
            m(x, i)
        if i % 10 == 0:
            m.state_dict()
        del m

    Meter(cycle, 1000, warmup=50).run().check("1,000 create/destroy cycles")


def test_larger_models_are_freed():
    """A model of ~5 MB of weights, created and dropped 100 times: a model
    that is never freed (a reference held by the binding) would cost 500 MB."""

    def cycle(i):
        m = swiftunet.DiffusionModel(8, 1, hidden_dims=[64, 128], time_dim=64, seed=i)
        m(np.zeros((1, 1, 8, 8), np.float32), 1)
        del m

    Meter(cycle, 100, warmup=5).run().check("100 larger models")


def test_state_dict_roundtrips_1000(model):
    sd = model.state_dict()
    m = swiftunet.DiffusionModel(**TINY, seed=2)

    def cycle(i):
        m.load_state_dict(sd)
        m.state_dict()

    Meter(cycle, 1000).run().check("1,000 state_dict/load_state_dict")


def test_error_paths_10000_calls(model):
    """Calls that raise, in Python's checks, in the binding's and in Swift's,
    leave memory and the arguments' reference counts flat."""
    x = np.zeros((1, 2, 4, 4), np.float32)
    x_bad_shape = np.zeros((1, 2, 5, 4), np.float32)
    x_bad_channels = np.zeros((1, 3, 4, 4), np.float32)
    t = np.array([1], np.int64)
    t_neg = np.array([-1], np.int64)
    t_float = np.array([1.0])
    out = np.empty_like(x)
    out_bad = np.empty((1, 2, 4, 2), np.float32)
    out_ro = np.empty_like(x)
    out_ro.flags.writeable = False
    out_f64 = np.empty(x.shape, np.float64)
    h = model._handle
    sd_nan = model.state_dict()
    sd_nan["out_conv.bias"] = np.full(2, np.nan, np.float32)
    sd_nan_values = list(sd_nan.values())
    objs = (x, x_bad_shape, x_bad_channels, t, t_neg, t_float, out, out_bad, out_ro, out_f64, h, model)
    before = refcounts(*objs)

    calls = [
        # Python checks (model.py)
        lambda: model(x_bad_shape, t),
        lambda: model(x_bad_channels, t),
        lambda: model(x, t_neg),
        lambda: model(x, t_float),
        lambda: model(x, t, out=out_bad),
        lambda: model(x, t, out=out_ro),
        lambda: model(x, t, out=out_f64),
        lambda: model(x, [1, 2]),
        # the binding's checks (_swiftunet.c)
        lambda: _swiftunet.forward(h, x, t, out_ro, 1, 2, 4, 4),
        lambda: _swiftunet.forward(h, x, t, out_bad, 1, 2, 4, 4),
        lambda: _swiftunet.forward(h, x, t_float, out, 1, 2, 4, 4),
        lambda: _swiftunet.forward(h, x, t, x, 1, 2, 4, 4),
        # Swift's checks (the per-thread error message is set and replaced)
        lambda: _swiftunet.forward(h, x, t_neg, out, 1, 2, 4, 4),
        lambda: _swiftunet.forward(h, x_bad_shape, t, np.empty_like(x_bad_shape), 1, 2, 5, 4),
        lambda: _swiftunet.create(4, 2, (8, 12), 4, 0),
        lambda: _swiftunet.set_params(h, sd_nan_values),
        lambda: model.load_state_dict(sd_nan),
    ]
    expected = (ValueError, TypeError)

    def call(i):
        fn = calls[i % len(calls)]
        try:
            fn()
        except expected:
            pass
        else:
            raise AssertionError(f"call {i % len(calls)} did not raise")

    Meter(call, 10_000).run().check("10,000 failing calls")
    after = refcounts(*objs)
    assert after == before
    # The model is intact after all that.
    assert np.isfinite(model(x, t)).all()


def test_swift_error_messages_are_freed(model):
    """10,000 calls that fail inside Swift, each replacing the thread's
    last-error message (strdup'ed by the library): an unfreed message would
    be at least 48 bytes a call, 480 KB in all, beyond MALLOC_BOUND."""
    x = np.zeros((1, 2, 4, 4), np.float32)
    out = np.empty_like(x)
    h = model._handle
    bad = [np.array([-1 - i], np.int64) for i in range(16)]  # messages differ in length too

    def call(i):
        try:
            _swiftunet.forward(h, x, bad[i % 16], out, 1, 2, 4, 4)
        except ValueError as exc:
            assert "timesteps" in str(exc)
        else:
            raise AssertionError("no error")

    Meter(call, 10_000).run().check("10,000 errors raised by Swift")


def test_exception_objects_do_not_pin_arguments(model):
    """The exception raised for a bad call must not keep the caller's arrays
    alive (e.g. through a traceback frame held by the binding)."""
    import weakref

    class Arr(np.ndarray):
        pass

    x = np.zeros((1, 2, 4, 4), np.float32).view(Arr)
    out = np.zeros((1, 2, 4, 4), np.float32).view(Arr)
    refs = [weakref.ref(x), weakref.ref(out)]
    for _ in range(10):
        try:
            _swiftunet.forward(model._handle, x, np.array([-1]), out, 1, 2, 4, 4)
        except ValueError:
            pass
    del x, out
    gc.collect()
    assert all(r() is None for r in refs)


def test_training_calls_do_not_leak(model):
    """Trainer steps, loss_and_grad and state copies, repeated; trainers created and
    dropped; and the failing paths of each (Python's, the binding's, Swift's): memory
    and the arguments' reference counts stay flat, and a failed step records nothing."""
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    x_nan = x.copy()
    x_nan[0, 0, 0, 0] = np.nan
    t = np.array([3, 900], np.int64)
    m = swiftunet.DiffusionModel(**TINY, seed=3)
    tr = swiftunet.Trainer(m, grad_clip=1.0)
    th = tr._handle
    grads = np.empty(m.num_parameters, np.float32)
    state = np.empty(m.num_parameters, np.float32)
    objs = (x, x_nan, t, grads, state, m, m._handle, th)
    before = refcounts(*objs)

    def call(i):
        k = i % 4
        if k == 0:
            tr.step(x)
        elif k == 1:
            m.loss_and_grad(x, t, x)
        elif k == 2:
            _swiftunet.trainer_get_state(th, i % 3, state)
        else:
            _swiftunet.loss_and_grad(m._handle, x, t, x, grads, 2, 2, 4, 4)

    Meter(call, 2000, warmup=100).run().check("2,000 training calls")
    assert len(tr.losses) == tr.step_count

    failing = [
        lambda: tr.step(x_nan),                                                  # Swift: non-finite x0
        lambda: tr.step(x[:, :1]),                                               # Python: channels
        lambda: _swiftunet.trainer_step(th, x, 3, 2, 4, 4, []),                  # binding: x0 too short
        lambda: _swiftunet.trainer_step(th, x, 2, 2, 4, 2, []),                  # Swift: bad width
        lambda: m.loss_and_grad(x, t, x[:1]),                                    # Python: target shape
        lambda: _swiftunet.loss_and_grad(m._handle, x, t, x, grads[:-1], 2, 2, 4, 4),  # binding
        lambda: _swiftunet.trainer_set_state(th, state, state, -np.ones_like(state), 0),  # Swift: v < 0
        lambda: _swiftunet.trainer_get_state(th, 7, state),                      # binding: which
    ]
    steps = tr.step_count

    def fail(i):
        try:
            failing[i % len(failing)]()
        except (ValueError, TypeError):
            pass
        else:
            raise AssertionError(f"failing call {i % len(failing)} did not raise")

    Meter(fail, 4000).run().check("4,000 failing training calls")
    assert tr.step_count == steps and len(tr.losses) == steps
    del call, fail, failing
    gc.collect()
    after = refcounts(*objs)
    assert after == before

    def cycle(i):
        tr2 = swiftunet.Trainer(swiftunet.DiffusionModel(**TINY, seed=i))
        if i % 2:
            tr2.step(x)
        del tr2

    Meter(cycle, 300, warmup=20).run().check("300 trainer create/destroy cycles")
