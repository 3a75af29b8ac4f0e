"""``torchprox demo``: learn a 2:4 mask for the embedded default model and compare it with the baselines.

Prints one table (perplexity on the held-out articles of the built-in corpus, and wall time per method):
dense, magnitude, Wanda, SparseGPT (which also updates the kept weights), ProxSparse (mask only, applied to the
original weights: the method's output) and, reported apart, ProxSparse followed by a short fine-tune of the kept
weights with the learned mask frozen ([`torchprox.llm.reconstruct.finetune_masked`][torchprox.llm.reconstruct.finetune_masked]; ``torchprox demo
--finetune``, about 3.5 more minutes, so the default stays within 20 minutes on 2 cores). Every method but the
last starts from the same dense weights; the last continues from ProxSparse's masked model.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import calibration_blocks, evaluation_blocks
from .evaluate import perplexity
from .export import save_sparse, sparse_manifest
from .models import load_default_model
from .blocks import target_linears
from .proxsparse import ProxSparseConfig, learn_masks
from .reconstruct import finetune_masked
from .sparsify import BASELINES, sparsify

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs. ``FULL`` takes about 14 minutes on 2 CPU cores (at most 20), ``QUICK`` about 4.

    FULL: ProxSparse learns for 100 steps of 512 tokens with the Adam-metric prox (about 3.4 s a step on 2
    cores, 6 minutes; the library's recipe: λ 0.001 and lr 5e-3, both per unit rms of each matrix); QUICK:
    30 steps of 256 tokens at the absolute lr 2e-3 it was chosen with (at that budget it gives 91.5 against
    SparseGPT's 94.6; lr 1e-2 per unit rms, the same step on SmolLM2's median matrix, gave 95.1); Wanda and
    SparseGPT calibrate on 32 blocks of 512 tokens (benchmarks/results uses 64, the papers 128); every method
    is scored on the first 16,384 held-out tokens (about 40 s each).

    Examples:
        >>> FULL.proxsparse.steps, QUICK.proxsparse.steps, QUICK.eval_tokens
        (100, 30, 4096)
        >>> DemoSettings(calib_blocks=8).calib_blocks
        8
    """

    eval_tokens: int = 16384
    eval_seqlen: int = 512
    calib_blocks: int = 32          # Wanda / SparseGPT calibration blocks
    calib_seqlen: int = 512
    proxsparse: ProxSparseConfig = field(default_factory=lambda: ProxSparseConfig(steps=100))
    proxsparse_seqlen: int = 512
    finetune_steps: int = 40        # the masked fine-tune after ProxSparse (blocks of proxsparse_seqlen)
    finetune_lr: float = 2e-4


FULL = DemoSettings()
QUICK = DemoSettings(eval_tokens=4096, calib_blocks=16, calib_seqlen=256,
                     proxsparse=ProxSparseConfig(steps=30, lr=2e-3, lr_normalization="none"), proxsparse_seqlen=256,
                     finetune_steps=10)


__all__ = ["run_demo", "ROWS", "FINETUNE_ROW"]

#: The default table's rows: the dense model, the one-shot baselines, ProxSparse. ``FINETUNE_ROW`` (ProxSparse's
#: mask, then a masked fine-tune) is opt-in and must follow ``"proxsparse"``.
ROWS = ("dense", *BASELINES, "proxsparse")
FINETUNE_ROW = "proxsparse+ft"


def run_demo(quick: bool = False, out: Path | None = None, threads: int | None = None,
             settings: DemoSettings | None = None, methods=ROWS,
             model_and_tokenizer=None) -> list[dict[str, Any]]:
    """Run the comparison and print the table; returns its rows (method, perplexity, seconds, ...).

    Every row's perplexity is [`torchprox.llm.perplexity`][torchprox.llm.evaluate.perplexity] on the same held-out blocks
    ``(eval_tokens // eval_seqlen, eval_seqlen)`` of the built-in corpus.

    Examples:
        Runs the embedded SmolLM2-135M (about 5 minutes with ``quick=True`` on 2 CPU cores), so it is not run as
        a doctest:

        >>> rows = run_demo(quick=True)  # doctest: +SKIP
        >>> [r["method"] for r in rows]  # doctest: +SKIP
        ['dense', 'magnitude', 'wanda', 'sparsegpt', 'proxsparse', 'proxsparse+ft']
    """
    if threads:
        torch.set_num_threads(threads)
    s = settings or (QUICK if quick else FULL)
    t_load = time.perf_counter()
    model, tok = model_and_tokenizer or load_default_model()
    print(f"model loaded in {time.perf_counter() - t_load:.1f} s; torch threads: {torch.get_num_threads()}")
    dense_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    evals = evaluation_blocks(tok, "builtin", seqlen=s.eval_seqlen, max_tokens=s.eval_tokens)
    calib = calibration_blocks(tok, "builtin", seqlen=s.calib_seqlen, n_blocks=s.calib_blocks, seed=0)
    cfg = s.proxsparse
    learn = calibration_blocks(tok, "builtin", seqlen=s.proxsparse_seqlen, n_blocks=cfg.steps * cfg.batch_size,
                               seed=cfg.seed)
    rows: list[dict[str, Any]] = []
    for method in methods:
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        if method == FINETUNE_ROW:  # continues from the ProxSparse row's masked model
            if not rows or rows[-1]["method"] != "proxsparse":
                raise ValueError("'proxsparse+ft' must come right after 'proxsparse' in methods")
            masks = {name: mod.weight != 0 for name, mod in model.named_modules()
                     if name in learned_targets}
            report = finetune_masked(model, learn, masks, s.finetune_steps, s.finetune_lr, cfg.batch_size, cfg.seed)
            info = {"steps": s.finetune_steps, "lr": s.finetune_lr}
            seconds = time.perf_counter() - t0
            ppl = perplexity(model, evals)
            rows.append({"method": method, "perplexity": ppl, "seconds": seconds, **info})
            print(f"  {method:10s} perplexity {ppl:10.2f}   ({seconds:.0f} s)", flush=True)
            continue
        model.load_state_dict(dense_state)
        if method == "proxsparse":
            report = learn_masks(model, learn, 2, 4, cfg)
            learned_targets = {name for name, _ in target_linears(model)}
            info = {"steps": cfg.steps, "tokens": report["tokens"], "s/step": round(report["seconds_per_step"], 2),
                    "final N:M groups before masking": report["nm_fraction"][-1][1] if report["nm_fraction"] else None}
        elif method != "dense":
            sparsify(model, calib, 2, 4, method=method)
        seconds = time.perf_counter() - t0
        ppl = perplexity(model, evals)
        rows.append({"method": method, "perplexity": ppl, "seconds": seconds, **info})
        print(f"  {method:10s} perplexity {ppl:10.2f}   ({seconds:.0f} s)", flush=True)
        if method == "proxsparse" and out is not None:
            manifest = sparse_manifest(model, 2, 4, method=method, source_model="default", report=rows[-1])
            save_sparse(model, tok, out, manifest, overwrite=True)
    _print_table(rows, s)
    return rows


def _print_table(rows: list[dict[str, Any]], s: DemoSettings) -> None:
    print(f"\n2:4 sparsity on SmolLM2-135M-Instruct, perplexity on {s.eval_tokens} held-out Wikipedia tokens "
          f"(windows of {s.eval_seqlen})")
    print(f"| {'method':14s} | {'perplexity':>10s} | {'time (s)':>8s} |")
    print(f"|{'-' * 16}|{'-' * 12}|{'-' * 10}|")
    for r in rows:
        label = {"dense": "dense", "magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT*",
                 "proxsparse": "ProxSparse", "proxsparse+ft": "ProxSparse+FT*"}[r["method"]]
        print(f"| {label:14s} | {r['perplexity']:10.2f} | {r['seconds']:8.0f} |")
    cfg = s.proxsparse
    finetuned = any(r["method"] == "proxsparse+ft" for r in rows)
    print("\n* SparseGPT" + (f" and ProxSparse+FT (ProxSparse's mask, then {s.finetune_steps} steps of fine-tuning "
                             f"the kept weights, lr {s.finetune_lr})" if finetuned else "")
          + (" also update" if finetuned else " also updates")
          + " the kept weights; the others keep the original values (ProxSparse: mask only).\n"
          f"ProxSparse: {cfg.steps} steps of {cfg.batch_size}x{s.proxsparse_seqlen} tokens, {cfg.metric}-metric prox, "
          f"lam {cfg.lam} ({'per unit rms' if cfg.lam_normalization == 'rms' else 'absolute'}), "
          f"lr {cfg.lr} ({'per unit rms' if cfg.lr_normalization == 'rms' else 'absolute'}); "
          f"baselines: {s.calib_blocks}x{s.calib_seqlen} calibration tokens.")
    logger.info("demo rows: %s", json.dumps(rows))
