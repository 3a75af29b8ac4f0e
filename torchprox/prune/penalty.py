r"""ProxSparse's optional "frozen weight" regularizer: [`frozen_weight_penalty`][torchprox.prune.penalty.frozen_weight_penalty]."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .parametrization import nm_parametrizations

__all__ = ["frozen_weight_penalty"]


def frozen_weight_penalty(model: nn.Module, eps: float = 1e-8) -> Tensor:
    r"""Σ over learnable N:M layers of Σ_ij ( W_ij · (W_ij − W0_ij) / (W0_ij + eps·sgn W0_ij) )².

    The ProxSparse paper's second regularizer: each term is zero exactly when the weight is either pruned
    (``W = 0``) or unchanged (``W = W0``), so it steers W towards "keep the original value or drop it" —
    the only two outcomes [`apply_learned_masks`][torchprox.prune.learnable.apply_learned_masks] can produce. It is differentiable in
    W (W0 is a constant); add ``lam2 * frozen_weight_penalty(model)`` to the loss yourself:

        loss = task_loss + lam2 * frozen_weight_penalty(model)

    ``sgn`` takes the sign bit (``sgn(±0) = ±1``), so the denominator is never zero: where ``W0 = 0`` the
    term is ``W⁴ / eps²``, a strong pull back to 0. Computed in float32 (float64 for float64 weights), on
    W's device (an offloaded W0 is copied there); only layers in the learning state contribute.

    Returns:
        a 0-d tensor (0 when there is no learning-state layer).

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm, frozen_weight_penalty
        >>> lin = learnable_nm(torch.nn.Linear(8, 2))
        >>> float(frozen_weight_penalty(lin).detach())          # W == W0
        0.0
    """
    total = None
    for _, _, _, plist, p in nm_parametrizations(model):
        if p.w0 is None:
            continue
        w = plist.original
        dt = torch.float64 if w.dtype == torch.float64 else torch.float32
        w = w.to(dt)
        w0 = p.w0.to(device=w.device, dtype=dt)
        denom = w0 + torch.copysign(torch.full_like(w0, eps), w0)
        term = (w * (w - w0) / denom).square().sum()
        total = term if total is None else total + term
    if total is None:
        first = next(model.parameters(), None)
        return torch.zeros((), device=first.device if first is not None else None)
    return total
