"""Plot held-out perplexity against learning time for every recipe row of ``results/recipes.jsonl``.

    python benchmarks/plot_recipes.py [--rows benchmarks/results/recipes.jsonl] [--out benchmarks/results/recipes.png]

ProxSparse runs are points, each with its own colour and marker, named as in ``results_tables.LABELS``: filled
for the mask alone, hollow for the learned mask followed by an update of the kept weights (OBS or a masked
fine-tune), at the learning time plus the update's. The one-shot baselines are dashed lines. One corpus per plot
(``--data``); log scale; the legend sits outside the axes.
Needs matplotlib (``pip install torchprox[bench]``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


BASELINES = ("dense", "magnitude", "wanda", "sparsegpt")
BASELINE_STYLE = {"dense": "black", "magnitude": "grey", "wanda": "tab:orange", "sparsegpt": "tab:red"}
# ProxSparse runs: every point its own colour and marker, so no two runs look alike
MARKERS = "osD^vP*Xh<>p"


def _minutes(r: dict) -> float:
    """Learning time, one definition everywhere: the row's wall time of the whole learning call (plus the
    update's time for a learned mask followed by an update of the kept weights)."""
    if r["method"] == "masks":
        return (r["learn_seconds"] + r["update_seconds"]) / 60
    return r["seconds"] / 60


def plot(rows: list[dict], out: Path, data: str = "builtin") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from results_tables import label

    rows = [r for r in rows if r.get("data", "builtin") == data and r.get("perplexity") is not None
            and r["name"] != "paper-normlam0.02-120x512"  # the paper's recipe once (its rerun is the +obs row)
            and not r["name"].startswith("curve-")]  # the budget curve has its own plot (plot_docs.plot_budget)
    fig, ax = plt.subplots(figsize=(12.5, 5.2))
    baselines = {r["method"]: r for r in rows if r["method"] in BASELINES}  # the latest row per method
    for method, r in baselines.items():
        ax.axhline(r["perplexity"], color=BASELINE_STYLE[method], ls="--", lw=1,
                   label=f"{label(r['name'])}: {r['perplexity']:.1f} (one-shot)")
    points = []
    for r in rows:
        if r["method"] == "proxsparse":
            points.append((_minutes(r), r["perplexity"], f"{label(r['name'])}, mask only", True))
            if "perplexity_reconstructed" in r:
                points.append((_minutes(r) + r["reconstruct_seconds"] / 60, r["perplexity_reconstructed"],
                               f"{label(r['name'])} + OBS update", False))
        elif r["method"] == "masks":
            points.append((_minutes(r), r["perplexity"], label(r["name"]), False))
    cmap = plt.get_cmap("tab20")
    for i, (x, y, text, mask_only) in enumerate(sorted(points, key=lambda p: p[1])):
        color = cmap(i % 20)
        ax.plot(x, y, MARKERS[i % len(MARKERS)], ms=8, color=color, mfc=color if mask_only else "white", mew=1.6,
                label=f"{text}: {y:.1f}")
    ax.set_yscale("log")
    ax.set_xlabel("learning time, minutes (the whole learning call; + the update for hollow markers)")
    ax.set_ylabel("held-out perplexity (16,384 tokens, log scale)")
    corpus = {"builtin": "Wikipedia", "news": "news (Lee corpus)"}.get(data, data)
    ax.set_title(f"2:4 on SmolLM2-135M, held-out {corpus}\nfilled: mask only; hollow: the mask, then an update of the kept "
                 "weights", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")  # the whole legend, however long
    os.replace(tmp, out)  # atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="benchmarks/results/recipes.jsonl")
    ap.add_argument("--out", default="benchmarks/results/recipes.png")
    ap.add_argument("--data", default="builtin", help="which corpus's rows: 'builtin' (Wikipedia) or 'news'")
    args = ap.parse_args()
    plot(load_rows(Path(args.rows)), Path(args.out), args.data)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
