"""Learn a 2:4 mask with ``transformers.Trainer`` + ProxAdam, then fine-tune the sparse model with PEFT LoRA and
merge the adapters on the kept positions only, so the result is still exactly 2:4.

    python examples/trainer_lora.py --quick       # seconds: a tiny Llama built from a config, no model files
    python examples/trainer_lora.py --out smollm2-2of4-lora   # the embedded SmolLM2-135M (tens of minutes)

1. ProxSparse in an unmodified Trainer: ``optimizers=(ProxAdam(...), scheduler)`` and ``NMMaskCallback``,
   which applies the learned masks at train end (weight = W0 ⊙ mask) and bakes plain Parameters
   (the same steps as ``examples/trainer_proxsparse.py``, whose helpers this script reuses).
2. ``peft.get_peft_model(model, LoraConfig(...))`` and a second Trainer run on the LoRA parameters only.
3. ``torchprox.llm.merge_lora_nm(peft_model)``: W ← mask ⊙ (W + ΔW) with mask = (W ≠ 0), so every merged weight
   keeps its zeros. PEFT's own ``merge_and_unload()`` would make them dense. ``lora_nm_report`` says how much of
   each update the masked merge keeps.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from torchprox import ProxAdam  # noqa: E402
from torchprox.llm import (NMMaskCallback, lora_nm_report, merge_lora_nm, perplexity, save_sparse,  # noqa: E402
                           sparse_manifest, target_linears)
from torchprox.prune import is_nm, learnable_nm_model  # noqa: E402


def _trainer_example():
    """examples/trainer_proxsparse.py, imported by path (examples/ is not a package)."""
    path = Path(__file__).resolve().with_name("trainer_proxsparse.py")
    spec = importlib.util.spec_from_file_location("trainer_proxsparse_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(model, dataset, steps: int, optimizers=(None, None), callbacks=(), lr: float = 1e-3, batch_size=2):
    with tempfile.TemporaryDirectory() as scratch:
        targs = transformers.TrainingArguments(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
            logging_steps=max(1, steps // 4), save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
            use_cpu=not torch.cuda.is_available(), max_grad_norm=1.0)
        trainer = transformers.Trainer(model=model, args=targs, train_dataset=dataset, optimizers=optimizers,
                                       callbacks=list(callbacks))
        trainer.remove_callback(transformers.PrinterCallback)
        trainer.train()
    return trainer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny Llama built from a config (seconds)")
    ap.add_argument("--steps", type=int, default=None, help="ProxSparse steps (default: 30 quick, 200)")
    ap.add_argument("--lora-steps", type=int, default=None, help="LoRA steps (default: 20 quick, 200)")
    ap.add_argument("--out", help="save the merged 2:4 model here")
    args = ap.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.WARNING)
    if args.quick:
        torch.set_num_threads(1)
    ex = _trainer_example()
    steps = args.steps or (30 if args.quick else 200)
    lora_steps = args.lora_steps or (20 if args.quick else 200)
    seqlen, lam, lr = (64, 0.1, 2e-3) if args.quick else (512, 0.02, 1e-3)
    load = ex.tiny_model_and_blocks if args.quick else ex.default_model_and_blocks
    model, tok, blocks = load(seqlen, (steps + lora_steps) * 2 + 8)
    train_blocks, lora_blocks, eval_blocks = blocks[:2 * steps], blocks[2 * steps:-8], blocks[-8:]
    dense_ppl = perplexity(model, eval_blocks)

    # 1. ProxSparse with the Trainer.
    names = learnable_nm_model(model, n=2, m=4)
    opt = ProxAdam(ex.param_groups(model, lam), lr=lr)       # 2:4 prox groups, λ normalised per layer
    sched = transformers.get_linear_schedule_with_warmup(opt, max(1, steps // 10), steps)
    train(model, [{"input_ids": b, "labels": b} for b in train_blocks], steps, (opt, sched), [NMMaskCallback()])
    assert all(is_nm(model.get_submodule(n).weight, 2, 4, dim=1) for n in names)
    sparse_ppl = perplexity(model, eval_blocks)

    # 2. LoRA on the 2:4 model (only the adapters train).
    import peft

    lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj",
                                                                                  "down_proj"])
    peft_model = peft.get_peft_model(model, lora)
    peft_model.print_trainable_parameters()
    train(peft_model, [{"input_ids": b, "labels": b} for b in lora_blocks], lora_steps, lr=2e-3 if args.quick else 2e-4)
    lora_ppl = perplexity(peft_model, eval_blocks)
    report = lora_nm_report(peft_model)
    kept = sum(r["delta_kept"] for r in report.values()) / len(report)

    # 3. The masked merge: still exactly 2:4.
    merged = merge_lora_nm(peft_model)
    ok = all(is_nm(w.weight, 2, 4, dim=1) for _, w in target_linears(merged))
    print(f"perplexity: dense {dense_ppl:.2f} | 2:4 (ProxSparse) {sparse_ppl:.2f} | 2:4 + LoRA (unmerged) "
          f"{lora_ppl:.2f} | 2:4 + LoRA merged on the mask {perplexity(merged, eval_blocks):.2f}")
    print(f"{len(report)} LoRA targets, the masked merge keeps {100 * kept:.0f}% of the update's energy on "
          f"average; every decoder linear exactly 2:4 after the merge: {ok}")
    if args.out:
        save_sparse(merged, tok, Path(args.out), sparse_manifest(merged, 2, 4, method="proxsparse+lora"),
                    overwrite=True)
        print(f"wrote {args.out}; check it with: torchprox check {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
