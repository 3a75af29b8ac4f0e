r"""Optional weight update once an N:M mask is fixed (after ProxSparse, or for any given masks).

The mask-only result (``W0 ⊙ mask``) is ProxSparse's output. These stages also change the kept weights, so
their results are reported apart from it:

- [`obs_update`][torchprox.llm.reconstruct.obs_update]: SparseGPT's OBS solver restricted to the given masks, block by block from the dense
  weights (each layer: ``argmin_{W' ⊙ ¬mask = 0} ‖(W' − W0) X‖²`` by SparseGPT's column-by-column scheme).
- [`finetune_masked`][torchprox.llm.reconstruct.finetune_masked]: a short fine-tune of the kept weights on the language-model loss with the mask
  frozen: Adam on ``W`` with ``∇W ⊙ mask``, so pruned weights stay exactly 0 (their Adam moments stay 0).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._runtime import block_order, freeze, restore_requires_grad, train_lm
from .baselines import sparsegpt_prune
from .distill import check_dense_pairs, dense_weights, distillation_loss, parse_loss

__all__ = ["obs_update", "finetune_masked"]


def _targets(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """``{key: the tensor it names}``, each mask checked (bool, of the tensor's shape) before anything changes.

    A key names a module with a ``weight`` (optionally with the ``".weight"`` suffix; the key is then the module
    name) or a module's own tensor ``"<module>.<param>"`` (a fused expert tensor, see
    [`torchprox.llm.targets`][torchprox.llm.targets])."""
    modules = dict(model.named_modules())
    out = {}
    for key, mask in masks.items():
        name = key.removesuffix(".weight")
        tensor = getattr(modules.get(name), "weight", None)
        if not isinstance(tensor, Tensor) and "." in name:
            layer, param = name.rsplit(".", 1)
            owner = modules.get(layer)
            tensor = getattr(owner, param, None) if owner is not None and param in dict(
                owner.named_parameters(recurse=False)) else None
        if not isinstance(tensor, Tensor):
            raise ValueError(f"masks names {key!r}, which is not a module with a weight in this model (nor a "
                             "module's parameter such as 'model.layers.0.mlp.experts.gate_up_proj')")
        if not isinstance(mask, Tensor) or mask.shape != tensor.shape or mask.dtype != torch.bool:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask for {key!r} must be bool of shape {tuple(tensor.shape)}, got {got}")
        out[name] = tensor
    return out


def obs_update(model: nn.Module, calib: Tensor, masks: dict[str, Tensor], n: int = 2, m: int = 4, *,
               progress: bool = False, **kwargs: Any) -> dict[str, float]:
    """Prune ``model``'s **dense** weights to ``masks`` with the OBS update of the kept weights, in place.

    Args:
        calib: ``LongTensor (B, seqlen)`` calibration blocks.
        masks: ``{key: bool mask of the tensor's shape}``, one per target: a module name (or its ``".weight"``
            tensor name) or an expert tensor's ``"<module>.<param>"`` with a 3-D mask (see
            [`torchprox.llm.targets`][torchprox.llm.targets]).
        kwargs: [`sparsegpt_prune`][torchprox.llm.baselines.sparsegpt_prune] options (``blocksize``, ``percdamp``, ...).
    Returns:
        ``{name: fraction of groups exactly N:M}``.

    Per layer (weight W (out, in), inputs X (in, tokens) from the already-updated blocks before it):
    ``W ← argmin_{W' ⊙ ¬mask = 0} ‖(W' − W) X‖²`` by SparseGPT's column-by-column OBS scheme
    ([`sparsegpt_solve`][torchprox.llm.baselines.sparsegpt_solve] with ``mask``). A fused expert tensor is
    solved per expert from the rows routed to it, as ``sparsegpt_prune`` does; an expert no calibration token
    reaches gets its mask without update (``fallbacks=`` reports it).

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)                 # a tiny Llama: 1 block of 7 linears
        >>> from torchprox.llm import target_linears
        >>> from torchprox.prox import nm_mask
        >>> calib = torch.randint(0, 64, (4, 16))
        >>> masks = {name: nm_mask(mod.weight.abs(), 2, 4, dim=1) for name, mod in target_linears(model)}
        >>> report = obs_update(model, calib, masks, 2, 4, blocksize=32)
        >>> min(report.values())
        1.0
        >>> q = model.model.layers[0].self_attn.q_proj.weight
        >>> bool((q[~masks["model.layers.0.self_attn.q_proj"]] == 0).all())       # zero exactly off the mask
        True
    """
    names = list(_targets(model, masks))
    return sparsegpt_prune(model, calib, n, m, targets=names, masks=masks, progress=progress, **kwargs)


def finetune_masked(model: nn.Module, calib: Tensor, masks: dict[str, Tensor], steps: int = 40,
                    lr: float = 2e-4, batch_size: int = 1, seed: int = 0, progress: bool = False, *,
                    loss: str = "lm", kd_temperature: float = 1.0,
                    dense: dict[str, Tensor] | None = None) -> dict[str, Any]:
    r"""Fine-tune the kept weights of the masked targets on the LM loss, the mask frozen, in place.

    ``W ← W − Adam(∇L ⊙ mask)`` for ``steps`` steps on calibration blocks in a seeded order, learning rate
    ``lr`` decaying linearly to 0. Only the target weights train (everything else is frozen and unchanged);
    pruned weights stay exactly 0. The model's targets should already be ``W ⊙ mask``.

    Args:
        calib: ``LongTensor (B, seqlen)`` calibration blocks; step t uses ``batch_size`` of them.
        masks: ``{key: bool mask of the tensor's shape}``, one per target: a module name (or its ``".weight"``
            tensor name) or an expert tensor's ``"<module>.<param>"`` with a 3-D mask. An expert no batch routes
            a token to gets no gradient and keeps its values.
        loss: the training loss (see [`torchprox.llm.distill`][torchprox.llm.distill]): ``"lm"`` (the default),
            or with ``"kd"`` / ``"hidden"`` terms, whose teacher is the model with ``dense`` swapped in.
        kd_temperature: τ of a ``"kd"`` term.
        dense: ``{key: the dense weight}`` for every key of ``masks`` (same shape, dtype and device as the
            target), needed by a loss with a teacher: the original W0 the mask was chosen for.

    Returns:
        ``{"steps", "seconds", "loss" (per step)}``.

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)                 # a tiny Llama: 1 block of 7 linears
        >>> from torchprox.llm import magnitude_prune, target_linears
        >>> _ = magnitude_prune(model, 2, 4)
        >>> masks = {name: mod.weight != 0 for name, mod in target_linears(model)}
        >>> w = model.model.layers[0].mlp.up_proj.weight
        >>> before = w.detach().clone()
        >>> report = finetune_masked(model, torch.randint(0, 64, (4, 16)), masks, steps=3, lr=1e-2)
        >>> report["steps"], len(report["loss"])
        (3, 3)
        >>> bool(torch.equal(w != 0, before != 0)), bool(torch.equal(w, before))   # same zeros, new kept values
        (True, False)
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    targets = _targets(model, masks)
    terms = parse_loss(loss)
    teacher = None
    if "kd" in terms or "hidden" in terms:
        missing = [key for key in masks if dense is None or key not in dense]
        if missing:
            raise ValueError(f"loss {loss!r} distils from the dense model: pass dense={{key: W0}} for every mask "
                             f"(missing {missing[0]!r})")
        pairs = [(targets[key.removesuffix(".weight")], dense[key]) for key in masks]
        check_dense_pairs(pairs)  # before anything changes
        teacher = lambda model: dense_weights(pairs)  # noqa: E731
    # Built (and its temperature checked) before anything changes.
    loss_fn = None if teacher is None and loss == "lm" else distillation_loss(loss, kd_temperature, teacher)
    requires = freeze(model)
    params, hooks = [], []
    for key, mask in masks.items():
        w = targets[key.removesuffix(".weight")]
        with torch.no_grad():
            w.masked_fill_(~mask.to(w.device), 0)
        w.requires_grad_(True)
        keep = mask.to(device=w.device, dtype=w.dtype)
        hooks.append(w.register_hook(lambda g, keep=keep: g * keep))
        params.append(w)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1 - t / steps))
    try:
        losses, seconds = train_lm(model, calib, block_order(calib.shape[0], steps, batch_size, seed), opt, sched,
                                   progress=progress, desc="masked fine-tune", loss_fn=loss_fn)
    finally:
        for h in hooks:
            h.remove()
        restore_requires_grad(model, requires)
        for p in model.parameters():
            p.grad = None
    return {"steps": steps, "seconds": seconds, "loss": losses}
