r"""One-shot N:M pruning as a ``torch.nn.utils.prune`` method: [`NMStructured`][torchprox.prune.oneshot.NMStructured], [`nm_structured`][torchprox.prune.oneshot.nm_structured].

These use torch's own pruning machinery (``weight_orig`` parameter, ``weight_mask`` buffer and a
forward-pre-hook), so ``torch.nn.utils.prune.remove``, ``prune.is_pruned`` and ``PruningContainer``
(iterative pruning, e.g. ``l1_unstructured`` followed by ``nm_structured``) work as for torch's methods.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from ..prox import check_nm
from ..prox.nm import nm_mask
from ._layers import check_groupable, check_not_shared, describe, resolve_dim
from .parametrization import get_nm_parametrization

__all__ = ["NMStructured", "nm_structured"]


class NMStructured(torch_prune.BasePruningMethod):
    r"""Keep the ``n`` highest-scoring of every ``m`` consecutive entries along ``dim``; prune the rest.

    ``compute_mask(t, default_mask)``: scores are ``|t|`` (the weight, or the importance scores given to
    `apply`); entries already pruned in ``default_mask`` score ``-inf``, so the new mask is a subset of
    ``default_mask`` and every group keeps at most ``n`` entries (exactly ``n`` unless fewer survived).
    Ties keep the lower index ([`torchprox.prox.nm_mask`][torchprox.prox.nm.nm_mask]).

    ``PRUNING_TYPE = "global"``: in a ``PruningContainer`` the method receives the whole tensor together with
    the current mask, so groups keep their positions (``"unstructured"`` would hand it only the surviving
    entries, flattened, destroying the N:M layout; ``"structured"`` would drop whole channels first).

    Args:
        n: nonzeros kept per group (``0 < n < m``).
        m: the group size.
        dim: the group dim (the reduction dim: 1 for ``nn.Linear``/convs, 0 for transformers ``Conv1D``).

    Examples:
        >>> import torch
        >>> from torch.nn.utils import prune
        >>> from torchprox.prune import NMStructured, is_nm
        >>> lin = torch.nn.Linear(8, 3)
        >>> _ = NMStructured.apply(lin, "weight", n=2, m=4, dim=1)
        >>> prune.is_pruned(lin), is_nm(lin.weight, 2, 4, dim=1)
        (True, True)
    """

    PRUNING_TYPE = "global"

    def __init__(self, n: int = 2, m: int = 4, dim: int = -1) -> None:
        check_nm(n, m)
        self.n, self.m, self.dim = n, m, dim

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        scores = t.detach().abs()
        if not scores.is_floating_point():
            scores = scores.double()
        if default_mask is not None:
            scores = scores.masked_fill(default_mask == 0, float("-inf"))
        keep = nm_mask(scores, self.n, self.m, self.dim)
        if default_mask is None:
            return keep.to(t.dtype if t.is_floating_point() else torch.float32)
        return default_mask * keep.to(default_mask.dtype)

    @classmethod
    def apply(cls, module: nn.Module, name: str, n: int = 2, m: int = 4, dim: int = -1,
              importance_scores: Tensor | None = None):  # type: ignore[override]
        r"""Prune ``module.<name>`` to N:M along ``dim`` (torch's pruning reparametrization).

        Args:
            module: the module holding the tensor to prune.
            name: the tensor's parameter name.
            n: as for the constructor.
            m: as for the constructor.
            dim: as for the constructor.
            importance_scores: a tensor shaped like the parameter; ``|scores|`` ranks the entries (default:
                the parameter itself, i.e. magnitude pruning).

        Raises:
            ValueError: the parameter is shared with another module (tied weights): pruning it would
                change that module too once the mask is baked in (``prune.remove``).
        """
        check_not_shared(module, name)
        return super().apply(module, name, n=n, m=m, dim=dim, importance_scores=importance_scores)


def nm_structured(module: nn.Module, name: str = "weight", n: int = 2, m: int = 4,
                  importance_scores: Tensor | None = None, dim: int | None = None) -> nn.Module:
    r"""One-shot N:M pruning of ``module.<name>`` in the ``torch.nn.utils.prune`` style.

    Keeps, in every group of ``m`` consecutive entries along ``dim``, the ``n`` with the largest
    ``|importance_scores|`` (default ``|weight|``, magnitude pruning); ties keep the lower index. Creates
    ``<name>_orig`` and ``<name>_mask`` and a forward-pre-hook exactly like ``prune.l1_unstructured``;
    undo/bake with ``torch.nn.utils.prune.remove`` (or [`torchprox.prune.remove`][torchprox.prune.remove]). Calling it on an
    already pruned tensor combines the masks (``PruningContainer``): the result is the intersection.

    Args:
        dim: None picks the layer's reduction dim (``nn.Linear`` 1, transformers ``Conv1D`` 0,
            ``nn.Conv{1,2,3}d`` 1 = input channels at each (out, kernel position)).
    Returns:
        ``module``.
    Raises:
        ValueError: size along ``dim`` not a multiple of ``m`` (naming the module and shape), unknown layer
        type without ``dim``, a tensor under a torchprox learnable parametrization, or a Parameter shared
        with another module (tied weights; the message names both and how to untie them).

    Examples:
        >>> import torch
        >>> from torchprox.prune import nm_structured
        >>> lin = nm_structured(torch.nn.Linear(8, 2), n=2, m=4)
        >>> int(lin.weight_mask.sum())
        8
    """
    check_nm(n, m)
    if get_nm_parametrization(module, name) is not None:
        raise ValueError(f"{describe(module)}: {name!r} has a torchprox learnable N:M parametrization; use "
                         "apply_learned_masks / torchprox.prune.remove instead of one-shot pruning")
    dim = resolve_dim(module, name, dim, None)
    check_groupable(module, tuple(getattr(module, name).shape), dim, m, None, name)
    NMStructured.apply(module, name, n=n, m=m, dim=dim, importance_scores=importance_scores)
    return module
