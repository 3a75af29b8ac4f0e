"""A Hugging Face causal LM made exactly 2:4 end to end: from Python, then from the ``torchprox`` CLI.

    python examples/llm_end_to_end.py --quick    # seconds: a tiny Llama + tokenizer built from configs, saved
                                                 # to a temp dir, a tiny text corpus; nothing is downloaded
    python examples/llm_end_to_end.py            # the embedded SmolLM2-135M-Instruct and the built-in corpus
                                                 # (about 15 minutes on 2 CPU cores)

Python: ``load_model`` → ``calibration_blocks`` / ``evaluation_blocks`` → ``sparsify(method="proxsparse")``
(and the one-shot ``"magnitude"`` baseline to compare) → ``perplexity`` → ``save_sparse`` + ``check_sparse``.
CLI: ``torchprox sparsify MODEL --data SRC --pattern 2:4 --method proxsparse --out DIR && torchprox check DIR``.
"""
from __future__ import annotations

import argparse
import copy
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from torchprox.llm import (calibration_blocks, check_sparse, evaluation_blocks, load_default_model,  # noqa: E402
                           load_model, perplexity, save_sparse, sparse_manifest, sparsify)


def save_tiny_model_and_corpus(root: Path) -> tuple[Path, Path]:
    """A 2-layer Llama (hidden 32) and a word-level tokenizer from configs, plus ten short text documents."""
    import random

    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    vocab = {f"w{i}": i for i in range(63)} | {"[UNK]": 63}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    model_dir, corpus = root / "tiny-llama", root / "corpus"
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    corpus.mkdir()
    rng = random.Random(0)
    docs = [" ".join(f"w{(3 * i + rng.randrange(4)) % 63}" for i in range(400)) for _ in range(10)]
    for d, text in enumerate(docs):  # a repeating motif plus noise: something a tiny model can learn
        (corpus / f"doc{d}.txt").write_text(text + "\n")
    model = transformers.LlamaForCausalLM(config)
    ids = torch.tensor(tok(" ".join(docs))["input_ids"][: 100 * 32]).view(100, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(60):  # a few steps of pre-training, so the dense model is better than chance
        batch = ids[torch.randint(0, len(ids), (8,))]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir, corpus


def python_api(model, tok, data, seqlen: int, steps: int, recipe: dict, out: Path) -> None:
    calib = calibration_blocks(tok, data, seqlen=seqlen, n_blocks=steps)      # LongTensor (steps, seqlen)
    evals = evaluation_blocks(tok, data, seqlen=seqlen, max_tokens=16 * seqlen)
    dense = perplexity(model, evals)

    magnitude = copy.deepcopy(model)
    sparsify(magnitude, None, 2, 4, method="magnitude")                       # one-shot baseline
    report = sparsify(model, calib, 2, 4, method="proxsparse", steps=steps, progress=False, **recipe)
    print(f"perplexity: dense {dense:.2f} | magnitude 2:4 {perplexity(magnitude, evals):.2f} | "
          f"ProxSparse 2:4 {perplexity(model, evals):.2f} ({report['seconds']:.1f} s, "
          f"{min(report['layers'].values()):.0%} of groups 2:4 in the worst layer)")

    save_sparse(model, tok, out, sparse_manifest(model, 2, 4, method="proxsparse", config=report["config"]),
                overwrite=True)
    check = check_sparse(out)                                                 # reads the safetensors directly
    print(f"saved {out}: {len(check['layers'])} layers, all exactly {check['pattern']}: {check['ok']}")
    assert check["ok"]


def cli(model: str, data: str, seqlen: int, steps: int, recipe: dict, out: Path) -> None:
    exe = Path(sys.executable).with_name("torchprox")
    tp = shlex.quote(str(exe)) if exe.exists() else f"{shlex.quote(sys.executable)} -m torchprox.cli"
    flags = "".join(f" --{key} {value}" for key, value in recipe.items())
    command = (f"{tp} sparsify {shlex.quote(model)} --data {shlex.quote(data)} --pattern 2:4 --method proxsparse "
               f"--steps {steps} --seqlen {seqlen}{flags} --out {shlex.quote(str(out))} --overwrite "
               f"&& {tp} check {shlex.quote(str(out))}")
    print(f"$ {command}", flush=True)
    subprocess.run(["bash", "-c", command], check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model and corpus built on the fly (seconds)")
    ap.add_argument("--out", help="where to save the 2:4 models (default: a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or scratch)
        root.mkdir(parents=True, exist_ok=True)
        if args.quick:
            torch.set_num_threads(1)
            os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the CLI subprocesses
            model_dir, corpus = save_tiny_model_and_corpus(root)
            # a strong λ so that 24 steps reach 2:4 on a barely trained model
            model_name, data, seqlen, steps, recipe = str(model_dir), str(corpus), 32, 24, {"lam": 0.1}
            model, tok = load_model(model_dir)
        else:  # the library's recipe (ProxSparseConfig's defaults)
            model_name, data, seqlen, steps, recipe = "default", "builtin", 512, 100, {}
            model, tok = load_default_model()
        python_api(model, tok, data, seqlen, steps, recipe, root / "python-2of4")
        cli(model_name, data, seqlen, steps, recipe, root / "cli-2of4")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
