"""Slow, obviously-correct references for the prox tests (float64, brute force over supports)."""
import itertools

import torch


def esym(x: torch.Tensor, k: int) -> torch.Tensor:
    """e_k over the last dim of x (..., m), by explicit enumeration of subsets."""
    m = x.shape[-1]
    out = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for c in itertools.combinations(range(m), k):
        out = out + x[..., list(c)].prod(-1)
    return out


def esym_dp(x: torch.Tensor, k: int) -> torch.Tensor:
    """e_k over the last dim of x (..., m) by the recurrence e_r(x_1..x_j) = e_r(x_1..x_{j-1}) + x_j e_{r-1}(...)."""
    e = [torch.ones(x.shape[:-1], dtype=x.dtype)] + [torch.zeros(x.shape[:-1], dtype=x.dtype)] * k
    for j in range(x.shape[-1]):
        for r in range(k, 0, -1):
            e[r] = e[r] + x[..., j] * e[r - 1]
    return e[k]


def nm_objective(w, y, lam, n, step=1.0):
    """½ Σ (w − y)²/s + λ e_{n+1}(|w|) per group (rows of (G, m) tensors)."""
    return 0.5 * ((w - y).square() / step).sum(-1) + lam * esym(w.abs(), n + 1)


def brute_prox_nm(y, lam, n, step=None, starts=12, sweeps=400, seed=0):
    """Global minimum value per row of y (G, m): every support, many random starts, long coordinate descent."""
    gen = torch.Generator().manual_seed(seed)
    G, m = y.shape
    a = y.abs().double()
    s = torch.ones_like(a) if step is None else step.double().expand_as(a)
    best = torch.full((G,), float("inf"), dtype=torch.float64)
    for k in range(0, m + 1):
        for support in itertools.combinations(range(m), k):
            idx = list(support)
            starts_k = 1 if k <= n else starts
            for _ in range(starts_k):
                x = torch.zeros_like(a)
                if k:
                    x[:, idx] = a[:, idx] * (torch.rand(G, k, generator=gen, dtype=torch.float64) if k > n else 1.0)
                if k > n:
                    for _ in range(sweeps):
                        for i in idx:
                            others = [j for j in idx if j != i]
                            c = esym_dp(x[:, others], n)
                            x[:, i] = (a[:, i] - s[:, i] * lam * c).clamp_min(0)
                best = torch.minimum(best, nm_objective(x, a, lam, n, s))
    return best
