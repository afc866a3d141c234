"""The DiffusionModel class: a Python face on the Swift model (docs/model.md section 3).

Everything a user can get wrong is checked here, before Swift is entered, and
reported as a ValueError or TypeError that names the argument and says what
was expected. The C binding (_swiftunet) checks again, so nothing reaches the
library unchecked.
"""

from __future__ import annotations

import collections
import operator
import threading
from typing import Any, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import _swiftunet

__all__ = ["DiffusionModel", "IncompatibleKeys"]

#: Timesteps must lie in [0, MAX_TIMESTEP] (they are converted to float64 exactly).
MAX_TIMESTEP = 2**53
#: The library's bound on image_size, channels, time_dim and each hidden dim
#: (ModelConfig.maximumDimension in Swift), and on len(hidden_dims).
MAX_DIMENSION = 1 << 16
MAX_LEVELS = 16

# numpy dtype kinds accepted as real numbers: signed, unsigned, float.
_REAL_KINDS = "iuf"


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` returns, as PyTorch does."""

    missing_keys: List[str]
    unexpected_keys: List[str]


# --------------------------------------------------------------------------
# argument checks


def _int_arg(name: str, value: Any) -> int:
    """An int (Python or numpy integer, not bool) or a TypeError naming `name`."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    if isinstance(value, np.ndarray) and value.ndim != 0:
        raise TypeError(f"{name} must be an int, got an array of shape {value.shape}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def _describe_dtype(dtype: np.dtype) -> str:
    return f"{dtype} (kind {dtype.kind!r})" if dtype.kind == "V" else str(dtype)


def _validate_config(image_size, channels, hidden_dims, time_dim, seed):
    image_size = _int_arg("image_size", image_size)
    channels = _int_arg("channels", channels)
    time_dim = _int_arg("time_dim", time_dim)
    seed = _int_arg("seed", seed)

    if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Iterable):
        raise TypeError(
            f"hidden_dims must be a sequence of ints such as [32, 64, 128], "
            f"got {type(hidden_dims).__name__} {hidden_dims!r}"
        )
    dims = [_int_arg(f"hidden_dims[{i}]", d) for i, d in enumerate(hidden_dims)]

    if len(dims) < 2:
        raise ValueError(
            f"hidden_dims must have at least 2 entries (one down/up level per extra entry), got {dims}"
        )
    if len(dims) > MAX_LEVELS:
        raise ValueError(f"hidden_dims may have at most {MAX_LEVELS} entries, got {len(dims)}")
    for i, d in enumerate(dims):
        if d <= 0 or d % 8 != 0:
            raise ValueError(
                f"hidden_dims[{i}] must be a positive multiple of 8 (GroupNorm uses 8 groups), "
                f"got {d} in {dims}"
            )
        if d > MAX_DIMENSION:
            raise ValueError(f"hidden_dims[{i}] must be at most {MAX_DIMENSION}, got {d}")
    if dims[-1] % 4 != 0:
        raise ValueError(
            f"hidden_dims[-1] must be divisible by 4 (attention has 4 heads), got {dims[-1]}"
        )
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if channels > MAX_DIMENSION:
        raise ValueError(f"channels must be at most {MAX_DIMENSION}, got {channels}")
    if time_dim < 4 or time_dim % 2 != 0:
        raise ValueError(f"time_dim must be an even int >= 4, got {time_dim}")
    if time_dim > MAX_DIMENSION:
        raise ValueError(f"time_dim must be at most {MAX_DIMENSION}, got {time_dim}")
    factor = 2 ** (len(dims) - 1)
    if image_size <= 0 or image_size % factor != 0:
        raise ValueError(
            f"image_size must be a positive multiple of 2**(len(hidden_dims)-1) = {factor}, "
            f"got {image_size}"
        )
    if image_size > MAX_DIMENSION:
        raise ValueError(f"image_size must be at most {MAX_DIMENSION}, got {image_size}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed}")
    return image_size, channels, dims, time_dim, seed


def _prepare_x(x: Any, channels: int, factor: int, name: str = "x") -> np.ndarray:
    """x as a float32 C-contiguous aligned array, copied only when it must be.

    `name` is the argument's name in the messages ("x", "x0", "data", ...)."""
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be a real-valued array [B, C, H, W]; np.asarray failed: {exc}") from None
    if arr.dtype.kind not in _REAL_KINDS:
        raise TypeError(
            f"{name} must have a real numeric dtype (float or int), got {_describe_dtype(arr.dtype)}"
        )
    if arr.ndim != 4:
        raise ValueError(f"{name} must be 4-D [B, C, H, W], got shape {arr.shape}")
    b, c, h, w = arr.shape
    if c != channels:
        raise ValueError(f"{name} must have {channels} channels ({name}.shape[1]), got shape {arr.shape}")
    for what, size in (("height", h), ("width", w)):
        if size <= 0 or size % factor != 0:
            raise ValueError(
                f"{name}'s {what} must be a positive multiple of 2**(len(hidden_dims)-1) = {factor}, "
                f"got shape {arr.shape}"
            )
    if not (arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.aligned):
        # The one copy; it also fixes byte order, strides and alignment.
        arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    return arr


def _prepare_t(t: Any, batch: int) -> np.ndarray:
    """t as a C-contiguous int64 array of length `batch`."""
    if isinstance(t, (bool, np.bool_)):
        raise TypeError(f"t must hold integer timesteps, got bool {t!r}")
    if isinstance(t, int) and not 0 <= t <= MAX_TIMESTEP:
        raise ValueError(f"t must be in [0, 2**53], got {t}")
    if isinstance(t, np.ndarray):
        arr = t
    else:
        try:
            arr = np.asarray(t)
        except Exception as exc:
            raise TypeError(f"t must be an integer array [B] or an int; np.asarray failed: {exc}") from None
        if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64
            arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"t must have an integer dtype (any width, signed or unsigned), "
            f"got {_describe_dtype(arr.dtype)}"
        )
    if arr.ndim == 0:
        arr = np.broadcast_to(arr, (batch,))
    elif arr.ndim != 1:
        raise ValueError(f"t must be 1-D [B] (or a scalar), got shape {arr.shape}")
    if arr.shape[0] != batch:
        raise ValueError(f"t must have one timestep per sample: len(t) = {arr.shape[0]}, batch = {batch}")
    if batch > 0:
        lo, hi = arr.min(), arr.max()
        if lo < 0:
            raise ValueError(f"t must be >= 0, got {int(lo)}")
        if hi > MAX_TIMESTEP:
            raise ValueError(f"t must be <= 2**53, got {int(hi)}")
    if not (arr.dtype == np.int64 and arr.flags.c_contiguous and arr.flags.aligned):
        arr = np.array(arr, dtype=np.int64, order="C", copy=True)
    return arr


def _check_out(out: Any, shape: Tuple[int, ...]) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != np.float32:
        raise TypeError(f"out must have dtype float32, got {_describe_dtype(out.dtype)}")
    if out.shape != shape:
        raise ValueError(f"out must have x's shape {shape}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writable")
    if not out.flags.aligned:
        raise ValueError("out must be aligned")
    return out


# --------------------------------------------------------------------------
# the model


class DiffusionModel:
    """The noise-predicting U-Net of a diffusion model (docs/model.md).

    ``DiffusionModel(image_size, channels, hidden_dims=[32, 64, 128],
    time_dim=128, seed=0)`` creates a model whose weights follow PyTorch's
    default initialisation, drawn from a SplitMix64 stream seeded by `seed`.

    ``model(x, t)`` (same as ``model.forward(x, t)``) returns the predicted
    noise for images ``x`` [B, C, H, W] at integer timesteps ``t`` [B].
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        hidden_dims: Sequence[int] = (32, 64, 128),
        time_dim: int = 128,
        seed: int = 0,
    ) -> None:
        image_size, channels, dims, time_dim, seed = _validate_config(
            image_size, channels, hidden_dims, time_dim, seed
        )
        self._handle = _swiftunet.create(image_size, channels, tuple(dims), time_dim, seed)
        self._init_from_handle()
        #: PyTorch's flag, set by train()/eval(); no computation depends on it.
        self.training = True

    def _init_from_handle(self) -> None:
        image_size, channels, dims, time_dim = _swiftunet.config(self._handle)
        self._image_size = image_size
        self._channels = channels
        self._hidden_dims = tuple(dims)
        self._time_dim = time_dim
        self._factor = 2 ** (len(dims) - 1)
        # [(name, shape, numel)] in state_dict order; fixed for the model's life.
        self._param_info = [(name, tuple(shape), numel) for name, shape, numel in _swiftunet.param_info(self._handle)]
        self._param_index = {name: i for i, (name, _, _) in enumerate(self._param_info)}
        # Makes state_dict() one snapshot and load_state_dict() one update even
        # when other threads load or read weights meanwhile (forwards need not
        # take it: the library orders them against weight updates).
        self._weights_lock = threading.Lock()

    # ---------------------------------------------------------------- config

    @property
    def image_size(self) -> int:
        """The image size the model was created for (forward accepts others)."""
        return self._image_size

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def hidden_dims(self) -> List[int]:
        """A new list each time, so changing it cannot change the model."""
        return list(self._hidden_dims)

    @property
    def time_dim(self) -> int:
        return self._time_dim

    @property
    def num_levels(self) -> int:
        """L = len(hidden_dims) - 1: the number of down (and up) blocks."""
        return len(self._hidden_dims) - 1

    @property
    def num_parameters(self) -> int:
        """Total number of scalar weights."""
        return sum(numel for _, _, numel in self._param_info)

    def config(self) -> dict:
        """The constructor arguments that rebuild this architecture."""
        return {
            "image_size": self._image_size,
            "channels": self._channels,
            "hidden_dims": list(self._hidden_dims),
            "time_dim": self._time_dim,
        }

    def __repr__(self) -> str:
        return (
            f"DiffusionModel(image_size={self._image_size}, channels={self._channels}, "
            f"hidden_dims={list(self._hidden_dims)}, time_dim={self._time_dim}, "
            f"num_parameters={self.num_parameters:,})"
        )

    # --------------------------------------------------------------- forward

    def forward(self, x: Any, t: Any, out: Optional[np.ndarray] = None,
                max_batch: Optional[int] = None) -> np.ndarray:
        """Predicted noise for images `x` [B, C, H, W] at timesteps `t` [B].

        `x`: any real array-like; a float32 C-contiguous ndarray is read in
        place, anything else is converted with one copy. H and W must be
        positive multiples of 2**L (not necessarily image_size); B may be 0.
        `t`: integers in [0, 2**53], any integer dtype, one per sample; a
        scalar is used for the whole batch.
        `out`: optional float32 C-contiguous writable ndarray of x's shape;
        the result is written there and `out` is returned.
        `max_batch`: optional int >= 1: run the batch at most this many images
        at a time, so the activations' memory is that of a batch of
        `max_batch` (docs/benchmarks.md, "Peak memory and batch size"). The
        result is the same, bit for bit: each image's output does not depend
        on the batch it is computed in.

        The GIL is released while the model runs.
        """
        xa = _prepare_x(x, self._channels, self._factor)
        b, c, h, w = xa.shape
        ta = _prepare_t(t, b)
        if max_batch is not None:
            max_batch = _int_arg("max_batch", max_batch)
            if max_batch < 1:
                raise ValueError(f"max_batch must be >= 1 (images per call), got {max_batch}")
        if out is None:
            result = np.empty(xa.shape, dtype=np.float32)
        else:
            result = _check_out(out, xa.shape)
        if b == 0:
            return result
        # In place (out is x, or overlaps it): the library needs separate
        # buffers, so compute into a temporary and copy.
        overlap = out is not None and np.may_share_memory(xa, result)
        target = np.empty(xa.shape, dtype=np.float32) if overlap else result
        step = b if max_batch is None else min(b, max_batch)
        for i in range(0, b, step):
            j = min(b, i + step)
            # Slices along the batch axis of C-contiguous arrays stay C-contiguous.
            _swiftunet.forward(self._handle, xa[i:j], ta[i:j], target[i:j], j - i, c, h, w)
        if overlap:
            np.copyto(result, target)
        return result

    __call__ = forward

    # -------------------------------------------------------------- training

    def loss_and_grad(self, x: Any, t: Any, target: Any) -> Tuple[float, "collections.OrderedDict[str, np.ndarray]"]:
        """The training loss and its gradient: ``(loss, grads)``.

        ``loss = mean((model(x, t) - target)**2)`` over every element (PyTorch's
        ``F.mse_loss(model(x, t), target)``, reduction "mean"), computed in
        float64 from the float32 prediction. ``grads`` is an ordered dict
        name -> float32 ndarray, with the state_dict's names, order and shapes:
        the gradient of ``loss`` with respect to each weight.

        `x` and `t` are checked and converted exactly as `forward` does; the
        batch must be >= 1 (the mean of nothing is undefined). `target` must
        have x's shape [B, C, H, W]; any real dtype is converted to float32 as
        np.asarray would. The weights are not changed; the result is the same
        at every thread count, bit for bit. The GIL is released meanwhile.

        The arrays of ``grads`` are views of one flat float32 buffer (the
        parameters one after another, in state_dict order), made by one call:
        no per-tensor copies. They belong to the caller; writing to them does
        not affect the model.
        """
        xa = _prepare_x(x, self._channels, self._factor)
        b, c, h, w = xa.shape
        if b < 1:
            raise ValueError(f"x must hold at least one image: batch 0 has no mean (x.shape = {xa.shape})")
        ta = _prepare_t(t, b)
        if isinstance(target, np.ndarray):
            ya = target
        else:
            try:
                ya = np.asarray(target)
            except Exception as exc:
                raise TypeError(f"target must be a real-valued array of x's shape {xa.shape}; "
                                f"np.asarray failed: {exc}") from None
        if ya.dtype.kind not in _REAL_KINDS:
            raise TypeError(
                f"target must have a real numeric dtype (float or int), got {_describe_dtype(ya.dtype)}"
            )
        if ya.shape != xa.shape:
            raise ValueError(f"target must have x's shape {xa.shape}, got {ya.shape}")
        if not (ya.dtype == np.float32 and ya.flags.c_contiguous and ya.flags.aligned):
            ya = np.array(ya, dtype=np.float32, order="C", copy=True)
        flat = np.empty(self.num_parameters, dtype=np.float32)
        loss = _swiftunet.loss_and_grad(self._handle, xa, ta, ya, flat, b, c, h, w)
        grads = collections.OrderedDict()
        offset = 0
        for name, shape, numel in self._param_info:
            grads[name] = flat[offset:offset + numel].reshape(shape)
            offset += numel
        return float(loss), grads

    # ------------------------------------------------------------ parameters

    def state_dict(self) -> "collections.OrderedDict[str, np.ndarray]":
        """An ordered dict name -> float32 ndarray (copies), in docs/model.md section 2's order."""
        sd = collections.OrderedDict()
        with self._weights_lock:
            for i, (name, shape, _) in enumerate(self._param_info):
                arr = np.empty(shape, dtype=np.float32)
                _swiftunet.get_param(self._handle, i, arr)
                sd[name] = arr
        return sd

    def named_parameters(self) -> Iterator[Tuple[str, np.ndarray]]:
        """(name, float32 ndarray) for every weight, in state_dict order, as
        PyTorch's ``named_parameters()``. The arrays are copies taken together
        (one consistent snapshot, as ``state_dict()``): writing to them does not
        change the model; ``load_state_dict`` does."""
        return iter(self.state_dict().items())

    def parameters(self) -> Iterator[np.ndarray]:
        """The arrays of ``named_parameters()`` (copies), as PyTorch's ``parameters()``:
        e.g. ``sum(p.size for p in m.parameters()) == m.num_parameters``."""
        return iter(self.state_dict().values())

    def train(self, mode: bool = True) -> "DiffusionModel":
        """Sets ``training`` and returns the model, as PyTorch's ``train()``.

        Nothing is computed differently: the network has no dropout and its
        GroupNorms keep no running statistics, so a forward gives the same
        result in either mode, and ``swiftunet.Trainer`` trains a model in any
        mode. Kept so that PyTorch code calling it runs unchanged."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"train: mode must be a bool, got {type(mode).__name__}")
        self.training = bool(mode)
        return self

    def eval(self) -> "DiffusionModel":
        """``train(False)``: returns the model; changes no computation (see `train`)."""
        return self.train(False)

    def to_torch(self):
        """A new ``swiftunet.torch.TorchDiffusionModel`` (float32, CPU, eval mode)
        with copies of these weights; it computes the same function within the
        parity bound. Needs PyTorch (ImportError saying so otherwise)."""
        from .torch import to_torch
        return to_torch(self)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Replaces the weights from `state_dict` (name -> array-like).

        Everything is checked before the model is touched: missing keys,
        unexpected keys (both only when `strict`), shapes, dtypes (real
        numbers only) and values (finite in float32). Then all weights change
        in one atomic call; on any error none do. With ``strict=False``,
        missing weights keep their current values and unexpected keys are
        ignored. Returns ``(missing_keys, unexpected_keys)`` like PyTorch.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of name -> array, got {type(state_dict).__name__}")
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"strict must be a bool, got {type(strict).__name__}")

        missing = [name for name, _, _ in self._param_info if name not in state_dict]
        unexpected = [k if isinstance(k, str) else repr(k) for k in state_dict.keys()
                      if not (isinstance(k, str) and k in self._param_index)]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected)}")
            raise ValueError("load_state_dict(strict=True): " + "; ".join(parts))

        arrays: List[Optional[np.ndarray]] = []
        type_errors: List[str] = []
        value_errors: List[str] = []
        for name, shape, _ in self._param_info:
            if name not in state_dict:
                arrays.append(None)
                continue
            value = state_dict[name]
            try:
                arr = np.asarray(value)
            except Exception as exc:
                type_errors.append(f"{name}: cannot be converted to an array ({exc})")
                arrays.append(None)
                continue
            if arr.dtype.kind not in _REAL_KINDS:
                type_errors.append(f"{name}: expected real numbers, got dtype {_describe_dtype(arr.dtype)}")
                arrays.append(None)
                continue
            if arr.shape != shape:
                value_errors.append(f"{name}: expected shape {list(shape)}, got {list(arr.shape)}")
                arrays.append(None)
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                arr32 = np.array(arr, dtype=np.float32, order="C", copy=True)
            if not np.isfinite(arr32).all():
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    value_errors.append(f"{name}: contains NaN or infinity")
                else:
                    value_errors.append(f"{name}: has values too large for float32")
                arrays.append(None)
                continue
            arrays.append(arr32)

        if type_errors or value_errors:
            problems = type_errors + value_errors
            kind = TypeError if not value_errors else ValueError
            raise kind("load_state_dict: the model was left unchanged; " + "; ".join(problems))

        with self._weights_lock:
            # Missing weights (strict=False only) keep their current values.
            for i, (name, shape, _) in enumerate(self._param_info):
                if arrays[i] is None:
                    current = np.empty(shape, dtype=np.float32)
                    _swiftunet.get_param(self._handle, i, current)
                    arrays[i] = current
            _swiftunet.set_params(self._handle, arrays)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------- save/load

    def save(self, path) -> None:
        """Writes the weights and configuration to a safetensors file, atomically
        (see swiftunet.io); ``DiffusionModel.load(path)`` rebuilds the model."""
        from .io import save_model
        save_model(self, path)

    @classmethod
    def load(cls, path, config: Optional[Mapping[str, Any]] = None) -> "DiffusionModel":
        """A model rebuilt from a file written by `save` (configuration from the
        file), or from any safetensors / .npz state_dict with docs/model.md's names
        (configuration from `config`, else inferred from the shapes)."""
        from .io import load_model
        return load_model(path, config=config, cls=cls)

    # --------------------------------------------------------------- pickling

    def __reduce__(self):
        return (_rebuild, (self.config(), self.state_dict()))

    def __copy__(self):
        return self.__deepcopy__({})

    def __deepcopy__(self, memo):
        new = DiffusionModel(**self.config())
        new.load_state_dict(self.state_dict())
        return new


def _rebuild(config: dict, state_dict: Mapping[str, np.ndarray]) -> DiffusionModel:
    model = DiffusionModel(**config)
    model.load_state_dict(state_dict)
    return model
