r"""N:M sparsity: the ProxSparse regularizer, its exact proximal operator, and hard N:M projection.

A group is ``m`` consecutive entries along ``dim``; N:M means at most ``n`` nonzeros in every group.

The regularizer (ProxSparse, arXiv 2502.00258) is, per group ``w ∈ R^m``,

    R(w) = e_{n+1}(|w|) = Σ_{S ⊂ [m], |S| = n+1} Π_{i ∈ S} |w_i|,

the elementary symmetric polynomial of degree n+1 of the magnitudes. ``R(w) ≥ 0`` and ``R(w) = 0`` exactly
when the group has at most ``n`` nonzeros. For 2:4 it is the sum of all triple products ``|w_i w_j w_k|``.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import Tensor

from . import _native
from ._groups import check_float, check_lam, check_nm, check_step, compute_dtype, group_step, group_view
from .registry import check_nm_args, nm_grouping, register_prox

__all__ = ["nm_penalty", "prox_nm", "prox_nm_", "project_nm", "project_nm_", "nm_mask", "check_metric_pattern"]

# The fused kernels' iterations, the one definition both read (_native passes it to the C++ compiler as -D
# defines; _triton's generator writes it into the kernel source): at most `newton` Newton iterations for an
# (n+1)-support and `sweeps` coordinate-descent sweeps for a larger one; a group's iterate has converged once a
# step moves it by at most `tol` (CPU) or `triton_tol` (Triton), on values scaled into [0, 1). Triton's
# tolerance is 10x (fp32) / 100x (fp64) looser: it was set when the Triton kernel stopped a whole block at once
# (every group waited for the slowest one) and has not been re-measured since groups stop on their own; equal
# values need a GPU run of benchmarks/bench_prox.py and tests/prox/test_triton.py (which compares the two
# kernels at 1e-5 in fp32) to confirm the cost.
_KERNEL_ITERATIONS = {
    torch.float32: {"newton": 40, "sweeps": 60, "tol": 1e-6, "triton_tol": 1e-5},
    torch.float64: {"newton": 80, "sweeps": 200, "tol": 1e-12, "triton_tol": 1e-10},
}
# The plain-torch path's Newton iterations and coordinate-descent sweeps: fixed counts, with no convergence
# test, so that its work never depends on the data or on λ (no host sync, no data-dependent loop).
_NEWTON_ITERS = {torch.float32: 24, torch.float64: 48}
_CD_SWEEPS = {torch.float32: 24, torch.float64: 48}


def _esym(cols: Sequence[Tensor], k: int) -> Tensor:
    """e_k(cols): the elementary symmetric polynomial of degree k of the columns (each shaped (G,))."""
    if k > len(cols):
        return torch.zeros_like(cols[0])
    e = [torch.ones_like(cols[0])] + [torch.zeros_like(cols[0]) for _ in range(k)]
    for j, c in enumerate(cols):
        for r in range(min(j + 1, k), 0, -1):
            e[r] = torch.addcmul(e[r], c, e[r - 1])
    return e[k]


def nm_penalty(w: Tensor, n: int = 2, m: int = 4, dim: int = -1) -> Tensor:
    r"""R(w) = Σ_groups e_{n+1}(|w_group|): zero iff every group of ``m`` along ``dim`` has ≤ ``n`` nonzeros.

    Args:
        w: any float tensor whose size along ``dim`` is a multiple of ``m``.
        n: nonzeros kept per group (``0 < n < m``).
        m: the group size: ``m`` consecutive entries along ``dim``.
        dim: the dimension the groups run along (default: the last; for ``nn.Linear.weight``, 1).
    Returns:
        a 0-d tensor (float64 for float64 input, else float32 cast back to ``w.dtype``).

    Examples:
        >>> import torch
        >>> nm_penalty(torch.tensor([1.0, 2.0, 3.0, 0.0]))      # 2:4 → |1·2·3|
        tensor(6.)
    """
    check_nm(n, m)
    check_float(w, "w")
    g, _ = group_view(w, m, dim, name="w")
    a = g.to(compute_dtype(w.dtype)).abs()
    return _esym(a.unbind(-1), n + 1).sum().to(w.dtype)


def _ranks(scores: Tensor) -> Tensor:
    """Rank of each entry of every row of ``scores`` (G, m), largest first; ties → the lower index first; NaN
    ranks below every number (-inf included), NaNs among themselves by index."""
    nan = scores.isnan()
    order = torch.sort(scores.masked_fill(nan, float("-inf")), dim=-1, descending=True, stable=True).indices
    order = order.gather(-1, torch.sort(nan.gather(-1, order).to(torch.uint8), dim=-1, stable=True).indices)
    ranks = torch.empty_like(order)
    ar = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return ranks.scatter_(-1, order, ar)


def nm_mask(scores: Tensor, n: int = 2, m: int = 4, dim: int = -1) -> Tensor:
    r"""Boolean mask keeping the top-``n`` ``scores`` of every group of ``m`` along ``dim``.

    Exactly ``n`` entries per group are kept, whatever the scores: among equal scores the lower index wins,
    so the mask is reproducible bit for bit; a NaN score ranks below every number (-inf included), so a NaN
    is kept only when its group has fewer than ``n`` numbers (then the NaNs of lower index); +inf ranks above
    every finite score. The fused CPU kernel and the plain-torch path give the same mask.

    Args:
        scores: float tensor; its size along ``dim`` must be a multiple of ``m``.
        n: nonzeros kept per group (``0 < n < m``).
        m: the group size: ``m`` consecutive entries along ``dim``.
        dim: the dimension the groups run along (default: the last; for ``nn.Linear.weight``, 1).
    Returns:
        a bool tensor shaped like ``scores``.

    Examples:
        >>> import torch
        >>> nm_mask(torch.tensor([[3.0, 1.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0]]))
        tensor([[ True, False,  True, False],
                [ True,  True, False, False]])
    """
    check_nm(n, m)
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    g, restore = group_view(scores, m, dim, name="scores")
    if not g.is_floating_point():
        g = g.double()
    elif g.dtype not in (torch.float32, torch.float64):
        g = g.float()  # bf16/fp16 → float32 is exact: same ranks
    if _native.usable(g, m):
        return restore(_native.nm_mask_cpu(g, n, m))
    return restore(_ranks(g) < n)


def project_nm(y: Tensor, n: int = 2, m: int = 4, step=None, dim: int = -1) -> Tensor:
    r"""Hard N:M projection: ``argmin_w ½ Σ (w − y)² / s`` subject to every group having ≤ n nonzeros.

    The solution keeps, in each group, the ``n`` entries with the largest ``y² / s`` (``|y|`` when ``step`` is
    None or a scalar) bit for bit and zeroes the rest; ties keep the lower index. Non-finite values are ranked
    as by [`nm_mask`][torchprox.prox.nm.nm_mask] (an infinity above every finite value, a NaN below every number), so the result is
    N:M whatever ``y`` holds: a NaN survives only in a group with fewer than ``n`` non-NaN values. ``step``,
    when a tensor, must be finite and >= 0 (broadcastable to ``y``); a group holding a zero step is returned
    unchanged (a zero step means "not moved"), and a scalar step 0 returns ``y`` unchanged.

    Args:
        y: float tensor; its size along ``dim`` must be a multiple of ``m``.
        n: nonzeros kept per group (``0 < n < m``).
        m: the group size: ``m`` consecutive entries along ``dim``.
        dim: the dimension the groups run along (default: the last; for ``nn.Linear.weight``, 1).
        step: None or a scalar (rank by ``|y|``), or a tensor >= 0 (rank by ``y² / s``).

    Examples:
        >>> import torch
        >>> project_nm(torch.tensor([0.5, -2.0, 1.0, 1.0]))    # the tie 1.0 = 1.0 keeps the lower index
        tensor([ 0., -2.,  1.,  0.])
        >>> project_nm(torch.randn(8, 16), 2, 4, dim=1).ne(0).view(8, 4, 4).sum(-1).max()   # (out, in) rows
        tensor(2)
    """
    check_nm(n, m)
    check_float(y, "y")
    if step is not None:
        step = check_step(step, y)
    if isinstance(step, float) and step == 0:
        return y.clone()
    if isinstance(step, Tensor) and step.dim() > 0:
        s = step.expand(y.shape) if step.shape != y.shape else step
        scores = y.to(compute_dtype(y.dtype)).square() / s.to(compute_dtype(y.dtype))
        return y.masked_fill(~(nm_mask(scores, n, m, dim) | _still(s, m, dim)), 0)
    if m == 4 and y.dtype in (torch.float32, torch.float64):  # the fused CPU kernel: one pass
        g, restore = group_view(y, m, dim, name="y")
        if _native.usable(g, m):
            out = restore(_native.project_nm4_cpu(g, n))
            return torch.where(step == 0, y, out) if isinstance(step, Tensor) else out
    drop = ~nm_mask(y.abs(), n, m, dim)
    if isinstance(step, Tensor):  # a 0-d step: 0 keeps everything
        drop &= step != 0
    return y.masked_fill(drop, 0)  # (not y * mask: a dropped inf or NaN gives NaN)


def _still(step: Tensor, m: int, dim: int) -> Tensor:
    """Where the prox leaves ``y`` as it is for a step tensor shaped like ``y``: a bool tensor of that shape,
    True in every group of ``m`` along ``dim`` that holds a zero step."""
    g, restore = group_view(step, m, dim, name="step")
    return restore((g == 0).any(-1, keepdim=True).expand(g.shape))


def project_nm_(y: Tensor, n: int = 2, m: int = 4, step=None, dim: int = -1) -> Tensor:
    """In-place [`project_nm`][torchprox.prox.nm.project_nm]: ``y`` is overwritten with its N:M projection and returned.

    Examples:
        >>> import torch
        >>> y = torch.tensor([[0.5, -2.0, 1.0, 3.0]])
        >>> project_nm_(y) is y, y
        (True, tensor([[ 0., -2.,  0.,  3.]]))
    """
    check_nm(n, m)
    check_float(y, "y")
    if step is not None:
        step = check_step(step, y)
    metric = isinstance(step, Tensor) and step.dim() > 0
    drop = ~nm_mask(y.square() / step if metric else y.abs(), n, m, dim)
    if metric:
        drop &= ~_still(step.expand(y.shape), m, dim)
    elif step is not None:
        drop &= step != 0  # a scalar step 0 keeps everything
    return y.masked_fill_(drop, 0)


def _solve_product(b: Sequence[Tensor], lam) -> list[Tensor]:
    r"""Interior minimizer of ``½ Σ_i (u_i − b_i)² + lam · Π_i u_i`` over ``u > 0`` (k = n+1 coordinates).

    ``b`` are columns sorted so that ``b_0 ≥ … ≥ b_{k−1} ≥ 0``. Stationarity reads ``u_i (b_i − u_i) = t``
    for every i with ``t = lam · Π u``. Parametrise by the smallest coordinate ``z = u_{k−1} ∈ [0, b_{k−1}]``,
    so ``t = z (b_{k−1} − z)`` and, for i < k−1, ``u_i(z) = (b_i + r_i)/2`` with
    ``r_i = sqrt((2z − b_{k−1})² + b_i² − b_{k−1}²)`` (the larger root: a smaller u_i than u_{k−1} would
    contradict the ordering of the minimizer). Every ``u_i(z)`` is a positive convex function of z, symmetric
    about ``b_{k−1}/2`` (the norm of an affine map), so their product and

        ψ(z) = lam · Π_{i<k−1} u_i(z) + z − b_{k−1}

    are convex, and interior stationary points are exactly the roots of ψ in (0, b_{k−1}). ψ(b_{k−1}) ≥ 0;
    the local minimum is the largest root (ψ crosses from − to +; a smaller root is a saddle). Newton's
    method started at ``z = b_{k−1}`` on a convex function never overshoots that root and converges to it
    monotonically; when ψ has no root it is driven to (or stops at a non-increasing point mapped to) z = 0,
    the boundary, which the caller covers with the n-sparse candidate.
    """
    bk = b[-1]
    gaps = [(bi * bi - bk * bk).clamp_min(0) for bi in b[:-1]]
    z = bk
    tiny = torch.finfo(bk.dtype).tiny
    for _ in range(_NEWTON_ITERS[bk.dtype]):
        d = 2 * z - bk
        d2 = d * d
        prod = None
        dlog = torch.zeros_like(z)
        for bi, gi in zip(b[:-1], gaps):
            ri = (d2 + gi).sqrt()
            ui = (bi + ri) * 0.5
            prod = ui if prod is None else prod * ui
            dlog = dlog + d / (ri * ui).clamp_min(tiny)
        psi = lam * prod + z - bk
        dpsi = 1 + lam * prod * dlog
        # dpsi <= 0 with psi > 0 means no root to the left (convexity): go to the boundary z = 0.
        z = torch.where(dpsi > 0, z - psi / dpsi.clamp_min(tiny), torch.zeros_like(z))
        z = torch.minimum(z.clamp_min(0), bk)
    d2 = (2 * z - bk).square()
    return [(bi + (d2 + gi).sqrt()) * 0.5 for bi, gi in zip(b[:-1], gaps)] + [z]


def _coordinate_descent(a: Sequence[Tensor], s, lam, n: int, x0: Sequence[Tensor] | None = None) -> list[Tensor]:
    r"""Exact coordinate descent for ``½ Σ (x_i − a_i)²/s_i + lam e_{n+1}(x)`` over ``x ≥ 0`` from ``x0``
    (default ``a``), sweeping from the last coordinate to the first.

    The objective is a convex quadratic in each coordinate (R is multilinear), so each update
    ``x_i ← max(0, a_i − s_i · lam · e_n(x_{−i}))`` is an exact coordinate minimization; the sweeps decrease
    the objective monotonically.
    """
    x = list(a if x0 is None else x0)
    si = s if isinstance(s, (list, tuple)) else [s] * len(a)
    for _ in range(_CD_SWEEPS[a[0].dtype]):
        for i in reversed(range(len(x))):
            coupling = _esym(x[:i] + x[i + 1 :], n)
            x[i] = (a[i] - (si[i] * lam) * coupling).clamp_min(0)
    return x


def _objective(x: Sequence[Tensor], a: Sequence[Tensor], s, lam, n: int) -> Tensor:
    """½ Σ (x − a)²/s + lam e_{n+1}(x) per group (columns in, (G,) out)."""
    si = s if isinstance(s, (list, tuple)) else [s] * len(a)
    quad = sum(((xi - ai).square() / sj for xi, ai, sj in zip(x, a, si)))
    return 0.5 * quad + lam * _esym(x, n + 1)


def _keep_best(best: list[Tensor], best_f: Tensor, cand: list[Tensor], cand_f: Tensor):
    better = cand_f < best_f
    return [torch.where(better, c, b) for c, b in zip(cand, best)], torch.where(better, cand_f, best_f)


def _prox_sorted(b: Tensor, lam, n: int) -> Tensor:
    """Global minimizer of ½ Σ (x − b)² + lam e_{n+1}(x), x ≥ 0, for rows of b sorted descending."""
    m = b.shape[-1]
    cols = list(b.unbind(-1))
    zero = torch.zeros_like(cols[0])
    best = cols[:n] + [zero] * (m - n)  # the n-sparse candidate: R = 0
    best_f = 0.5 * sum(c.square() for c in cols[n:])
    # Support of size n+1: solved exactly (see _solve_product).
    cand = _solve_product(cols[: n + 1], lam) + [zero] * (m - n - 1)
    best, best_f = _keep_best(best, best_f, cand, _objective(cand, cols, 1.0, lam, n))
    # Larger supports (top-k, k > n+1): coordinate descent from x = a and, growing the support, from the
    # previous support's solution with the new coordinate entering at zero.
    grown = cand
    for k in range(n + 2, m + 1):
        for x0 in (cols[:k], grown[:k]):
            cand = _coordinate_descent(cols[:k], 1.0, lam, n, x0) + [zero] * (m - k)
            best, best_f = _keep_best(best, best_f, cand, _objective(cand, cols, 1.0, lam, n))
        grown = cand
    return torch.stack(best, -1)


def _prox_metric(a: Tensor, s: Tensor, lam, n: int) -> Tensor:
    """Global minimizer of ½ Σ (x − a)²/s + lam e_{n+1}(x), x ≥ 0, with a per-entry step s (G, m)."""
    m = a.shape[-1]
    cols, scol = list(a.unbind(-1)), list(s.unbind(-1))
    zero = torch.zeros_like(cols[0])
    keep = _ranks(a.square() / s) < n
    best = list((a * keep).unbind(-1))
    best_f = _objective(best, cols, scol, lam, n)
    c = s.sqrt()
    for support in itertools.combinations(range(m), n + 1):
        # x_i = c_i u_i turns the weighted problem on this support into the unweighted one with
        # b_i = a_i / c_i and lam · Π c_i.
        idx = list(support)
        bs = a[:, idx] / c[:, idx]
        order = torch.sort(bs, dim=-1, descending=True, stable=True).indices
        bsorted = bs.gather(-1, order)
        lam_s = lam * c[:, idx].prod(-1)
        u = torch.stack(_solve_product(list(bsorted.unbind(-1)), lam_s), -1)
        xs = torch.empty_like(u).scatter_(-1, order, u) * c[:, idx]
        cand = [zero] * m
        for j, i in enumerate(idx):
            cand[i] = torch.minimum(xs[:, j], cols[i])
        best, best_f = _keep_best(best, best_f, cand, _objective(cand, cols, scol, lam, n))
    for k in range(n + 2, m + 1):
        for support in itertools.combinations(range(m), k):
            idx = list(support)
            x = _coordinate_descent([cols[i] for i in idx], [scol[i] for i in idx], lam, n)
            cand = [zero] * m
            for j, i in enumerate(idx):
                cand[i] = x[j]
            best, best_f = _keep_best(best, best_f, cand, _objective(cand, cols, scol, lam, n))
    return torch.stack(best, -1)


@register_prox("nm", check=check_nm_args, grouping=nm_grouping)
def prox_nm(y: Tensor, lam, n: int = 2, m: int = 4, step=1.0, dim: int = -1) -> Tensor:
    r"""Proximal operator of ``lam · R`` (see [`nm_penalty`][torchprox.prox.nm.nm_penalty]): for every group of ``m`` along ``dim``,

        prox(y) = argmin_w ½ Σ_i (w_i − y_i)² / s_i + lam · e_{n+1}(|w|),

    returned as the **exact global minimizer** (the objective is non-convex; coordinate descent from one
    start can stop at a worse stationary point).

    Algorithm (fixed work, vectorized over groups, no host sync):

    1. Signs separate: the minimizer has ``sign(w_i) = sign(y_i)`` and ``0 ≤ |w_i| ≤ |y_i|``, so we solve for
       ``x = |w|`` given ``a = |y|``. A scalar step folds into ``lam · s``. Each group is scaled by a power of
       two to max |a| ∈ [0.5, 1) (exact; R is homogeneous of degree n+1), so huge and tiny values are safe.
    2. The minimizer's support is enumerated. With a scalar step it is a top-k set of ``a`` (swapping two
       coordinates leaves R unchanged, so the quadratic term orders x like a), so the candidates are
       top-n (R = 0: keep them as they are), top-(n+1) and each larger top-k. With a tensor step (a diagonal
       metric) every support of size ≥ n+1 is a candidate.
    3. On a support of size n+1, R is a single product and the interior minimizer is the largest root of a
       convex scalar function, reached by monotone Newton iterations (see ``_solve_product``): exact to
       machine precision. On larger supports (for 2:4: the dense one) exact coordinate descent from
       ``x = a`` is used: there the penalty is small compared with the quadratic (a dense minimizer only wins
       when lam·|a|² is small), the problem is close to convex and the sweeps converge.
    4. The candidate with the smallest objective is returned; ties prefer the sparser candidate.

    Resolution: each group is solved scaled to max |y| ∈ [0.5, 1); a value that underflows there (below
    about 2^-149 (float32) or 2^-1074 (float64) times the group's largest magnitude) is solved, and returned,
    as 0, in every path.

    Non-finite input: a group holding a NaN or an infinity is returned unchanged (its finite entries are not
    turned into NaN, and the other groups are unaffected), in every path (fused CPU kernel, Triton, plain
    torch). ``lam`` and ``step`` must be finite, ``lam >= 0`` and ``step >= 0``: numbers and CPU tensors are
    checked at once (``ValueError``), tensors on an accelerator without a host sync (``torch._assert_async``).

    Zero steps: ``s_i = 0`` means "not moved by the prox"; the groups are coupled, so a group holding a zero
    step is returned unchanged, bit for bit, and the other groups are exactly as without it, in every path; a
    scalar step 0 (as ``lam = 0``) returns ``y`` unchanged.

    Patterns served: with a scalar step every ``0 < n < m`` (the fused CPU kernel up to m = 32, Triton up to
    m = 8, plain torch beyond). With a tensor step (a diagonal metric) m = 4 is served by the fused kernels,
    other m by the plain-torch enumeration of supports, only where that is cheap (see
    `check_metric_pattern`); other patterns raise ``ValueError`` instead of running for hours.

    Args:
        y: float tensor; its size along ``dim`` must be a multiple of ``m``.
        lam: λ ≥ 0 (float or 0-d tensor).
        n: nonzeros kept per group (``0 < n < m``).
        m: the group size: ``m`` consecutive entries along ``dim``.
        dim: the dimension the groups run along (default: the last; for ``nn.Linear.weight``, 1).
        step: ``s``: a scalar >= 0 (plain prox) or a tensor >= 0 shaped like ``y`` (diagonal metric).
    Returns:
        a tensor like ``y``. bfloat16/float16 inputs are computed in float32 and rounded once at the end.

    Examples:
        >>> import torch
        >>> prox_nm(torch.tensor([1.0, 0.98, 0.96, 0.94]), lam=1.1)
        tensor([0.6490, 0.6009, 0.5310, 0.0000])
    """
    check_nm(n, m)
    check_float(y, "y")
    lam = check_lam(lam)
    if not isinstance(lam, Tensor) and lam == 0:
        return y.clone()
    dtype = compute_dtype(y.dtype)
    g, restore = group_view(y, m, dim, name="y")
    s = group_step(step, y, m, dim, dtype)
    if isinstance(s, float) and s == 0:
        return y.clone()
    g = g.to(dtype)
    metric = isinstance(s, Tensor) and s.dim() > 0
    metric_kernel = metric and m == 4 and n < 4  # the fused kernels' diagonal-metric prox covers m = 4
    if metric and _native_metric(g, lam, s, n, m):
        return restore(_native.prox_nm_metric_cpu(g, s.detach().to(g.dtype), _f64(lam), n).to(y.dtype))
    if not metric and _native_scalar(g, lam, s, m):  # the fused CPU kernel: same algorithm, one pass
        return restore(_native.prox_nm_cpu(g, _f64(lam * s), n, m).to(y.dtype))
    # The Triton module is imported here, not at the top, so that `python -m torchprox.prox._triton --dump` runs it
    # fresh (runpy warns about a module its package already imported); after the first call this is a dict lookup.
    from . import _triton

    if not metric and _triton.serves(g, lam, s, m):  # the fused Triton kernel (CUDA): λ read on the device
        return restore(_triton.prox_nm_triton(g, lam * s, n, m).to(y.dtype))
    if metric_kernel and _triton.serves(g, lam, 1.0, m) and _triton.usable(s, m):
        return restore(_triton.prox_nm_metric_triton(g, s, lam, n).to(y.dtype))
    if metric:
        check_metric_pattern(n, m)
    # A group holding a NaN or an infinity, or a zero step, is returned as it is (solved as zeros with unit
    # steps, then put back); lam s = 0 leaves every group as it is.
    moved = torch.isfinite(g).all(-1, keepdim=True)
    if metric:
        moved = moved & (s != 0).all(-1, keepdim=True)
        s = torch.where(moved, s, 1)
    else:
        moved = moved & (lam * s != 0)
    gf = torch.where(moved, g, 0)
    # Homogeneity, prox_λ(c·y) = c·prox_{c^(n-1)·λ}(y): solve every group scaled to max |y| ∈ [0.5, 1) by an
    # exact power of two, so huge and tiny inputs neither overflow nor underflow and kept values stay exact.
    scale = torch.ldexp(torch.ones_like(gf[:, :1]), torch.frexp(gf.abs().amax(-1, keepdim=True))[1])
    a = gf.abs() / scale
    lam_g = lam * scale[:, 0] ** (n - 1) if n != 1 else lam
    if metric:
        x = _prox_metric(a, s, lam_g, n)
    else:
        order = torch.sort(a, dim=-1, descending=True, stable=True)
        xs = _prox_sorted(order.values, lam_g * s, n)
        x = torch.empty_like(xs).scatter_(-1, order.indices, xs)
    return restore(torch.where(moved, torch.copysign(x * scale, g), g).to(y.dtype))


def _metric_work(n: int, m: int) -> int:
    """Operations per group and iteration of [`_prox_metric`][torchprox.prox.nm._prox_metric] for n:m: a Newton step (about 8n
    operations) on each of the C(m, n+1) supports of size n+1, and a coordinate-descent sweep (k coordinates,
    each an e_n of k − 1 values: k (k − 1) n operations) on each of the C(m, k) supports of size k > n + 1."""
    work = math.comb(m, n + 1) * 8 * n
    return work + sum(math.comb(m, k) * k * (k - 1) * n for k in range(n + 2, m + 1))


# What the plain-torch diagonal-metric prox serves: up to the work of the costliest m = 8 pattern (3:8, 8736
# operations per group and iteration): every pattern with m <= 8, and the few larger ones with as little work.
_METRIC_WORK_LIMIT = max(_metric_work(n, 8) for n in range(1, 8))
# What ProxAdam accepts for training (every step takes the prox of whole models): up to the costliest m = 6 pattern
# (2:6, 980; about 15 µs a group on one core). 4:8 needs 6720, about 0.2 ms a group: over an hour a step for a
# 135M-weight model.
_METRIC_TRAINING_LIMIT = max(_metric_work(n, 6) for n in range(1, 6))


def check_metric_pattern(n: int, m: int, *, training: bool = False) -> None:
    """Raise ``ValueError`` unless the pattern n:m is served with a tensor step (a diagonal metric, e.g.
    ProxAdam's ``metric="adam"``) in bounded time.

    m = 4 is served by the fused kernels (CPU and Triton, a few ns a weight). Any other m goes to the plain-torch
    solver, which enumerates every support of size > n (the minimizer's support under a diagonal metric need not
    be a top-k set): its work grows like 2^m (`_metric_work`). [`prox_nm`][torchprox.prox.nm.prox_nm] serves it up to the work of
    the costliest m = 8 pattern (3:8: every m <= 8 and e.g. 8:9, 14:16; 4:8 takes about 0.2 ms a group).
    ``training=True`` (what ProxAdam checks when a group is added, before any work: every step takes the prox
    of whole models) serves up to the costliest m = 6 pattern (2:6, about 15 µs a group): every m <= 6 and
    6:8, 7:8, 8:9, but not 4:8. Refused patterns name the fix: ``metric="identity"`` (a scalar step), which the
    fused kernel serves for every pattern in polynomial time.

    Examples:
        >>> check_metric_pattern(2, 4, training=True)
        >>> check_metric_pattern(4, 8)
        >>> check_metric_pattern(4, 8, training=True)
        Traceback (most recent call last):
            ...
        ValueError: the diagonal-metric N:M prox (a tensor step, e.g. metric='adam') cannot serve 4:8 in reasonable time for training (it enumerates supports: 6720 operations per group and iteration, limit 980); use metric='identity' (a scalar step) or a pattern with m = 4
    """
    check_nm(n, m)
    limit = _METRIC_TRAINING_LIMIT if training else _METRIC_WORK_LIMIT
    if m != 4 and _metric_work(n, m) > limit:
        raise ValueError(
            f"the diagonal-metric N:M prox (a tensor step, e.g. metric='adam') cannot serve {n}:{m} in "
            f"reasonable time{' for training' if training else ''} (it enumerates supports: {_metric_work(n, m)} "
            f"operations per group and iteration, limit {limit}); use metric='identity' (a scalar step) or a "
            "pattern with m = 4"
        )


def _f64(v) -> Tensor:
    """A Python number as a 0-d float64 CPU tensor for the fused kernels (a tensor as it is: no host sync)."""
    return v if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float64)


def _native_scalar(g: Tensor, lam, s, m: int) -> bool:
    """Whether the fused CPU kernel serves this call: CPU float32/float64 groups, scalar step, CPU λ."""
    scalars_on_cpu = all(
        not isinstance(v, Tensor) or (v.device.type == "cpu" and not (v.requires_grad and torch.is_grad_enabled()))
        for v in (lam, s)
    )
    return scalars_on_cpu and _native.usable(g, m)


def _native_metric(g: Tensor, lam, s: Tensor, n: int, m: int) -> bool:
    """Whether the fused CPU kernel's diagonal-metric prox serves this call: m = 4, n < 4, a CPU step tensor
    (read detached), and what [`_native_scalar`][torchprox.prox.nm._native_scalar] asks of the groups and λ."""
    return m == 4 and n < 4 and s.device.type == "cpu" and _native_scalar(g, lam, 1.0, m)


def prox_nm_(y: Tensor, lam, n: int = 2, m: int = 4, step=1.0, dim: int = -1) -> Tensor:
    """In-place [`prox_nm`][torchprox.prox.nm.prox_nm] (the fused CPU kernels write into ``y`` directly when its groups are a
    contiguous view of it, with a scalar step or, for m = 4, a contiguous step tensor shaped and typed like
    ``y``: no temporary). Same math and shapes as [`prox_nm`][torchprox.prox.nm.prox_nm]; returns ``y``.

    Examples:
        >>> import torch
        >>> y = torch.randn(4, 8, dtype=torch.float64)
        >>> expected = prox_nm(y, 0.5, 2, 4, dim=1)
        >>> prox_nm_(y, 0.5, 2, 4, dim=1) is y, torch.equal(y, expected)
        (True, True)
    """
    check_nm(n, m)
    check_float(y, "y")
    lam = check_lam(lam)
    step = check_step(step, y)
    fusable = y.dtype in (torch.float32, torch.float64) and y.is_contiguous()
    if fusable and not torch.compiler.is_compiling():  # (data_ptr is not traceable; compiled code copies)
        g, _ = group_view(y, m, dim, name="y")
        if g.data_ptr() == y.data_ptr() and g.is_contiguous():  # groups in memory order
            scalar = step if not isinstance(step, Tensor) else step.to(y.dtype) if step.dim() == 0 else None
            if scalar is not None and _native_scalar(g, lam, scalar, m):  # (a 0-d step as prox_nm takes it)
                _native.prox_nm_cpu_(g, _f64(lam * scalar), n, m)
                return y
            # A step laid out like y groups the same way (Adam's metric in ProxAdam: no output, no copy).
            like_y = isinstance(step, Tensor) and step.shape == y.shape and step.dtype == y.dtype
            if like_y and step.is_contiguous() and _native_metric(g, lam, step, n, m):
                _native.prox_nm_metric_cpu_(g, step.detach().view(g.shape), _f64(lam), n)
                return y
    return y.copy_(prox_nm(y, lam, n, m, step, dim))


prox_nm.inplace = prox_nm_  # ProxAdam updates parameters with the in-place twin when there is one
prox_nm.zero_step_still = True  # a zero step leaves its group unchanged (see registry)


@register_prox("nm_projection", check=check_nm_args, grouping=nm_grouping)
def _project_nm_prox(y: Tensor, lam=0.0, n: int = 2, m: int = 4, step=1.0, dim: int = -1) -> Tensor:
    """``project_nm`` as a registered prox (the prox of the N:M indicator; ``lam`` is ignored; a zero step
    leaves its group unchanged, as for [`project_nm`][torchprox.prox.nm.project_nm])."""
    return project_nm(y, n, m, step, dim)


_project_nm_prox.zero_step_still = True
