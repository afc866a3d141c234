"""The command line (python -m swiftunet) and the image helpers."""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

import swiftunet
from swiftunet import cli
from swiftunet.images import encode_png, image_grid, to_uint8, write_png

TINY = dict(image_size=8, channels=3, hidden_dims=[8, 16], time_dim=8)


def read_png(blob):
    """(width, height, color_type, pixels [H, W, C]) of an 8-bit non-interlaced PNG,
    undoing all five row filters, so files from Pillow decode too."""
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", "bad PNG signature"
    pos, chunks = 8, []
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos:pos + 4])
        kind, data = blob[pos + 4:pos + 8], blob[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", blob[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF, f"bad CRC in {kind}"
        chunks.append((kind, data))
        pos += 12 + n
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    w, h, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and comp == 0 and filt == 0 and interlace == 0
    c = {0: 1, 4: 2, 2: 3, 6: 4}[color]
    raw = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
    stride = w * c
    assert len(raw) == h * (stride + 1)
    out = np.zeros((h, stride), dtype=np.int64)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(h):
        ftype = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        cur = np.zeros(stride, dtype=np.int64)
        for i in range(stride):
            a = cur[i - c] if i >= c else 0
            b = prev[i]
            cc = prev[i - c] if i >= c else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else cc)
            cur[i] = (line[i] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return w, h, color, out.astype(np.uint8).reshape(h, w, c)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    m = swiftunet.DiffusionModel(**TINY, seed=6)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    m.save(path)
    return str(path), m


# ---------------------------------------------------------------------------
# image helpers


def test_to_uint8_values_and_layout():
    x = np.array([[[-1.0, 0.0], [1.0, 0.5]]])            # [C=1, H=2, W=2]
    u = to_uint8(x)
    assert u.dtype == np.uint8 and u.shape == (2, 2, 1)
    assert u[:, :, 0].tolist() == [[0, 128], [255, 191]]
    assert to_uint8(np.array([[[-5.0, 7.0, np.nan]]])).ravel().tolist() == [0, 255, 0]
    imgs = swiftunet.randn((3, 3, 4, 5), 0)
    u = to_uint8(imgs)
    assert u.shape == (3, 4, 5, 3)
    np.testing.assert_array_equal(u[1, 2, 3], to_uint8(imgs[1])[2, 3])
    np.testing.assert_array_equal(u[..., 2], to_uint8(imgs[:, 2:3])[..., 0])
    with pytest.raises(ValueError):
        to_uint8(np.zeros((4, 4)))
    with pytest.raises(TypeError):
        to_uint8(np.zeros((1, 2, 2), dtype=complex))


def test_image_grid_layout():
    imgs = swiftunet.randn((5, 3, 4, 6), 1)
    g = image_grid(imgs, nrow=3, padding=2)
    assert g.dtype == np.uint8 and g.shape == (2 + 2 * (4 + 2), 2 + 3 * (6 + 2), 3)
    u = to_uint8(imgs)
    for i in range(5):
        r, k = divmod(i, 3)
        y, x = 2 + r * 6, 2 + k * 8
        np.testing.assert_array_equal(g[y:y + 4, x:x + 6], u[i])
    assert (g[:2] == 0).all() and (g[:, :2] == 0).all()
    assert (g[8:, 2 + 2 * 8:] == 0).all()  # the empty sixth cell
    # Gray images give a 2-D grid (what imshow wants); uint8 NHWC input is used as is.
    g1 = image_grid(imgs[:, :1], nrow=5, padding=0, pad_value=255)
    assert g1.shape == (4, 30)
    np.testing.assert_array_equal(image_grid(u, nrow=3), g)
    with pytest.raises(ValueError, match="nrow"):
        image_grid(imgs, nrow=0)
    with pytest.raises(ValueError):
        image_grid(imgs[0])


@pytest.mark.parametrize("shape", [(3, 5), (4, 7, 1), (2, 3, 2), (6, 2, 3), (5, 4, 4)])
def test_encode_png_roundtrip(shape):
    px = (np.arange(np.prod(shape)) * 37 % 256).astype(np.uint8).reshape(shape)
    w, h, color, got = read_png(encode_png(px))
    assert (w, h) == (shape[1], shape[0])
    np.testing.assert_array_equal(got.reshape(px.shape), px)
    with pytest.raises(TypeError):
        encode_png(px.astype(np.float32))


def test_write_png_with_and_without_pillow(tmp_path):
    px = image_grid(swiftunet.randn((4, 3, 8, 8), 2), nrow=2)
    for use_pillow in (False, True):
        path = tmp_path / f"g{int(use_pillow)}.png"
        write_png(path, px, use_pillow=use_pillow)
        w, h, color, got = read_png(path.read_bytes())
        assert color == 2 and (w, h) == (px.shape[1], px.shape[0])
        np.testing.assert_array_equal(got, px)
    assert sorted(os.listdir(tmp_path)) == ["g0.png", "g1.png"]


# ---------------------------------------------------------------------------
# the command line


def test_sample_writes_the_grid_png(weights, tmp_path, capsys):
    path, m = weights
    out = tmp_path / "grid.png"
    npy = tmp_path / "imgs.npy"
    rc = cli.main(["sample", "--weights", path, "--n", "5", "--steps", "3", "--sampler", "ddim", "--seed", "4",
                   "--nrow", "3", "--out", str(out), "--npy", str(npy), "--no-progress"])
    assert rc == 0
    assert "5 images" in capsys.readouterr().out
    imgs = swiftunet.sample(m, n=5, steps=3, sampler="ddim", seed=4)
    np.testing.assert_array_equal(np.load(npy), imgs)
    blob = out.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, color, px = read_png(blob)
    grid = image_grid(imgs, nrow=3)
    assert (h, w) == grid.shape[:2] == (2 + 2 * 10, 2 + 3 * 10)
    np.testing.assert_array_equal(px, grid)


def test_sample_ddpm_and_errors(weights, tmp_path, capsys):
    path, m = weights
    out = tmp_path / "d.png"
    assert cli.main(["sample", "--weights", path, "--n", "2", "--sampler", "ddpm", "--timesteps", "5",
                     "--schedule", "linear", "--out", str(out), "--no-progress"]) == 0
    imgs = swiftunet.sample(m, n=2, sampler="ddpm", schedule=swiftunet.NoiseSchedule.linear(5))
    np.testing.assert_array_equal(read_png(out.read_bytes())[3], image_grid(imgs, nrow=2))
    assert cli.main(["sample", "--weights", path, "--steps", "0", "--out", str(out)]) == 2
    assert "steps" in capsys.readouterr().err
    assert cli.main(["sample", "--weights", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2


def test_sample_dpmpp_with_power_timesteps(weights, tmp_path, capsys):
    path, m = weights
    out, npy = tmp_path / "p.png", tmp_path / "p.npy"
    assert cli.main(["sample", "--weights", path, "--n", "3", "--sampler", "dpmpp_2m", "--steps", "4",
                     "--timestep-power", "0.5", "--out", str(out), "--npy", str(npy), "--no-progress"]) == 0
    ts = swiftunet.power_timesteps(1000, 4, 0.5)
    np.testing.assert_array_equal(np.load(npy), swiftunet.sample(m, n=3, sampler="dpmpp_2m", timesteps=ts))
    assert not np.array_equal(np.load(npy), swiftunet.sample(m, n=3, sampler="dpmpp_2m", steps=4))
    capsys.readouterr()
    for args, word in [(["--sampler", "ddpm", "--timestep-power", "0.5"], "timestep-power"),
                       (["--timestep-power", "0"], "power"), (["--steps", "900", "--timestep-power", "0.2"], "repeat")]:
        bad = tmp_path / "bad.png"
        assert cli.main(["sample", "--weights", path, "--n", "1", "--out", str(bad)] + args) == 2, args
        assert word in capsys.readouterr().err and not bad.exists()


def test_module_entry_point_info_and_default_model(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "swiftunet", "info"], capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"swiftunet {swiftunet.__version__}" in proc.stdout
    assert "build:" in proc.stdout and "threads:" in proc.stdout
    # --random: the random model (32x32x3, [64, 128, 256]); without --weights or
    # --random it is the shipped digits model (test_digits.py).
    out = tmp_path / "s.png"
    proc = subprocess.run([sys.executable, "-m", "swiftunet", "sample", "--random", "--n", "2", "--steps", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    w, h, _, px = read_png(out.read_bytes())
    assert (w, h) == (2 + 2 * 34, 2 + 1 * 34)
    default = swiftunet.DiffusionModel(**{k: v for k, v in cli.DEFAULT_MODEL.items()})
    np.testing.assert_array_equal(px, image_grid(swiftunet.sample(default, n=2, steps=2), nrow=2))


def test_bench_quick_forward(capsys):
    assert cli.main(["bench", "--quick-forward", "--batch", "1"]) == 0
    assert "median" in capsys.readouterr().out
