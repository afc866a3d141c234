"""Saving and loading weights: safetensors (the save format) and .npz.

The safetensors layout (https://github.com/huggingface/safetensors, "Format"):

    8 bytes   N, the header length, unsigned little-endian
    N bytes   a JSON object: for each tensor {"dtype": "F32", "shape": [...],
              "data_offsets": [begin, end]} (offsets into the data section),
              plus an optional "__metadata__" object of string -> string;
              padded with spaces so that 8 + N is a multiple of 8
    rest      the data section: raw little-endian tensor bytes, C order

`save_model` writes the state_dict in docs/model.md order as F32, with the model's
configuration in ``__metadata__`` (image_size, channels, hidden_dims as JSON,
time_dim, format and format_version), atomically: a temporary file in the
same directory, fsync, then os.replace, so a crash or an error never leaves a
partial file under the target name.

`load_safetensors` treats the file as hostile: every length, offset, dtype and
shape is checked against the file's real size before anything is read or
allocated, and any inconsistency is a ValueError naming the problem.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import struct
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

__all__ = [
    "save_safetensors",
    "load_safetensors",
    "save_model",
    "load_model",
    "infer_config",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

FORMAT_NAME = "swiftunet"
FORMAT_VERSION = "1"
#: Largest header accepted (the safetensors library's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000
MAX_NDIM = 8

# safetensors dtype -> little-endian numpy dtype (all converted to float32 on load).
_DTYPES = {
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # decoded by hand
}

_PathLike = Any  # str | os.PathLike


# --------------------------------------------------------------------------
# safetensors


def save_safetensors(tensors: Mapping[str, Any], path: _PathLike,
                     metadata: Optional[Mapping[str, str]] = None, keep_float64: bool = False) -> None:
    """Writes `tensors` (name -> array-like, stored as F32) to `path` atomically.

    With ``keep_float64=True``, float64 arrays are stored as F64 (exactly)
    instead of being rounded to F32; everything else is still F32."""
    path = os.fspath(path)
    header: Dict[str, Any] = {}
    if metadata:
        md = {}
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata keys and values must be str, got {k!r}: {v!r}")
            md[k] = v
        header["__metadata__"] = md
    arrays = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' cannot be a tensor name")
        if keep_float64 and isinstance(value, np.ndarray) and value.dtype == np.float64:
            arr, code = np.ascontiguousarray(value).astype("<f8", copy=False), "F64"
        else:
            arr, code = np.ascontiguousarray(np.asarray(value, dtype=np.float32)).astype("<f4", copy=False), "F32"
        nbytes = arr.nbytes
        header[name] = {"dtype": code, "shape": [int(d) for d in arr.shape],
                        "data_offsets": [offset, offset + nbytes]}
        arrays.append(arr)
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)

    with atomic_open(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(memoryview(arr).cast("B"))


@contextlib.contextmanager
def atomic_open(path: str):
    """A binary file that replaces `path` only once it is complete: written to a
    temporary file in the same directory, flushed to disk, then renamed over
    `path`. On any error the temporary file is removed and `path` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes the file private (0600); give it the mode open() would
        # (0666 less the umask), as torch.save's or numpy.save's files have.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _no_duplicates(pairs):
    d = collections.OrderedDict()
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r} in the header")
        d[k] = v
    return d


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_safetensors(path: _PathLike, keep_float64: bool = False
                     ) -> Tuple["collections.OrderedDict[str, np.ndarray]", Dict[str, str]]:
    """Reads a safetensors file: (name -> float32 array in file order, metadata).

    F32, F64, F16 and BF16 tensors are accepted and converted to float32
    (F64 ones are returned as float64 instead when ``keep_float64``).
    Raises ValueError for anything malformed (never reads out of bounds).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        what = f"{path!r} is not a valid safetensors file"
        if size < 8:
            raise ValueError(f"{what}: {size} bytes is too short for the 8-byte header length")
        (n,) = struct.unpack("<Q", f.read(8))
        if n == 0 or n > MAX_HEADER_BYTES:
            raise ValueError(f"{what}: header length {n} is out of range (1 .. {MAX_HEADER_BYTES})")
        if n > size - 8:
            raise ValueError(f"{what}: header length {n} goes beyond the end of the file ({size} bytes)")
        raw = f.read(n)
        if len(raw) != n:
            raise ValueError(f"{what}: the file is shorter than its header")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ValueError(f"{what}: the header is not valid UTF-8 JSON ({exc})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{what}: the header must be a JSON object, got {type(header).__name__}")
        data_start = 8 + n
        data_len = size - data_start

        metadata: Dict[str, str] = {}
        if "__metadata__" in header:
            md = header.pop("__metadata__")
            if not isinstance(md, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in md.items()):
                raise ValueError(f"{what}: __metadata__ must be an object of string -> string")
            metadata = dict(md)

        entries = []
        for name, info in header.items():
            if not isinstance(info, dict):
                raise ValueError(f"{what}: entry {name!r} must be an object")
            dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if dtype not in _DTYPES:
                raise ValueError(f"{what}: tensor {name!r} has unsupported dtype {dtype!r} "
                                 f"(supported: {', '.join(_DTYPES)})")
            if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                    or not all(_is_int(d) and d >= 0 for d in shape)):
                raise ValueError(f"{what}: tensor {name!r} has an invalid shape {shape!r}")
            if (not isinstance(offsets, list) or len(offsets) != 2
                    or not all(_is_int(o) for o in offsets)):
                raise ValueError(f"{what}: tensor {name!r} has invalid data_offsets {offsets!r}")
            begin, end = offsets
            if not 0 <= begin <= end <= data_len:
                raise ValueError(f"{what}: tensor {name!r} data_offsets {offsets} lie outside the "
                                 f"data section ({data_len} bytes)")
            itemsize = _DTYPES[dtype].itemsize
            numel = math.prod(shape)  # exact Python ints: no overflow
            if numel * itemsize != end - begin:
                raise ValueError(f"{what}: tensor {name!r} of shape {shape} and dtype {dtype} needs "
                                 f"{numel * itemsize} bytes, but its data_offsets span {end - begin}")
            entries.append((begin, end, name, dtype, tuple(shape)))

        # The tensors must tile the data section exactly, as the safetensors
        # library requires: no overlap, no gap, nothing after the last one.
        position, previous = 0, None
        for begin, end, name, _, _ in sorted(entries):
            if begin < position:
                raise ValueError(f"{what}: the data of tensors {previous!r} and {name!r} overlap")
            if begin > position:
                raise ValueError(f"{what}: {begin - position} unused bytes before tensor {name!r} "
                                 f"(data_offsets must tile the data section)")
            position, previous = end, name
        if position != data_len:
            raise ValueError(f"{what}: the tensors cover {position} bytes of a {data_len}-byte data section")

        f.seek(data_start)
        data = f.read(data_len)
        if len(data) != data_len:
            raise ValueError(f"{what}: the file changed while it was read")

    tensors = collections.OrderedDict()
    for begin, end, name, dtype, shape in entries:
        numel = math.prod(shape)
        a = np.frombuffer(data, dtype=_DTYPES[dtype], count=numel, offset=begin)
        if dtype == "BF16":
            a = (a.astype(np.uint32) << np.uint32(16)).view(np.float32)
        out_dtype = np.float64 if (keep_float64 and dtype == "F64") else np.float32
        tensors[name] = a.astype(out_dtype).reshape(shape)
    return tensors, metadata


# --------------------------------------------------------------------------
# models


def infer_config(state_dict: Mapping[str, Any], image_size: Optional[int] = None) -> Dict[str, Any]:
    """The constructor arguments implied by a state_dict's shapes.

    channels, hidden_dims and time_dim follow from init_conv, down_blocks.*.down
    and time_mlp.fc1. The shapes do not fix image_size (forward accepts any
    multiple of 2**L): unless given, it is the smallest multiple of 2**L that is
    at least 32.
    """
    def shape(name):
        if name not in state_dict:
            raise ValueError(f"cannot infer the configuration: the weights have no {name!r}")
        return tuple(np.shape(state_dict[name]))

    w = shape("init_conv.weight")
    if len(w) != 4:
        raise ValueError(f"init_conv.weight must be 4-D, got shape {w}")
    dims = [int(w[0])]
    i = 0
    while f"down_blocks.{i}.down.weight" in state_dict:
        dims.append(int(shape(f"down_blocks.{i}.down.weight")[0]))
        i += 1
    fc1 = shape("time_mlp.fc1.weight")
    if len(fc1) != 2:
        raise ValueError(f"time_mlp.fc1.weight must be 2-D, got shape {fc1}")
    factor = 2 ** (len(dims) - 1)
    if image_size is None:
        image_size = factor * max(1, -(-32 // factor))
    return {"image_size": int(image_size), "channels": int(w[1]), "hidden_dims": dims, "time_dim": int(fc1[1])}


def _config_from_metadata(md: Mapping[str, str]) -> Optional[Dict[str, Any]]:
    keys = ("image_size", "channels", "hidden_dims", "time_dim")
    if not all(k in md for k in keys):
        return None
    version = md.get("format_version", FORMAT_VERSION)
    if md.get("format", FORMAT_NAME) == FORMAT_NAME and version != FORMAT_VERSION:
        raise ValueError(f"unsupported swiftunet format_version {version!r} (this is version {FORMAT_VERSION})")
    try:
        dims = json.loads(md["hidden_dims"])
        if not isinstance(dims, list) or not all(_is_int(d) for d in dims):
            raise ValueError
        return {"image_size": int(md["image_size"]), "channels": int(md["channels"]),
                "hidden_dims": dims, "time_dim": int(md["time_dim"])}
    except ValueError:
        raise ValueError(f"the file's __metadata__ has an invalid configuration: "
                         f"{ {k: md[k] for k in keys} }") from None


def save_model(model, path: _PathLike) -> None:
    """Writes `model`'s state_dict and configuration to a safetensors file (atomic)."""
    cfg = model.config()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "image_size": str(cfg["image_size"]),
        "channels": str(cfg["channels"]),
        "hidden_dims": json.dumps(list(cfg["hidden_dims"])),
        "time_dim": str(cfg["time_dim"]),
    }
    save_safetensors(model.state_dict(), path, metadata)


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_model(path: _PathLike, config: Optional[Mapping[str, Any]] = None, cls=None):
    """A DiffusionModel rebuilt from a safetensors file (ours or any with the
    docs/model.md's weight names) or an .npz of a state_dict.

    The configuration comes from `config` when given (keys of the constructor;
    missing ones are inferred), else from the file's __metadata__, else from
    the weights' shapes (see infer_config).
    """
    if cls is None:
        from .model import DiffusionModel as cls  # noqa: N813
    path = os.fspath(path)
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping of constructor arguments, got {type(config).__name__}")
    if _is_zip(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                state = collections.OrderedDict((k, z[k]) for k in z.files)
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"{path!r} is not a readable .npz file ({exc})") from None
        metadata: Dict[str, str] = {}
    else:
        state, metadata = load_safetensors(path)
        if metadata.get("format") == "swiftunet-trainer":
            raise ValueError(f"{path!r} is a training checkpoint, not a model file: load it with "
                             f"swiftunet.Trainer.load(path) and use its .model or .ema_model()")
    cfg = _config_from_metadata(metadata) or infer_config(state, (config or {}).get("image_size"))
    if config:
        unknown = set(config) - {"image_size", "channels", "hidden_dims", "time_dim"}
        if unknown:
            raise ValueError(f"config has unknown keys {sorted(unknown)}")
        cfg.update(config)
    _check_weights(state, cfg)  # before the model is built: a tiny file cannot make us allocate a huge one
    model = cls(**cfg)
    model.load_state_dict(state, strict=True)
    return model


def _check_weights(state: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    """ValueError unless `state` has exactly the weight names and shapes of `cfg`."""
    from .reference import param_specs
    try:
        specs = param_specs(cfg["image_size"], cfg["channels"], cfg["hidden_dims"], cfg["time_dim"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid configuration {dict(cfg)}: {exc}") from None
    expected = dict(specs)
    missing = [k for k, _ in specs if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: expected {list(expected[k])}, got {list(np.shape(v))}"
             for k, v in state.items() if k in expected and tuple(np.shape(v)) != tuple(expected[k])]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing weights: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected weights: {', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}")
        if wrong:
            parts.append(f"wrong shapes: {'; '.join(wrong[:10])}{' ...' if len(wrong) > 10 else ''}")
        raise ValueError(f"the weights do not match the configuration {dict(cfg)}: " + "; ".join(parts))
