"""PyTorch habits on DiffusionModel: named_parameters()/parameters() (copies),
train()/eval() (return the model, change no computation)."""

import numpy as np
import pytest

import swiftunet


@pytest.fixture(scope="module")
def model():
    return swiftunet.DiffusionModel(8, 3, hidden_dims=[8, 16], time_dim=8, seed=2)


def test_named_parameters_are_the_state_dict(model):
    named = list(model.named_parameters())
    sd = model.state_dict()
    assert [n for n, _ in named] == list(sd)
    for (name, p), q in zip(named, model.parameters()):
        assert p.dtype == np.float32 and np.array_equal(p, sd[name]) and np.array_equal(q, sd[name])
    assert sum(p.size for p in model.parameters()) == model.num_parameters
    assert f"num_parameters={model.num_parameters:,}" in repr(model)


def test_parameters_are_copies(model):
    x = swiftunet.randn((1, 3, 8, 8), seed=1)
    before = model(x, 5)
    for p in model.parameters():
        p += 1.0
    for _, p in model.named_parameters():
        p[...] = 0.0
    np.testing.assert_array_equal(model(x, 5), before)


def test_train_and_eval_return_the_model_and_change_nothing(model):
    x = swiftunet.randn((2, 3, 8, 8), seed=3)
    t = np.array([1, 700])
    assert model.training is True                     # PyTorch's initial mode
    ref = model(x, t)
    assert model.eval() is model and model.training is False
    np.testing.assert_array_equal(model(x, t), ref)
    assert model.train() is model and model.training is True
    np.testing.assert_array_equal(model(x, t), ref)
    assert model.train(False) is model and model.training is False
    with pytest.raises(TypeError, match="mode must be a bool"):
        model.train("yes")
    model.train()
