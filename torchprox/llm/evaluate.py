"""Perplexity of a causal LM over non-overlapping token windows.

* [`perplexity`][torchprox.llm.evaluate.perplexity]: ``exp(mean token NLL)`` over blocks ``(B, seqlen)``, the standard non-overlapping-window
  perplexity (each block is scored on its own; the first token of a block is context only).
* [`perplexity_texts`][torchprox.llm.evaluate.perplexity_texts]: the same from raw texts (tokenized with [`torchprox.llm.data.tokenize_blocks`][torchprox.llm.data.tokenize_blocks]).

Examples:
    On the embedded model (minutes on a CPU, so not run as a doctest; see [`perplexity`][torchprox.llm.evaluate.perplexity] for a tiny one):

    >>> from torchprox.llm import load_default_model, evaluation_blocks
    >>> model, tokenizer = load_default_model()  # doctest: +SKIP
    >>> perplexity(model, evaluation_blocks(tokenizer, "builtin", seqlen=512))  # doctest: +SKIP
    18...
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ._runtime import module_device, progress_iter
from .data import tokenize_blocks

__all__ = ["perplexity", "perplexity_texts"]


def perplexity(
    model: torch.nn.Module,
    blocks: torch.Tensor,
    batch_size: int = 1,
    *,
    disable: bool = False,
    desc: str = "perplexity",
) -> float:
    """Perplexity ``exp(Σ NLL / Σ predicted tokens)`` of ``model`` over token blocks.

    Args:
        model: a causal LM whose forward takes ``input_ids`` and returns ``.logits`` (or a tensor)
            of shape ``(batch, seqlen, vocab)``, e.g. any ``transformers`` ``*ForCausalLM``.
        blocks: ``LongTensor (B, seqlen)`` (or ``(seqlen,)`` for one block), e.g. from
            [`torchprox.llm.data.evaluation_blocks`][torchprox.llm.data.evaluation_blocks]. Each block is scored independently: token ``t`` is
            predicted from tokens ``< t`` of the same block, so every block contributes ``seqlen - 1`` tokens.
        batch_size: blocks per forward pass (does not change the result beyond float rounding).
        disable: turn the tqdm progress bar off.

    Runs under ``torch.inference_mode`` on the model's device with ``use_cache=False``, in eval mode (the
    model's training flag is restored afterwards). The log-softmax is computed in float32 whatever the model
    dtype.

    With ``B`` blocks of ``seqlen`` tokens ``x_1..x_T`` (T = seqlen):

        ppl = exp( Σ_blocks Σ_{t=2..T} −log p(x_t | x_<t) / (B · (T − 1)) )

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg).eval()          # a tiny Llama, vocabulary of 64
        >>> blocks = torch.randint(0, 64, (4, 32))                   # 4 blocks of 32 token ids
        >>> ppl = perplexity(model, blocks, batch_size=2, disable=True)
        >>> loss = model(input_ids=blocks, labels=blocks).loss           # mean NLL of the same 4 × 31 tokens
        >>> abs(ppl - math.exp(loss.item())) < 1e-3 * ppl, 1 < ppl < 200  # an untrained model: ≈ vocabulary size
        (True, True)
    """
    if not isinstance(blocks, torch.Tensor):
        blocks = torch.as_tensor(blocks)
    if blocks.dim() == 1:
        blocks = blocks.unsqueeze(0)
    if blocks.dim() != 2 or blocks.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"blocks must be an integer tensor of shape (B, seqlen), got {tuple(blocks.shape)} "
                         f"{blocks.dtype}")
    n_blocks, seqlen = blocks.shape
    if n_blocks == 0:
        raise ValueError("blocks is empty")
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2 to predict any token, got {seqlen}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    device = module_device(model, torch.device("cpu"))
    was_training = model.training
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    starts = range(0, n_blocks, batch_size)
    try:
        with torch.inference_mode():
            for start in progress_iter(starts, not disable, total=len(starts), desc=desc, unit="batch", leave=False):
                ids = blocks[start : start + batch_size].to(device=device, dtype=torch.long)
                out = model(input_ids=ids, use_cache=False)
                logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out
                logits = logits[:, :-1, :].float()
                targets = ids[:, 1:]
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
                nll_sum += nll.double()
                count += targets.numel()
    finally:
        model.train(was_training)
    return math.exp(nll_sum.item() / count)


def perplexity_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: str | Sequence[str],
    seqlen: int = 512,
    max_tokens: int | None = 16384,
    *,
    batch_size: int = 1,
    disable: bool = False,
) -> float:
    """Perplexity over raw texts: joined with blank lines, tokenized without special tokens, cut into the first
    ``max_tokens // seqlen`` non-overlapping windows of ``seqlen`` tokens (all full windows if ``max_tokens``
    is None), then [`perplexity`][torchprox.llm.evaluate.perplexity].

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg).eval()
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
        >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")   # a tiny word-level tokenizer
        >>> texts = [" ".join(f"w{(d + i) % 64}" for i in range(100)) for d in range(3)]
        >>> ppl = perplexity_texts(model, tok, texts, seqlen=16, max_tokens=128, disable=True)
        >>> ppl == perplexity(model, tokenize_blocks(tok, texts, 16, max_tokens=128), disable=True)
        True

        On the real model: ``perplexity_texts(model, tokenizer, builtin_corpus()[1], seqlen=512)``.
    """
    blocks = tokenize_blocks(tokenizer, texts, seqlen, max_tokens=max_tokens, sample="contiguous")
    return perplexity(model, blocks, batch_size=batch_size, disable=disable)
