"""N:M sparsity for Hugging Face causal LMs: data, ProxSparse learning, one-shot baselines, evaluation.

Example::

    >>> from torchprox.llm import load_default_model, calibration_blocks, evaluation_blocks, sparsify, perplexity
    >>> model, tok = load_default_model()
    >>> report = sparsify(model, calibration_blocks(tok, n_blocks=200), 2, 4, method="proxsparse", steps=200)
    >>> perplexity(model, evaluation_blocks(tok))
"""
from .baselines import magnitude_prune, sparsegpt_prune, wanda_prune
from .blocks import decoder_layers, target_linears
from .data import builtin_corpus, calibration_blocks, news_corpus, evaluation_blocks, load_texts, tokenize_blocks
from .evaluate import perplexity, perplexity_texts
from .export import MANIFEST, check_sparse, memory_report, save_sparse, sparse_manifest, to_semi_structured
from .models import load_default_model, load_model
from .proxsparse import ProxSparseConfig, learn_masks
from .reconstruct import finetune_masked, obs_update
from .sparsify import METHODS, parse_pattern, sparsify

__all__ = [
    "magnitude_prune", "sparsegpt_prune", "wanda_prune", "decoder_layers", "target_linears", "builtin_corpus",
    "news_corpus",
    "calibration_blocks", "evaluation_blocks", "load_texts", "tokenize_blocks", "perplexity", "perplexity_texts",
    "load_default_model", "load_model", "ProxSparseConfig", "learn_masks", "METHODS", "parse_pattern", "sparsify",
    "MANIFEST", "save_sparse", "sparse_manifest", "check_sparse", "to_semi_structured", "memory_report",
    "NMMaskCallback", "nm_progress", "merge_lora_nm", "lora_nm_report", "obs_update", "finetune_masked",
]

# Names whose modules import heavy optional packages (transformers.Trainer, peft): loaded on first use.
_LAZY = {"NMMaskCallback": "trainer", "nm_progress": "trainer", "merge_lora_nm": "peft", "lora_nm_report": "peft"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
