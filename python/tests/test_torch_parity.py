"""PyTorch parity: the torch.nn.Module written with docs/model.md's attribute
names (swiftunet.torch.TorchDiffusionModel) has exactly swiftunet's state_dict,
and loading its weights into swiftunet reproduces its output within the parity
bound (max|a - b| <= 1e-4 * max|ref|, docs/model.md section 4)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional, test/benchmark only)")

import swiftunet  # noqa: E402
import swiftunet.torch  # noqa: E402

BOUND = 1e-4


@pytest.fixture(scope="module")
def tmod():
    return swiftunet.torch


def rel_err(a, ref):
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert a.shape == ref.shape
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def torch_forward(tm, x, t):
    with torch.inference_mode():
        return tm(torch.from_numpy(x), torch.from_numpy(t)).numpy()


def make_torch_model(tmod, channels, dims, time_dim, seed):
    torch.manual_seed(seed)
    tm = tmod.TorchDiffusionModel(channels, dims, time_dim).eval()
    # GroupNorm starts at weight 1 / bias 0: perturb them so the test sees
    # them being loaded and used.
    with torch.no_grad():
        for mod in tm.modules():
            if isinstance(mod, torch.nn.GroupNorm):
                mod.weight.add_(0.1 * torch.randn_like(mod.weight))
                mod.bias.add_(0.1 * torch.randn_like(mod.bias))
    return tm


CONFIGS = [
    pytest.param([32, 64, 128], id="32-64-128"),
    pytest.param([64, 128, 256], id="64-128-256"),
]


@pytest.mark.parametrize("dims", CONFIGS)
def test_state_dict_keys_and_shapes_equal(tmod, dims):
    tm = tmod.TorchDiffusionModel(3, dims, 128)
    m = swiftunet.DiffusionModel(32, 3, hidden_dims=dims, time_dim=128)
    tsd, ssd = tm.state_dict(), m.state_dict()
    assert list(tsd.keys()) == list(ssd.keys())  # same names, same order
    for k in tsd:
        assert tuple(tsd[k].shape) == ssd[k].shape, k


@pytest.mark.parametrize("dims", CONFIGS)
def test_torch_weights_loaded_into_swiftunet_match(tmod, dims):
    tm = make_torch_model(tmod, 3, dims, 128, seed=0)
    m = swiftunet.DiffusionModel(32, 3, hidden_dims=dims, time_dim=128, seed=1)
    m.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    t = np.array([0, 731], dtype=np.int64)
    expected = torch_forward(tm, x, t)
    got = m(x, t)
    err = rel_err(got, expected)
    assert err <= BOUND, f"swiftunet vs PyTorch: {err:.3g}"

    # non-square input, batch 3
    x2 = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
    t2 = np.array([5, 999, 250], dtype=np.int64)
    err2 = rel_err(m(x2, t2), torch_forward(tm, x2, t2))
    assert err2 <= BOUND, f"swiftunet vs PyTorch (3x3x16x32): {err2:.3g}"


@pytest.mark.parametrize("dims", CONFIGS)
def test_swiftunet_weights_loaded_into_torch_match(tmod, dims):
    m = swiftunet.DiffusionModel(32, 3, hidden_dims=dims, time_dim=128, seed=3)
    tm = tmod.TorchDiffusionModel(3, dims, 128).eval()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()}, strict=True)

    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    t = np.array([10, 400], dtype=np.int64)
    err = rel_err(m(x, t), torch_forward(tm, x, t))
    assert err <= BOUND, f"swiftunet vs PyTorch: {err:.3g}"


def test_torch_twin_matches_numpy_reference(tmod):
    """The twin itself is right (so the parity above means something)."""
    from swiftunet import reference

    tm = make_torch_model(tmod, 1, [8, 16, 32], 16, seed=4)
    params = {k: v.numpy() for k, v in tm.state_dict().items()}
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 12)).astype(np.float32)
    t = np.array([0, 77], dtype=np.int64)
    err = rel_err(torch_forward(tm, x, t), reference.forward(params, x, t))
    assert err <= BOUND, f"PyTorch twin vs numpy reference: {err:.3g}"
