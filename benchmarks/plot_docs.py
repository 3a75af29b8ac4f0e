"""The plots of the documentation site's benchmark page, written to ``docs/img/`` (committed, so the site builds
without running anything).

    python benchmarks/plot_docs.py [--rows benchmarks/results/recipes.jsonl] [--out docs/img]

- ``recipes_perplexity.png``: held-out perplexity per method (the latest row of every recipe name), log scale.
- ``recipes_time.png``: perplexity vs learning time (``plot_recipes.plot``).
- ``budget.png``: the quality-vs-budget curves of the recipes in ``results_tables.BUDGET_RECIPES``: perplexity
  against learning time, the mask alone and after the masked fine-tune, with the one-shot baselines.
- ``nm_fraction.png``: the fraction of groups already N:M over the learning steps, from the rows' ``nm_fraction_log``
  (``[[step, fraction], ...]``). When no row carries one yet, from a short ``torchprox.llm.learn_masks`` run on a
  tiny Llama built from a config (seconds on one thread); the title says which. ``nm_fraction.json`` records
  where the curves came from (the docs page quotes it).

The prox-time plot is written by ``benchmarks/bench_prox_sizes.py``. Needs matplotlib (``pip install
torchprox[bench]``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_recipes import load_rows, plot as plot_time  # noqa: E402

COLORS = {"dense": "black", "magnitude": "grey", "wanda": "tab:orange", "sparsegpt": "tab:red",
          "proxsparse": "tab:blue", "masks": "tab:blue"}


def _save(fig, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)


def plot_perplexity(rows: list[dict], out: Path, data: str = "builtin") -> None:
    """One bar per run, named by ``results_tables.LABELS``: plain bars keep the original weights, hatched bars
    are a learned mask followed by an update of the kept weights (the legend says so)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from results_tables import label

    latest = {r["name"]: r for r in rows  # the latest row per recipe name (rows without a perplexity: stopped runs)
              if r.get("data", "builtin") == data and r.get("perplexity") is not None
              and r["name"] != "paper-normlam0.02-120x512"}  # the paper's recipe once (its rerun is the +obs row)
    bars = []  # (label, family, perplexity, updates the kept weights)
    for name, r in latest.items():
        if r["method"] == "masks":  # a saved learned mask, then a weight update of the kept weights
            bars.append((label(name), "proxsparse", r["perplexity"], True))
        else:
            bars.append((label(name), r["method"], r["perplexity"], r["method"] == "sparsegpt"))
            if "perplexity_reconstructed" in r:
                bars.append((f"{label(name)} + OBS update", "proxsparse", r["perplexity_reconstructed"], True))
    bars.sort(key=lambda b: b[2])
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(bars) + 1.8))
    ys = range(len(bars))
    patches = ax.barh(ys, [b[2] for b in bars], color=[COLORS.get(b[1], "tab:blue") for b in bars],
                      edgecolor="white")
    for patch, b in zip(patches, bars):
        if b[3]:
            patch.set_hatch("//")
            patch.set_edgecolor("white")
    ax.set_yticks(list(ys), [b[0] for b in bars], fontsize=8)
    for y, b in zip(ys, bars):
        ax.text(b[2] * 1.05, y, f"{b[2]:.1f}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(right=max(b[2] for b in bars) * 4)
    ax.invert_yaxis()
    ax.set_xlabel("held-out perplexity (16,384 tokens, lower is better; log scale)")
    legend = [Patch(color=COLORS[k], label=v) for k, v in
              (("proxsparse", "ProxSparse (learned mask)"), ("sparsegpt", "SparseGPT"), ("wanda", "Wanda"),
               ("magnitude", "magnitude"), ("dense", "dense"))]
    legend.append(Patch(facecolor="lightgrey", hatch="//", edgecolor="white", label="updates the kept weights"))
    ax.legend(handles=legend, fontsize=8, loc="upper right")
    corpus = {"builtin": "Wikipedia", "news": "news (Lee corpus)"}.get(data, data)
    fig.suptitle(f"2:4 on SmolLM2-135M (embedded default), held-out {corpus}: perplexity per run", fontsize=11)
    fig.tight_layout()
    _save(fig, out)


def tiny_nm_fraction_log(steps: int = 60) -> dict:
    """A short ProxSparse run on a 2-layer Llama (hidden 64) built from a config, on structured token blocks."""
    import torch
    import transformers

    from torchprox.llm import ProxSparseConfig, learn_masks

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 128, (steps, 1), generator=g)
    calib = (start + 7 * torch.arange(64) + torch.randint(0, 3, (steps, 64), generator=g)) % 128
    curves = {}
    for lam in (0.05, 0.2):
        cfg = ProxSparseConfig(lam=lam, lr=2e-3, lr_normalization="none", steps=steps, batch_size=1, log_every=2, seed=0)
        report = learn_masks(model if lam == 0.05 else _fresh(model, config), calib, 2, 4, cfg, progress=False)
        curves[f"tiny Llama, λ {lam} (normalised)"] = [list(map(float, p)) for p in report["nm_fraction"]]
    return {"source": "tiny", "note": f"a {steps}-step learn_masks run on a 2-layer Llama (hidden 64) built from a "
                                      "config, 64-token structured blocks, 1 thread", "curves": curves}


def _fresh(_model, config):
    import torch
    import transformers

    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def plot_nm_fraction(data: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    from results_tables import label

    fig, ax = plt.subplots(figsize=(10, 4.6))
    cmap = plt.get_cmap("tab20")
    for i, (name, log) in enumerate(data["curves"].items()):
        corpus = ", news" if name.startswith("news-") else ""
        ax.plot([p[0] for p in log], [100 * p[1] for p in log], ("-", "--", ":")[i % 3], color=cmap(i % 20),
                marker="osD^vP*Xh<>p"[i % 12], ms=4, label=f"{label(name)}{corpus}")
    ax.set_xlabel("learning step")
    ax.set_ylabel("groups already 2:4 in W (%)")
    ax.set_ylim(0, 101)
    title = "Fraction of groups N:M during ProxSparse learning (SmolLM2-135M, 2:4)"
    if data["source"] == "tiny":
        title = "Fraction of groups N:M during ProxSparse learning\n(tiny model built from a config)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    _save(fig, out)


def plot_budget(rows: list[dict], out: Path) -> None:
    """Perplexity (Wikipedia) of the budget runs of each recipe (``results_tables.BUDGET_RECIPES``), against
    minutes of learning on 2 CPU threads (left) and against tokens learned from (right, host-independent): the
    mask alone (filled) and after the 40-step masked fine-tune (hollow; on the left at the learning plus the
    fine-tune's time)."""
    import matplotlib.pyplot as plt

    from results_tables import BUDGET_RECIPES, budget_points

    by_name = {r["name"]: r for r in rows}
    fig, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    series = (((1, 512), "-", "o"), ((2, 512), ":", "s"), ((1, 1024), "--", "^"))
    colors = (("tab:blue", "tab:green"), ("tab:purple", "tab:orange"))
    tokens = set()
    for recipe, (mask_color, ft_color) in zip(BUDGET_RECIPES, colors):
        points = budget_points(by_name, recipe)
        tokens |= {p["tokens"] / 1000 for p in points}
        for (blocks, seqlen), style, marker in series:
            pts = [p for p in points if (p["blocks"], p["seqlen"]) == (blocks, seqlen)]
            if not pts:
                continue
            tag = f"{recipe}" + ("" if (blocks, seqlen) == (1, 512) else f", {blocks} × {seqlen} tokens a step")
            ft = [p for p in pts if p["finetuned"] is not None]
            axes = ((by_time, lambda p: p["seconds"] / 60, lambda p: (p["seconds"] + p["ft_seconds"]) / 60),
                    (by_tokens, lambda p: p["tokens"] / 1000, lambda p: p["tokens"] / 1000))
            for ax, x_mask, x_ft in axes:
                ax.plot([x_mask(p) for p in pts], [p["perplexity"] for p in pts], style, marker=marker,
                        color=mask_color, label=f"mask only ({tag})")
                if ft:
                    ax.plot([x_ft(p) for p in ft], [p["finetuned"] for p in ft], style, marker=marker, mfc="white",
                            color=ft_color, label=f"+ masked fine-tune ({tag})")
    for method in ("sparsegpt", "dense"):
        r = by_name.get(method)
        if r:
            name = {"sparsegpt": "SparseGPT (one-shot, 64 × 512)", "dense": "dense"}[method]
            for ax in (by_time, by_tokens):
                ax.axhline(r["perplexity"], ls="--", lw=1, color=COLORS[method], label=f"{name}: {r['perplexity']:.1f}")
    by_time.set_xlabel("minutes of learning (2 CPU threads)")
    by_tokens.set_xlabel("tokens learned from (log scale)")
    by_tokens.set_xscale("log", base=2)
    ticks = sorted(tokens)
    by_tokens.set_xticks(ticks, [f"{t:.0f}k" for t in ticks])
    by_tokens.minorticks_off()
    by_time.set_ylabel("perplexity (Wikipedia, 16,384 held-out tokens)")
    by_time.set_xlim(left=0)
    by_time.set_ylim(bottom=0)
    for ax in (by_time, by_tokens):
        ax.grid(True, alpha=0.3)
    by_tokens.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("SmolLM2-135M 2:4, ProxSparse (Adam metric, λ 0.001): quality against learning budget\n"
                 "default: lr 5e-3 per unit rms of each matrix; previous: absolute lr 1e-3", fontsize=10)
    fig.tight_layout()
    _save(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="benchmarks/results/recipes.jsonl")
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    rows, out = load_rows(Path(args.rows)), Path(args.out)
    plot_perplexity(rows, out / "recipes_perplexity.png")
    plot_time(rows, out / "recipes_time.png")
    plot_budget(rows, out / "budget.png")
    if any(r.get("data") == "news" for r in rows):
        plot_perplexity(rows, out / "recipes_perplexity_news.png", data="news")
    logged = {r["name"]: r["nm_fraction_log"] for r in rows if r.get("nm_fraction_log")}
    if logged:
        data = {"source": "recipes", "note": f"nm_fraction_log of {args.rows}", "curves": logged}
    else:
        data = tiny_nm_fraction_log()
    (out / "nm_fraction.json").write_text(json.dumps(data, indent=1) + "\n")
    plot_nm_fraction(data, out / "nm_fraction.png")
    print(f"wrote {out}/recipes_perplexity.png, recipes_time.png, budget.png, nm_fraction.png ({data['note']})")


if __name__ == "__main__":
    main()
