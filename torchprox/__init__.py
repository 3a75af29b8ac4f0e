"""torchprox: learn N:M (e.g. 2:4) sparsity masks with proximal optimization in PyTorch.

- `torchprox.prox`: proximal operators as pure tensor functions, found by name in a registry.
- [`torchprox.ProxAdam`][torchprox.optim.proxadam.ProxAdam]: torch's Adam/AdamW step, then each param group's prox.
- [`torchprox.prune`][torchprox.prune]: frozen-weight parametrizations and a ``torch.nn.utils.prune``-style API.
- [`torchprox.llm`][torchprox.llm]: the workflow for Hugging Face causal LMs (imported on demand; needs ``[llm]``).
"""
from . import prox, prune
from .optim import ProxAdam

__version__ = "0.1.0"
__all__ = ["prox", "prune", "ProxAdam", "__version__"]
