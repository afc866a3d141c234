"""The swiftunet model in PyTorch, and moving weights between the two.

``TorchDiffusionModel(channels, hidden_dims, time_dim)`` is docs/model.md's
network written with nn.Linear, nn.Conv2d, nn.ConvTranspose2d and
nn.GroupNorm under the contract's attribute names, so its ``state_dict()``
has exactly swiftunet's keys, order and shapes. With it:

    import swiftunet, swiftunet.torch
    m = swiftunet.from_torch(torch_module)   # a DiffusionModel with the module's weights
    tm = m.to_torch()                        # a TorchDiffusionModel with m's weights

and the two compute the same function within the parity bound
(docs/model.md section 4). Works for float32 and float64 modules (the float32
rounding of the sinusoid happens in both).

Needs PyTorch, which swiftunet never requires: ``import swiftunet`` does not
import this module. It imports nothing else from swiftunet at load time, so
the benchmarks load this file alone as their PyTorch peer.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "swiftunet.torch needs PyTorch, which is not installed (pip install torch); "
        "the rest of swiftunet works without it"
    ) from exc
import torch.nn.functional as F
from torch import nn

__all__ = ["TorchDiffusionModel", "TimeMLP", "ResBlock", "SelfAttention", "DownBlock", "UpBlock", "Bottleneck",
           "from_torch", "to_torch"]


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """freq[i] = exp(-ln(10000) i / (half-1)); a, sin, cos in float64,
    rounded to float32 once; sines first (docs/model.md section 1)."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64, device=t.device)
    freq = torch.exp(-math.log(10000.0) * i / (half - 1))
    a = t.to(torch.float64)[:, None] * freq[None, :]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1).to(torch.float32)


class TimeMLP(nn.Module):
    def __init__(self, time_dim: int):
        super().__init__()
        self.time_dim = time_dim
        self.fc1 = nn.Linear(time_dim, 4 * time_dim)
        self.fc2 = nn.Linear(4 * time_dim, time_dim)

    def forward(self, t):
        # Rounded to float32 once, then on in the module's dtype (float64 for a .double() twin).
        enc = sinusoid(t, self.time_dim).to(self.fc1.weight.dtype)
        return self.fc2(F.gelu(self.fc1(enc)))  # exact (erf) GELU


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, time_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, cout)
        self.norm2 = nn.GroupNorm(8, cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(8, ch, eps=1e-5)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        dh, N = C // self.heads, H * W
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, dh, N)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]                     # [B, h, dh, N]
        scores = torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(dh)
        attn = scores.softmax(dim=-1)
        o = torch.einsum("bhnm,bhdm->bhdn", attn, v).reshape(B, C, H, W)
        return x + self.proj(o)


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, time_dim: int):
        super().__init__()
        self.res = ResBlock(cin, cout, time_dim)
        self.down = nn.Conv2d(cout, cout, 4, stride=2, padding=1)

    def forward(self, h, temb):
        s = self.res(h, temb)
        return self.down(s), s


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, time_dim: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, 4, stride=2, padding=1)
        self.res = ResBlock(cin + cskip, cout, time_dim)

    def forward(self, h, skip, temb):
        return self.res(torch.cat([self.up(h), skip], dim=1), temb)


class Bottleneck(nn.Module):
    def __init__(self, ch: int, time_dim: int):
        super().__init__()
        self.res1 = ResBlock(ch, ch, time_dim)
        self.attn = SelfAttention(ch, 4)
        self.res2 = ResBlock(ch, ch, time_dim)

    def forward(self, h, temb):
        return self.res2(self.attn(self.res1(h, temb)), temb)


class TorchDiffusionModel(nn.Module):
    """swiftunet's DiffusionModel in PyTorch (docs/model.md section 1), with an
    identical state_dict. ``forward(x, t)``: x [B, C, H, W], t [B] integer tensor.

    `image_size` is only recorded (the network takes any H, W that are
    multiples of 2**L), so that `from_torch` rebuilds the same configuration.
    """

    def __init__(self, channels: int, hidden_dims: Sequence[int] = (32, 64, 128), time_dim: int = 128,
                 image_size: Optional[int] = None):
        super().__init__()
        d = [int(v) for v in hidden_dims]
        L = len(d) - 1
        self.hidden_dims = d
        self.channels = channels
        self.time_dim = time_dim
        self.image_size = image_size
        self.time_mlp = TimeMLP(time_dim)
        self.init_conv = nn.Conv2d(channels, d[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(DownBlock(d[i], d[i + 1], time_dim) for i in range(L))
        self.bottleneck = Bottleneck(d[L], time_dim)
        self.up_blocks = nn.ModuleList(
            UpBlock(d[i + 1], d[i + 1], d[i], time_dim) for i in (L - 1 - j for j in range(L))
        )
        self.out_norm = nn.GroupNorm(8, d[0], eps=1e-5)
        self.out_conv = nn.Conv2d(d[0], channels, 3, padding=1)

    def forward(self, x, t):
        temb = self.time_mlp(t)
        h = self.init_conv(x)
        skips = []
        for blk in self.down_blocks:
            h, s = blk(h, temb)
            skips.append(s)
        h = self.bottleneck(h, temb)
        for blk, s in zip(self.up_blocks, reversed(skips)):
            h = blk(h, s, temb)
        return self.out_conv(F.silu(self.out_norm(h)))


# --------------------------------------------------------------------------
# moving weights (swiftunet is imported here, not at load time; see above)


def _numpy_state(module_or_state: Any) -> "dict":
    if isinstance(module_or_state, nn.Module):
        state = module_or_state.state_dict()
    elif isinstance(module_or_state, Mapping):
        state = module_or_state
    else:
        raise TypeError("from_torch: module must be a torch.nn.Module or a state_dict (mapping of name -> "
                        f"tensor), got {type(module_or_state).__name__}")
    arrays = {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                raise TypeError(f"from_torch: {name} must be a floating-point tensor, got {value.dtype}")
            value = value.detach().to(device="cpu", dtype=torch.float32).numpy()
        arrays[name] = value
    return arrays


def from_torch(module: Any, image_size: Optional[int] = None):
    """A new swiftunet.DiffusionModel holding the weights of `module`.

    `module`: a torch.nn.Module whose state_dict has docs/model.md's names and
    shapes (a TorchDiffusionModel, or a user's own module written with those
    attribute names), or such a state_dict. The configuration (channels,
    hidden_dims, time_dim) is read from the weights' shapes; `image_size` from
    the argument, else the module's ``image_size`` attribute, else the
    smallest valid size >= 32 (it only sets the default size of `sample`).
    Weights are copied as float32; the module is not changed. Raises
    ValueError/TypeError naming what does not fit.
    """
    import swiftunet
    from swiftunet.io import infer_config

    state = _numpy_state(module)
    if image_size is None and isinstance(module, nn.Module):
        image_size = getattr(module, "image_size", None)
    model = swiftunet.DiffusionModel(**infer_config(state, image_size))
    model.load_state_dict(state, strict=True)
    return model


def to_torch(model) -> TorchDiffusionModel:
    """A new TorchDiffusionModel (float32, on the CPU, in eval mode) holding
    copies of `model`'s weights; `model` is a swiftunet.DiffusionModel."""
    cfg = model.config()
    tm = TorchDiffusionModel(cfg["channels"], cfg["hidden_dims"], cfg["time_dim"], image_size=cfg["image_size"])
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, strict=True)
    return tm.eval()
