"""The benchmarks' PyTorch peer: swiftunet.torch.TorchDiffusionModel, loaded from
python/swiftunet/torch.py as a file of its own, so that a PyTorch benchmark
process never loads the swiftunet library (its time and memory are PyTorch's
alone). Needs torch."""

import importlib.util
from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[1] / "python" / "swiftunet" / "torch.py"
_spec = importlib.util.spec_from_file_location("swiftunet_torch_peer", _SOURCE)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

TorchDiffusionModel = _module.TorchDiffusionModel
