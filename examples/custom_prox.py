"""Write your own proximal operator, register it, and use it from ProxAdam by name.

    python examples/custom_prox.py --quick     # a second or two
    python examples/custom_prox.py

The operator here is the prox of the L0 "norm" (the number of nonzeros), hard thresholding:

    prox_{λ‖·‖₀}(y; s) = argmin_w ½ Σ (w − y)² / s + λ ‖w‖₀,   solved entrywise:  w_i = y_i if y_i² > 2 λ s_i else 0

(keeping y_i costs λ, zeroing it costs y_i² / (2 s_i)). The contract every registered operator follows
(``torchprox.prox.registry``): ``fn(y, lam, *, step=1.0, **prox_kwargs) -> Tensor``, out of place, ``step`` a
scalar or a tensor shaped like ``y`` (ProxAdam's ``metric="adam"`` passes Adam's diagonal metric
``lr / (sqrt(v̂) + eps)``). An optional in-place twin, attached as ``fn.inplace``, lets ProxAdam update the
parameter without a copy. The script checks the operator against a brute-force minimisation, then trains a
linear model whose true weights are sparse with ``ProxAdam(..., prox="l0_hard")``.
"""
from __future__ import annotations

import argparse

import torch

from torchprox import ProxAdam
from torchprox.prox import available_prox, get_prox, register_prox


@register_prox("l0_hard", overwrite=True)  # overwrite: re-running the script in one session is fine
def prox_l0(y: torch.Tensor, lam: float, *, step=1.0, min_keep: int = 0) -> torch.Tensor:
    """Hard thresholding: keep y_i where y_i² > 2·lam·step_i. ``min_keep`` is an example of a prox_kwarg:
    rows keep at least their ``min_keep`` largest entries (0: no floor)."""
    keep = y.square() > 2 * lam * step
    if min_keep > 0:
        top = y.abs().topk(min_keep, dim=-1).indices
        keep = keep.scatter(-1, top, True)
    return y * keep


def _prox_l0_(y: torch.Tensor, lam: float, *, step=1.0, min_keep: int = 0) -> torch.Tensor:
    return y.copy_(prox_l0(y, lam, step=step, min_keep=min_keep))


prox_l0.inplace = _prox_l0_   # optional in-place twin (same signature; updates y and returns it)


def check_against_brute_force(lam: float = 0.3) -> float:
    """The prox is separable, so each entry can be checked by minimising over a fine grid (plus w = 0)."""
    y = torch.linspace(-2, 2, 41, dtype=torch.float64)
    step = torch.rand(41, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    w = get_prox("l0_hard")(y, lam, step=step)
    grid = torch.cat([torch.zeros(1, dtype=torch.float64), torch.linspace(-3, 3, 60001, dtype=torch.float64)])
    objective = 0.5 * (grid[None, :] - y[:, None]) ** 2 / step[:, None] + lam * (grid[None, :] != 0)
    best = objective.min(dim=1).values
    ours = 0.5 * (w - y) ** 2 / step + lam * (w != 0)
    return float((ours - best).max())   # ≤ 0 up to the grid resolution: ours is the minimiser


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        torch.set_num_threads(1)
    print(f"registered operators: {available_prox()}")
    gap = check_against_brute_force()
    print(f"objective(ours) − min over a grid: {gap:.2e} (≤ ~1e-8: the exact minimiser)")

    g = torch.Generator().manual_seed(0)
    true_w = torch.zeros(1, 64)
    true_w[0, torch.randperm(64, generator=g)[:8]] = 2 * torch.randn(8, generator=g)   # 8 of 64 nonzero
    x = torch.randn(4096, 64, generator=g)
    y = x @ true_w.T + 0.05 * torch.randn(4096, 1, generator=g)
    model = torch.nn.Linear(64, 1, bias=False)
    # By name, with a per-group λ and prox_kwargs; metric="adam" would pass Adam's diagonal step instead.
    opt = ProxAdam([{"params": [model.weight], "prox": "l0_hard", "lam": 5e-4, "prox_kwargs": {"min_keep": 1}}],
                   lr=5e-2)
    steps = 300 if args.quick else 1000
    # λ small enough that an Adam step (~lr) can cross the threshold sqrt(2λ): a weight zeroed early can come
    # back; the decaying lr then lets the noise weights settle below it.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        idx = torch.randint(0, len(x), (256,), generator=g)
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    support = set((model.weight[0] != 0).nonzero().flatten().tolist())
    truth = set((true_w[0] != 0).nonzero().flatten().tolist())
    print(f"after {steps} steps: loss {loss.item():.4f}, {len(support)} nonzero weights of 64; "
          f"true support recovered: {support == truth}")
    state = opt.state_dict()   # plain strings and numbers: loads with weights_only=True
    print(f"param group saved as: prox={state['param_groups'][0]['prox']!r}, "
          f"prox_kwargs={state['param_groups'][0]['prox_kwargs']}")
    return 0 if gap < 1e-6 and support == truth else 1


if __name__ == "__main__":
    raise SystemExit(main())
