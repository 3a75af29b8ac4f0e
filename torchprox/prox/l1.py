r"""The L1 norm and its proximal operator (soft thresholding)."""
from __future__ import annotations

import torch
from torch import Tensor

from ._groups import check_float, check_lam, check_step
from .registry import register_prox

__all__ = ["prox_l1", "prox_l1_"]


@register_prox("l1")
def prox_l1(y: Tensor, lam, step=1.0) -> Tensor:
    r"""Soft thresholding: ``argmin_w ½ Σ (w − y)² / s + lam · Σ |w|``, entry by entry.

    Closed form: ``w = sign(y) · max(|y| − lam · s, 0)``. ``step`` (``s``) is a scalar or a tensor
    broadcastable to ``y`` (a diagonal metric); ``lam`` and ``step`` are validated as for
    [`prox_nm`][torchprox.prox.nm.prox_nm] (finite, ``lam >= 0``, ``step >= 0``). A zero step means "not moved":
    ``s_i = 0`` gives ``w_i = y_i`` bit for bit (the formula itself), so a scalar step 0 returns ``y``.

    Args:
        y: float tensor.
        lam: λ ≥ 0 (float or one-element tensor).
        step: ``s``: a scalar >= 0 or a tensor >= 0 broadcastable to ``y``.

    Examples:
        >>> import torch
        >>> prox_l1(torch.tensor([-2.0, 0.3, 1.5]), lam=0.5)
        tensor([-1.5000,  0.0000,  1.0000])
    """
    check_float(y, "y")
    lam = check_lam(lam)
    step = check_step(step, y)
    return torch.copysign((y.abs() - lam * step).clamp_min(0), y)


def prox_l1_(y: Tensor, lam, step=1.0) -> Tensor:
    """In-place [`prox_l1`][torchprox.prox.l1.prox_l1]: ``y ← sign(y) · max(|y| − lam · step, 0)``; returns ``y``.

    Examples:
        >>> import torch
        >>> y = torch.tensor([-2.0, 0.3, 1.5])
        >>> prox_l1_(y, 0.5) is y, y
        (True, tensor([-1.5000,  0.0000,  1.0000]))
    """
    return y.copy_(prox_l1(y, lam, step))


prox_l1.zero_step_still = True  # a zero step leaves its entry (group) unchanged (see registry)
