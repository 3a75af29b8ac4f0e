"""torchprox: learn N:M (e.g. 2:4) sparsity masks with proximal optimization in PyTorch."""
from . import prox
from .optim import ProxAdam

__version__ = "0.1.0"
__all__ = ["prox", "ProxAdam", "__version__"]
