"""The handwritten-digits data set that scikit-learn ships, as 16x16 training images.

    from swiftunet.digits import load_digits_16
    x_train = load_digits_16("train")       # float32 [1500, 1, 16, 16] in [-1, 1]
    x_test, y_test = load_digits_16("test", return_labels=True)

The source is ``sklearn.datasets.load_digits()``: 1,797 grey 8x8 images with
integer values 0..16 (part of scikit-learn's installation, no download).
scikit-learn is imported only here, lazily, and only training and
evaluation need it: sampling from the shipped model needs numpy alone.

- Scaling: ``x / 8 - 1``, so 0 -> -1 (background) and 16 -> 1 (ink).
- Size: each pixel becomes a 2x2 block (nearest-neighbour upsampling,
  ``np.repeat`` along both axes), 8x8 -> 16x16. 16x16 gives the U-Net's
  two levels a 4x4 bottleneck for its attention (at 8x8 it would be 2x2)
  and a picture large enough to look at, at a quarter of the cost of 32x32,
  which would hold no more information. Nearest rather than bilinear
  because it adds nothing: `downsample_8` (the mean of each 2x2 block) undoes
  it exactly, so the evaluation's classifier sees generated digits the same
  way it saw the real ones.
- Split (fixed, no shuffling): the first 1,500 images are the training set,
  the last 297 the held-out test set. The data set's order already mixes
  the classes (each has 27 to 33 test images).
"""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np

__all__ = ["load_digits_16", "load_digits_8", "downsample_8", "upsample_16", "N_TRAIN", "N_TEST", "SPLITS"]

#: The first N_TRAIN images train; the last N_TEST are held out.
N_TRAIN = 1500
N_TEST = 297
SPLITS = ("train", "test", "all")


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "the digits data set comes from scikit-learn, which is not installed "
            f"({exc}); install it with `python3 -m pip install scikit-learn` "
            "(only training and evaluation need it; sampling does not)") from None
    d = load_digits()
    images = np.asarray(d.images, dtype=np.float64)
    labels = np.asarray(d.target, dtype=np.int64)
    if images.shape != (N_TRAIN + N_TEST, 8, 8):
        raise RuntimeError(f"sklearn's load_digits returned images of shape {images.shape}, "
                           f"expected {(N_TRAIN + N_TEST, 8, 8)}")
    return images, labels


def _select(split: str, images: np.ndarray, labels: np.ndarray):
    if split == "train":
        return images[:N_TRAIN], labels[:N_TRAIN]
    if split == "test":
        return images[N_TRAIN:], labels[N_TRAIN:]
    return images, labels


def _check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    return split


def load_digits_8(split: str = "train", return_labels: bool = False
                  ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """The raw 8x8 digits of a split: float64 [N, 64] with values 0..16 (what the
    evaluation's classifier trains on), and with `return_labels` the int64 labels [N]."""
    split = _check_split(split)
    x, y = _select(split, *_sklearn_digits())
    x = x.reshape(x.shape[0], 64)
    return (x, y) if return_labels else x


def upsample_16(images8: np.ndarray) -> np.ndarray:
    """0..16 images [N, 8, 8] (or [N, 64]) to float32 [N, 1, 16, 16] in [-1, 1]:
    x / 8 - 1, then each pixel repeated into a 2x2 block."""
    a = np.asarray(images8, dtype=np.float64).reshape(-1, 8, 8)
    a = a / 8.0 - 1.0
    a = np.repeat(np.repeat(a, 2, axis=1), 2, axis=2)
    return np.ascontiguousarray(a[:, None, :, :], dtype=np.float32)


def downsample_8(images16: np.ndarray) -> np.ndarray:
    """Images [N, 1, 16, 16] in [-1, 1] back to the 8x8 digits' scale: float64 [N, 64]
    in 0..16. Each 8x8 pixel is the mean of its 2x2 block, then (x + 1) * 8;
    values are clipped to [-1, 1] first. The exact inverse of `upsample_16`."""
    a = np.asarray(images16, dtype=np.float64)
    if a.ndim != 4 or a.shape[1:] != (1, 16, 16):
        raise ValueError(f"images must be [N, 1, 16, 16], got shape {a.shape}")
    a = np.clip(a[:, 0], -1.0, 1.0)
    a = a.reshape(a.shape[0], 8, 2, 8, 2).mean(axis=(2, 4))
    return ((a + 1.0) * 8.0).reshape(a.shape[0], 64)


def load_digits_16(split: str = "train", return_labels: bool = False
                   ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """The digits of a split as float32 [N, 1, 16, 16] in [-1, 1] (see the module's
    docstring), N = 1500 ("train"), 297 ("test") or 1797 ("all"); with
    `return_labels` also the int64 labels [N]. Needs scikit-learn."""
    split = _check_split(split)
    x, y = _select(split, *_sklearn_digits())
    x16 = upsample_16(x)
    return (x16, y) if return_labels else x16
