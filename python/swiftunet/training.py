"""Training (docs/model.md section 5): the Trainer, whose steps run wholly in Swift.

    tr = swiftunet.Trainer(model, lr=1e-3, ema_decay=0.999, seed=0)
    tr.fit(images, epochs=10, batch_size=32)     # images: [N, C, H, W] in [-1, 1]
    ema = tr.ema_model()                         # a new DiffusionModel with the EMA weights
    tr.save("ckpt.safetensors"); tr = swiftunet.Trainer.load("ckpt.safetensors")

One step on clean images x0 draws t and noise from the step's own seeded
stream (`draw`), forms x_t = q_sample(x0, t, noise), takes the loss
mean((model(x_t, t) - noise)**2), backpropagates, clips the gradient's global
norm (optional), applies AdamW and updates the EMA of the weights. The step
runs in Swift with the GIL released and is atomic: it either completes or
changes nothing. The same seed, data and settings give bit-identical weights,
EMA and moments at every thread count and across save / load.
docs/training.md has the details (draw order, checkpoint format, fit's resume
semantics, Ctrl-C).
"""

from __future__ import annotations

import collections
import json
import math
import numbers
import os
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _swiftunet
from .model import DiffusionModel, _int_arg, _prepare_x, _validate_config
from .sampling import MAX_TIMESTEPS, NoiseSchedule, _make_bar

__all__ = ["Trainer", "draw", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

#: `__metadata__["format"]` of a checkpoint written by Trainer.save.
CHECKPOINT_FORMAT = "swiftunet-trainer"
CHECKPOINT_VERSION = "1"

_STATE_EMA, _STATE_ADAM_M, _STATE_ADAM_V = 0, 1, 2
#: Tensor-name prefixes of a checkpoint, in file order.
_PREFIXES = ("model.", "ema.", "adam_m.", "adam_v.")
#: Metadata keys of the hyper-parameters (strings: repr of a float, "none" for no clipping).
_HPARAM_KEYS = ("lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip", "ema_decay")
_CONFIG_KEYS = ("image_size", "channels", "hidden_dims", "time_dim")


# --------------------------------------------------------------------------
# argument checks


def _real(name: str, value: Any) -> float:
    """A finite real number (Python or numpy, not bool) or a TypeError/ValueError naming `name`."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got bool {value!r}")
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value[()]
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        f = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got {value!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {f}")
    return f


def _seed_arg(value: Any) -> int:
    seed = _int_arg("seed", value)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed}")
    return seed


def _check_hparams(lr, betas, eps, weight_decay, grad_clip, ema_decay) -> Dict[str, Any]:
    lr = _real("lr", lr)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if isinstance(betas, (str, bytes)) or not isinstance(betas, (Sequence, np.ndarray)):
        raise TypeError(f"betas must be a pair of real numbers (beta1, beta2), got {type(betas).__name__} {betas!r}")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {len(betas)} values: {betas!r}")
    beta1, beta2 = _real("betas[0]", betas[0]), _real("betas[1]", betas[1])
    for name, b in (("betas[0]", beta1), ("betas[1]", beta2)):
        if not 0 <= b < 1:
            raise ValueError(f"{name} must be in [0, 1), got {b}")
    eps = _real("eps", eps)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    weight_decay = _real("weight_decay", weight_decay)
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if grad_clip is not None:
        grad_clip = _real("grad_clip", grad_clip)
        if not grad_clip > 0:
            raise ValueError(f"grad_clip must be None (no clipping) or a number > 0, got {grad_clip}")
    ema_decay = _real("ema_decay", ema_decay)
    if not 0 <= ema_decay <= 1:
        raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
    return {"lr": lr, "betas": (beta1, beta2), "eps": eps, "weight_decay": weight_decay,
            "grad_clip": grad_clip, "ema_decay": ema_decay}


def _split(flat: np.ndarray, info) -> "collections.OrderedDict[str, np.ndarray]":
    """The flat parameter layout as name -> reshaped views, in state_dict order."""
    out = collections.OrderedDict()
    offset = 0
    for name, shape, numel in info:
        out[name] = flat[offset:offset + numel].reshape(shape)
        offset += numel
    return out


# --------------------------------------------------------------------------
# draw


def draw(seed: int, step: int, num_timesteps: int, batch: int, per_image: int) -> Tuple[np.ndarray, np.ndarray]:
    """The random draw of training step `step` (0-based) of a trainer seeded with `seed`:
    ``(t, noise)``, t int64 [batch] in [0, num_timesteps), noise float32 [batch*per_image].

    Exactly what ``Trainer.step`` uses for that step (per_image = C*H*W): a
    SplitMix64 stream seeded with SplitMix64(seed ^ (step * 0xD1B54A32D192ED03)).next();
    t[b] = the high 64 bits of next() * num_timesteps for each image in order,
    then the noise, C order, from the library's Gaussian generator
    (SplitMix64 + Box-Muller, docs/sampling.md) continuing the same stream.
    A step's draw depends only on (seed, step), so it is the same at every
    thread count and after a resume.
    """
    seed = _seed_arg(seed)
    step = _int_arg("step", step)
    T = _int_arg("num_timesteps", num_timesteps)
    batch = _int_arg("batch", batch)
    per_image = _int_arg("per_image", per_image)
    if not 0 <= step < 2**63:
        raise ValueError(f"step must be in [0, 2**63), got {step}")
    if not 1 <= T <= MAX_TIMESTEPS:
        raise ValueError(f"num_timesteps must be between 1 and {MAX_TIMESTEPS}, got {T}")
    if not 0 <= batch < 2**31:
        raise ValueError(f"batch must be in [0, 2**31), got {batch}")
    if per_image < 0:
        raise ValueError(f"per_image must be >= 0, got {per_image}")
    if batch * per_image > 2**40:
        raise ValueError(f"batch * per_image must be at most 2**40, got {batch} * {per_image}")
    t = np.zeros(batch, dtype=np.int64)
    noise = np.empty(batch * per_image, dtype=np.float32)
    _swiftunet.trainer_draw(seed, step, T, batch, per_image, t, noise)
    return t, noise


# --------------------------------------------------------------------------
# the Trainer


class Trainer:
    """Trains a DiffusionModel to predict noise: AdamW, optional clipping, EMA.

    ``Trainer(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
    grad_clip=None, ema_decay=0.999, schedule=None, seed=0)``

    - AdamW is PyTorch's ``torch.optim.AdamW`` (decoupled weight decay,
      applied to every parameter), with its defaults.
    - ``grad_clip``: None for no clipping, else ``clip_grad_norm_(max_norm=grad_clip)``
      over all parameters before the update.
    - ``ema_decay`` d in [0, 1]: after each step ``ema = d*ema + (1-d)*w``; the
      EMA starts equal to the model's weights (d = 0 tracks the weights, d = 1
      keeps the initial ones).
    - ``schedule``: the forward process (default ``NoiseSchedule.cosine(1000)``).
    - ``seed``: every step's t and noise come from (seed, step number) alone, see `draw`.

    `model` is trained in place: ``trainer.model`` is the same object, whose
    weights each step updates. ``trainer.losses`` is the loss of every step
    taken so far (a new list each time it is read), ``trainer.step_count``
    the number of steps. Steps are serialised: calls from several threads
    run one after another.
    """

    def __init__(
        self,
        model: DiffusionModel,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        grad_clip: Optional[float] = None,
        ema_decay: float = 0.999,
        schedule: Optional[NoiseSchedule] = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, DiffusionModel):
            raise TypeError(f"model must be a swiftunet.DiffusionModel, got {type(model).__name__}")
        hp = _check_hparams(lr, betas, eps, weight_decay, grad_clip, ema_decay)
        if schedule is None:
            schedule = NoiseSchedule.cosine(1000)
        elif not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                "schedule must be a swiftunet.NoiseSchedule (e.g. NoiseSchedule.cosine(1000)) or None, "
                f"got {type(schedule).__name__}"
            )
        seed = _seed_arg(seed)
        self._model = model
        self._lr, self._betas, self._eps = hp["lr"], hp["betas"], hp["eps"]
        self._weight_decay, self._grad_clip, self._ema_decay = hp["weight_decay"], hp["grad_clip"], hp["ema_decay"]
        self._schedule = schedule
        self._seed = seed
        self._losses: List[float] = []
        # Serialises steps, and makes state snapshots (save, state_dict) consistent.
        self._lock = threading.Lock()
        self._handle = _swiftunet.trainer_create(
            model._handle, np.ascontiguousarray(schedule.betas, dtype=np.float64), self._lr,
            self._betas[0], self._betas[1], self._eps, self._weight_decay,
            0.0 if self._grad_clip is None else self._grad_clip, self._ema_decay, seed)

    # ------------------------------------------------------------ attributes

    @property
    def model(self) -> DiffusionModel:
        """The model being trained (its weights are updated in place by every step)."""
        return self._model

    @property
    def losses(self) -> List[float]:
        """The loss of every step so far, in order (a new list: changing it changes nothing)."""
        return list(self._losses)

    @property
    def step_count(self) -> int:
        """Steps taken so far (including those before a save, after Trainer.load)."""
        return _swiftunet.trainer_step_count(self._handle)

    @property
    def lr(self) -> float:
        return self._lr

    @property
    def betas(self) -> Tuple[float, float]:
        return self._betas

    @property
    def eps(self) -> float:
        return self._eps

    @property
    def weight_decay(self) -> float:
        return self._weight_decay

    @property
    def grad_clip(self) -> Optional[float]:
        return self._grad_clip

    @property
    def ema_decay(self) -> float:
        return self._ema_decay

    @property
    def schedule(self) -> NoiseSchedule:
        return self._schedule

    @property
    def seed(self) -> int:
        return self._seed

    def hparams(self) -> Dict[str, Any]:
        """The constructor arguments other than model and schedule."""
        return {"lr": self._lr, "betas": self._betas, "eps": self._eps, "weight_decay": self._weight_decay,
                "grad_clip": self._grad_clip, "ema_decay": self._ema_decay, "seed": self._seed}

    def __repr__(self) -> str:
        return (f"Trainer(model={self._model!r}, lr={self._lr!r}, betas={self._betas!r}, eps={self._eps!r}, "
                f"weight_decay={self._weight_decay!r}, grad_clip={self._grad_clip!r}, "
                f"ema_decay={self._ema_decay!r}, schedule={self._schedule!r}, seed={self._seed}, "
                f"step_count={self.step_count})")

    # ------------------------------------------------------------------ step

    def step(self, x0: Any) -> float:
        """One training step on clean images `x0` [B, C, H, W] (B >= 1); returns the loss
        (before the update, as ``loss.item()`` would in PyTorch).

        `x0` is checked and converted as `DiffusionModel.forward` does for x
        (H and W positive multiples of 2**L); it must be finite. The step runs
        in Swift with the GIL released. On success the loss is appended to
        `losses` and `step_count` grows by one; on any error (bad input, a
        non-finite loss or gradient) it raises and nothing changes: weights,
        EMA, moments, step count and losses.
        """
        xa = _prepare_x(x0, self._model.channels, self._model._factor, name="x0")
        if xa.shape[0] < 1:
            raise ValueError(f"x0 must hold at least one image (batch >= 1), got shape {xa.shape}")
        return self._step(xa)

    def _step(self, xa: np.ndarray) -> float:
        b, c, h, w = xa.shape
        with self._lock:
            # The binding appends the loss to self._losses itself, before any
            # Python code runs again: a Ctrl-C right after the step cannot
            # leave a step without its loss.
            return _swiftunet.trainer_step(self._handle, xa, b, c, h, w, self._losses)

    # ------------------------------------------------------------------- fit

    def fit(self, data: Any, epochs: int = 1, batch_size: int = 32, progress: bool = True) -> List[float]:
        """Trains on `data` [N, C, H, W] (clean images) for `epochs` epochs in total;
        returns the losses of the steps this call took.

        Each epoch e visits the images in the order
        ``np.random.default_rng([seed, e]).permutation(N)``, in consecutive
        slices of `batch_size` (the last, partial one kept): ceil(N / batch_size)
        steps per epoch.

        `epochs` is the *total* epoch count, not a number of further epochs:
        fit starts from the trainer's `step_count`, read as the global step
        (epoch = step_count // steps_per_epoch, batch = step_count % steps_per_epoch),
        and stops after ``epochs * steps_per_epoch`` steps. So after
        ``Trainer.load`` (or a fit stopped by Ctrl-C), ``fit(data, epochs=E)``
        with the same data and batch_size takes exactly the steps that an
        uninterrupted ``fit(data, epochs=E)`` still had to take, bit for bit;
        when those are all done it returns []. To train for k more epochs,
        pass ``epochs=current + k``. Steps taken by `step` count too.

        `data` is validated once, up front: a 4-D array of real numbers (any
        dtype np.asarray gives, converted to float32 batch by batch), finite,
        N >= 1, the model's channels, H and W positive multiples of 2**L.
        `progress`: show a bar with the running loss (the mean over the epoch
        so far), tqdm's when installed, else a plain one on stderr.

        Ctrl-C (KeyboardInterrupt) stops training between steps: the step in
        flight completes (steps are atomic), the bar is closed, and the
        KeyboardInterrupt propagates, as it does out of a PyTorch training
        loop. The trainer stays consistent (`losses` and `step_count` include
        every completed step); call fit again to continue where it stopped.
        An error in a step (e.g. a non-finite loss) propagates the same way,
        after the steps before it.
        """
        arr = self._check_data(data)
        epochs = _int_arg("epochs", epochs)
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        batch_size = _int_arg("batch_size", batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(progress, (bool, np.bool_)):
            raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
        n = arr.shape[0]
        per_epoch = -(-n // batch_size)
        total = epochs * per_epoch
        start = self.step_count
        done: List[float] = []
        if start >= total:
            return done
        bar = _make_bar(total, "training", initial=start) if progress else None
        perm, perm_epoch = None, -1
        epoch_sum, epoch_steps = 0.0, 0
        try:
            step = start
            while step < total:
                epoch, index = divmod(step, per_epoch)
                if epoch != perm_epoch:
                    perm = np.random.default_rng([self._seed, epoch]).permutation(n)
                    perm_epoch = epoch
                    epoch_sum, epoch_steps = 0.0, 0
                batch = _prepare_x(arr[perm[index * batch_size:(index + 1) * batch_size]],
                                   self._model.channels, self._model._factor, name="data")
                loss = self._step(batch)
                done.append(loss)
                epoch_sum, epoch_steps = epoch_sum + loss, epoch_steps + 1
                if bar is not None:
                    bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{epoch_sum / epoch_steps:.4g}",
                                    refresh=False)
                    bar.update(1)
                step = self.step_count
        finally:
            if bar is not None:
                bar.close()
        return done

    def _check_data(self, data: Any) -> np.ndarray:
        if isinstance(data, np.ndarray):
            arr = data
        else:
            try:
                arr = np.asarray(data)
            except Exception as exc:
                raise TypeError(f"data must be a real-valued array [N, C, H, W]; np.asarray failed: {exc}") from None
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"data must have a real numeric dtype (float or int), got {arr.dtype}")
        if arr.ndim != 4:
            raise ValueError(f"data must be 4-D [N, C, H, W], got shape {arr.shape}")
        _prepare_x(arr[:0], self._model.channels, self._model._factor, name="data")  # channels, H, W
        if arr.shape[0] < 1:
            raise ValueError(f"data must hold at least one image (N >= 1), got shape {arr.shape}")
        if arr.dtype.kind == "f":
            # In chunks, as float32 (what the steps see): no copy of the whole data set.
            per = max(1, (1 << 22) // max(1, math.prod(arr.shape[1:])))
            with np.errstate(over="ignore", invalid="ignore"):
                for i in range(0, arr.shape[0], per):
                    chunk = np.asarray(arr[i:i + per], dtype=np.float32)
                    ok = np.isfinite(chunk).reshape(chunk.shape[0], -1).all(axis=1)
                    if not ok.all():
                        bad = i + int(np.argmin(ok))
                        raise ValueError(f"data must be finite in float32: image {bad} holds NaN, infinity "
                                         f"or a value too large for float32")
        return arr

    # ------------------------------------------------------------ the state

    def _flat_state(self, which: int) -> np.ndarray:
        flat = np.empty(self._model.num_parameters, dtype=np.float32)
        _swiftunet.trainer_get_state(self._handle, which, flat)
        return flat

    def state_dict(self) -> Dict[str, Any]:
        """A consistent snapshot of the training state (copies):
        ``{"model", "ema", "adam_m", "adam_v"}``, each name -> float32 array
        with the model's state_dict names and shapes, plus ``"step_count"``
        (int) and ``"losses"`` (list of floats)."""
        info = self._model._param_info
        with self._lock:
            return {
                "model": self._model.state_dict(),
                "ema": _split(self._flat_state(_STATE_EMA), info),
                "adam_m": _split(self._flat_state(_STATE_ADAM_M), info),
                "adam_v": _split(self._flat_state(_STATE_ADAM_V), info),
                "step_count": self.step_count,
                "losses": list(self._losses),
            }

    def ema_model(self) -> DiffusionModel:
        """A new DiffusionModel (same configuration) holding the EMA weights."""
        with self._lock:
            ema = self._flat_state(_STATE_EMA)
        m = DiffusionModel(**self._model.config())
        m.load_state_dict(_split(ema, self._model._param_info))
        return m

    # --------------------------------------------------------- save and load

    def save(self, path) -> None:
        """Writes a checkpoint to one safetensors file, atomically (a temporary file in
        the same directory, fsync, rename: a failure leaves no partial file and an
        existing file intact).

        Tensors: ``model.<name>``, ``ema.<name>``, ``adam_m.<name>``,
        ``adam_v.<name>`` (F32, the state_dict's names and shapes),
        ``schedule.betas`` and ``losses`` (F64). ``__metadata__``: format
        "swiftunet-trainer", format_version, the model configuration, the
        step count, the seed and the hyper-parameters (exact float reprs).
        ``Trainer.load(path)`` resumes bit-identically.
        """
        from .io import save_safetensors
        path = os.fspath(path)
        state = self.state_dict()
        tensors: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
        for key, prefix in zip(("model", "ema", "adam_m", "adam_v"), _PREFIXES):
            for name, arr in state[key].items():
                tensors[prefix + name] = arr
        tensors["schedule.betas"] = np.array(self._schedule.betas, dtype=np.float64)
        tensors["losses"] = np.array(state["losses"], dtype=np.float64).reshape(-1)
        cfg = self._model.config()
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "image_size": str(cfg["image_size"]),
            "channels": str(cfg["channels"]),
            "hidden_dims": json.dumps(list(cfg["hidden_dims"])),
            "time_dim": str(cfg["time_dim"]),
            "step_count": str(state["step_count"]),
            "seed": str(self._seed),
            "lr": repr(self._lr),
            "beta1": repr(self._betas[0]),
            "beta2": repr(self._betas[1]),
            "eps": repr(self._eps),
            "weight_decay": repr(self._weight_decay),
            "grad_clip": "none" if self._grad_clip is None else repr(self._grad_clip),
            "ema_decay": repr(self._ema_decay),
        }
        save_safetensors(tensors, path, metadata, keep_float64=True)

    @classmethod
    def load(cls, path, model: Optional[DiffusionModel] = None) -> "Trainer":
        """A Trainer restored from a checkpoint written by `save`, ready to continue
        bit-identically with the run that saved it.

        With ``model=None`` a new DiffusionModel is built from the checkpoint's
        configuration; otherwise the weights are loaded into `model`, whose
        configuration must equal the checkpoint's (else ValueError naming
        `model`). Restores the weights, EMA, AdamW moments, step count,
        losses, hyper-parameters, seed and schedule.

        The whole file is checked before anything changes: a missing or
        malformed entry (a tensor, a shape, a non-finite value, a metadata
        field) is a ValueError naming it, and a given `model` is then left
        exactly as it was. A missing file is FileNotFoundError.
        """
        from .io import _config_from_metadata, load_safetensors
        from .reference import param_specs

        path = os.fspath(path)
        if model is not None and not isinstance(model, DiffusionModel):
            raise TypeError(f"model must be a swiftunet.DiffusionModel or None, got {type(model).__name__}")
        tensors, md = load_safetensors(path, keep_float64=True)
        what = f"{path!r} is not a valid swiftunet Trainer checkpoint"

        fmt = md.get("format")
        if fmt != CHECKPOINT_FORMAT:
            raise ValueError(f"{what}: __metadata__ format is {fmt!r}, expected {CHECKPOINT_FORMAT!r}"
                             + (" (a model file: load it with DiffusionModel.load)" if fmt == "swiftunet" else ""))
        if md.get("format_version") != CHECKPOINT_VERSION:
            raise ValueError(f"{what}: unsupported format_version {md.get('format_version')!r} "
                             f"(this is version {CHECKPOINT_VERSION})")
        missing = [k for k in _CONFIG_KEYS + ("step_count", "seed") + _HPARAM_KEYS if k not in md]
        if missing:
            raise ValueError(f"{what}: __metadata__ lacks {', '.join(missing)}")
        cfg = _config_from_metadata(md)
        try:
            image_size, channels, dims, time_dim, _ = _validate_config(
                cfg["image_size"], cfg["channels"], cfg["hidden_dims"], cfg["time_dim"], 0)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: invalid model configuration {cfg}: {exc}") from None
        cfg = {"image_size": image_size, "channels": channels, "hidden_dims": dims, "time_dim": time_dim}

        def meta_int(key):
            try:
                return int(md[key])
            except ValueError:
                raise ValueError(f"{what}: __metadata__ {key} must be an int, got {md[key]!r}") from None

        def meta_float(key):
            if key == "grad_clip" and md[key] == "none":
                return None
            try:
                return float(md[key])
            except ValueError:
                raise ValueError(f"{what}: __metadata__ {key} must be a number, got {md[key]!r}") from None

        step_count = meta_int("step_count")
        if step_count < 0:
            raise ValueError(f"{what}: __metadata__ step_count must be >= 0, got {step_count}")
        seed = meta_int("seed")
        try:
            seed = _seed_arg(seed)
            hp = {k: meta_float(k) for k in _HPARAM_KEYS}
            hp = _check_hparams(hp["lr"], (hp["beta1"], hp["beta2"]), hp["eps"], hp["weight_decay"],
                                hp["grad_clip"], hp["ema_decay"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: __metadata__ {exc}") from None

        # The tensors: exactly the expected names and shapes, finite values.
        specs = [(name, tuple(shape)) for name, shape in param_specs(
            cfg["image_size"], cfg["channels"], cfg["hidden_dims"], cfg["time_dim"])]
        expected = {prefix + name: shape for prefix in _PREFIXES for name, shape in specs}
        expected_extra = {"schedule.betas", "losses"}
        absent = [k for k in list(expected) + sorted(expected_extra) if k not in tensors]
        unexpected = [k for k in tensors if k not in expected and k not in expected_extra]
        if absent or unexpected:
            parts = []
            if absent:
                parts.append(f"missing tensors: {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}")
            if unexpected:
                parts.append(f"unexpected tensors: {', '.join(unexpected[:10])}"
                             f"{' ...' if len(unexpected) > 10 else ''}")
            raise ValueError(f"{what}: " + "; ".join(parts))
        for key, shape in expected.items():
            arr = tensors[key]
            if arr.shape != shape:
                raise ValueError(f"{what}: tensor {key} must have shape {list(shape)}, got {list(arr.shape)}")
            if not np.isfinite(arr).all():
                raise ValueError(f"{what}: tensor {key} contains NaN or infinity")
            if key.startswith("adam_v.") and (arr < 0).any():
                raise ValueError(f"{what}: tensor {key} has negative values (second moments are >= 0)")
        betas = tensors["schedule.betas"]
        if betas.ndim != 1 or betas.dtype != np.float64:
            raise ValueError(f"{what}: tensor schedule.betas must be 1-D F64, got shape {list(betas.shape)} "
                             f"and dtype {betas.dtype}")
        try:
            schedule = NoiseSchedule(betas)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: tensor schedule.betas is not a valid schedule: {exc}") from None
        losses = tensors["losses"]
        if losses.ndim != 1 or losses.dtype != np.float64:
            raise ValueError(f"{what}: tensor losses must be 1-D F64, got shape {list(losses.shape)} "
                             f"and dtype {losses.dtype}")
        if losses.shape[0] != step_count:
            raise ValueError(f"{what}: tensor losses has {losses.shape[0]} values but step_count is {step_count}")
        if not np.isfinite(losses).all():
            raise ValueError(f"{what}: tensor losses contains NaN or infinity")

        if model is None:
            model = DiffusionModel(**cfg)
        elif model.config() != cfg:
            raise ValueError(f"model has configuration {model.config()}, but the checkpoint was saved "
                             f"with {cfg}")

        def flat(prefix):
            return np.concatenate([tensors[prefix + name].reshape(-1) for name, _ in specs]).astype(
                np.float32, copy=False)

        ema, adam_m, adam_v = flat("ema."), flat("adam_m."), flat("adam_v.")
        weights = collections.OrderedDict((name, tensors["model." + name]) for name, _ in specs)
        trainer = cls(model, lr=hp["lr"], betas=hp["betas"], eps=hp["eps"], weight_decay=hp["weight_decay"],
                      grad_clip=hp["grad_clip"], ema_decay=hp["ema_decay"], schedule=schedule, seed=seed)
        previous = model.state_dict()
        model.load_state_dict(weights)
        try:
            _swiftunet.trainer_set_state(trainer._handle, ema, adam_m, adam_v, step_count)
        except BaseException:
            model.load_state_dict(previous)
            raise
        trainer._losses = [float(v) for v in losses]
        return trainer
