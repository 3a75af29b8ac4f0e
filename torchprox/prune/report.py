r"""Checking N:M patterns: [`is_nm`][torchprox.prune.report.is_nm] for one tensor, [`sparsity_report`][torchprox.prune.report.sparsity_report] for a whole model."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from ..prox import check_nm, group_view
from ._layers import default_dim, layer_kind
from .oneshot import NMStructured
from .parametrization import get_nm_parametrization

__all__ = ["is_nm", "nm_fraction", "sparsity_report"]


def _nonzeros_per_group(t: Tensor, m: int, dim: int) -> Tensor:
    g, _ = group_view(t.detach(), m, dim, name="tensor")
    return (g != 0).sum(-1)


def nm_fraction(tensor: Tensor, n: int = 2, m: int = 4, dim: int = -1) -> Tensor:
    r"""The fraction of groups of ``m`` along ``dim`` with at most ``n`` nonzeros (a 0-d float tensor).

    Examples:
        >>> import torch
        >>> float(nm_fraction(torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 1.0, 0.0])))
        0.5
    """
    check_nm(n, m)
    return (_nonzeros_per_group(tensor, m, dim) <= n).float().mean()


def is_nm(tensor: Tensor, n: int = 2, m: int = 4, dim: int = -1) -> bool:
    r"""True iff every group of ``m`` consecutive entries along ``dim`` has at most ``n`` nonzeros.

    A size along ``dim`` that is not a multiple of ``m`` is a ``ValueError``. (One host sync: not for hot
    paths.)

    Examples:
        >>> import torch
        >>> is_nm(torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 3.0, 4.0, 0.0]]), 2, 4)
        True
        >>> is_nm(torch.tensor([1.0, 1.0, 1.0, 0.0]), 2, 4)
        False
    """
    check_nm(n, m)
    return bool((_nonzeros_per_group(tensor, m, dim) <= n).all())


def _layer_state(module: nn.Module) -> tuple[str, int | None]:
    """(state, group dim or None) of ``module.weight``."""
    p = get_nm_parametrization(module, "weight")
    if p is not None:
        return p.state, p.dim
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.BasePruningMethod) and hook._tensor_name == "weight":
            methods = getattr(hook, "_pruning_methods", (hook,))
            dims = [meth.dim for meth in methods if isinstance(meth, NMStructured)]
            return "pruned", (dims[-1] if dims else None)
    return "dense", None


@torch.no_grad()
def sparsity_report(model: nn.Module, n: int = 2, m: int = 4) -> list[dict]:
    r"""Per layer, how sparse its weight is and how much of it is already N:M.

    Covers every ``nn.Linear``, transformers ``Conv1D`` and ``nn.Conv{1,2,3}d`` (any parametrization or
    pruning included; the weight is read as the forward sees it) and every other module with a torchprox
    N:M parametrization. Each entry is plain data:

    ``name`` (qualified module name), ``kind`` (class name), ``shape``, ``dim`` (group dim),
    ``pattern`` (``"n:m"`` checked), ``state`` (``"learning"``, ``"masked"``, ``"pruned"`` for
    ``torch.nn.utils.prune``, or ``"dense"``), ``nm_fraction`` (fraction of groups with at most ``n``
    nonzeros; None when the size along ``dim`` is not a multiple of ``m``), ``is_nm`` (``nm_fraction == 1``)
    and ``sparsity`` (fraction of exact zeros).

    Examples:
        >>> import torch
        >>> from torchprox.prune import nm_structured, sparsity_report
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
        >>> _ = nm_structured(mlp[0])
        >>> [(r["name"], r["state"], r["nm_fraction"], r["sparsity"]) for r in sparsity_report(mlp)]
        [('0', 'pruned', 1.0, 0.5), ('1', 'dense', 0.0, 0.0)]
    """
    check_nm(n, m)
    rows = []
    for qualname, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue
        state, dim = _layer_state(module)
        if dim is None:
            dim = default_dim(module, "weight")
        weight = getattr(module, "weight", None) if dim is not None else None
        if not isinstance(weight, Tensor) or weight.dim() == 0:
            continue
        frac = None
        if weight.shape[dim] % m == 0:
            frac = float(nm_fraction(weight, n, m, dim))
        rows.append({
            "name": qualname,
            "kind": layer_kind(module),
            "shape": tuple(weight.shape),
            "dim": dim,
            "pattern": f"{n}:{m}",
            "state": state,
            "nm_fraction": frac,
            "is_nm": frac == 1.0,
            "sparsity": float((weight == 0).float().mean()) if weight.numel() else 0.0,
        })
    return rows
