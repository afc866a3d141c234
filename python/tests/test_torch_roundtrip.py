"""The PyTorch round trip: swiftunet.from_torch(module) and model.to_torch() move
weights both ways, exactly, and the two models agree within the parity bound
(docs/model.md section 4). The tests needing PyTorch skip, saying so, where it
is not installed; the ones checking that swiftunet never needs it always run."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import swiftunet

BOUND = 1e-4


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed: the round trip needs it (optional)")


def rel_err(a, ref):
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert a.shape == ref.shape
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def torch_forward(tm, x, t):
    torch = _torch()
    with torch.inference_mode():
        return tm(torch.from_numpy(x), torch.from_numpy(t)).numpy()


def perturbed_torch_model(channels, dims, time_dim, seed):
    """A TorchDiffusionModel in eval mode with perturbed GroupNorm affines."""
    _torch()
    import swiftunet.torch
    from test_torch_parity import make_torch_model   # imported here: that module needs torch
    return make_torch_model(swiftunet.torch, channels, dims, time_dim, seed)


CASES = [
    # (channels, hidden_dims, time_dim, batch, height, width)
    (3, [32, 64, 128], 128, 2, 32, 32),
    (1, [32, 64, 64], 64, 3, 16, 16),
    (3, [16, 32], 16, 1, 8, 12),
]


@pytest.mark.parametrize("channels,dims,time_dim,batch,height,width", CASES)
def test_from_torch_copies_weights_and_matches_output(channels, dims, time_dim, batch, height, width):
    torch = _torch()
    tm = perturbed_torch_model(channels, dims, time_dim, seed=batch)
    kept = {k: v.clone() for k, v in tm.state_dict().items()}
    m = swiftunet.from_torch(tm, image_size=height)
    assert isinstance(m, swiftunet.DiffusionModel)
    assert m.config() == {"image_size": height, "channels": channels, "hidden_dims": dims, "time_dim": time_dim}
    tsd = tm.state_dict()
    sd = m.state_dict()
    assert list(sd) == list(tsd)
    for name, v in sd.items():
        assert np.array_equal(v, tsd[name].numpy()), name      # copied exactly
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    t = rng.integers(0, 1000, size=batch)
    err = rel_err(m(x, t), torch_forward(tm, x, t))
    assert err <= BOUND, f"from_torch model vs PyTorch: {err:.3g}"
    # the module is not changed
    assert all(torch.equal(v, tm.state_dict()[k]) for k, v in kept.items())


@pytest.mark.parametrize("channels,dims,time_dim,batch,height,width", CASES)
def test_to_torch_copies_weights_and_matches_output(channels, dims, time_dim, batch, height, width):
    torch = _torch()
    from swiftunet.torch import TorchDiffusionModel
    m = swiftunet.DiffusionModel(height, channels, hidden_dims=dims, time_dim=time_dim, seed=5)
    tm = m.to_torch()
    assert isinstance(tm, TorchDiffusionModel) and not tm.training
    assert tm.image_size == height
    sd = m.state_dict()
    tsd = tm.state_dict()
    assert list(tsd) == list(sd)
    for name, v in tsd.items():
        assert v.dtype == torch.float32 and np.array_equal(v.numpy(), sd[name]), name
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    t = rng.integers(0, 1000, size=batch)
    err = rel_err(torch_forward(tm, x, t), m(x, t))
    assert err <= BOUND, f"to_torch module vs swiftunet: {err:.3g}"
    # back again: the same weights, so bit-identical swiftunet output
    m2 = swiftunet.from_torch(tm)
    assert m2.config() == m.config()
    np.testing.assert_array_equal(m2(x, t), m(x, t))


def test_to_torch_copies_not_shares():
    torch = _torch()
    m = swiftunet.DiffusionModel(8, 1, hidden_dims=[8, 16], time_dim=8, seed=1)
    before = m.state_dict()
    tm = m.to_torch()
    with torch.no_grad():
        tm.init_conv.weight.add_(1.0)
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_from_torch_takes_a_state_dict_and_float64():
    torch = _torch()
    tm = perturbed_torch_model(1, [8, 16], 8, seed=2).double()
    m = swiftunet.from_torch(tm.state_dict())       # a mapping of tensors works too
    assert m.config()["hidden_dims"] == [8, 16] and m.image_size == 32  # inferred: smallest valid >= 32
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    t = np.array([3, 900])
    with torch.inference_mode():
        ref = tm(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert rel_err(m(x.astype(np.float32), t), ref) <= BOUND


def test_from_torch_bad_input_names_the_problem():
    torch = _torch()
    with pytest.raises(TypeError, match="torch.nn.Module or a state_dict"):
        swiftunet.from_torch([1, 2, 3])
    with pytest.raises(ValueError, match="init_conv.weight"):
        swiftunet.from_torch(torch.nn.Linear(3, 4))
    tm = perturbed_torch_model(1, [8, 16], 8, seed=3)
    sd = dict(tm.state_dict())
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unexpected keys: extra.weight"):
        swiftunet.from_torch(sd)
    sd = dict(tm.state_dict())
    sd["out_conv.bias"] = torch.zeros(2)
    with pytest.raises(ValueError, match="out_conv.bias"):
        swiftunet.from_torch(sd)
    sd = dict(tm.state_dict())
    sd["init_conv.bias"] = torch.zeros(8, dtype=torch.int64)
    with pytest.raises(TypeError, match="init_conv.bias must be a floating-point tensor"):
        swiftunet.from_torch(sd)


def _run(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)


def test_import_swiftunet_does_not_import_torch():
    proc = _run("""
        import sys, swiftunet
        m = swiftunet.DiffusionModel(8, 1, hidden_dims=[8, 16], time_dim=8)
        m(swiftunet.randn((1, 1, 8, 8), seed=0), 1)
        print("torch" in sys.modules)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_without_torch_the_round_trip_says_what_is_missing():
    # sys.modules["torch"] = None makes `import torch` fail as if it were not installed.
    proc = _run("""
        import sys
        sys.modules["torch"] = None
        import swiftunet
        m = swiftunet.DiffusionModel(8, 1, hidden_dims=[8, 16], time_dim=8)
        for call in (lambda: m.to_torch(), lambda: swiftunet.from_torch(object()),
                     lambda: __import__("swiftunet.torch")):
            try:
                call()
            except ImportError as exc:
                print("ImportError:", exc)
    """)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line.startswith("ImportError: swiftunet.torch needs PyTorch, which is not installed"), line
