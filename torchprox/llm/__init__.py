"""N:M sparsity for Hugging Face causal LMs: data, ProxSparse learning, one-shot baselines, evaluation.

Examples:
    On the embedded SmolLM2-135M (minutes on a CPU, so not run as a doctest):

    >>> from torchprox.llm import load_default_model, calibration_blocks, evaluation_blocks, sparsify, perplexity
    >>> model, tok = load_default_model()  # doctest: +SKIP
    >>> report = sparsify(model, calibration_blocks(tok, n_blocks=100), 2, 4, method="proxsparse", steps=100)  # doctest: +SKIP
    >>> perplexity(model, evaluation_blocks(tok))  # doctest: +SKIP

    The same steps on a tiny Llama built from a config, with random token blocks:

    >>> import torch, transformers
    >>> _ = torch.manual_seed(0)
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                                num_attention_heads=4, num_key_value_heads=2)
    >>> model = transformers.LlamaForCausalLM(cfg)
    >>> calib, evals = torch.randint(0, 64, (4, 16)), torch.randint(0, 64, (2, 16))   # LongTensor (B, seqlen)
    >>> report = sparsify(model, calib, 2, 4, method="proxsparse", steps=4, progress=False)
    >>> min(report["layers"].values())                         # every decoder linear is exactly 2:4
    1.0
    >>> perplexity(model, evals, disable=True) > 1
    True
"""
from .baselines import magnitude_prune, sparsegpt_prune, sparsegpt_solve, wanda_prune, wanda_scores
from .blocks import decoder_layers, target_linears
from .corpus import builtin_corpus, news_corpus
from .data import calibration_blocks, evaluation_blocks, load_texts, split_texts, tokenize_blocks
from .evaluate import perplexity, perplexity_texts
from .export import MANIFEST, check_sparse, memory_report, save_sparse, sparse_manifest
from .models import load_default_model, load_model
from .proxsparse import ProxSparseConfig, learn_masks, nm_progress
from .reconstruct import finetune_masked, obs_update
from .semi_structured import to_semi_structured
from .sparsify import METHODS, parse_pattern, sparsify

__all__ = [
    "magnitude_prune", "sparsegpt_prune", "wanda_prune", "wanda_scores", "sparsegpt_solve", "decoder_layers", "target_linears", "builtin_corpus",
    "news_corpus",
    "calibration_blocks", "evaluation_blocks", "load_texts", "split_texts", "tokenize_blocks", "perplexity", "perplexity_texts",
    "load_default_model", "load_model", "ProxSparseConfig", "learn_masks", "METHODS", "parse_pattern", "sparsify",
    "MANIFEST", "save_sparse", "sparse_manifest", "check_sparse", "to_semi_structured", "memory_report",
    "NMMaskCallback", "nm_progress", "merge_lora_nm", "lora_nm_report", "obs_update", "finetune_masked",
]

# Names whose modules import heavy optional packages (transformers.Trainer, peft): loaded on first use.
_LAZY = {"NMMaskCallback": "trainer", "merge_lora_nm": "peft", "lora_nm_report": "peft"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
