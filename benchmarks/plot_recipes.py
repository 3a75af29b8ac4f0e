"""Plot held-out perplexity against learning time for every recipe row of ``results/recipes.jsonl``.

    python benchmarks/plot_recipes.py [--rows benchmarks/results/recipes.jsonl] [--out benchmarks/results/recipes.png]

ProxSparse runs are points (mask only: filled; with the OBS update on the learned mask: hollow, at the time of
learning plus the update; a saved mask with a masked fine-tune: hollow squares); the one-shot baselines are
horizontal lines at their latest row. One corpus per plot (``--data``). Log scale.
Needs matplotlib (``pip install torchprox[bench]``).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


BASELINES = ("dense", "magnitude", "wanda", "sparsegpt")


def plot(rows: list[dict], out: Path, data: str = "builtin") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("data", "builtin") == data and r.get("perplexity") is not None]
    fig, ax = plt.subplots(figsize=(8, 5))
    baselines = {r["method"]: r for r in rows if r["method"] in BASELINES}  # the latest row per method
    colors = {"dense": "black", "magnitude": "grey", "wanda": "tab:orange", "sparsegpt": "tab:red"}
    for method, r in baselines.items():
        ax.axhline(r["perplexity"], color=colors.get(method, "grey"), ls="--", lw=1,
                   label=f"{method} {r['perplexity']:.1f}")
    for i, r in enumerate(r for r in rows if r["method"] == "proxsparse"):
        color = f"C{i % 10}"
        minutes = r["seconds"] / 60
        ax.plot(minutes, r["perplexity"], "o", color=color, label=f"{r['name']} {r['perplexity']:.1f}")
        if "perplexity_reconstructed" in r:
            ax.plot(minutes + r["reconstruct_seconds"] / 60, r["perplexity_reconstructed"], "o", mfc="none",
                    color=color, label=f"{r['name']} + OBS update {r['perplexity_reconstructed']:.1f}")
    for r in (r for r in rows if r["method"] == "masks"):  # a saved mask, then a weight update
        minutes = (r.get("learn_seconds", 0) + r["update_seconds"]) / 60
        ax.plot(minutes, r["perplexity"], "s", mfc="none", color="tab:green",
                label=f"{r['name']} {r['perplexity']:.1f}")
    ax.set_yscale("log")
    ax.set_xlabel("learning time (minutes, 2 CPU threads unless the row says otherwise)")
    ax.set_ylabel("held-out perplexity (16,384 tokens)")
    corpus = {"builtin": "Wikipedia", "news": "news (Lee corpus)"}.get(data, data)
    ax.set_title(f"2:4 on the embedded default (SmolLM2-135M), held-out {corpus}")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
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
