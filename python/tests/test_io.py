"""Save / load (python/swiftunet/io.py): the safetensors layout, exact round
trips, atomic writes, interoperability with the `safetensors` package, .npz
state_dicts, and hostile files (more of those in test_robustness.py)."""

import json
import os
import struct

import numpy as np
import pytest

import swiftunet
from swiftunet import io as su_io

CFG = dict(image_size=8, channels=3, hidden_dims=[8, 16, 32], time_dim=16)


@pytest.fixture(scope="module")
def model():
    return swiftunet.DiffusionModel(**CFG, seed=4)


def _x():
    return swiftunet.randn((2, 3, 8, 8), 1)


def _same_model(a, b):
    assert a.config() == b.config()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    np.testing.assert_array_equal(a(_x(), [3, 900]), b(_x(), [3, 900]))


def _parse(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return n, json.loads(blob[8:8 + n]), blob[8 + n:], blob


def test_roundtrip_is_exact(model, tmp_path):
    path = tmp_path / "m.safetensors"
    model.save(path)
    m2 = swiftunet.DiffusionModel.load(path)
    _same_model(model, m2)
    m3 = swiftunet.DiffusionModel.load(str(path))  # str or PathLike
    _same_model(model, m3)


def test_file_layout(model, tmp_path):
    path = tmp_path / "m.safetensors"
    model.save(str(path))
    n, header, data, blob = _parse(path)
    assert n % 8 == 0 and (8 + n) % 8 == 0
    text = blob[8:8 + n]
    assert text.rstrip(b" ").endswith(b"}") and len(text) - len(text.rstrip(b" ")) < 8  # space padding only
    meta = header.pop("__metadata__")
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["format"] == "swiftunet" and meta["format_version"] == "1"
    assert int(meta["image_size"]) == 8 and int(meta["channels"]) == 3 and int(meta["time_dim"]) == 16
    assert json.loads(meta["hidden_dims"]) == [8, 16, 32]
    sd = model.state_dict()
    assert list(header) == list(sd)  # docs/model.md order
    offset = 0
    for name, arr in sd.items():
        info = header[name]
        assert info["dtype"] == "F32" and info["shape"] == list(arr.shape)
        assert info["data_offsets"] == [offset, offset + arr.nbytes]
        np.testing.assert_array_equal(np.frombuffer(data, "<f4", arr.size, offset).reshape(arr.shape), arr)
        offset += arr.nbytes
    assert offset == len(data)


def test_save_is_atomic(model, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"previous contents")

    def boom(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(su_io.os, "fsync", boom)
    with pytest.raises(OSError, match="disk on fire"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == b"previous contents"  # untouched
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temporary left behind
    # A failure before anything is written leaves no file either.
    with pytest.raises(TypeError):
        su_io.save_safetensors({"a": np.ones(2)}, tmp_path / "x.safetensors", metadata={"k": 1})
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    model.save(path)
    _same_model(model, swiftunet.DiffusionModel.load(path))


def test_saved_files_get_the_usual_mode(model, tmp_path):
    """The temporary file behind the atomic write is private; the saved file
    gets 0666 less the umask, like any file open() makes."""
    old = os.umask(0o027)
    try:
        model.save(tmp_path / "m.safetensors")
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "m.safetensors").st_mode & 0o777
    assert mode == 0o640 == os.stat(tmp_path / "plain").st_mode & 0o777, oct(mode)


def test_npz_state_dict_loads(model, tmp_path):
    path = tmp_path / "sd.npz"
    np.savez(path, **model.state_dict())
    m = swiftunet.DiffusionModel.load(path)  # configuration inferred from the shapes
    assert m.hidden_dims == [8, 16, 32] and m.channels == 3 and m.time_dim == 16
    assert m.image_size == 32  # not in the shapes: smallest multiple of 2**L >= 32
    np.testing.assert_array_equal(m(_x(), [5, 6]), model(_x(), [5, 6]))
    m = swiftunet.DiffusionModel.load(path, config={"image_size": 8})
    _same_model(model, m)
    with pytest.raises(ValueError, match="unknown keys"):
        swiftunet.DiffusionModel.load(path, config={"image_sz": 8})
    with pytest.raises(ValueError):
        swiftunet.DiffusionModel.load(path, config={"hidden_dims": [8, 16]})


def test_infer_config():
    sd = swiftunet.reference.init_params(16, 1, [16, 32], 8, seed=0)
    assert su_io.infer_config(sd) == {"image_size": 32, "channels": 1, "hidden_dims": [16, 32], "time_dim": 8}
    assert su_io.infer_config(sd, image_size=16)["image_size"] == 16
    with pytest.raises(ValueError, match="init_conv.weight"):
        su_io.infer_config({})


@pytest.mark.parametrize("dtype,name", [(np.float64, "F64"), (np.float16, "F16")])
def test_other_float_dtypes_convert(model, tmp_path, dtype, name):
    sd = {k: v.astype(dtype) for k, v in model.state_dict().items()}
    header, offset, chunks = {}, 0, []
    for k, v in sd.items():
        b = v.astype(v.dtype.newbyteorder("<")).tobytes()
        header[k] = {"dtype": name, "shape": list(v.shape), "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(chunks))
    tensors, meta = su_io.load_safetensors(path)
    assert meta == {}
    for k, v in sd.items():
        assert tensors[k].dtype == np.float32
        np.testing.assert_array_equal(tensors[k], v.astype(np.float32))


def test_bf16_is_decoded(tmp_path):
    vals = np.array([1.0, -2.5, 0.15625, 3.0e38], dtype=np.float32)
    bf16 = (vals.view(np.uint32) >> 16).astype("<u2")
    raw = json.dumps({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "b.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bf16.tobytes())
    t, _ = su_io.load_safetensors(path)
    np.testing.assert_array_equal(t["w"], (bf16.astype(np.uint32) << 16).view(np.float32))


def _write(path, header, data, pad=True):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1, 1], "data_offsets": [8, 12]}}
DATA = struct.pack("<3f", 1, 2, 3)


def _with(name, **changes):
    h = json.loads(json.dumps(GOOD))
    h[name].update(changes)
    return h


HOSTILE = [
    ("too_short", lambda p: p.write_bytes(b"\x01\x02")),
    ("length_zero", lambda p: p.write_bytes(struct.pack("<Q", 0) + b"{}")),
    ("length_beyond_file", lambda p: p.write_bytes(struct.pack("<Q", 1000) + b"{}      ")),
    ("length_huge", lambda p: p.write_bytes(struct.pack("<Q", 2**64 - 1) + b"{}      ")),
    ("not_json", lambda p: _write(p, b"{nope", DATA)),
    ("not_utf8", lambda p: _write(p, b'{"\xff": 1}', DATA)),
    ("json_list", lambda p: _write(p, b"[]", DATA)),
    ("json_string", lambda p: _write(p, b'"x"', DATA)),
    ("entry_not_object", lambda p: _write(p, {"a": [1, 2]}, DATA)),
    ("unknown_dtype", lambda p: _write(p, _with("a", dtype="I8"), DATA)),
    ("dtype_missing", lambda p: _write(p, {"a": {"shape": [2], "data_offsets": [0, 8]}}, DATA[:8])),
    ("shape_negative", lambda p: _write(p, _with("a", shape=[-2]), DATA)),
    ("shape_bool", lambda p: _write(p, _with("a", shape=[True, 2]), DATA)),
    ("shape_huge", lambda p: _write(p, _with("a", shape=[2**40, 2**40]), DATA)),
    ("shape_too_many_dims", lambda p: _write(p, _with("a", shape=[1] * 9 + [2]), DATA)),
    ("offsets_lie", lambda p: _write(p, _with("a", data_offsets=[0, 4]), DATA)),
    ("offsets_reversed", lambda p: _write(p, _with("a", data_offsets=[8, 0]), DATA)),
    ("offsets_exceed", lambda p: _write(p, _with("b", data_offsets=[8, 16], shape=[2]), DATA)),
    ("offsets_overlap", lambda p: _write(p, _with("b", data_offsets=[4, 8]), DATA)),
    ("offsets_gap", lambda p: _write(p, _with("b", data_offsets=[12, 16]), DATA + b"\0" * 4)),
    ("trailing_bytes", lambda p: _write(p, GOOD, DATA + b"\0" * 4)),
    ("offsets_float", lambda p: _write(p, _with("a", data_offsets=[0.0, 8.0]), DATA)),
    ("metadata_not_strings", lambda p: _write(p, {**GOOD, "__metadata__": {"k": 1}}, DATA)),
    ("duplicate_key", lambda p: _write(p, json.dumps(GOOD)[:-1].encode() + b', "a": {}}', DATA)),
]


@pytest.mark.parametrize("make", [h[1] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_files_raise_value_error(tmp_path, make):
    path = tmp_path / "h.safetensors"
    make(path)
    with pytest.raises(ValueError):
        su_io.load_safetensors(path)
    with pytest.raises(ValueError):
        swiftunet.DiffusionModel.load(path)


def test_baseline_of_hostile_cases_is_valid(tmp_path):
    path = tmp_path / "g.safetensors"
    _write(path, GOOD, DATA)
    t, meta = su_io.load_safetensors(path)
    assert list(t) == ["a", "b"] and meta == {}
    np.testing.assert_array_equal(t["a"], [1, 2])
    np.testing.assert_array_equal(t["b"], [[3]])


def test_config_in_metadata_that_does_not_match_the_weights_is_refused_before_building(model, tmp_path):
    path = tmp_path / "m.safetensors"
    model.save(path)
    n, header, data, _ = _parse(path)
    header["__metadata__"]["hidden_dims"] = "[8192, 8192]"  # ~19 GB of weights if it were built
    _write(path, header, data)
    with pytest.raises(ValueError, match="do not match"):
        swiftunet.DiffusionModel.load(path)


def test_truncated_file(model, tmp_path):
    path = tmp_path / "m.safetensors"
    model.save(path)
    blob = path.read_bytes()
    for cut in (len(blob) - 1, len(blob) // 2, 100, 9):
        path.write_bytes(blob[:cut])
        with pytest.raises(ValueError):
            swiftunet.DiffusionModel.load(path)


# ---------------------------------------------------------------------------
# the safetensors package (installed by scripts/test.sh)


def _safetensors():
    try:
        import safetensors.numpy as stn
    except ImportError:
        pytest.skip("the `safetensors` package is not installed (pip install safetensors)")
    return stn


def test_file_written_by_safetensors_loads(model, tmp_path):
    stn = _safetensors()
    sd = model.state_dict()
    path = tmp_path / "theirs.safetensors"
    meta = {"image_size": "8", "channels": "3", "hidden_dims": "[8, 16, 32]", "time_dim": "16"}
    stn.save_file(dict(sd), str(path), metadata=meta)
    _same_model(model, swiftunet.DiffusionModel.load(path))
    # Without metadata (e.g. a PyTorch state_dict): configuration from the shapes.
    stn.save_file(dict(sd), str(path))
    m = swiftunet.DiffusionModel.load(path, config={"image_size": 8})
    _same_model(model, m)


def test_our_file_loads_in_safetensors(model, tmp_path):
    stn = _safetensors()
    from safetensors import safe_open
    path = tmp_path / "ours.safetensors"
    model.save(path)
    loaded = stn.load_file(str(path))
    sd = model.state_dict()
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert loaded[k].dtype == np.float32
        np.testing.assert_array_equal(loaded[k], v)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == "swiftunet" and json.loads(meta["hidden_dims"]) == [8, 16, 32]
