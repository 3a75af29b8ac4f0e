"""Time ``prox_nm`` 2:4, ``project_nm`` 2:4 and the ``y.abs()`` reference over square tensor sizes.

    python benchmarks/bench_prox_sizes.py [--sizes 256 512 1024 2048 4096] [--threads 1] [--repeat 5]
        [--json benchmarks/results/prox_sizes.json] [--png docs/img/prox_sizes.png]

Each time is the median of ``--repeat`` runs after one warm-up, on float32 ``torch.randn(size, size)`` scaled to
the embedded default's weight scale (std 0.2), λ = 0.1 (its normalised λ 0.02 in absolute terms). One thread by
default, so the numbers do not depend on how busy the other cores are. Writes a JSON with every time and a PNG
(log-log, time vs number of elements); the PNG needs matplotlib (``pip install torchprox[bench]``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from torchprox.prox import project_nm, prox_nm


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up: allocations, the native kernel's first-use build/load
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(sizes: list[int], repeat: int, lam: float = 0.1) -> list[dict]:
    rows = []
    for size in sizes:
        g = torch.Generator().manual_seed(size)
        y = 0.2 * torch.randn(size, size, generator=g)
        cases = {
            "y.abs()": lambda: y.abs(),
            "project_nm 2:4": lambda: project_nm(y, 2, 4),
            f"prox_nm 2:4 lam={lam}": lambda: prox_nm(y, lam, 2, 4),
        }
        for name, fn in cases.items():
            t = timeit(fn, repeat)
            rows.append({"op": name, "size": size, "numel": size * size, "seconds": t,
                         "ns_per_element": 1e9 * t / (size * size)})
            print(f"{name:22s} {size:5d}²  {1e3 * t:9.3f} ms  {1e9 * t / size ** 2:7.2f} ns/element", flush=True)
    return rows


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ops = list(dict.fromkeys(r["op"] for r in result["rows"]))
    for op in ops:
        rows = [r for r in result["rows"] if r["op"] == op]
        ax.plot([r["numel"] for r in rows], [1e3 * r["seconds"] for r in rows], "o-", label=op)
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({r["size"] for r in result["rows"]})
    ax.set_xticks([s * s for s in sizes], [f"{s}²" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("tensor size (float32 elements)")
    ax.set_ylabel("time (ms, median)")
    ax.set_title(f"N:M operators on CPU, {result['threads']} thread (torch {result['torch']})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default="benchmarks/results/prox_sizes.json")
    ap.add_argument("--png", default="docs/img/prox_sizes.png")
    ap.add_argument("--plot-only", action="store_true", help="re-plot an existing --json without timing")
    args = ap.parse_args()
    path = Path(args.json)
    if args.plot_only:
        result = json.loads(path.read_text())
    else:
        torch.set_num_threads(args.threads)
        rows = run(args.sizes, args.repeat)
        result = {"threads": args.threads, "repeat": args.repeat, "torch": torch.__version__,
                  "cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
                  "rows": rows}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
    plot(result, Path(args.png))
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
