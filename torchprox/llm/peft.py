r"""LoRA on an N:M-sparse model without losing the pattern: the masked merge.

A LoRA adapter adds a dense low-rank update to a target weight W (out, in):

    ΔW = (α / r) · B A,        B: (out, r),  A: (r, in)

PEFT's ``merge_and_unload()`` stores ``W + ΔW``, which is dense: every pruned zero of the N:M weight becomes
nonzero. [`merge_lora_nm`][torchprox.llm.peft.merge_lora_nm] merges only on the positions the sparse weight keeps:

    mask    = (W ≠ 0)                       # the existing N:M mask, read from the base weight's zeros
    W_new   = mask ⊙ (W + ΔW)               # kept values: W + ΔW; pruned positions: exactly 0

so ``W_new`` has the zero pattern of W and stays exactly N:M. The part of ΔW on pruned positions,
``(1 − mask) ⊙ ΔW``, is dropped; [`lora_nm_report`][torchprox.llm.peft.lora_nm_report] says how much of each update that is
(``delta_kept`` = ‖mask ⊙ ΔW‖² / ‖ΔW‖²). For the tuned behaviour to survive the merge exactly, fine-tune
with the same masked update in the forward (not provided here) or check the merged model's loss.

Typical use:

    sparsify(model, calib, 2, 4)                         # or ProxSparse + apply_learned_masks + remove_all
    peft_model = peft.get_peft_model(model, LoraConfig(r=8, target_modules=[...]))
    ...fine-tune...
    model = merge_lora_nm(peft_model)                    # the transformers model, every target exactly 2:4
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..prune import is_nm, nm_fraction
from .blocks import linear_group_dim

__all__ = ["merge_lora_nm", "lora_nm_report"]

logger = logging.getLogger(__name__)


def _lora_layers(model: nn.Module) -> list[tuple[str, Any]]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError as err:  # pragma: no cover - peft is in the llm extra
        raise ImportError("torchprox.llm.peft needs peft: pip install peft (or torchprox[llm])") from err
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, LoraLayer)]


def _is_linear_lora(layer) -> bool:
    from peft.tuners.lora import Linear as LoraLinear

    return isinstance(layer, LoraLinear)


def _adapters(layer, adapter_names) -> list[str]:
    names = list(layer.active_adapters) if adapter_names is None else list(adapter_names)
    return [a for a in names if a in layer.lora_A and a not in layer.merged_adapters]


def _check_layer(name: str, layer, adapters: list[str], n: int, m: int, require_nm: bool) -> bool:
    """Validate one LoRA layer; True when its base weight is N:M (masked merge), False for a dense merge."""
    base = layer.get_base_layer()
    if parametrize.is_parametrized(base):
        raise ValueError(f"LoRA target {name!r}: its base layer is still parametrized (torchprox.prune learning or "
                         "masked state); call torchprox.prune.apply_learned_masks and remove_all before "
                         "get_peft_model")
    for a in adapters:
        if a in getattr(layer, "lora_variant", {}):
            raise ValueError(f"LoRA target {name!r}: adapter {a!r} is a {type(layer.lora_variant[a]).__name__} "
                             "variant (e.g. DoRA); only plain LoRA (W + ΔW) has a masked merge. Use "
                             "LoraConfig(use_dora=False)")
    for a in adapters:
        if layer.lora_bias.get(a, False) and getattr(layer.get_base_layer(), "bias", None) is None:
            raise ValueError(f"LoRA target {name!r}: adapter {a!r} has lora_bias=True but the base layer has no "
                             "bias; use LoraConfig(lora_bias=False)")
    if not _is_linear_lora(layer):
        if require_nm:
            raise ValueError(f"LoRA target {name!r} is a {type(layer).__name__}, not a linear layer: N:M applies to "
                             "linear weights. Leave it out of target_modules, or pass require_nm=False to merge it "
                             "densely")
        return False
    weight = base.weight
    dim = linear_group_dim(base)
    if weight.shape[dim] % m:
        nm = False
    else:
        nm = is_nm(weight.detach(), n, m, dim=dim)
    if not nm and require_nm:
        frac = float(nm_fraction(weight.detach(), n, m, dim)) if weight.shape[dim] % m == 0 else None
        got = (f"{frac:.1%} of its groups are" if frac is not None
               else f"size {weight.shape[dim]} along dim {dim} is not")
        raise ValueError(
            f"LoRA target {name!r}: base weight of shape {tuple(weight.shape)} is not {n}:{m} along dim {dim} "
            f"({got} {n}:{m}), so it has no N:M mask to merge into. Sparsify it first, leave it out of "
            "target_modules, or pass require_nm=False to merge such layers densely")
    return nm


@torch.no_grad()
def merge_lora_nm(model: nn.Module, n: int = 2, m: int = 4, *, adapter_names: list[str] | None = None,
                  require_nm: bool = True, safe_merge: bool = True) -> nn.Module:
    r"""Merge LoRA adapters into N:M-sparse base weights on the kept positions only; return the base model.

    For every LoRA linear layer with base weight W (``nn.Linear`` (out, in), groups along dim 1; transformers
    ``Conv1D`` (in, out), dim 0) and each adapter to merge, ΔW = ``layer.get_delta_weight(adapter)`` (shaped
    like W, ``fan_in_fan_out`` handled by PEFT), and:

        mask = (W ≠ 0)   (taken once, before any adapter is merged)
        W   ← where(mask, W + ΔW, 0)

    so every merged weight keeps W's zeros and is exactly N:M. This is PEFT's own ``merge_and_unload()``
    (``W + ΔW`` per adapter, a ``lora_bias`` into the bias, the wrappers removed) followed by zeroing the
    positions W had pruned; the kept values are PEFT's, bit for bit.

    Args:
        model: a ``peft.PeftModel`` (or ``LoraModel``) whose LoRA targets wrap N:M-sparse linears.
        n: nonzeros kept per group (default 2).
        m: the group size (default 4).
        adapter_names: the adapters to merge (default: the active ones). Others are dropped.
        require_nm: a LoRA target whose base weight is not N:M (or not a linear layer) is a ValueError; with
            False it is merged densely (``W + ΔW``, as PEFT does), with a warning.
        safe_merge: PEFT's check that each layer's merged weights are finite before it writes them (ValueError
            otherwise); it checks the dense ``W + ΔW``, so a non-finite ΔW on a pruned position is an error too.
    Returns:
        the base model (``transformers`` model), its target weights exactly N:M.
    Raises:
        ValueError: no LoRA layer; a target not N:M (with ``require_nm``); a DoRA/variant adapter; a
            ``lora_bias`` adapter on a layer without bias; a base layer still parametrized by torchprox;
            non-finite merged weights (with ``safe_merge``).

    Examples:
        >>> import peft
        >>> from torchprox.llm import magnitude_prune
        >>> from torchprox.prune import is_nm
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> _ = magnitude_prune(model, 2, 4)                             # the sparse base model
        >>> lora = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # ΔW ≠ 0
        >>> peft_model = peft.get_peft_model(model, lora)
        >>> q = model.model.layers[0].self_attn.q_proj.base_layer.weight
        >>> before = q.detach().clone()
        >>> merged = merge_lora_nm(peft_model)
        >>> q = merged.model.layers[0].self_attn.q_proj.weight             # a plain nn.Linear again, (32, 32)
        >>> type(merged).__name__, is_nm(q, 2, 4, dim=1)
        ('LlamaForCausalLM', True)
        >>> bool(torch.equal(q != 0, before != 0)), bool(torch.equal(q, before))   # same zeros, updated values
        (True, False)
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layer; merge_lora_nm expects a peft.PeftModel built "
                         "with get_peft_model(model, LoraConfig(...))")
    keep, dense = [], []
    for name, layer in layers:  # validate everything before changing anything
        adapters = _adapters(layer, adapter_names)
        if not adapters:
            continue
        if _check_layer(name, layer, adapters, n, m, require_nm):
            base = layer.get_base_layer()
            keep.append((base, base.weight != 0))
        else:
            dense.append(name)
    if dense:
        logger.warning("merge_lora_nm: %d LoRA target(s) were not %d:%d and were merged densely: %s", len(dense),
                       n, m, ", ".join(dense))
    merged = model.merge_and_unload(safe_merge=safe_merge, adapter_names=adapter_names)
    for base, mask in keep:  # PEFT's dense W + ΔW, back to W's zeros
        base.weight.masked_fill_(~mask, 0)
    return merged


@torch.no_grad()
def lora_nm_report(model: nn.Module, n: int = 2, m: int = 4, adapter_names: list[str] | None = None
                   ) -> dict[str, dict[str, Any]]:
    r"""Per LoRA linear target: is the base weight N:M, and how much of the update a masked merge keeps.

    ``{name: {"shape", "base_is_nm", "delta_kept"}}`` with ``delta_kept = ‖mask ⊙ ΔW‖² / ‖ΔW‖²``
    (mask = W ≠ 0, ΔW summed over the adapters; 1.0 when ΔW = 0): the fraction of the update's energy that
    [`merge_lora_nm`][torchprox.llm.peft.merge_lora_nm] stores. For a rank-r update spread evenly it is about n/m.

    Examples:
        >>> import peft
        >>> from torchprox.llm import magnitude_prune
        >>> from torchprox.prune import is_nm
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> _ = magnitude_prune(model, 2, 4)                             # the sparse base model
        >>> lora = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # ΔW ≠ 0
        >>> peft_model = peft.get_peft_model(model, lora)
        >>> report = lora_nm_report(peft_model)
        >>> sorted(report)
        ['base_model.model.model.layers.0.self_attn.q_proj', 'base_model.model.model.layers.0.self_attn.v_proj']
        >>> r = report["base_model.model.model.layers.0.self_attn.v_proj"]
        >>> r["shape"], r["base_is_nm"], 0.2 < r["delta_kept"] < 0.8           # about n/m = 0.5 is kept
        ([16, 32], True, True)
    """
    out = {}
    for name, layer in _lora_layers(model):
        if not _is_linear_lora(layer):
            continue
        adapters = _adapters(layer, adapter_names)
        base = layer.get_base_layer()
        weight = base.weight.detach()
        dim = linear_group_dim(base)
        delta = torch.zeros_like(weight, dtype=torch.float32)
        for a in adapters:
            delta += layer.get_delta_weight(a).float()
        total = float(delta.square().sum())
        kept = float(delta.square()[weight != 0].sum())
        out[name] = {"shape": list(weight.shape),
                     "base_is_nm": weight.shape[dim] % m == 0 and is_nm(weight, n, m, dim=dim),
                     "delta_kept": kept / total if total > 0 else 1.0}
    return out
