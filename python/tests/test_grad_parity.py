"""Gradient parity: swiftunet's loss_and_grad against the numpy float64 reference backward
(swiftunet.reference.loss_and_grad), for every parameter tensor, within
2e-4 · max(max|g_ref| of the tensor, 1e-3 · max|g_ref| over the model)."""

import numpy as np
import pytest

import swiftunet
from swiftunet import reference_training as reference


@pytest.mark.parametrize("channels,hidden_dims,batch,height,width", [
    (1, [8, 16], 1, 8, 8),
    (3, [8, 16], 3, 8, 12),
    (1, [8, 16, 16], 3, 16, 8),
    (3, [8, 16, 16], 1, 8, 16),
])
def test_loss_and_grad_matches_reference(channels, hidden_dims, batch, height, width):
    m = swiftunet.DiffusionModel(height, channels, hidden_dims=hidden_dims, time_dim=16, seed=2)
    rng = np.random.default_rng(batch * 10 + channels)
    sd = m.state_dict()
    for k in sd:
        scale = 0.3 if ".norm" in k or k.startswith("out_norm") else 0.05
        sd[k] = (sd[k] + scale * rng.standard_normal(sd[k].shape)).astype(np.float32)
    m.load_state_dict(sd)
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    target = rng.standard_normal(x.shape).astype(np.float32)
    t = rng.integers(0, 1000, batch)
    loss, grads = m.loss_and_grad(x, t, target)
    ref_loss, ref = reference.loss_and_grad({k: v.astype(np.float64) for k, v in sd.items()},
                                            x.astype(np.float64), t, target.astype(np.float64))
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    overall = max(float(np.abs(v).max()) for v in ref.values())
    for name, g in grads.items():
        bound = 2e-4 * max(float(np.abs(ref[name]).max()), 1e-3 * overall)
        err = float(np.abs(g.astype(np.float64) - ref[name]).max())
        assert err <= bound, f"{name}: {err:.3e} > {bound:.3e}"
    after = m.state_dict()
    assert all(np.array_equal(after[k], sd[k]) for k in sd), "loss_and_grad changed the weights"
