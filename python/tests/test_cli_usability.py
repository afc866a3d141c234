"""What a new user of the command line notices: a grid with no empty cell,
--n 0 refused without writing anything, every sample option explained."""

import numpy as np
import pytest

import swiftunet
from swiftunet import cli
from swiftunet.images import grid_columns, image_grid

TINY = dict(image_size=8, channels=1, hidden_dims=[8, 16], time_dim=8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    swiftunet.DiffusionModel(**TINY, seed=1).save(path)
    return str(path)


@pytest.mark.parametrize("n,cols", [(1, 1), (2, 2), (3, 3), (4, 2), (6, 3), (8, 4), (9, 3), (10, 5),
                                    (12, 4), (16, 4), (18, 6), (7, 3), (13, 4), (64, 8)])
def test_grid_columns(n, cols):
    assert grid_columns(n) == cols


def test_grid_columns_fill_the_grid_whenever_a_divisor_is_near_the_square_root():
    for n in range(1, 200):
        cols = grid_columns(n)
        rows = -(-n // cols)
        assert cols * cols <= 4 * n and rows <= cols
        near = [c for c in range(1, n + 1) if n % c == 0 and c * c >= n and c * c <= 4 * n]
        assert (n % cols == 0) == bool(near), n


def test_sample_of_8_fills_a_4x2_grid(weights, tmp_path, capsys):
    out = tmp_path / "eight.png"
    assert cli.main(["sample", "--weights", weights, "--n", "8", "--steps", "2", "--out", str(out),
                     "--no-progress"]) == 0
    side = 2 + 8                                        # padding + image
    assert capsys.readouterr().out.rstrip().endswith(f"({2 + 4 * side}x{2 + 2 * side})")
    m = swiftunet.DiffusionModel.load(weights)
    expected = image_grid(swiftunet.sample(m, n=8, steps=2), nrow=4)
    assert expected.shape == (2 + 2 * side, 2 + 4 * side)


@pytest.mark.parametrize("args,word", [(["--n", "0"], "--n"), (["--n", "-3"], "--n"),
                                       (["--n", "4", "--nrow", "0"], "--nrow")])
def test_sample_refuses_an_empty_grid_and_writes_nothing(weights, tmp_path, capsys, args, word):
    out = tmp_path / "none.png"
    assert cli.main(["sample", "--weights", weights, "--out", str(out), "--no-progress"] + args) == 2
    assert f"error: {word} must be at least 1" in capsys.readouterr().err
    assert not out.exists()


def test_every_sample_option_has_help():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    sample = sub.choices["sample"]
    missing = [a.option_strings[0] for a in sample._actions
               if a.option_strings and a.dest != "help" and not a.help]
    assert missing == []
    text = sample.format_help()
    for option in ("--sampler", "--seed", "--schedule", "--threads"):
        assert option in text
