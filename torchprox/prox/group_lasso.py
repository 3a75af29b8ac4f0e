r"""Group lasso: the sum of Euclidean norms of groups, and its proximal operator (block soft thresholding)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._groups import check_float, check_lam, compute_dtype, group_step, group_view
from .registry import check_group_lasso_args, group_lasso_grouping, register_prox

__all__ = ["group_lasso_penalty", "prox_group_lasso"]

_NEWTON_ITERS = {torch.float32: 12, torch.float64: 20}


def _groups(y: Tensor, group_size: int | None, dim: int):
    if y.dim() == 0:
        raise ValueError("y is a 0-d tensor; group lasso needs a dimension to group along (pass y.reshape(1))")
    if not -y.dim() <= dim < y.dim():
        raise ValueError(f"dim={dim} is out of range for y of shape {tuple(y.shape)}")
    size = y.shape[dim] if group_size is None else group_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"group_size must be a positive integer or None, got {group_size!r}")
    return size, group_view(y, size, dim, name="y")


def group_lasso_penalty(w: Tensor, group_size: int | None = None, dim: int = -1) -> Tensor:
    r"""``R(w) = Σ_g sqrt(|g|) · ‖w_g‖₂`` over groups of ``group_size`` consecutive entries along ``dim``
    (``None``: the whole of ``dim``, i.e. one group per row/column). The ``sqrt(|g|)`` factor makes λ
    comparable across group sizes.

    Examples:
        >>> import torch
        >>> group_lasso_penalty(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))   # sqrt(2)·5
        tensor(7.0711)
    """
    check_float(w, "w")
    size, (g, _) = _groups(w, group_size, dim)
    return (math.sqrt(size) * torch.linalg.vector_norm(g.to(compute_dtype(w.dtype)), dim=-1).sum()).to(w.dtype)


@register_prox("group_lasso", check=check_group_lasso_args, grouping=group_lasso_grouping)
def prox_group_lasso(y: Tensor, lam, step=1.0, group_size: int | None = None, dim: int = -1) -> Tensor:
    r"""Block soft thresholding: ``argmin_w ½ Σ (w − y)² / s + lam · Σ_g sqrt(|g|) ‖w_g‖₂``.

    With ``κ = lam · sqrt(|g|)`` and a scalar step ``s``: ``w_g = max(0, 1 − κ s / ‖y_g‖) · y_g``.
    With a tensor step (diagonal metric): ``w_g = 0`` if ``‖y_g / s_g‖ ≤ κ``, else
    ``w_i = y_i ρ / (ρ + s_i κ)`` where ``ρ = ‖w_g‖ > 0`` solves the secular equation
    ``φ(ρ) = 1 / ‖(y_i / (ρ + s_i κ))_i‖ = 1``. φ is increasing and concave (as in Moré–Sorensen's
    trust-region solver), so Newton's method started left of the root, at the lower bound
    ``ρ₀ = max(0, ‖y_g‖ − κ max s)``, climbs monotonically to it without overshooting; φ is nearly linear
    (exactly linear for one nonzero), so a fixed number of iterations reaches machine precision.

    Zero steps (``step >= 0``): a zero step means "not moved": a group holding a zero ``s_i`` is returned
    unchanged, bit for bit, and a scalar step 0 returns ``y``.

    Args:
        y: float tensor (at least 1-d).
        lam: λ ≥ 0 (float or one-element tensor).
        step: ``s``: a scalar >= 0 or a tensor >= 0 shaped like ``y`` (a diagonal metric).
        group_size: consecutive entries per group along ``dim``; ``None`` = the whole dim (rows/columns).
        dim: the dimension the groups run along (default: the last).

    Examples:
        >>> import torch
        >>> prox_group_lasso(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), lam=1.0)   # κ = sqrt(2)
        tensor([[2.1515, 2.8686],
                [0.0000, 0.0000]])
    """
    check_float(y, "y")
    lam = check_lam(lam)
    size, (g, restore) = _groups(y, group_size, dim)
    if not isinstance(lam, Tensor) and lam == 0:
        group_step(step, y, size, dim, compute_dtype(y.dtype))  # (validated all the same)
        return y.clone()
    dtype = compute_dtype(y.dtype)
    s = group_step(step, y, size, dim, dtype)
    if isinstance(s, float) and s == 0:
        return y.clone()
    g = g.to(dtype)
    kappa = lam * math.sqrt(size)
    if isinstance(s, Tensor) and s.dim() > 0:
        sk = (s * kappa).clamp_min(torch.finfo(dtype).tiny)
        active = torch.linalg.vector_norm(g / sk, dim=-1, keepdim=True) > 1
        ynorm = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        rho = (ynorm - sk.amax(-1, keepdim=True)).clamp_min(0)
        for _ in range(_NEWTON_ITERS[dtype]):
            d = rho + sk
            q2 = (g / d).square()
            ss = q2.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
            phi = ss.rsqrt()
            dphi = phi / ss * (q2 / d).sum(-1, keepdim=True)
            rho = torch.where(active, (rho - (phi - 1) / dphi.clamp_min(torch.finfo(dtype).tiny)).clamp_min(rho), rho)
        w = torch.where(active, g * (rho / (rho + s * kappa)), torch.zeros_like(g))  # (g·rho underflows for subnormal g)
        w = torch.where((s == 0).any(-1, keepdim=True), g, w)
    else:
        norm = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        shrink = (1 - kappa * s / norm.clamp_min(torch.finfo(dtype).tiny)).clamp_min(0)
        w = g * shrink
        if isinstance(s, Tensor):  # a 0-d step: 0 leaves every group as it is
            w = torch.where(s == 0, g, w)
    return restore(w).to(y.dtype)


prox_group_lasso.zero_step_still = True  # a zero step leaves its entry (group) unchanged (see registry)
