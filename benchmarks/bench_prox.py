"""Time the proximal operators and a ProxAdam step, each as a ratio to a reference measured in the same run.

    python benchmarks/bench_prox.py [--size 4096] [--threads 2] [--repeat 5] [--device cpu]

References: one out-of-place ``y.abs()`` pass over the same tensor on CPU, a device-to-device copy
``y.clone()`` on CUDA (for the operators), and one ``torch.optim.AdamW`` step over the same parameters (for
ProxAdam). Times are medians of ``--repeat`` runs; each operator's runs alternate with runs of the reference,
and its ratio is to the reference's median over those, so that a machine whose speed drifts during the run
(a shared one) does not skew the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from torchprox import ProxAdam
from torchprox.prox import nm_mask, project_nm, prox_nm


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def medians(fns, device, repeat: int) -> list[float]:
    """Median time of each of ``fns`` over ``repeat`` rounds, one run of each per round in turn (after one
    warm-up run of each: allocations, lazy init), so that they share whatever the machine does meanwhile."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def timeit(fn, device, repeat: int) -> float:
    return medians([fn], device, repeat)[0]


def bench_operators(size: int, device, dtype, repeat: int) -> list[tuple[str, float, float]]:
    y = torch.randn(size, size, device=device, dtype=dtype, generator=None)
    # The reference: one elementwise pass on CPU; on a GPU, a device-to-device copy (the memory-bound floor).
    name, ref_fn = ("y.clone() (reference)", y.clone) if device.type == "cuda" else ("y.abs() (reference)", y.abs)
    ref = timeit(ref_fn, device, repeat)
    rows = [(name, ref, 1.0)]
    # A per-entry step in [0.1, 10] (a diagonal metric like Adam's): at lam 0.01 about 90% of the groups are in
    # the convex regime and nearly every block of 32 or 64 holds some that are not (as in mask learning); with a
    # scalar step at lam 0.05, 96% of the groups and about a quarter of the blocks.
    s = 10 ** (torch.rand(size, size, device=device, dtype=dtype) * 2 - 1)
    cases = [
        ("prox_nm 2:4 lam=0.05", lambda: prox_nm(y, 0.05, 2, 4)),
        ("prox_nm 2:4 step=s lam=0.01", lambda: prox_nm(y, 0.01, 2, 4, step=s)),
        ("prox_nm 2:4 lam=0.25", lambda: prox_nm(y, 0.25, 2, 4)),
        ("prox_nm 2:4 lam=25", lambda: prox_nm(y, 25.0, 2, 4)),
        ("prox_nm 2:4 lam=2500", lambda: prox_nm(y, 2500.0, 2, 4)),
        ("prox_nm 4:8 lam=0.25", lambda: prox_nm(y, 0.25, 4, 8)),
        ("prox_nm 4:8 lam=25", lambda: prox_nm(y, 25.0, 4, 8)),
        ("prox_nm 4:8 lam=2500", lambda: prox_nm(y, 2500.0, 4, 8)),
        ("project_nm 2:4", lambda: project_nm(y, 2, 4)),
        ("nm_mask 2:4", lambda: nm_mask(y, 2, 4)),
    ]
    for name, fn in cases:
        t, t_ref = medians([fn, ref_fn], device, repeat)
        rows.append((name, t, t / t_ref))
    return rows


def bench_optimizer(shapes, device, dtype, repeat: int, lam: float = 0.1, adam_metric: bool = False,
                    std: float = 0.2) -> list[tuple[str, float, float]]:
    """A step over same-shaped random tensors; ``std`` 0.2 is the embedded default's weight scale, ``lam``
    0.1 its normalised λ 0.02 in absolute terms (λ_W = 0.02 / rms(W0))."""
    def make(opt_cls, **kw):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(std * torch.randn(s, generator=gen, dtype=dtype).to(device)) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype).to(device) * 1e-3
        return opt_cls(params, lr=1e-3, weight_decay=0.0, **kw)

    rows = []
    nm = {"prox": "nm", "lam": lam, "prox_kwargs": {"n": 2, "m": 4, "dim": -1}}
    # Each with default arguments (ProxAdam with a prox picks torch's fused Adam kernel, AdamW keeps its
    # for-loop one on CPU), then each kernel explicitly, against its AdamW twin: the prox's own cost.
    for tag, impl in (("defaults", {}), ("for-loop", {"foreach": False}), ("fused", {"fused": True})):
        ref_step = make(torch.optim.AdamW, **impl).step
        pairs = []
        for metric in ("identity", "adam") if adam_metric and tag == "defaults" else ("identity",):
            t, t_ref = medians([make(ProxAdam, **nm, metric=metric, **impl).step, ref_step], device, repeat)
            pairs.append((f"ProxAdam step ({tag}), 2:4, metric={metric}", t, t / t_ref))
        rows.append((f"AdamW step ({tag}), {len(shapes)} tensors (ref)", t_ref, 1.0))
        rows.extend(pairs)
    return rows


def bench_learning_step(repeat: int, seqlen: int = 256) -> None:
    """Step-time breakdown of mask learning on the embedded default: forward+backward, Adam, prox."""
    from torch.optim import AdamW

    from torchprox.llm import load_default_model
    from torchprox.llm.blocks import target_linears
    from torchprox.llm.proxsparse import ProxSparseConfig, _param_groups
    from torchprox.optim.proxadam import _unhooked
    from torchprox.prune import learnable_nm_model

    model, _ = load_default_model()
    names = [n for n, _ in target_linears(model)]
    for p in model.parameters():
        p.requires_grad_(False)
    learnable_nm_model(model, targets=names)
    groups, _ = _param_groups(model, ProxSparseConfig())
    opt = ProxAdam(groups, lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (1, seqlen), generator=torch.Generator().manual_seed(0))

    def fwd_bwd():
        opt.zero_grad(set_to_none=False)
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()

    fwd_bwd()
    t_fb = timeit(fwd_bwd, torch.device("cpu"), repeat)
    t_adam = timeit(lambda: _unhooked(AdamW.step)(opt), torch.device("cpu"), repeat)
    t_prox = timeit(opt._apply_prox, torch.device("cpu"), repeat)
    total = t_fb + t_adam + t_prox
    print(f"\nmask-learning step on SmolLM2-135M ({len(names)} matrices, 1x{seqlen} tokens)")
    for name, t in (("forward+backward", t_fb), ("Adam", t_adam), ("prox (2:4)", t_prox)):
        print(f"{name:42s} {t * 1e3:10.1f} {t / total:8.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    ap.add_argument("--layers", type=int, default=30,
                    help="decoder layers of SmolLM2-shaped matrices (0: no optimizer rows)")
    ap.add_argument("--adam-metric", action="store_true",
                    help="also ProxAdam with metric='adam' (a per-entry step: the kernel's convex path, plain torch elsewhere)")
    ap.add_argument("--std", type=float, default=0.2, help="scale of the random weights of the optimizer rows")
    ap.add_argument("--llm", action="store_true", help="also the step breakdown on the embedded default model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, device {device}, dtype {dtype}, threads {torch.get_num_threads()}")
    print(f"\n{args.size}x{args.size} tensor")
    print(f"{'operation':42s} {'time (ms)':>10s} {'ratio':>8s}")
    for name, t, r in bench_operators(args.size, device, dtype, args.repeat):
        print(f"{name:42s} {t * 1e3:10.2f} {r:8.1f}x")
    # The embedded default's target matrices (SmolLM2-135M: hidden 576, intermediate 1536, 30 layers).
    layer = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    shapes = layer * args.layers
    if not shapes:
        return
    print(f"\noptimizer step over {len(shapes)} SmolLM2-135M-shaped matrices ({args.layers} decoder layers, "
          f"{sum(a * b for a, b in shapes) / 1e6:.1f}M weights)")
    print(f"{'operation':42s} {'time (ms)':>10s} {'ratio':>8s}")
    for name, t, r in bench_optimizer(shapes, device, dtype, args.repeat, adam_metric=args.adam_metric,
                                   std=args.std):
        print(f"{name:42s} {t * 1e3:10.2f} {r:8.1f}x")
    if args.llm:
        bench_learning_step(args.repeat)


if __name__ == "__main__":
    main()
