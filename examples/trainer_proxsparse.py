"""Learn a 2:4 mask with the Hugging Face ``transformers.Trainer`` and torchprox's ProxAdam (ProxSparse).

    python examples/trainer_proxsparse.py --quick                  # tiny Llama built from a config, seconds
    python examples/trainer_proxsparse.py --steps 200 --out smollm2-2of4   # the embedded SmolLM2-135M

Nothing is downloaded (HF_HUB_OFFLINE=1). The Trainer is not patched: ProxAdam is passed as
``optimizers=(ProxAdam(...), scheduler)`` and NMMaskCallback logs the fraction of groups already 2:4 and
applies the learned masks (weight = W0 ⊙ mask, exactly 2:4) when training ends.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from torchprox import ProxAdam  # noqa: E402
from torchprox.llm import NMMaskCallback, memory_report, save_sparse, sparse_manifest  # noqa: E402
from torchprox.prune import learnable_nm_model, nm_fraction  # noqa: E402
from torchprox.prune.parametrization import nm_parametrizations  # noqa: E402


def tiny_model_and_blocks(seqlen: int, n_blocks: int):
    """A 2-layer Llama (hidden 64) from a config and token blocks with a learnable structure."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 128, (n_blocks, 1), generator=g)
    blocks = (start + 7 * torch.arange(seqlen) + torch.randint(0, 3, (n_blocks, seqlen), generator=g)) % 128
    return model, None, blocks


def default_model_and_blocks(seqlen: int, n_blocks: int):
    from torchprox.llm import calibration_blocks, load_default_model

    model, tok = load_default_model()
    return model, tok, calibration_blocks(tok, "builtin", seqlen=seqlen, n_blocks=n_blocks)


def param_groups(model, lam: float) -> list[dict]:
    """One ProxAdam group per target, λ normalised by the layer's scale: λ_W = lam / rms(W0)^(n-1)
    (the N:M penalty is homogeneous of degree n+1, so this makes one lam fit every layer). Every other
    parameter is frozen."""
    groups, seen = [], set()
    for _, _, _, plist, p in nm_parametrizations(model):
        rms = float(p.w0.float().square().mean().sqrt())
        groups.append({"params": [plist.original], "prox": "nm", "lam": lam / rms ** (p.n - 1),
                       "prox_kwargs": {"n": p.n, "m": p.m, "dim": p.dim}})
        seen.add(id(plist.original))
    for q in model.parameters():  # ProxSparse learns only the masks: embeddings, norms, lm_head stay fixed
        if id(q) not in seen:
            q.requires_grad_(False)
    return groups


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny Llama built from a config (seconds, no model files)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 40 quick, 200 otherwise)")
    ap.add_argument("--seqlen", type=int, default=None, help="tokens per block (default: 64 quick, 512 otherwise)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lam", type=float, default=None,
                    help="normalised λ of the 2:4 regularizer (default: 0.1 quick, 0.02 otherwise)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 2e-3 quick, 1e-3)")
    ap.add_argument("--out", help="save the 2:4 model here (save_pretrained + torchprox.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.WARNING)

    steps = args.steps or (40 if args.quick else 200)
    seqlen = args.seqlen or (64 if args.quick else 512)
    lr = args.lr or (2e-3 if args.quick else 1e-3)
    lam = args.lam if args.lam is not None else (0.1 if args.quick else 0.02)
    load = tiny_model_and_blocks if args.quick else default_model_and_blocks
    model, tok, blocks = load(seqlen, steps * args.batch_size)
    dataset = [{"input_ids": b, "labels": b} for b in blocks]

    names = learnable_nm_model(model, n=2, m=4)  # every linear except lm_head: W0 frozen, W learnable
    print(f"learning 2:4 masks for {len(names)} layers over {steps} steps")
    opt = ProxAdam(param_groups(model, lam), lr=lr)
    sched = transformers.get_linear_schedule_with_warmup(opt, max(1, steps // 10), steps)
    with tempfile.TemporaryDirectory() as scratch:
        targs = transformers.TrainingArguments(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=args.batch_size,
            logging_steps=max(1, steps // 8), save_strategy="no", report_to="none",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True, seed=0, max_grad_norm=1.0)
        callback = NMMaskCallback()
        trainer = transformers.Trainer(model=model, args=targs, train_dataset=dataset, optimizers=(opt, sched),
                                       callbacks=[callback])
        trainer.remove_callback(transformers.PrinterCallback)  # the table below replaces the raw log dicts
        trainer.train()

    for entry in trainer.state.log_history:
        if "loss" in entry:
            print(f"step {entry['step']:4d}  loss {entry['loss']:.3f}  2:4 groups {100 * entry['nm_fraction']:.1f}%")
    ok = [name for name in names if float(nm_fraction(model.get_submodule(name).weight, 2, 4, dim=1)) == 1.0]
    print(f"{len(ok)}/{len(names)} layers exactly 2:4 after applying the learned masks "
          f"({100 * callback.final['nm_fraction']:.1f}% of groups were already 2:4 in W)")
    mem = memory_report(model)
    print(f"decoder linears: {mem['targets_dense_bytes'] / 2**20:.2f} MiB dense -> "
          f"{mem['targets_compressed_bytes'] / 2**20:.2f} MiB as compressed 2:4 (values + 2-bit indices)")
    if args.out:
        save_sparse(model, tok, Path(args.out), sparse_manifest(model, 2, 4, method="proxsparse-trainer",
                                                                 steps=steps, lam=lam), overwrite=True)
        print(f"wrote {args.out}; check it with: torchprox check {args.out}")
    return 0 if len(ok) == len(names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
