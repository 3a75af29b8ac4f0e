r"""N:M pruning in the ``torch.nn.utils.prune`` call style.

Learned masks (ProxSparse), built on ``torch.nn.utils.parametrize``:

- [`learnable_nm`][torchprox.prune.learnable.learnable_nm] / [`learnable_nm_model`][torchprox.prune.learnable.learnable_nm_model]: the original weight W0 becomes a frozen, bit-exact
  buffer; a learnable copy W (initialised to W0) is what the forward uses while the mask is learned.
- [`prox_param_groups`][torchprox.prune.learnable.prox_param_groups]: ProxAdam groups (prox ``"nm"`` with the right group dim per layer type, and a
  plain group for the rest).
- [`apply_learned_masks`][torchprox.prune.learnable.apply_learned_masks]: mask = top-n of m of |W|; the weight becomes W0 ⊙ mask, W is released.
- [`restore_dense`][torchprox.prune.learnable.restore_dense]: abandon learning; the weight is W0 again, bit for bit.
- [`frozen_weight_penalty`][torchprox.prune.penalty.frozen_weight_penalty]: ProxSparse's optional regularizer pulling W to 0 or W0.

One-shot masks, as a ``torch.nn.utils.prune`` method: [`NMStructured`][torchprox.prune.oneshot.NMStructured], [`nm_structured`][torchprox.prune.oneshot.nm_structured].

Finishing and checking: [`remove`][torchprox.prune.remove] / [`remove_all`][torchprox.prune.remove.remove_all] (plain Parameters again), [`is_pruned`][torchprox.prune.remove.is_pruned],
[`is_nm`][torchprox.prune.report.is_nm], [`nm_fraction`][torchprox.prune.report.nm_fraction], [`sparsity_report`][torchprox.prune.report.sparsity_report].

Groups run along the reduction (input) dim: ``nn.Linear`` (out, in) → dim 1, transformers ``Conv1D``
(in, out) → dim 0, ``nn.Conv{1,2,3}d`` (out, in/groups, *k) → dim 1: ``m`` consecutive input channels at
each (output channel, kernel position), the layout of an implicit-GEMM convolution's reduction. Any other
``nn.Parameter`` (e.g. a fused expert tensor) is a ``(module, "param_name")`` target with its dim given or
declared once per class with [`register_layout`][torchprox.prune._layers.register_layout].

Examples:
    >>> import torch
    >>> from torchprox import ProxAdam
    >>> from torchprox.prune import learnable_nm_model, prox_param_groups, apply_learned_masks, remove_all, is_nm
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> _ = learnable_nm_model(mlp, n=2, m=4)
    >>> opt = ProxAdam(prox_param_groups(mlp, lam=0.1), lr=1e-2)
    >>> for _ in range(3):
    ...     mlp(torch.randn(32, 8)).square().mean().backward(); opt.step(); opt.zero_grad()
    >>> _ = apply_learned_masks(mlp, optimizer=opt)
    >>> _ = remove_all(mlp)
    >>> is_nm(mlp[0].weight, 2, 4, dim=1) and is_nm(mlp[2].weight, 2, 4, dim=1)
    True
"""
from ._layers import (check_groupable, compile_targets, is_hf_conv1d, name_matches, register_layout, registered_dim,
                      select_modules)
from .learnable import apply_learned_masks, learnable_nm, learnable_nm_model, prox_param_groups, restore_dense
from .oneshot import NMStructured, nm_structured
from .parametrization import NMParametrization, nm_parametrizations, original_weights
from .penalty import frozen_weight_penalty
from .remove import is_pruned, remove, remove_all
from .report import is_nm, nm_fraction, sparsity_report

__all__ = [
    "learnable_nm", "learnable_nm_model", "prox_param_groups", "apply_learned_masks", "frozen_weight_penalty",
    "NMStructured", "nm_structured", "remove", "remove_all", "is_pruned", "is_nm", "nm_fraction",
    "sparsity_report", "NMParametrization", "restore_dense",
    "nm_parametrizations", "select_modules", "check_groupable", "is_hf_conv1d", "register_layout",
    "registered_dim", "original_weights", "compile_targets", "name_matches",
]
