"""Image helpers: model outputs in [-1, 1] to uint8 pictures, grids, and PNG files.

    imgs = swiftunet.sample(model, n=16)
    plt.imshow(swiftunet.image_grid(imgs, nrow=4))
    swiftunet.images.write_png("grid.png", swiftunet.image_grid(imgs))
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from typing import Any

import numpy as np

__all__ = ["to_uint8", "image_grid", "write_png", "encode_png"]


def to_uint8(images: Any) -> np.ndarray:
    """[-1, 1] floats to uint8 pixels, channels last.

    [C, H, W] -> [H, W, C]; [N, C, H, W] -> [N, H, W, C]. Values are clipped to
    [-1, 1] and mapped with round((x + 1) * 127.5) (so -1 -> 0, 1 -> 255, 0 -> 128).
    NaN becomes 0.
    """
    a = np.asarray(images)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"images must hold real numbers, got dtype {a.dtype}")
    if a.ndim not in (3, 4):
        raise ValueError(f"images must be [C, H, W] or [N, C, H, W], got shape {a.shape}")
    x = np.nan_to_num(a.astype(np.float64), nan=-1.0)
    x = np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(x, -3, -1))


def grid_columns(n: int) -> int:
    """Images per row for a grid of n that leaves no cell empty when it can:
    the smallest divisor of n from ceil(sqrt(n)) up to 2·sqrt(n) (8 -> 4x2,
    12 -> 4x3, 16 -> 4x4), else ceil(sqrt(n)) with the last row short
    (7 -> 3 per row, rows of 3, 3, 1)."""
    n = max(int(n), 1)
    root = math.isqrt(n - 1) + 1          # ceil(sqrt(n))
    for cols in range(root, 2 * root):
        if n % cols == 0 and cols * cols <= 4 * n:
            return cols
    return root


def image_grid(images: Any, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tiles a batch into one uint8 picture, ready for ``matplotlib.pyplot.imshow``.

    images: [N, C, H, W] floats in [-1, 1] (as `sample` returns), or uint8
    [N, H, W, C] (as `to_uint8` returns). nrow images per row (like
    torchvision's make_grid), `padding` pixels of `pad_value` between and
    around them. Returns [rows, cols, C], or [rows, cols] when C is 1.
    """
    a = np.asarray(images)
    if a.ndim != 4:
        raise ValueError(f"images must be 4-D [N, C, H, W] (or uint8 [N, H, W, C]), got shape {a.shape}")
    pix = a if a.dtype == np.uint8 else to_uint8(a)
    if isinstance(nrow, bool) or not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"nrow must be an int >= 1, got {nrow!r}")
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    if not 0 <= int(pad_value) <= 255:
        raise ValueError(f"pad_value must be in [0, 255], got {pad_value!r}")
    n, h, w, c = pix.shape
    cols = min(int(nrow), max(n, 1))
    rows = -(-n // cols) if n else 0
    p = int(padding)
    grid = np.full((p + rows * (h + p), p + cols * (w + p), c), int(pad_value), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = p + r * (h + p), p + k * (w + p)
        grid[y:y + h, x:x + w] = pix[i]
    return grid[:, :, 0] if c == 1 else grid


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: Any) -> bytes:
    """A PNG file (bytes) of uint8 pixels [H, W] (gray), [H, W, 1|2|3|4].

    8-bit, no interlace, filter type 0 (None) on every row, zlib level 6.
    """
    a = np.asarray(pixels)
    if a.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8, got {a.dtype} (use to_uint8 / image_grid first)")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"pixels must be [H, W] or [H, W, 1|2|3|4], got shape {a.shape}")
    h, w, c = a.shape
    if h < 1 or w < 1 or h >= 2**31 or w >= 2**31:
        raise ValueError(f"a PNG must be between 1 and 2**31-1 pixels each way, got {h}x{w}")
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = np.empty((h, 1 + w * c), dtype=np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = np.ascontiguousarray(a).reshape(h, w * c)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _chunk(b"IEND", b""))


def write_png(path: Any, pixels: Any, use_pillow: bool = True) -> None:
    """Writes uint8 pixels ([H, W] or [H, W, C]) to a PNG file.

    Uses Pillow when it is installed (and use_pillow), else the small writer
    above. The file appears whole or not at all (temporary file + rename).
    """
    path = os.fspath(path)
    a = np.asarray(pixels)
    data = None
    if use_pillow:
        try:
            from PIL import Image  # type: ignore
        except Exception:
            Image = None
        if Image is not None and a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
            import io as _io
            buf = _io.BytesIO()
            Image.fromarray(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a).save(buf, format="PNG")
            data = buf.getvalue()
    if data is None:
        data = encode_png(a)
    from .io import atomic_open

    with atomic_open(path) as f:
        f.write(data)
