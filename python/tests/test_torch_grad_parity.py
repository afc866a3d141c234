"""Gradient parity against PyTorch autograd: swiftunet's loss_and_grad against
swiftunet.torch.TorchDiffusionModel (docs/model.md's names) run in float64, for
every parameter tensor, over a matrix of configurations. Skipped where torch is not
installed (it is optional, test/benchmark only)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional, test/benchmark only)")
F = torch.nn.functional

import swiftunet  # noqa: E402
import swiftunet.torch  # noqa: E402


@pytest.fixture(scope="module")
def tmod():
    # A .double() twin rounds the sinusoid to float32 once (docs/model.md section 4),
    # then goes on in float64.
    return swiftunet.torch


def _perturbed_state(model, seed):
    """The model's weights with non-trivial GroupNorm affines and larger weights elsewhere."""
    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    for name, v in sd.items():
        scale = 0.3 if ".norm" in name or name.startswith("out_norm") else 0.05
        sd[name] = (v + scale * rng.standard_normal(v.shape)).astype(np.float32)
    return sd


CASES = [
    # (channels, hidden_dims, batch, height, width)
    (1, [8, 16], 1, 8, 8),
    (3, [8, 16], 3, 8, 12),
    (1, [8, 16, 16], 3, 16, 8),
    (3, [8, 16, 16], 1, 8, 16),
]


@pytest.mark.parametrize("channels,hidden_dims,batch,height,width", CASES)
def test_loss_and_grad_matches_torch_autograd(tmod, channels, hidden_dims, batch, height, width):
    T = 16
    m = swiftunet.DiffusionModel(height, channels, hidden_dims=hidden_dims, time_dim=T, seed=3)
    sd = _perturbed_state(m, seed=batch + channels)
    m.load_state_dict(sd)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    target = rng.standard_normal(x.shape).astype(np.float32)
    t = rng.integers(0, 1000, size=batch)

    loss, grads = m.loss_and_grad(x, t, target)

    tm = tmod.TorchDiffusionModel(channels, hidden_dims, T).double()
    tm.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in sd.items()})
    ref_loss = F.mse_loss(tm(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(t)),
                          torch.from_numpy(target.astype(np.float64)))
    ref_loss.backward()
    ref = {k: p.grad.numpy() for k, p in tm.named_parameters()}

    assert list(grads) == list(sd)
    assert abs(loss - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    overall = max(float(np.max(np.abs(g))) for g in ref.values())
    for name, g in grads.items():
        r = ref[name]
        assert g.shape == r.shape and g.dtype == np.float32
        bound = 2e-4 * max(float(np.max(np.abs(r))), 1e-3 * overall)
        err = float(np.max(np.abs(g.astype(np.float64) - r)))
        assert err <= bound, f"{name}: max |swift - torch| = {err:.3e} > {bound:.3e}"


def test_a_wrong_gradient_would_fail(tmod):
    """The criterion is tight enough to see a gradient off by 0.1% in one tensor."""
    m = swiftunet.DiffusionModel(8, 1, hidden_dims=[8, 16], time_dim=16, seed=3)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    _, grads = m.loss_and_grad(x, [1, 500], np.zeros_like(x))
    g = grads["bottleneck.attn.qkv.weight"]
    wrong = g * 1.001
    assert np.max(np.abs(wrong - g)) > 2e-4 * np.max(np.abs(g))
