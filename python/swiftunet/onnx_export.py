"""Export a swiftunet model as a standard ONNX graph.

    import swiftunet
    m = swiftunet.DiffusionModel(32, 3, hidden_dims=[32, 64, 128])
    swiftunet.onnx_export.export_onnx(m, "unet.onnx")

The graph has two inputs, ``x`` float32 ``[B, C, H, W]`` and ``t`` int64 ``[B]``
(``B``, ``H`` and ``W`` are dynamic; ``H`` and ``W`` must be multiples of
``2**L`` as for the Swift model), and one output ``eps`` float32
``[B, C, H, W]``. It follows docs/model.md section 1 using only long-standing standard
operators, so any ONNX runtime runs it:

- the sinusoidal time encoding is computed in float64 (Cast, Mul, Sin, Cos,
  Concat) and rounded to float32 once, exactly as docs/model.md says;
- GroupNorm(8, C) is Reshape [B, 8, C/8*H*W] -> InstanceNormalization (scale 1,
  bias 0, epsilon 1e-5) -> Reshape back -> Mul/Add by the per-channel weight
  and bias (portable across runtime versions, unlike GroupNormalization);
- GELU is the exact form 0.5 * x * (1 + Erf(x / sqrt(2)));
- SiLU is x * Sigmoid(x);
- attention is MatMul / Softmax(axis=-1) / MatMul per head;
- ConvTranspose uses PyTorch's semantics (weight [in, out, kH, kW], explicit
  pads), which are also ONNX's.

Weights become initializers named exactly as in ``model.state_dict()`` (with
their state_dict shapes). The ``onnx`` package is an optional dependency,
imported only when ``export_onnx`` is called.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

__all__ = ["export_onnx", "MIN_OPSET"]

#: The oldest opset the exporter emits (Softmax over one axis, Split/Unsqueeze
#: with tensor inputs).
MIN_OPSET = 13

_GROUPS = 8
_HEADS = 4
_EPS = 1e-5


def _import_onnx():
    try:
        import onnx  # noqa: F401
        from onnx import TensorProto, helper, numpy_helper  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "swiftunet.export_onnx needs the optional 'onnx' package "
            "(pip install onnx; add onnxruntime to run the exported graph)"
        ) from exc
    return onnx


class _GraphBuilder:
    """Collects nodes and initializers, handing out unique tensor names."""

    def __init__(self, onnx_mod):
        self.onnx = onnx_mod
        self.helper = onnx_mod.helper
        self.numpy_helper = onnx_mod.numpy_helper
        self.nodes = []
        self.initializers = []
        self._names = set()
        self._counter = 0
        self._consts = {}

    def fresh(self, hint: str) -> str:
        self._counter += 1
        name = f"{hint}_{self._counter}"
        while name in self._names:
            self._counter += 1
            name = f"{hint}_{self._counter}"
        self._names.add(name)
        return name

    def initializer(self, name: str, array: np.ndarray, fresh: bool = False) -> str:
        if not fresh:
            if name in self._names:
                raise ValueError(f"duplicate tensor name {name!r}")
            self._names.add(name)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, array, dtype) -> str:
        """A shared constant initializer (int64 shapes/axes, scalars)."""
        arr = np.asarray(array, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.initializer(self.fresh("const"), arr, fresh=True)
        return self._consts[key]

    def op(self, op_type: str, inputs, hint: Optional[str] = None, n_out: int = 1, **attrs):
        outs = [self.fresh(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(
            self.helper.make_node(op_type, list(inputs), outs, name=self.fresh("node_" + op_type), **attrs)
        )
        return outs[0] if n_out == 1 else outs


class _Exporter:
    def __init__(self, b: _GraphBuilder, params, channels, dims, time_dim):
        self.b = b
        self.p = params
        self.C = channels
        self.d = dims
        self.T = time_dim
        self._weights = {}

    # weights are added lazily, once each, under their state_dict names
    def w(self, name: str) -> str:
        if name not in self._weights:
            self._weights[name] = self.b.initializer(name, np.asarray(self.p[name], dtype=np.float32))
        return self._weights[name]

    # ------------------------------------------------------------ primitives

    def linear(self, x, prefix):
        return self.b.op("Gemm", [x, self.w(prefix + ".weight"), self.w(prefix + ".bias")],
                         prefix + ".out", transB=1)

    def conv(self, x, prefix, k, stride=1, pad=0):
        return self.b.op("Conv", [x, self.w(prefix + ".weight"), self.w(prefix + ".bias")],
                         prefix + ".out", kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad, pad, pad, pad])

    def conv_transpose(self, x, prefix, k=4, stride=2, pad=1):
        # PyTorch ConvTranspose2d: out = (H-1)*stride - 2*pad + k; weight [in, out, k, k].
        return self.b.op("ConvTranspose", [x, self.w(prefix + ".weight"), self.w(prefix + ".bias")],
                         prefix + ".out", kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad, pad, pad, pad])

    def _batch_and_hw(self, shape, prefix):
        """([B], [H*W]) as int64 tensors of shape [1], from Shape(x) of a 4-D x.

        Reshape targets are built from these rather than with -1, which
        cannot be inferred when B = 0."""
        b = self.b
        batch = b.op("Slice", [shape, b.const([0], np.int64), b.const([1], np.int64)], prefix + ".B")
        hw = b.op("Slice", [shape, b.const([2], np.int64), b.const([4], np.int64)], prefix + ".HW")
        hw = b.op("ReduceProd", [hw], prefix + ".N", keepdims=1)
        return batch, hw

    def group_norm(self, x, prefix, ch):
        b = self.b
        shape = b.op("Shape", [x], prefix + ".shape")
        batch, hw = self._batch_and_hw(shape, prefix)
        per_group = b.op("Mul", [hw, b.const([ch // _GROUPS], np.int64)], prefix + ".group_size")
        target = b.op("Concat", [batch, b.const([_GROUPS], np.int64), per_group], prefix + ".grouped_shape", axis=0)
        g = b.op("Reshape", [x, target], prefix + ".grouped")
        n = b.op("InstanceNormalization",
                 [g, b.const(np.ones(_GROUPS), np.float32), b.const(np.zeros(_GROUPS), np.float32)],
                 prefix + ".normed", epsilon=_EPS)
        n = b.op("Reshape", [n, shape], prefix + ".ungrouped")
        axes = b.const([1, 2], np.int64)
        gamma = b.op("Unsqueeze", [self.w(prefix + ".weight"), axes], prefix + ".gamma")
        beta = b.op("Unsqueeze", [self.w(prefix + ".bias"), axes], prefix + ".beta")
        y = b.op("Mul", [n, gamma], prefix + ".scaled")
        return b.op("Add", [y, beta], prefix + ".out")

    def silu(self, x):
        s = self.b.op("Sigmoid", [x], "sigmoid")
        return self.b.op("Mul", [x, s], "silu")

    def gelu(self, x):
        b = self.b
        z = b.op("Div", [x, b.const(math.sqrt(2.0), np.float32)], "gelu_z")
        e = b.op("Erf", [z], "gelu_erf")
        e = b.op("Add", [e, b.const(1.0, np.float32)], "gelu_1pe")
        y = b.op("Mul", [x, e], "gelu_xe")
        return b.op("Mul", [y, b.const(0.5, np.float32)], "gelu")

    # ---------------------------------------------------------------- layers

    def time_embedding(self, t):
        b = self.b
        half = self.T // 2
        i = np.arange(half, dtype=np.float64)
        freq = np.exp(-math.log(10000.0) * i / (half - 1))            # float64, as docs/model.md
        td = b.op("Cast", [t], "t_f64", to=self.b.onnx.TensorProto.DOUBLE)
        td = b.op("Unsqueeze", [td, b.const([1], np.int64)], "t_col")
        a = b.op("Mul", [td, b.const(freq[None, :], np.float64)], "t_angle")
        s = b.op("Sin", [a], "t_sin")
        c = b.op("Cos", [a], "t_cos")
        enc = b.op("Concat", [s, c], "t_enc_f64", axis=1)
        return b.op("Cast", [enc], "t_enc", to=self.b.onnx.TensorProto.FLOAT)

    def time_mlp(self, t):
        e = self.time_embedding(t)
        e = self.gelu(self.linear(e, "time_mlp.fc1"))
        return self.linear(e, "time_mlp.fc2")

    def res_block(self, x, temb, prefix, cin, cout):
        b = self.b
        h = self.silu(self.group_norm(x, prefix + "norm1", cin))
        h = self.conv(h, prefix + "conv1", 3, pad=1)
        tp = self.linear(temb, prefix + "time_proj")
        tp = b.op("Unsqueeze", [tp, b.const([2, 3], np.int64)], prefix + "time_proj.bcast")
        h = b.op("Add", [h, tp], prefix + "h_t")
        h = self.silu(self.group_norm(h, prefix + "norm2", cout))
        h = self.conv(h, prefix + "conv2", 3, pad=1)
        if prefix + "skip.weight" in self.p:
            skip = self.conv(x, prefix + "skip", 1)
        else:
            skip = x
        return b.op("Add", [h, skip], prefix + "out")

    def self_attention(self, x, prefix, ch):
        b = self.b
        dh = ch // _HEADS
        shape = b.op("Shape", [x], prefix + "shape")
        n = self.group_norm(x, prefix + "norm", ch)
        qkv = self.conv(n, prefix + "qkv", 1)                                # [B, 3C, H, W]
        batch, hw = self._batch_and_hw(shape, prefix)
        target = b.op("Concat", [batch, b.const([3 * _HEADS, dh], np.int64), hw], prefix + "qkv_shape", axis=0)
        qkv = b.op("Reshape", [qkv, target], prefix + "qkv_heads")
        q, k, v = b.op("Split", [qkv, b.const([_HEADS] * 3, np.int64)], prefix + "qkv_split",
                       n_out=3, axis=1)                                    # each [B, h, dh, N]
        qt = b.op("Transpose", [q], prefix + "qT", perm=[0, 1, 3, 2])       # [B, h, N, dh]
        s = b.op("MatMul", [qt, k], prefix + "scores")                      # [B, h, Nq, Nk]
        s = b.op("Div", [s, b.const(math.sqrt(dh), np.float32)], prefix + "scores_scaled")
        a = b.op("Softmax", [s], prefix + "attn", axis=-1)
        at = b.op("Transpose", [a], prefix + "attnT", perm=[0, 1, 3, 2])    # [B, h, Nk, Nq]
        o = b.op("MatMul", [v, at], prefix + "o")                           # [B, h, dh, Nq]
        o = b.op("Reshape", [o, shape], prefix + "o_merged")                # [B, C, H, W]
        o = self.conv(o, prefix + "proj", 1)
        return b.op("Add", [x, o], prefix + "out")

    def forward(self, x, t):
        b = self.b
        d = self.d
        L = len(d) - 1
        temb = self.time_mlp(t)
        h = self.conv(x, "init_conv", 3, pad=1)
        skips = []
        for i in range(L):
            s = self.res_block(h, temb, f"down_blocks.{i}.res.", d[i], d[i + 1])
            h = self.conv(s, f"down_blocks.{i}.down", 4, stride=2, pad=1)
            skips.append(s)
        h = self.res_block(h, temb, "bottleneck.res1.", d[L], d[L])
        h = self.self_attention(h, "bottleneck.attn.", d[L])
        h = self.res_block(h, temb, "bottleneck.res2.", d[L], d[L])
        for j in range(L):
            i = L - 1 - j
            u = self.conv_transpose(h, f"up_blocks.{j}.up")
            cat = b.op("Concat", [u, skips[L - 1 - j]], f"up_blocks.{j}.cat", axis=1)
            h = self.res_block(cat, temb, f"up_blocks.{j}.res.", 2 * d[i + 1], d[i])
        h = self.silu(self.group_norm(h, "out_norm", d[0]))
        return self.conv(h, "out_conv", 3, pad=1)


def _model_config(model):
    missing = [a for a in ("hidden_dims", "channels", "time_dim", "image_size", "state_dict")
               if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"export_onnx: model must be a swiftunet.DiffusionModel (or have hidden_dims, channels, "
            f"time_dim, image_size and state_dict()); {type(model).__name__} lacks {', '.join(missing)}"
        )
    dims = [int(v) for v in model.hidden_dims]
    return int(model.channels), dims, int(model.time_dim), int(model.image_size)


def export_onnx(model: Any, path: Any = None, opset: int = 17):
    """Writes `model` as an ONNX graph to `path` (str or path-like; None: don't
    write) and returns the ``onnx.ModelProto``.

    Inputs: ``x`` float32 [B, C, H, W] (B, H, W dynamic), ``t`` int64 [B].
    Output: ``eps`` float32 [B, C, H, W]. `opset` must be between 13 and the
    installed onnx package's newest opset. Needs the optional ``onnx`` package.
    """
    onnx = _import_onnx()
    from onnx import TensorProto, helper

    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"export_onnx: opset must be an int, got {type(opset).__name__}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= newest:
        raise ValueError(f"export_onnx: opset must be in [{MIN_OPSET}, {newest}], got {opset}")
    opset = int(opset)

    channels, dims, time_dim, image_size = _model_config(model)
    params = model.state_dict()

    b = _GraphBuilder(onnx)
    b._names.update({"x", "t", "eps"})
    ex = _Exporter(b, params, channels, dims, time_dim)
    y = ex.forward("x", "t")
    b.nodes.append(helper.make_node("Identity", [y], ["eps"], name="output"))

    unused = sorted(set(params) - set(ex._weights))
    if unused:  # would mean the exporter and the state_dict disagree
        raise ValueError(f"export_onnx: state_dict entries not used by the graph: {unused}")

    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", channels, "H", "W"]),
        helper.make_tensor_value_info("t", TensorProto.INT64, ["B"]),
    ]
    outputs = [helper.make_tensor_value_info("eps", TensorProto.FLOAT, ["B", channels, "H", "W"])]
    graph = helper.make_graph(b.nodes, "swiftunet_DiffusionModel", inputs, outputs, b.initializers)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="swiftunet",
        doc_string="swiftunet DiffusionModel: predicts the noise eps for images x at timesteps t",
    )
    # The oldest IR version that carries this opset, so that older runtimes
    # load the file (make_model stamps the newest IR version it knows).
    try:
        proto.ir_version = max(7, helper.find_min_ir_version_for(list(proto.opset_import)))
    except Exception:  # pragma: no cover - very old or very new onnx
        pass
    config = {
        "image_size": image_size,
        "channels": channels,
        "hidden_dims": dims,
        "time_dim": time_dim,
    }
    for key, value in config.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = str(value)
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save_model(proto, path)
    return proto
