r"""Bake a pruned/learnable weight back into a plain Parameter: [`remove`][torchprox.prune.remove.remove], [`remove_all`][torchprox.prune.remove.remove_all],
and [`is_pruned`][torchprox.prune.remove.is_pruned]."""
from __future__ import annotations

import logging

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from ._layers import describe
from .parametrization import get_nm_parametrization, nm_parametrizations, qualified

__all__ = ["remove", "remove_all", "is_pruned"]

logger = logging.getLogger("torchprox.prune")


def _torch_pruned(module: nn.Module, name: str) -> bool:
    return any(isinstance(h, torch_prune.BasePruningMethod) and h._tensor_name == name
               for h in module._forward_pre_hooks.values())


def remove(module: nn.Module, name: str = "weight") -> nn.Module:
    r"""Make ``module.<name>`` a plain Parameter holding its current value; drop the reparametrization.

    - torchprox N:M parametrization ([`learnable_nm`][torchprox.prune.learnable.learnable_nm]): the current weight is baked —
      after [`apply_learned_masks`][torchprox.prune.learnable.apply_learned_masks] that is ``W0 ⊙ mask`` (exact N:M); in the
      learning state it is the dense learned copy W (a warning is logged). The parametrization, W0 and the
      mask are removed; the Parameter object is the one that held W (so its identity is kept) and its
      ``requires_grad`` is what the weight had before ``learnable_nm``. Other parametrizations stacked on
      the same tensor are baked in too.
    - ``torch.nn.utils.prune`` reparametrization (e.g. [`nm_structured`][torchprox.prune.oneshot.nm_structured]): delegates
      to ``torch.nn.utils.prune.remove``.

    The module's forward is unchanged: ``forward`` after ``remove`` equals ``forward`` before it.

    Raises:
        ValueError: ``module.<name>`` has neither.

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm, apply_learned_masks, remove
        >>> lin = learnable_nm(torch.nn.Linear(8, 2))
        >>> _ = apply_learned_masks(lin)
        >>> type(remove(lin)).__name__, type(lin.weight).__name__
        ('Linear', 'Parameter')
    """
    p = get_nm_parametrization(module, name)
    if p is None:
        if _torch_pruned(module, name):
            torch_prune.remove(module, name)
            return module
        raise ValueError(f"{describe(module)}: {name!r} has no torchprox N:M parametrization and no "
                         "torch.nn.utils.prune pruning to remove")
    if p.state == "learning":
        logger.warning("torchprox.prune.remove: %s.%s is still learning; baking the dense learned copy W "
                       "(call apply_learned_masks first for W0 ⊙ mask)", describe(module), name)
    requires_grad = p.orig_requires_grad
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    getattr(module, name).requires_grad_(requires_grad)
    return module


def remove_all(model: nn.Module) -> list[str]:
    r"""[`remove`][torchprox.prune.remove.remove] every torchprox N:M parametrization in ``model`` (e.g. before ``save_pretrained``).

    Returns the qualified tensor names baked. ``torch.nn.utils.prune`` reparametrizations are left alone.

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm_model, apply_learned_masks, remove_all
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
        >>> _ = learnable_nm_model(mlp); _ = apply_learned_masks(mlp)
        >>> remove_all(mlp)
        ['0.weight', '1.weight']
    """
    todo = [(qualname, module, tname) for qualname, module, tname, _, _ in nm_parametrizations(model)]
    for _, module, tname in todo:
        remove(module, tname)
    return [qualified(q, t) for q, _, t in todo]


def is_pruned(module: nn.Module) -> bool:
    r"""True when ``module`` or a submodule has a torchprox N:M parametrization (learning or masked) or a
    ``torch.nn.utils.prune`` reparametrization, i.e. when [`remove`][torchprox.prune.remove.remove] has something to bake.

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm, is_pruned
        >>> lin = torch.nn.Linear(8, 2)
        >>> is_pruned(lin), is_pruned(learnable_nm(lin))
        (False, True)
    """
    return next(nm_parametrizations(module), None) is not None or torch_prune.is_pruned(module)
