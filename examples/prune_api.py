"""The ``torch.nn.utils.prune``-style API on a CNN (Conv2d) and an MLP: learned and one-shot 2:4 masks.

    python examples/prune_api.py --quick     # a few seconds: small synthetic image / tabular tasks
    python examples/prune_api.py             # more steps

Learned masks (ProxSparse), on any nn.Module:

1. ``learnable_nm_model(model, targets=...)``: each target weight W0 becomes a frozen, bit-exact buffer and a
   learnable copy W (initialised to W0) drives the forward;
2. ``ProxAdam(prox_param_groups(model, lam))``: Adam on W, then the exact prox of λ·Σ_groups e_3(|w|);
3. ``apply_learned_masks(model)``: mask = top-2-of-4 of |W|, weight = W0 ⊙ mask (the original weights, masked);
4. ``remove_all(model)``: plain Parameters again (ready for ``state_dict``/``torch.save``).

One-shot masks: ``nm_structured(module)`` (or the ``NMStructured`` method, usable wherever torch's prune methods
are), then ``torch.nn.utils.prune.remove(module, "weight")``. Groups run along the input channels: for Conv2d
(out, in, kh, kw), every 4 consecutive input channels at each (output channel, kernel position).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from torchprox import ProxAdam
from torchprox.prune import (NMStructured, apply_learned_masks, is_nm, is_pruned, learnable_nm_model,
                             nm_structured, prox_param_groups, remove_all, sparsity_report)


def image_task(n: int = 512, seed: int = 0):
    """8×8 images with 4 channels; the class is which quadrant holds the brightest blob."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 4, 8, 8, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c, 2)
        x[i, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1.0
    return x, labels


def tabular_task(n: int = 1024, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    labels = ((x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:8].sum(1) > 0).long())
    return x, labels


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train(model, opt, x, y, steps: int) -> None:
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def learned(name: str, model: nn.Module, targets, x, y, steps: int, lam: float) -> nn.Module:
    train(model, torch.optim.Adam(model.parameters(), lr=1e-2), x, y, steps)          # a dense model first
    dense = accuracy(model, x, y)
    names = learnable_nm_model(model, n=2, m=4, targets=targets)                        # 1.
    opt = ProxAdam(prox_param_groups(model, lam=lam), lr=3e-3)                         # 2.
    train(model, opt, x, y, steps)
    masks = apply_learned_masks(model, optimizer=opt)                                   # 3.
    remove_all(model)                                                                   # 4.
    ok = all(is_nm(model.get_submodule(t).weight, 2, 4, dim=1) for t in names)
    print(f"[{name}] learned 2:4 on {names}: accuracy dense {dense:.2f} -> 2:4 {accuracy(model, x, y):.2f}; "
          f"{len(masks)} masks, exactly 2:4: {ok}")
    return model


def one_shot(name: str, model: nn.Module, targets, x, y) -> None:
    before = accuracy(model, x, y)
    for t in targets:
        nm_structured(model.get_submodule(t), "weight", n=2, m=4)     # weight_orig * weight_mask, torch-style
    assert is_pruned(model)
    for row in sparsity_report(model):
        if row["name"] in targets:
            print(f"[{name}] {row['name']:8s} {row['kind']:7s} {str(row['shape']):15s} state={row['state']} "
                  f"2:4 groups {100 * row['nm_fraction']:.0f}%  zeros {100 * row['sparsity']:.0f}%")
    for t in targets:
        torch_prune.remove(model.get_submodule(t), "weight")            # torch's own remove bakes it
    print(f"[{name}] one-shot magnitude 2:4: accuracy {before:.2f} -> {accuracy(model, x, y):.2f}; "
          f"pruned afterwards: {is_pruned(model)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few steps (seconds)")
    args = ap.parse_args(argv)
    if args.quick:
        torch.set_num_threads(1)
    steps = 60 if args.quick else 400
    torch.manual_seed(0)

    def cnn():
        return nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 4))

    def mlp():
        return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    xi, yi = image_task()
    xt, yt = tabular_task()
    # Convs are not in "all-linear": name them. Groups: 4 consecutive input channels per (out, kh, kw).
    learned("CNN", cnn(), ["0", "2"], xi, yi, steps, lam=0.05)
    learned("MLP", mlp(), "all-linear", xt, yt, steps, lam=0.05)

    # One-shot: torch.nn.utils.prune's call style, and NMStructured as a method for global/custom pruning.
    model = cnn()
    train(model, torch.optim.Adam(model.parameters(), lr=1e-2), xi, yi, steps)
    one_shot("CNN", model, ["0", "2"], xi, yi)
    model = mlp()
    train(model, torch.optim.Adam(model.parameters(), lr=1e-2), xt, yt, steps)
    NMStructured.apply(model[2], "weight", n=2, m=4)                    # the method object, as torch's own
    one_shot("MLP", model, ["0", "4"], xt, yt)
    torch_prune.remove(model[2], "weight")
    ok = all(is_nm(model[i].weight, 2, 4, dim=1) for i in (0, 2, 4))
    print(f"[MLP] every linear exactly 2:4 after remove: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
