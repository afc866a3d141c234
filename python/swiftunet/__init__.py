"""swiftunet: a diffusion-model U-Net written in Swift, used from Python.

    import swiftunet
    m = swiftunet.DiffusionModel(32, 3, hidden_dims=[64, 128, 256], time_dim=128, seed=0)
    eps = m(x, t)
    tr = swiftunet.Trainer(m); tr.fit(images, epochs=10)
    digits = swiftunet.pretrained("digits")    # the shipped model (16x16 handwritten digits)

`swiftunet.reference` is the pure-numpy reference implementation (imported
on first use).
"""

__version__ = "0.1.0"

import importlib as _importlib

from . import _variants as _variants
# A portable install carries one library per instruction set: load the one this CPU
# runs before the extension, whose libSwiftUNetC.so dependency then resolves to it.
_variants.preload()
from . import _swiftunet
from .model import DiffusionModel, IncompatibleKeys
from .model import _int_arg
from .sampling import NoiseSchedule, q_sample, randn, sample
from .sampling import Generator, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, power_timesteps
from .training import Trainer
from .images import image_grid, to_uint8
from .onnx_export import export_onnx
from .pretrained_models import pretrained
from .system import info

__all__ = [
    "DiffusionModel",
    "IncompatibleKeys",
    "set_num_threads",
    "get_num_threads",
    "build_info",
    "info",
    "NoiseSchedule",
    "q_sample",
    "randn",
    "sample",
    "Generator",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "power_timesteps",
    "Trainer",
    "to_uint8",
    "image_grid",
    "export_onnx",
    "pretrained",
    "from_torch",
    "reference",
    "__version__",
]

# Submodules imported on first attribute access (PEP 562), so that
# `import swiftunet` stays cheap and never depends on them.
_LAZY_SUBMODULES = ("reference",)


def set_num_threads(n: int) -> None:
    """Sets the number of worker threads that every model uses (n >= 1)."""
    n = _int_arg("n", n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if n >= 2**63:
        raise ValueError(f"set_num_threads: n is too large, got {n}")
    _swiftunet.set_num_threads(n)


def get_num_threads() -> int:
    """The number of worker threads that every model uses."""
    return _swiftunet.get_num_threads()


def build_info() -> str:
    """How the loaded library was compiled, as "key=value" pairs, e.g.
    'arch=x86_64 variant=native target-cpu=native isa=avx512 blocks=simd16-8x32'
    (`info()` has the fields as a dict, with the CPU's features and, for a
    portable install, the variants it carries and why this one was chosen)."""
    return _swiftunet.build_info()


def _check_requested_variant() -> None:
    # A single-variant install cannot switch: SWIFTUNET_VARIANT must name what it has.
    requested = _variants.requested_variant()
    if requested and not _variants.carried:
        have = _variants.loaded_variant(_swiftunet.build_info())
        if requested != have:
            raise ImportError(f"{_variants.ENV}={requested}: this installation carries only the "
                              f"'{have}' variant (build with SWIFTUNET_VARIANTS=all for all of them)")


_check_requested_variant()


def from_torch(module, image_size=None):
    """A DiffusionModel with the weights of a PyTorch module (or state_dict) that
    has docs/model.md's names; see `swiftunet.torch.from_torch`. Needs PyTorch."""
    from .torch import from_torch as _from_torch
    return _from_torch(module, image_size=image_size)


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        module = _importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
