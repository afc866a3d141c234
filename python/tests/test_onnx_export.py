"""ONNX export: the exported graph, run by ONNX Runtime, computes swiftunet's
function (docs/model.md section 4 bound: max|a - b| <= 1e-4 * max|ref|)."""

import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the optional 'onnx' package is not installed (pip install onnx)")
ort = pytest.importorskip(
    "onnxruntime", reason="the optional 'onnxruntime' package is not installed (pip install onnxruntime)"
)

import swiftunet  # noqa: E402
from swiftunet import reference  # noqa: E402
from swiftunet.onnx_export import MIN_OPSET, export_onnx  # noqa: E402

BOUND = 1e-4

# (image_size, channels, hidden_dims, time_dim, seed, batch, H, W): batch 2,
# non-square inputs, a 3-level model with a small time_dim as the second config.
CONFIGS = [
    pytest.param(32, 3, [32, 64, 128], 128, 0, 2, 32, 16, id="rgb-32-64-128"),
    pytest.param(16, 1, [8, 16, 32, 64], 32, 7, 2, 16, 24, id="gray-8-16-32-64-T32"),
]


def rel_err(a, ref):
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert a.shape == ref.shape
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def inputs(channels, batch, h, w, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, h, w)).astype(np.float32)
    t = rng.integers(0, 1000, size=batch).astype(np.int64)
    t[0] = 0  # the t = 0 edge (sin 0, cos 1)
    return x, t


@pytest.mark.parametrize("image_size,channels,dims,time_dim,seed,batch,h,w", CONFIGS)
def test_ort_matches_swiftunet_and_reference(tmp_path, image_size, channels, dims, time_dim, seed, batch, h, w):
    m = swiftunet.DiffusionModel(image_size, channels, hidden_dims=dims, time_dim=time_dim, seed=seed)
    path = tmp_path / "model.onnx"
    export_onnx(m, str(path))
    x, t = inputs(channels, batch, h, w)

    got = session(path).run(["eps"], {"x": x, "t": t})[0]
    ours = m(x, t)
    ref = reference.forward(m.state_dict(), x, t)

    assert got.dtype == np.float32 and got.shape == x.shape
    assert rel_err(got, ref) <= BOUND, "ONNX Runtime vs numpy reference"
    assert rel_err(ours, ref) <= BOUND, "swiftunet vs numpy reference"
    assert rel_err(got, ours) <= BOUND, "ONNX Runtime vs swiftunet"


def test_dynamic_batch_and_spatial_dims(tmp_path):
    m = swiftunet.DiffusionModel(16, 3, hidden_dims=[8, 16], time_dim=16, seed=3)
    path = tmp_path / "m.onnx"
    export_onnx(m, path)  # path-like accepted
    sess = session(path)
    for batch, h, w in [(1, 16, 16), (3, 8, 20), (2, 32, 12)]:
        x, t = inputs(3, batch, h, w, seed=batch)
        got = sess.run(["eps"], {"x": x, "t": t})[0]
        assert rel_err(got, m(x, t)) <= BOUND, (batch, h, w)


def test_empty_batch(tmp_path):
    m = swiftunet.DiffusionModel(8, 2, hidden_dims=[8, 16], time_dim=8, seed=1)
    path = tmp_path / "m.onnx"
    export_onnx(m, str(path))
    x = np.zeros((0, 2, 8, 16), dtype=np.float32)
    got = session(path).run(["eps"], {"x": x, "t": np.zeros(0, dtype=np.int64)})[0]
    assert got.shape == (0, 2, 8, 16) and got.dtype == np.float32


def test_graph_interface_and_weights():
    m = swiftunet.DiffusionModel(16, 2, hidden_dims=[8, 16], time_dim=8, seed=0)
    proto = export_onnx(m, None)
    assert isinstance(proto, onnx.ModelProto)
    onnx.checker.check_model(proto)
    g = proto.graph

    (x, t) = g.input
    assert x.name == "x" and x.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim]
    assert dims == ["B", 2, "H", "W"]
    assert t.name == "t" and t.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in t.type.tensor_type.shape.dim] == ["B"]
    (out,) = g.output
    assert out.name == "eps"

    # every state_dict entry is an initializer of the same name, shape and value
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    for name, value in m.state_dict().items():
        assert name in inits, name
        np.testing.assert_array_equal(inits[name], value)

    ops = {n.op_type for n in g.node}
    for op in ("InstanceNormalization", "Erf", "Softmax", "MatMul", "ConvTranspose", "Sin", "Cos"):
        assert op in ops, op
    assert "GroupNormalization" not in ops and "Gelu" not in ops
    assert {p.key: p.value for p in proto.metadata_props}["hidden_dims"] == "[8, 16]"
    assert proto.opset_import[0].version == 17


@pytest.mark.parametrize("opset", [MIN_OPSET, 18])
def test_other_opsets_run(tmp_path, opset):
    if opset > onnx.defs.onnx_opset_version():
        pytest.skip(f"onnx {onnx.__version__} does not know opset {opset}")
    m = swiftunet.DiffusionModel(8, 1, hidden_dims=[8, 16], time_dim=8, seed=5)
    path = tmp_path / "m.onnx"
    export_onnx(m, str(path), opset=opset)
    x, t = inputs(1, 2, 8, 16)
    got = session(path).run(["eps"], {"x": x, "t": t})[0]
    assert rel_err(got, reference.forward(m.state_dict(), x, t)) <= BOUND


def test_time_embedding_large_timesteps(tmp_path):
    # sin/cos of large angles are where float32 math would drift: the graph
    # computes them in float64 like docs/model.md and the reference.
    m = swiftunet.DiffusionModel(8, 1, hidden_dims=[8, 16], time_dim=16, seed=2)
    path = tmp_path / "m.onnx"
    export_onnx(m, str(path))
    x, _ = inputs(1, 3, 8, 8)
    t = np.array([0, 123_456, 2**40], dtype=np.int64)
    got = session(path).run(["eps"], {"x": x, "t": t})[0]
    assert rel_err(got, reference.forward(m.state_dict(), x, t)) <= BOUND


def test_bad_arguments():
    m = swiftunet.DiffusionModel(8, 1, hidden_dims=[8, 16], time_dim=8)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(m, None, opset=MIN_OPSET - 1)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(m, None, opset=onnx.defs.onnx_opset_version() + 1)
    with pytest.raises(TypeError, match="opset"):
        export_onnx(m, None, opset="17")
    with pytest.raises(TypeError, match="DiffusionModel"):
        export_onnx(object(), None)


def test_missing_onnx_gives_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    m = swiftunet.DiffusionModel(8, 1, hidden_dims=[8, 16], time_dim=8)
    with pytest.raises(ImportError, match="pip install onnx"):
        export_onnx(m, None)


def test_reexported_from_package():
    if not hasattr(swiftunet, "export_onnx"):
        pytest.skip("swiftunet/__init__.py does not re-export export_onnx yet")
    assert swiftunet.export_onnx is export_onnx
