"""forward(..., max_batch=k) runs a batch k images at a time (to bound the
activations' memory) and returns exactly what one call returns."""

import numpy as np
import pytest

import swiftunet


@pytest.fixture(scope="module")
def model():
    return swiftunet.DiffusionModel(8, 3, hidden_dims=[8, 16], time_dim=8, seed=4)


@pytest.fixture(scope="module")
def batch():
    x = swiftunet.randn((8, 3, 8, 12), seed=2)
    t = np.array([0, 3, 17, 99, 250, 500, 998, 999])
    return x, t


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 8, 100])
def test_split_batches_give_the_same_bits(model, batch, k):
    x, t = batch
    whole = model(x, t)
    np.testing.assert_array_equal(model(x, t, max_batch=k), whole)
    out = np.full_like(x, np.nan)
    assert model.forward(x, t, out=out, max_batch=k) is out
    np.testing.assert_array_equal(out, whole)
    # scalar t, float64 x (converted once), and in place (out is x)
    np.testing.assert_array_equal(model(x.astype(np.float64), 17, max_batch=k), model(x, 17))
    y = x.copy()
    model(y, t, out=y, max_batch=k)
    np.testing.assert_array_equal(y, whole)


def test_a_split_forward_sees_each_image(model, batch):
    # A wrong slice (an image computed twice, or one skipped) would change some rows.
    x, t = batch
    y = model(x, t, max_batch=3)
    for i in range(len(x)):
        np.testing.assert_array_equal(y[i], model(x[i:i + 1], t[i:i + 1])[0])


def test_batch_zero_and_bad_max_batch(model, batch):
    x, t = batch
    assert model(np.zeros((0, 3, 8, 8), np.float32), [], max_batch=4).shape == (0, 3, 8, 8)
    for bad, kind in [(0, ValueError), (-2, ValueError), (True, TypeError), (2.5, TypeError), ("4", TypeError)]:
        with pytest.raises(kind, match="max_batch"):
            model(x, t, max_batch=bad)
