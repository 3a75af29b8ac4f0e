"""The results tables of README.md and the docs, generated from ``benchmarks/results/recipes.jsonl``.

    python benchmarks/results_tables.py            # rewrite every table in place
    python benchmarks/results_tables.py --check    # exit 1 if a table differs from the rows (tests run this)

A table lives in a Markdown file between ``<!-- results-table: NAME -->`` and ``<!-- /results-table -->``; its
text is made here from the rows, so a figure cannot disagree with its measurement. ``LABELS`` gives each row
its human name (the plots use them too). Times: a learning run's time is its row's ``seconds``, the wall time of
the whole learning call (the steps, the activation pass and the mask extraction), on 2 CPU threads unless the
row's note says otherwise; an update's is its ``update_seconds`` / ``reconstruct_seconds``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "benchmarks" / "results" / "recipes.jsonl"
GEMMA_ROWS = ROOT / "benchmarks" / "results" / "gemma3.jsonl"  # `llm_recipes.py --model gemma3-270m` rows
FILES = ["README.md", "docs/benchmarks.md", "docs/choosing-lambda.md"]

# The canonical rows: (corpus, what) -> row name. One place decides which run a figure comes from.
# The default since 2026-12-03: lr 5e-3 per unit rms of each matrix (lr_normalization="rms"); PREVIOUS: the
# absolute lr 1e-3 it replaced (the "before" of issue 19).
DEFAULT = {"builtin": "curve-normlr-100x512", "news": "news-normlr-100x512"}
DEFAULT_FT = {"builtin": "curve-normlr-100x512+finetune40", "news": "news-normlr-100x512+finetune40"}
PREVIOUS = {"builtin": "default-vectorized-metric-kernel-100x512", "news": "news-adam-metric-normlam0.001-100x512"}
PREVIOUS_FT = {"builtin": "adam-masks+finetune40-lr2e-4", "news": "news-default-100x512+finetune40"}
PAPER = {"builtin": "paper-normlam0.02-120x512+obs", "news": "news-paper-normlam0.02-100x512+obs"}
PAPER_ACT = {"builtin": "act-extract-normlam0.02-120x512", "news": "news-act-extract-normlam0.02-100x512"}
PREVIOUS_OBS = {"builtin": "adam-metric-normlam0.001-100x512+obs"}
PAPER_FT = {"builtin": "paper-masks+finetune40-lr2e-4", "news": "news-paper-masks+finetune40-lr2e-4"}
CORPORA = {"builtin": "Wikipedia (built-in)", "news": "news (Lee corpus)"}

LABELS = {
    "dense": "dense",
    "magnitude": "magnitude",
    "wanda": "Wanda",
    "sparsegpt": "SparseGPT (updates the kept weights)",
    "curve-normlr-100x512": "ProxSparse default: Adam metric, λ 0.001, lr 5e-3 per matrix, activation-aware mask",
    "curve-normlr-100x512+finetune40": "default mask + masked fine-tune (40 steps)",
    "curve-normlr-60x512": "default, 60 steps (the budget curve)",
    "curve-normlr-60x512+finetune40": "the 60-step default mask + masked fine-tune (40 steps)",
    "curve-normlr-190x512": "default, 190 steps (the budget curve)",
    "curve-normlr-190x512+finetune40": "the 190-step default mask + masked fine-tune (40 steps)",
    "curve-normlr-750x512": "default, 750 steps (the budget curve)",
    "curve-normlr-750x512+finetune40": "the 750-step default mask + masked fine-tune (40 steps)",
    "news-normlr-100x512": "ProxSparse default: Adam metric, λ 0.001, lr 5e-3 per matrix, activation-aware mask",
    "news-normlr-100x512+finetune40": "default mask + masked fine-tune (40 steps)",
    "news-default-rerun-100x512": "previous default (absolute lr 1e-3), rerun on 2026-12-03 code",
    "news-default-100x512+finetune40": "the previous default's mask (rerun) + masked fine-tune (40 steps)",
    "default-vectorized-metric-kernel-100x512": "previous default: absolute lr 1e-3 (lr_normalization=\"none\")",
    "adam-metric-normlam0.001-100x512": "previous default, an earlier build of the metric kernel",
    "adam-metric-abslam0.005-100x512": "previous default, absolute λ 0.005 (lam_normalization=\"none\")",
    "adam-metric-normlam0.001-normlr0.005-100x512": "previous default with lr 5e-3 per matrix (the first try)",
    "default-lm+kd-100x512": "previous default + distillation, loss=\"lm+kd\" (τ 1; run beside other jobs: time inflated)",
    "default-lm+hidden-100x512": "previous default + hidden-state distillation, loss=\"lm+hidden\" (run beside other jobs: time inflated)",
    "default-lm+10hidden-100x512": "previous default + hidden-state distillation weighted up, loss=\"lm+10*hidden\"",
    "default-rerun-2026-12-02": "previous default, rerun on 2026-12-02 code (zero-step rule, MoE-aware targets)",
    "default-masks+finetune40-lm+kd": "the 2026-12-02 previous-default mask + masked fine-tune, loss=\"lm+kd\" (40 steps)",
    "default-masks+finetune40-lm-rerun": "the 2026-12-02 previous-default mask + masked fine-tune, loss=\"lm\" (40 steps)",
    "curve-default-60x512": "previous default, 60 steps (the budget curve)",
    "curve-default-60x512+finetune40": "the 60-step previous-default mask + masked fine-tune (40 steps)",
    "curve-default-190x512": "previous default, 190 steps (the budget curve; run beside other jobs: time inflated)",
    "curve-default-95x2x512": "previous default, 95 steps × 2 blocks (the budget curve: tokens per step)",
    "curve-default-375x512": "previous default, 375 steps (the budget curve)",
    "curve-default-750x512": "previous default, 750 steps (the budget curve)",
    "curve-default-190x512+finetune40": "the 190-step previous-default mask + masked fine-tune (40 steps)",
    "curve-default-375x512+finetune40": "the 375-step previous-default mask + masked fine-tune (40 steps)",
    "curve-default-750x512+finetune40": "the 750-step previous-default mask + masked fine-tune (40 steps)",
    "curve-default-95x1024": "previous default, 95 steps × 1024 tokens (the budget curve: sequence length)",
    "news-default-lm+10hidden-100x512": "previous default + hidden-state distillation, loss=\"lm+10*hidden\"",
    "twin4-adam-metric-normlam0.001-100x512": "previous default on a function-identical twin (weights ×4 / ÷4)",
    "paper-normlam0.02-120x512": "paper's recipe: identity metric, λ 0.02, |W| mask (first run)",
    "paper-normlam0.02-120x512+obs": "paper's recipe: identity metric, λ 0.02, |W| mask",
    "act-extract-normlam0.02-120x512": "paper's recipe, activation-aware mask",
    "ramp0.5-normlam0.02-120x512": "paper's recipe, λ ramped up over the first half",
    "batch2-normlam0.02-60x2x512": "paper's recipe, 60 steps × 2 blocks (activation mask)",
    "adam-metric-normlam0.001-100x512+obs": "previous default, an earlier build of the metric kernel (rerun)",
    "adam-masks+finetune40-lr2e-4": "previous-default mask + masked fine-tune",
    "paper-masks+finetune40-lr2e-4": "paper's mask + masked fine-tune",
    "news-adam-metric-normlam0.001-100x512": "previous default: absolute lr 1e-3 (lr_normalization=\"none\")",
    "news-paper-normlam0.02-100x512+obs": "paper's recipe: identity metric, λ 0.02, |W| mask",
    "news-act-extract-normlam0.02-100x512": "paper's recipe, activation-aware mask",
    "news-paper-masks+finetune40-lr2e-4": "paper's mask + masked fine-tune",
}


def load_rows(path: Path = ROWS) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["name"]: r for r in rows}


def label(name: str) -> str:
    """The human name of a row (a news baseline shares its Wikipedia twin's)."""
    calib = re.fullmatch(r"(?:news-)?(wanda|sparsegpt)-calib(\d+)", name)
    if calib:
        return f"{LABELS[calib.group(1)]}, {calib.group(2)} calibration blocks"
    return LABELS.get(name) or LABELS.get(name.removeprefix("news-"), name)


def table_equal_data(rows) -> str:
    """Wanda and SparseGPT against their calibration tokens (blocks of 512), next to the ProxSparse default's
    learning data (100 blocks of 512): the comparison at equal data."""
    def baseline(method: str, blocks: int, corpus: str) -> dict | None:
        prefix = "" if corpus == "builtin" else "news-"
        row = rows.get(f"{prefix}{method}-calib{blocks}")
        if row is None and blocks == 64:  # the canonical baseline rows are the 64-block ones
            row = rows.get(f"{prefix}{method}")
        return row

    blocks = sorted({int(m.group(1)) for name in rows for m in [re.search(r"-calib(\d+)$", name)] if m} | {64})
    short = {"wanda": "Wanda", "sparsegpt": "SparseGPT"}
    header = ["calibration blocks × 512", *(f"{short[m]}, {c}" for m in short for c in CORPORA)]
    body = [[str(b), *(_value(baseline(m, b, c)) for m in ("wanda", "sparsegpt") for c in CORPORA)] for b in blocks]
    body.append(["ProxSparse default, mask only (learns from 100)",
                 *(f"**{_value(_row(rows, DEFAULT, c))}**" for _ in range(2) for c in CORPORA)])
    return _table(header, body)


# The quality-vs-budget curves: per recipe (label -> row-name prefix, extra learning rows -> their fine-tune), one
# run per budget (its lr schedule spans the run) and the 40-step masked fine-tune (loss "lm") on each run's mask.
# The absolute lr's 100-step point is the 2026-12-02 rerun.
BUDGET_RECIPES = {
    "default": ("curve-normlr", {}),
    "previous": ("curve-default", {"default-rerun-2026-12-02": "default-masks+finetune40-lm-rerun"}),
}


def budget_points(rows, recipe: str = "default") -> list[dict]:
    """One recipe's curve points (``BUDGET_RECIPES``), by learning time (one block of 512 a step first): steps,
    blocks per step, seqlen, tokens, learning seconds, perplexity with the mask alone and after the masked
    fine-tune (None where not run), and the fine-tune's seconds."""
    prefix, extra = BUDGET_RECIPES[recipe]
    run = re.compile(re.escape(prefix) + r"-(\d+)x(?:(\d+)x)?(\d+)")
    runs = {name: ft for name, ft in extra.items() if name in rows}
    runs.update({name: f"{name}+finetune40" for name in rows if run.fullmatch(name)})
    points = []
    for name, ft_name in runs.items():
        r, ft = rows[name], rows.get(ft_name)
        points.append({"name": name, "steps": r["config"]["steps"], "blocks": r["config"]["batch_size"],
                       "seqlen": r.get("seqlen", 512), "tokens": r["tokens"], "seconds": r["seconds"],
                       "s_per_step": r["seconds_per_step"], "perplexity": r["perplexity"],
                       "finetuned": ft["perplexity"] if ft else None,
                       "ft_seconds": ft["update_seconds"] if ft else None})
    return sorted(points, key=lambda p: (p["blocks"] != 1, p["seqlen"] != 512, p["seconds"]))


def table_gemma(_rows) -> str:
    """The second model (Gemma-3-270M, ``GEMMA_ROWS``), recipes chosen on SmolLM2 and not retuned: per run,
    perplexity (Wikipedia), time, settings and peak memory."""
    rows = load_rows(GEMMA_ROWS)
    names = {"gemma3-dense": "dense", "gemma3-magnitude": "magnitude", "gemma3-wanda": "Wanda",
             "gemma3-sparsegpt": "SparseGPT (updates the kept weights)",
             "gemma3-default-60x512": "ProxSparse, previous default (absolute lr 1e-3), 60 steps, mask only",
             "gemma3-default-60x512+finetune40": "the same + masked fine-tune",
             "gemma3-default-normlr0.005-60x512": "ProxSparse default (lr 5e-3 per matrix), 60 steps, mask only",
             "gemma3-default-normlr0.005-60x512+finetune40": "the same + masked fine-tune",
             "gemma3-default-normlr0.005-180x512": "**ProxSparse default, 180 steps, mask only**",
             "gemma3-default-normlr0.005-180x512+finetune40": "**the same + masked fine-tune**"}
    body = []
    for name, r in rows.items():
        if r["method"] == "masks":
            time = f"+ {minutes(r['update_seconds'])}"
        else:
            time = "–" if r["method"] == "dense" else minutes(r["seconds"])
        body.append([names.get(name, name), ppl(r["perplexity"]), time, _settings(r), f"{r['peak_rss_gb']:.1f} GB"])
    return _table(["run", "perplexity", "time", "settings", "peak RSS"], body)


def table_budget(rows) -> str:
    """Perplexity against learning time and tokens, per recipe of ``BUDGET_RECIPES`` (Wikipedia, 2 CPU threads)."""
    header = ["recipe", "steps × blocks × seqlen", "tokens", "learning time", "s/step", "mask only",
              "+ masked fine-tune (40 steps)", "time in all"]
    body = []
    for recipe in BUDGET_RECIPES:
        for p in budget_points(rows, recipe):
            total = p["seconds"] + (p["ft_seconds"] or 0)
            body.append([recipe, f"{p['steps']} × {p['blocks']} × {p['seqlen']}", f"{p['tokens'] / 1000:.0f}k",
                         minutes(p["seconds"]), f"{p['s_per_step']:.1f}",
                         ppl(p["perplexity"]), ppl(p["finetuned"]),
                         minutes(total) if p["finetuned"] is not None else "–"])
    return _table(header, body)


def ppl(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if value >= 1000 else f"{value:.1f}"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _row(rows, names: dict, corpus: str) -> dict | None:
    return rows.get(names.get(corpus, "")) if names.get(corpus) else None


def _baseline(rows, corpus: str, method: str) -> dict:
    return rows[method if corpus == "builtin" else f"news-{method}"]


def _value(row: dict | None, field: str = "perplexity") -> str:
    return ppl(row.get(field)) if row else "–"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def table_summary(rows) -> str:
    """README: per corpus, dense / the baselines / the default mask / its fine-tune / the paper's recipe."""
    header = ["corpus", "dense", "magnitude", "Wanda", "SparseGPT (updates weights)",
              "ProxSparse default, mask only", "+ masked fine-tune", "ProxSparse, paper's recipe"]
    body = []
    for corpus, name in CORPORA.items():
        default, ft = _row(rows, DEFAULT, corpus), _row(rows, DEFAULT_FT, corpus)
        body.append([name] + [_value(_baseline(rows, corpus, m)) for m in ("dense", "magnitude", "wanda", "sparsegpt")]
                    + [f"**{_value(default)}**", _value(ft), _value(_row(rows, PAPER, corpus))])
    d, ft, paper = rows[DEFAULT["builtin"]], rows[DEFAULT_FT["builtin"]], rows[PAPER["builtin"]]
    note = (f"ProxSparse default: {_settings(d)}, {minutes(d['seconds'])} of learning, peak {d['peak_rss_gb']:.1f} GB; "
            f"masked fine-tune: {_settings(ft)}, + {minutes(ft['update_seconds'])}; paper's recipe: {_settings(paper)}, "
            f"{minutes(paper['seconds'])}. Baselines: {_settings(rows['sparsegpt'])}.")
    return _table(header, body) + "\n\n" + note


def _by_corpus(cells: list[tuple[str, dict]]) -> str:
    """A table with one row per (label, {corpus: cell}) and one column per corpus: narrow enough for any page."""
    return _table(["method", *CORPORA.values()], [[name, *(row[c] for c in CORPORA)] for name, row in cells])


def table_mask_only(rows) -> str:
    cells = [(label(m), {c: _value(_baseline(rows, c, m)) for c in CORPORA})
             for m in ("dense", "magnitude", "wanda", "sparsegpt")]
    cells += [("**ProxSparse default** (Adam metric, λ 0.001, lr 5e-3 per matrix, activation-aware mask)",
               {c: f"**{_value(_row(rows, DEFAULT, c))}**" for c in CORPORA}),
              ("ProxSparse, previous default (absolute lr 1e-3)", {c: _value(_row(rows, PREVIOUS, c)) for c in CORPORA}),
              ("ProxSparse, paper's recipe (identity metric, λ 0.02, \\|W\\| mask)",
               {c: _value(_row(rows, PAPER, c)) for c in CORPORA}),
              ("ProxSparse, paper's recipe, activation-aware mask", {c: _value(_row(rows, PAPER_ACT, c)) for c in CORPORA})]
    return _by_corpus(cells)


def table_updates(rows) -> str:
    cells = [("SparseGPT (its own update)", {c: _value(_baseline(rows, c, "sparsegpt")) for c in CORPORA}),
             ("default mask + masked fine-tune", {c: _value(_row(rows, DEFAULT_FT, c)) for c in CORPORA}),
             ("previous default's mask + OBS update",
              {c: _value(_row(rows, PREVIOUS_OBS, c), "perplexity_reconstructed") for c in CORPORA}),
             ("previous default's mask + masked fine-tune", {c: _value(_row(rows, PREVIOUS_FT, c)) for c in CORPORA}),
             ("paper's mask + OBS update", {c: _value(_row(rows, PAPER, c), "perplexity_reconstructed")
                                            for c in CORPORA}),
             ("paper's mask + masked fine-tune", {c: _value(_row(rows, PAPER_FT, c)) for c in CORPORA})]
    return _by_corpus(cells)


def _settings(row: dict) -> str:
    cfg = row.get("config", {})
    if row["method"] == "proxsparse":
        steps, bs, seqlen = cfg.get("steps"), cfg.get("batch_size", 1), row.get("seqlen", 512)
        blocks = f"{steps} steps × {bs}×{seqlen}" if bs != 1 else f"{steps} steps × {seqlen}"
        return f"{blocks} tokens, {row['seconds_per_step']:.1f} s/step"
    if row["method"] == "masks":
        return f"{row['ft_steps']} steps × 512 tokens on the learned mask"
    if row.get("calib_blocks") and row["method"] != "magnitude":
        return f"{row['calib_blocks']}×512 calibration tokens"
    return ""


def table_runs(rows, corpus: str) -> str:
    """Every run on one corpus: perplexity, time, settings, peak memory."""
    header = ["run", "perplexity", "time", "settings", "peak RSS"]
    body = []
    order = sorted(rows.items(), key=lambda kv: (kv[1]["method"] not in ("dense", "magnitude", "wanda", "sparsegpt"),
                                                  kv[1].get("perplexity") or 0))
    for name, r in order:
        if r.get("data", "builtin") != corpus or r.get("perplexity") is None or name in ("paper-normlam0.02-120x512",):
            continue
        if r["method"] == "masks":
            time = f"+ {minutes(r['update_seconds'])}"
        else:
            time = minutes(r["seconds"])
        bold = name in (DEFAULT.get(corpus), DEFAULT_FT.get(corpus))
        cell = f"**{ppl(r['perplexity'])}**" if bold else ppl(r["perplexity"])
        body.append([label(name), cell, time, _settings(r), f"{r['peak_rss_gb']:.1f} GB"])
        if "perplexity_reconstructed" in r:
            body.append([f"{label(name)} + OBS update", ppl(r["perplexity_reconstructed"]),
                         f"+ {minutes(r['reconstruct_seconds'])}", "64×512 calibration tokens", ""])
    return _table(header, [[c.replace("|W|", "\\|W\\|") for c in row] for row in body])


TABLES = {
    "summary": table_summary,
    "mask-only": table_mask_only,
    "updates": table_updates,
    "runs-builtin": lambda rows: table_runs(rows, "builtin"),
    "runs-news": lambda rows: table_runs(rows, "news"),
    "equal-data": table_equal_data,
    "budget": table_budget,
    "gemma": table_gemma,
}
_BLOCK = re.compile(r"(<!-- results-table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results-table -->)", re.S)


def render(text: str, rows) -> str:
    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            raise KeyError(f"unknown results table {name!r} (known: {', '.join(TABLES)})")
        return f"{match.group(1)}{TABLES[name](rows)}\n{match.group(4)}"

    return _BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table is not what the rows give")
    args = parser.parse_args(argv)
    rows, stale = load_rows(), []
    for rel in FILES:
        path = ROOT / rel
        text = path.read_text()
        new = render(text, rows)
        if new != text:
            stale.append(rel)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"results tables out of date in {', '.join(stale)}: run python benchmarks/results_tables.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
