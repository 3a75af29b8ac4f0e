"""ProxAdam on a plain PyTorch model, in your own training loop.

    python examples/proxadam_plain.py --quick     # a few seconds: 150 steps on a small regression MLP
    python examples/proxadam_plain.py             # 1500 steps

No torchprox.prune here: ProxAdam is given the weight matrices directly, with ``prox="nm"`` and
``prox_kwargs={"n": 2, "m": 4, "dim": 1}`` (an ``nn.Linear`` weight is (out, in); 2:4 groups run along the
input dim 1). Every step is Adam's step followed by the exact prox of λ·R, R(w) = Σ_groups e_3(|w|), which
pushes each group of 4 towards at most 2 nonzeros. After training, the hard 2:4 projection makes the weights
exactly 2:4, and a short projected fine-tune (ProxAdam with the ``"nm_projection"`` prox: after every Adam step
the weights are projected back onto 2:4) recovers part of the loss.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from torchprox import ProxAdam
from torchprox.prox import nm_mask
from torchprox.prune import is_nm, nm_fraction


def make_data(n: int = 2048, d_in: int = 32, seed: int = 0):
    """A teacher whose first layer is itself 2:4, so a 2:4 student can fit it well."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(64, d_in, generator=g)
    teacher = teacher * nm_mask(teacher.abs(), 2, 4, dim=1)
    x = torch.randn(n, d_in, generator=g)
    y = torch.tanh(x @ teacher.T) @ torch.randn(64, 1, generator=g) / 8
    return x, y


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="150 steps (seconds)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lam", type=float, default=0.05, help="λ of the 2:4 regularizer")
    args = ap.parse_args(argv)
    if args.quick:
        torch.set_num_threads(1)
    steps = args.steps or (150 if args.quick else 1500)
    torch.manual_seed(0)
    x, y = make_data()
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 1))

    # 1. The param groups: the 2:4 prox on the first weight matrix (64, 32); biases and the head stay plain.
    nm_weights = [model[0].weight]
    rest = [p for p in model.parameters() if all(p is not w for w in nm_weights)]
    opt = ProxAdam([
        {"params": nm_weights, "prox": "nm", "lam": args.lam, "prox_kwargs": {"n": 2, "m": 4, "dim": 1}},
        {"params": rest},                                 # prox=None: exactly AdamW for these
    ], lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)   # schedulers work as for Adam

    # 2. An ordinary training loop.
    for step in range(steps):
        idx = torch.randint(0, len(x), (128,))
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()                                        # Adam step, then the exact prox of λ·R
        sched.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            frac = float(nm_fraction(model[0].weight, 2, 4, dim=1))
            print(f"step {step:4d}  loss {loss.item():.4f}  groups already 2:4: {100 * frac:5.1f}%")

    # 3. Make it exactly 2:4 (keep the 2 largest of every 4), then a projected fine-tune that stays 2:4.
    with torch.no_grad():
        w = model[0].weight
        w.mul_(nm_mask(w.abs(), 2, 4, dim=1))
    before = nn.functional.mse_loss(model(x), y).item()
    opt = ProxAdam([                                      # lam only has to be nonzero: a projection ignores it
        {"params": nm_weights, "prox": "nm_projection", "lam": 1.0, "prox_kwargs": {"n": 2, "m": 4, "dim": 1}},
        {"params": rest},
    ], lr=1e-3)
    for _ in range(steps // 3):
        idx = torch.randint(0, len(x), (128,))
        opt.zero_grad()
        nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    after = nn.functional.mse_loss(model(x), y).item()
    ok = is_nm(model[0].weight, 2, 4, dim=1)
    print(f"after projection: loss {before:.4f}; after the projected fine-tune: {after:.4f}; exactly 2:4: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
