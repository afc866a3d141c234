"""A PyTorch twin of the swiftunet model, written from SPEC.md's attribute names.

Used by python/tests/test_torch_parity.py (parity) and benchmarks/bench.py (as
a peer). Its ``state_dict()`` keys and shapes are exactly swiftunet's, so

    tm = TorchDiffusionModel(3, [32, 64, 128], 128)
    m.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})

gives a swiftunet model that computes the same function. Needs torch (an
optional, benchmark/test-only dependency).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TorchDiffusionModel", "TimeMLP", "ResBlock", "SelfAttention", "DownBlock", "UpBlock", "Bottleneck"]


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """SPEC: freq[i] = exp(-ln(10000) i / (half-1)); a, sin, cos in float64,
    rounded to float32 once; sines first."""
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
        return self.fc2(F.gelu(self.fc1(sinusoid(t, self.time_dim))))  # exact (erf) GELU


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
    """SPEC section 1 in PyTorch; state_dict identical to swiftunet's."""

    def __init__(self, channels: int, hidden_dims: Sequence[int] = (32, 64, 128), time_dim: int = 128):
        super().__init__()
        d = [int(v) for v in hidden_dims]
        L = len(d) - 1
        self.hidden_dims = d
        self.channels = channels
        self.time_dim = time_dim
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
