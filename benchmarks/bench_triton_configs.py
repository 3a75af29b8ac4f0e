"""Time the Triton prox kernel under each launch configuration, as a ratio to a device-to-device copy.

    python benchmarks/bench_triton_configs.py [--size 4096] [--repeat 20]

For each (groups per program, warps) and with the list of the second launch on and off (``_COMPACT``), and for
the library's configuration also with Newton's approximate division and square root (``_FAST_NEWTON``): the
scalar-step 2:4 prox where nearly every group takes the general case (λ 0.25), where nearly all are convex
(λ 0.05: a few per block are not), and the diagonal-metric prox of ``metric="adam"`` at λ 0.01 with a
per-entry step in [0.1, 10] (about 10% of the groups outside the convex regime, spread over every block).
What ``_config`` returns is the library's choice; this script is how to revisit it on a new GPU. It needs CUDA.
"""
from __future__ import annotations

import argparse

import torch

from torchprox.prox import _triton, prox_nm

CONFIGS = [(32, 1), (64, 2), (128, 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per case (triton.testing.do_bench: ms)")
    args = ap.parse_args()
    if not torch.cuda.is_available() or not _triton.available():
        raise SystemExit("bench_triton_configs.py needs a CUDA GPU and Triton")
    import triton

    torch.manual_seed(0)
    y = torch.randn(args.size, args.size, device="cuda")
    s = 10 ** (torch.rand(args.size, args.size, device="cuda") * 2 - 1)
    lam = {v: torch.tensor(v, device="cuda") for v in (0.25, 0.05, 0.01)}  # λ read on the device: no sync
    cases = {
        "2:4 lam=0.25": lambda: prox_nm(y, lam[0.25], 2, 4),
        "2:4 lam=0.05": lambda: prox_nm(y, lam[0.05], 2, 4),
        "2:4 step=s lam=0.01": lambda: prox_nm(y, lam[0.01], 2, 4, step=s),
    }

    def bench(fn) -> float:
        fn()  # compile (once per configuration) outside the timing
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, rep=args.repeat * 10)

    copy = bench(y.clone)
    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
    print(f"{args.size}x{args.size} float32; y.clone() {copy * 1e3:.0f} us\n")
    print(f"{'case':24s} {'block x warps':>14s} {'list':>5s} {'newton':>7s} {'time (us)':>10s} {'ratio':>7s}")
    default = _triton._config, _triton._COMPACT, _triton._FAST_NEWTON
    library = default[0](4, torch.float32, y.numel() // 4, False)
    runs = [(c, compact, False) for c in CONFIGS for compact in (True, False)]
    runs += [(library, compact, True) for compact in (True, False)]
    try:
        for name, fn in cases.items():
            for (block, warps), compact, fast in runs:
                _triton._config = lambda *a, c=(block, warps): c
                _triton._COMPACT, _triton._FAST_NEWTON = compact, fast
                t = bench(fn)
                print(f"{name:24s} {f'{block} x {warps}':>14s} {'on' if compact else 'off':>5s} "
                      f"{'approx' if fast else 'ieee':>7s} {t * 1e3:10.0f} {t / copy:6.1f}x", flush=True)
    finally:
        _triton._config, _triton._COMPACT, _triton._FAST_NEWTON = default


if __name__ == "__main__":
    main()
