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
from ..prox import parse_pattern  # re-exported: it lived in torchprox.llm.sparsify
from .baselines import magnitude_prune, sparsegpt_prune, sparsegpt_solve, wanda_prune, wanda_scores
from .blocks import decoder_layers, linear_group_dim, target_linears
from .corpus import builtin_corpus, news_corpus
from .data import BUILTIN_SOURCES, calibration_blocks, evaluation_blocks, load_texts, split_texts, tokenize_blocks
from .demo import FINETUNE_ROW, ROWS, run_demo
from .distill import LOSS_TERMS, dense_weights, distillation_loss, parse_loss
from .experts import ExpertInputStats, routed_inputs, supports_capture
from .evaluate import perplexity, perplexity_texts
from .export import MANIFEST, check_replaceable, check_sparse, memory_report, save_sparse, sparse_manifest
from .markup import strip_wiki_markup
from .models import (DEFAULT_MODEL_NAMES, GEMMA3_SHA256, PACKAGED_MODELS, PackagedModel, default_cache_dir,
                     default_model_path, default_model_source, gemma3_gguf_path, load_default_model, load_model,
                     load_packaged_model, packaged_cache_dir, packaged_model, packaged_model_source)
from .proxsparse import DEFAULT_LAM, DEFAULT_LR, RECONSTRUCTS, ProxSparseConfig, learn_masks, nm_progress
from .reconstruct import finetune_masked, obs_update
from .semi_structured import to_semi_structured
from .sparsify import METHODS, sparsify
from .targets import ROUTER, UNFLAGGED_EXPERTS, Target, coverage_report, expert_layout, target_tensors

__all__ = [
    # learning masks
    "sparsify", "METHODS", "parse_pattern", "ProxSparseConfig", "learn_masks", "DEFAULT_LAM", "DEFAULT_LR", "RECONSTRUCTS",
    "LOSS_TERMS", "parse_loss", "distillation_loss", "dense_weights",
    # one-shot baselines
    "magnitude_prune", "wanda_prune", "sparsegpt_prune", "wanda_scores", "sparsegpt_solve",
    # data
    "BUILTIN_SOURCES", "builtin_corpus", "news_corpus", "strip_wiki_markup", "load_texts", "split_texts",
    "tokenize_blocks", "calibration_blocks", "evaluation_blocks",
    # models and target layers
    "DEFAULT_MODEL_NAMES", "load_default_model", "load_model", "default_model_path", "default_cache_dir",
    "default_model_source", "PACKAGED_MODELS", "PackagedModel", "packaged_model", "packaged_cache_dir",
    "packaged_model_source", "load_packaged_model", "gemma3_gguf_path", "GEMMA3_SHA256",
    "decoder_layers", "target_linears", "linear_group_dim",
    "Target", "target_tensors", "coverage_report", "expert_layout", "UNFLAGGED_EXPERTS", "ROUTER",
    "routed_inputs", "supports_capture", "ExpertInputStats",
    # evaluation, the demo
    "perplexity", "perplexity_texts", "run_demo", "ROWS", "FINETUNE_ROW",
    # updating the kept weights
    "obs_update", "finetune_masked",
    # Trainer, PEFT, export
    "NMMaskCallback", "nm_progress", "merge_lora_nm", "lora_nm_report",
    "MANIFEST", "save_sparse", "sparse_manifest", "check_sparse", "check_replaceable", "memory_report",
    "to_semi_structured",
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
