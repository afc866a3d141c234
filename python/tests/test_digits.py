"""The shipped digits model: its file, the default `sample` command, the training
script (python3 -m swiftunet train-digits) and the evaluation (docs/digits.md)."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

import swiftunet
from swiftunet import cli, pretrained_models as pretrained_module
from swiftunet.digits import downsample_8, load_digits_16, upsample_16
from swiftunet.io import load_safetensors
from test_cli import read_png

SHIPPED_CONFIG = {"image_size": 16, "channels": 1, "hidden_dims": [32, 64, 64], "time_dim": 64}
TINY = ["--hidden-dims", "8,16", "--time-dim", "8", "--limit", "12", "--batch-size", "5", "--no-progress"]


def _sklearn():
    return pytest.importorskip("sklearn", reason="scikit-learn is not installed: the digits data set and the "
                                                 "classifier come from it (python3 -m pip install scikit-learn)")


@pytest.fixture(scope="module")
def classifier():
    """A logistic regression on the 1,500 real training digits (8x8, x / 16), as docs/digits.md's evaluation."""
    _sklearn()
    from sklearn.linear_model import LogisticRegression
    from swiftunet.digits import load_digits_8
    x, y = load_digits_8("train", return_labels=True)
    return LogisticRegression(max_iter=5000, random_state=0).fit(x / 16.0, y)


def _confident(classifier, images16):
    """(number classified with probability >= 0.9, predicted classes) of images [N, 1, 16, 16] in [-1, 1]."""
    p = classifier.predict_proba(downsample_8(images16) / 16.0)
    return int((p.max(axis=1) >= 0.9).sum()), p.argmax(axis=1)


# ------------------------------------------------------------ the shipped file


def test_shipped_file_is_installed_and_matches_its_checksum():
    entry = pretrained_module.PRETRAINED["digits"]
    path = pretrained_module.pretrained_path("digits")
    assert path.name == entry["file"] and path.parent.name == "weights"
    assert path.stat().st_size < 4_000_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    m = swiftunet.pretrained("digits")
    assert isinstance(m, swiftunet.DiffusionModel)
    assert m.config() == SHIPPED_CONFIG
    tensors, md = load_safetensors(str(path))
    assert md["weights"] == "ema" and md["format"] == "swiftunet"
    assert all(v.dtype == np.float32 for v in tensors.values())
    for name, value in m.state_dict().items():
        np.testing.assert_array_equal(value, tensors[name])
    assert swiftunet.pretrained("digits", verify=False).config() == SHIPPED_CONFIG


def test_pretrained_rejects_unknown_names_and_damaged_files(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown pretrained model 'mnist'; known: digits"):
        swiftunet.pretrained("mnist")
    with pytest.raises(TypeError, match="name must be a str"):
        swiftunet.pretrained(3)
    blob = bytearray(pretrained_module.pretrained_path("digits").read_bytes())
    blob[-1] ^= 1
    (tmp_path / "digits.safetensors").write_bytes(bytes(blob))
    monkeypatch.setattr(pretrained_module, "_WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError, match="SHA-256"):
        swiftunet.pretrained("digits")
    os.remove(tmp_path / "digits.safetensors")
    with pytest.raises(FileNotFoundError, match="not installed"):
        swiftunet.pretrained("digits")


# ------------------------------------------------------- the default sample


def test_default_sample_command_draws_digits_a_classifier_recognises(tmp_path, capsys, classifier):
    out = tmp_path / "samples.png"
    assert cli.main(["sample", "--n", "16", "--steps", "20", "--seed", "0", "--out", str(out)]) == 0
    assert 'swiftunet.pretrained("digits")' in capsys.readouterr().out
    w, h, color, px = read_png(out.read_bytes())
    assert (w, h, color) == (2 + 4 * 18, 2 + 4 * 18, 0)  # 4x4 grey 16x16 tiles, 2 pixels apart
    tiles = np.stack([px[2 + 18 * r:18 + 18 * r, 2 + 18 * c:18 + 18 * c, 0] for r in range(4) for c in range(4)])
    images = tiles[:, None].astype(np.float64) / 127.5 - 1.0
    confident, classes = _confident(classifier, images)
    # The shipped model: most of 16 samples are confidently one digit, and
    # they are not all the same digit.
    assert confident >= 10, (confident, classes)
    assert len(set(classes.tolist())) >= 5, classes
    # The same check on the same architecture with random weights fails.
    random = swiftunet.DiffusionModel(**SHIPPED_CONFIG, seed=0)
    confident_random, _ = _confident(classifier, swiftunet.sample(random, n=16, steps=20, seed=0))
    assert confident_random <= 3, confident_random


def test_sample_random_and_weights_options(tmp_path, capsys):
    out = tmp_path / "r.png"
    assert cli.main(["sample", "--random", "--n", "1", "--steps", "2", "--out", str(out)]) == 0
    assert read_png(out.read_bytes())[:2] == (36, 36)
    assert cli.main(["sample", "--random", "--weights", str(pretrained_module.pretrained_path()),
                     "--out", str(out)]) == 2
    assert "exclude" in capsys.readouterr().err


# ------------------------------------------------------------------ the data


def test_digits_data_split_and_scaling():
    _sklearn()
    x, y = load_digits_16("train", return_labels=True)
    xt, yt = load_digits_16("test", return_labels=True)
    assert x.shape == (1500, 1, 16, 16) and xt.shape == (297, 1, 16, 16)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    assert set(y.tolist()) == set(range(10)) and np.bincount(yt).min() >= 25
    # nearest upsampling: each 2x2 block is one pixel, and downsample_8 undoes it
    np.testing.assert_array_equal(x[:, :, ::2, ::2], x[:, :, 1::2, 1::2])
    from swiftunet.digits import load_digits_8
    np.testing.assert_array_equal(downsample_8(xt), load_digits_8("test"))
    np.testing.assert_array_equal(upsample_16(load_digits_8("test")), xt)
    with pytest.raises(ValueError, match="split must be one of"):
        load_digits_16("valid")


# ------------------------------------------------------- the training script


def _train(args, cwd):
    from swiftunet import train_digits
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return train_digits.main(args)
    finally:
        os.chdir(old)


def test_train_digits_runs_checkpoints_and_resumes_bit_identically(tmp_path, capsys):
    _sklearn()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    # 7 steps in one go (checkpoints every 3), and 4 + 3 with a resume: the same bytes.
    assert cli.main(["train-digits"] + TINY + ["--steps", "7", "--checkpoint-every", "3",
                                               "--out", str(a / "m.safetensors")]) == 0
    assert _train(TINY + ["--steps", "4", "--out", "m.safetensors"], b) == 0
    assert (b / "m.ckpt.safetensors").is_file() and (b / "m.ckpt.safetensors.json").is_file()
    assert swiftunet.Trainer.load(b / "m.ckpt.safetensors").step_count == 4
    assert _train(TINY + ["--steps", "7", "--out", "m.safetensors", "--resume"], b) == 0
    assert "resumed" in capsys.readouterr().out
    assert (a / "m.safetensors").read_bytes() == (b / "m.safetensors").read_bytes()
    assert (a / "m.ckpt.safetensors").read_bytes() == (b / "m.ckpt.safetensors").read_bytes()

    # The EMA file is a model file; the script's batches are Trainer.fit's.
    m = swiftunet.DiffusionModel.load(a / "m.safetensors")
    assert m.config() == {"image_size": 16, "channels": 1, "hidden_dims": [8, 16], "time_dim": 8}
    data = load_digits_16("train")[:12]
    ref = swiftunet.DiffusionModel(16, 1, hidden_dims=[8, 16], time_dim=8, seed=0)
    tr = swiftunet.Trainer(ref, grad_clip=1.0, ema_decay=0.999, seed=0)
    tr.fit(data, epochs=3, batch_size=5, progress=False)  # 3 steps per epoch: 9 steps
    assert _train(TINY + ["--epochs", "3", "--out", "e.safetensors"], a) == 0
    got = swiftunet.DiffusionModel.load(a / "e.safetensors").state_dict()
    for name, value in tr.ema_model().state_dict().items():
        np.testing.assert_array_equal(got[name], value)
    settings = json.loads((a / "e.ckpt.safetensors.json").read_text())
    assert settings["total_steps"] == 9 and settings["limit"] == 12


def test_train_digits_resume_refuses_other_settings(tmp_path, capsys):
    _sklearn()
    assert _train(TINY + ["--steps", "2", "--out", "m.safetensors"], tmp_path) == 0
    assert _train(TINY + ["--steps", "4", "--out", "m.safetensors", "--resume", "--lr", "0.01"], tmp_path) == 2
    assert "lr: checkpoint 0.001, now 0.01" in capsys.readouterr().err
    assert _train(TINY + ["--steps", "4", "--out", "other.safetensors", "--resume"], tmp_path) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_train_digits_without_sklearn_says_so(tmp_path, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    assert _train(TINY + ["--steps", "1"], tmp_path) == 2
    assert "pip install scikit-learn" in capsys.readouterr().err


# ------------------------------------------------------------ the evaluation


def test_evaluate_runs_on_a_few_samples(capsys):
    _sklearn()
    from swiftunet import evaluate
    assert cli.main(["evaluate", "--n", "20", "--samplers", "ddim:5"]) == 0
    out = capsys.readouterr().out
    assert "| real test digits (297) |" in out and "| DDIM-5 (20) |" in out
    result = evaluate.evaluate(n=20, samplers="ddim:5")
    assert result["real_test"]["n"] == 297 and abs(sum(result["real_test"]["class_freq"]) - 1) < 1e-9
    row = result["samplers"][0]
    assert row["steps"] == 5 and 0 <= row["confident"] <= 1 and row["nearest_mean"] > 0
    assert cli.main(["evaluate", "--samplers", "ddim:x"]) == 2
    for bad in ["ddim:5:power", "ddim:5:power-1", "ddim:5:karras", "dpmpp_2m:5:uniform", "ddim:5:linspace:1"]:
        assert cli.main(["evaluate", "--samplers", bad]) == 2, bad
    assert "bad entry" in capsys.readouterr().err


def test_evaluate_timesteps_field_reaches_sample(capsys):
    _sklearn()
    from swiftunet import evaluate
    assert evaluate._parse_samplers("dpmpp_2m:4:power0.5, ddim:3:trailing,dpmpp_2m:3:karras,ddpm") == [
        ("dpmpp_2m", 4, "power0.5"), ("ddim", 3, "trailing"), ("dpmpp_2m", 3, "karras"), ("ddpm", None, "linspace")]
    result = evaluate.evaluate(n=12, samplers="dpmpp_2m:4:power0.5,dpmpp_2m:4")
    power, plain = result["samplers"]
    assert power["plan"] == "power0.5" and plain["plan"] == "linspace"
    # Different timesteps, different images: the field is not ignored.
    assert power["fd_pixels"] != plain["fd_pixels"]
    assert "| DPMPP_2M-4 power0.5 (12) |" in evaluate.markdown(result)


def test_frechet_distance():
    from swiftunet.evaluate import frechet_distance
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3)) @ np.array([[1.0, 0.3, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 0.7]])
    assert abs(frechet_distance(a, a)) < 1e-9
    # A shift adds |shift|^2 exactly (same covariance).
    assert abs(frechet_distance(a, a + [1.0, -2.0, 0.5]) - 5.25) < 1e-9
    # Independent 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2, up to sampling error.
    x, y = rng.normal(0.0, 1.0, size=(200000, 1)), rng.normal(3.0, 2.0, size=(200000, 1))
    assert abs(frechet_distance(x, y) - 10.0) < 0.1
