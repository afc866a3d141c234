"""Trained weights shipped inside the package.

    m = swiftunet.pretrained("digits")      # DiffusionModel(16, 1, hidden_dims=[32, 64, 64], time_dim=64)
    imgs = swiftunet.sample(m, n=16, steps=50, seed=0)   # [16, 1, 16, 16] handwritten digits in [-1, 1]

Each entry of `PRETRAINED` names a safetensors file in ``swiftunet/weights/``
and its SHA-256; `pretrained` checks the file against it before loading.
Loading needs numpy only. How the digits model was trained (and how to
reproduce the file bit for bit) and how good its samples are: docs/digits.md.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict

__all__ = ["pretrained", "pretrained_path", "PRETRAINED"]

#: name -> file (in swiftunet/weights/), its SHA-256, and what it is.
PRETRAINED: Dict[str, Dict[str, str]] = {
    "digits": {
        "file": "digits.safetensors",
        "sha256": "8686fb0499135ea4843bedd4cc454678d51061f07a03ef0e58e57e99826516ac",
        "description": "EMA weights of DiffusionModel(16, 1, hidden_dims=[32, 64, 64], time_dim=64) trained on "
                       "scikit-learn's 8x8 digits upsampled to 16x16 (1 channel, [-1, 1]), cosine schedule, "
                       "T = 1000; written by `python3 -m swiftunet train-digits`",
    },
}

_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def _entry(name) -> Dict[str, str]:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {sorted(PRETRAINED)}, got {type(name).__name__} {name!r}")
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(PRETRAINED))}")
    return PRETRAINED[name]


def pretrained_path(name: str = "digits") -> Path:
    """The path of a shipped weights file (FileNotFoundError if the installation lacks it)."""
    path = _WEIGHTS_DIR / _entry(name)["file"]
    if not path.is_file():
        raise FileNotFoundError(f"the weights of {name!r} are not installed: {path} does not exist "
                                f"(reinstall swiftunet with `python3 -m pip install .`)")
    return path


def _sha256(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pretrained(name: str = "digits", verify: bool = True):
    """A new DiffusionModel with the shipped weights `name` (known: "digits").

    With `verify` (the default) the file's SHA-256 must equal the recorded
    one, else ValueError: a damaged or replaced file is never loaded silently.
    An unknown name is a ValueError listing the known ones.
    """
    from .model import DiffusionModel
    entry = _entry(name)
    path = pretrained_path(name)
    if verify:
        digest = _sha256(path)
        if digest != entry["sha256"]:
            raise ValueError(f"{path} has SHA-256 {digest}, but {name!r} was shipped with {entry['sha256']}: "
                             f"the file is damaged or was replaced (reinstall swiftunet)")
    return DiffusionModel.load(path)
