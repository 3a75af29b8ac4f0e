r"""What torchprox makes N:M in a causal LM: every matrix weight of the decoder blocks, each grouped along its
input (reduction) dim, and a report of what stays dense and why.

A decoder block's *matrix weights* are its tensors of two or more dims that are not biases. They are of
three kinds:

- the ``weight`` of an ``nn.Linear`` (out, in) → dim 1, or of a transformers ``Conv1D`` (in, out) → dim 0;
- a **fused expert tensor** of a Mixture-of-Experts block: transformers 5.x keeps all experts of a projection
  in one ``nn.Parameter``, (experts, out, in) applied as ``F.linear(x, W[e])`` → dim 2, or (experts, in, out)
  applied as ``x @ W[e]`` (GPT-OSS, Llama 4, Aria) → dim 1. The layout is read per class, never guessed from
  the shape (real checkpoints have square experts): the flag ``is_transposed`` that
  ``@use_experts_implementation`` sets on the module (every backend of transformers reads it), the table
  `UNFLAGGED_EXPERTS` for the classes without the flag, or a layout registered with
  [`torchprox.prune.register_layout`][torchprox.prune._layers.register_layout];
- anything else: routers (kept dense by default: one (experts, hidden) matrix per block, a negligible share of
  the weights, and the mask would change which experts tokens reach), and tensors of unknown layout.

Each target has a *key*, the name reports, manifests and masks use: the module's qualified name for a
``weight`` (``"model.layers.0.self_attn.q_proj"``), ``"<module>.<param>"`` otherwise
(``"model.layers.0.mlp.experts.gate_up_proj"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..prune import (
    check_groupable,
    compile_targets,
    is_hf_conv1d,
    name_matches,
    nm_fraction,
    registered_dim,
)

__all__ = ["ROUTER", "UNFLAGGED_EXPERTS", "Target", "coverage_report", "expert_layout", "target_tensors"]

#: Parameters a flagged (``@use_experts_implementation``) experts module multiplies, one per projection.
FUSED_PROJECTIONS = ("gate_up_proj", "up_proj", "gate_proj", "down_proj")

#: Fused-experts classes of transformers without the ``is_transposed`` flag: ``{class name: {parameter: input
#: dim}}``, read from each class's forward (``Llama4TextExperts``: ``torch.bmm(x, W)`` with W (E, in, out)) and
#: checked by a behavioural test per class (tests/llm/test_targets.py).
UNFLAGGED_EXPERTS: dict[str, dict[str, int]] = {
    "Llama4TextExperts": {"gate_up_proj": 1, "down_proj": 1},
}

#: The reason `coverage_report` gives for a router left dense.
ROUTER = "router (kept dense by default; name it in targets= to include a linear one)"
_ROUTER_NAMES = ("gate", "router", "shared_expert_gate", "shared_experts_gate")


@dataclass(frozen=True, eq=False)
class Target:
    """One matrix weight to make N:M: ``module.<param>`` grouped along ``dim`` (non-negative).

    ``key`` names it in reports, manifests and masks (see the module docstring); ``layer`` is the module's
    qualified name. A fused expert tensor has the experts along dim 0 (``experts`` is their number, None for a
    plain matrix).

    Examples:
        >>> import transformers
        >>> cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
        >>> t = target_tensors(transformers.MixtralForCausalLM(cfg))[-1]
        >>> t.key, t.tensor_name, t.dim, t.experts, tuple(t.weight.shape)
        ('model.layers.0.mlp.experts.down_proj', 'model.layers.0.mlp.experts.down_proj', 2, 4, (4, 32, 64))
    """

    key: str
    layer: str
    module: nn.Module
    param: str
    dim: int

    @property
    def weight(self) -> Tensor:
        return getattr(self.module, self.param)

    @property
    def tensor_name(self) -> str:
        """The qualified name of the tensor, as in ``named_parameters()`` (``"...q_proj.weight"``)."""
        return f"{self.layer}.{self.param}" if self.layer else self.param

    @property
    def is_linear(self) -> bool:
        return self.param == "weight" and _is_linear_like(self.module)

    @property
    def experts(self) -> int | None:
        return self.weight.shape[0] if self.weight.dim() == 3 and not self.is_linear else None


def target_key(layer: str, param: str) -> str:
    """The key of ``layer.<param>`` (see the module docstring): the layer's name for a ``weight``, else
    ``"<layer>.<param>"``."""
    return layer if param == "weight" else f"{layer}.{param}" if layer else param


def along_input_dim(values: Tensor, ndim: int, dim: int) -> Tensor:
    """Per-input-feature ``values`` viewed to broadcast over a weight of ``ndim`` dims whose input dim is ``dim``:
    ``(in,)`` along ``dim``; a fused expert tensor's per-expert ``(experts, in)`` along dims 0 and ``dim``."""
    shape = [1] * ndim
    shape[dim] = values.shape[-1]
    if values.dim() == 2:
        shape[0] = values.shape[0]
    return values.reshape(shape)


def _is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def _from_transformers(cls: type) -> bool:
    return cls.__module__.startswith("transformers.")


def _tensors(module: nn.Module) -> dict[str, Tensor]:
    """The module's own tensors by name, parametrized ones included (``getattr`` gives what the forward sees)."""
    names = [k for k, v in module._parameters.items() if v is not None]
    if parametrize.is_parametrized(module):
        names += [k for k in module.parametrizations.keys() if k not in names]
    return {k: getattr(module, k) for k in names}


def expert_layout(module: nn.Module) -> dict[str, int]:
    """``{parameter: input dim}`` of a fused-experts module of transformers, ``{}`` for any other module.

    Flagged classes (decorated with ``@use_experts_implementation``, e.g. Mixtral, Qwen2/3-MoE, OLMoE,
    DeepSeek-V3, GPT-OSS): the 3-D ``gate_up_proj``/``up_proj``/``gate_proj``/``down_proj`` have input dim 1 if
    ``module.is_transposed`` else 2. Unflagged classes: `UNFLAGGED_EXPERTS`.

    Examples:
        >>> import transformers
        >>> cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
        >>> experts = transformers.MixtralForCausalLM(cfg).model.layers[0].mlp.experts
        >>> tuple(experts.gate_up_proj.shape), expert_layout(experts)      # (experts, out, in): F.linear(x, W[e])
        ((4, 128, 32), {'gate_up_proj': 2, 'down_proj': 2})
    """
    cls = parametrize.type_before_parametrizations(module)
    if not _from_transformers(cls):
        return {}
    tensors = _tensors(module)
    if cls.__name__ in UNFLAGGED_EXPERTS:
        return {p: d for p, d in UNFLAGGED_EXPERTS[cls.__name__].items() if p in tensors}
    transposed = module.__dict__.get("is_transposed")
    if not isinstance(transposed, bool) or "has_gate" not in module.__dict__:
        return {}
    return {p: 1 if transposed else 2 for p in FUSED_PROJECTIONS if p in tensors and tensors[p].dim() == 3}


def _is_router(qualname: str, module: nn.Module, parent: nn.Module | None) -> bool:
    if "router" in parametrize.type_before_parametrizations(module).__name__.lower():
        return True
    if parent is None or qualname.rsplit(".", 1)[-1] not in _ROUTER_NAMES:
        return False
    return any(expert_layout(child) or child_name == "experts" for child_name, child in parent.named_children())


def _classify(layers: nn.ModuleList, prefix: str) -> list[tuple[str, str, nn.Module, str, int | None, str | None]]:
    """Every matrix weight of the blocks as ``(key, layer, module, param, dim or None, why dense by default)``."""
    modules = dict(layers.named_modules(prefix=prefix))
    out = []
    for qualname, module in modules.items():
        if isinstance(module, parametrize.ParametrizationList) or ".parametrizations." in f".{qualname}.":
            continue
        layout = expert_layout(module)
        parent = modules.get(qualname.rsplit(".", 1)[0]) if "." in qualname else None
        router = _is_router(qualname, module, parent)
        for param, tensor in _tensors(module).items():
            if tensor.dim() < 2 or param.endswith("bias"):
                continue
            key = target_key(qualname, param)
            dim = registered_dim(module, param)
            if dim is None and param == "weight" and _is_linear_like(module):
                dim = 0 if is_hf_conv1d(module) else 1
            if dim is None:
                dim = layout.get(param)
            why = None
            if router:
                why = ROUTER
            elif dim is None:
                cls = parametrize.type_before_parametrizations(module).__name__
                why = (f"no known N:M layout for {cls}.{param} of shape {tuple(tensor.shape)}: call "
                       f"torchprox.prune.register_layout({cls}, {param!r}, dim) with the dim its forward reduces "
                       "over to include it")
            out.append((key, qualname, module, param, None if dim is None else dim % tensor.dim(), why))
    return out


def _matches(spec, layer: str, key: str) -> bool:
    """torchprox.prune's PEFT-style rule, on the module's name or the tensor's key."""
    return name_matches(layer, spec) or name_matches(key, spec)


def _name_spec(targets) -> tuple[str, Any]:
    if targets is None:
        return "all-linear", None
    if isinstance(targets, (list, tuple)) and not targets:
        raise TypeError(f"targets must be None, 'all-linear', a regex string or a list of names, got {targets!r}")
    return compile_targets(targets)


def target_tensors(model: nn.Module, targets=None, m: int | None = None) -> list[Target]:
    r"""The matrix weights of the decoder blocks to make N:M, in module order.

    Args:
        targets: a list of `Target` already resolved (by an earlier call: every stage of one run gets the same
            list, checked again), or ``None`` or ``"all-linear"``: every linear weight and fused expert tensor of the decoder blocks,
            except routers (never embeddings or ``lm_head``, which live outside them); a tensor of unknown
            layout is left out (see [`coverage_report`][torchprox.llm.targets.coverage_report]). Otherwise
            PEFT-style: a list of names or dotted suffixes of a module or of a tensor key (``["q_proj",
            "experts.gate_up_proj"]``; ``"experts"`` selects every expert tensor of those modules) or a regex
            (full match of the module name or the key). Named routers that are linear layers are included; a
            named tensor of unknown layout is a ``ValueError``; matches without a matrix weight (attention
            modules, norms) are skipped; selecting nothing is a ``ValueError``.
        m: when given, every selected tensor must be groupable into runs of ``m`` along its input dim
            (``ValueError`` naming it, its shape and the fix; torchprox never pads).

    Raises:
        ValueError: see above, or a selected weight is already parametrized (e.g. still learning a mask).

    Examples:
        >>> import transformers
        >>> cfg = transformers.Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...     num_attention_heads=4, num_key_value_heads=2, head_dim=8, moe_intermediate_size=32, num_experts=4)
        >>> model = transformers.Qwen3MoeForCausalLM(cfg)
        >>> [(t.key.removeprefix("model.layers.0."), t.dim) for t in target_tensors(model)]
        [('self_attn.q_proj', 1), ('self_attn.k_proj', 1), ('self_attn.v_proj', 1), ('self_attn.o_proj', 1), ('mlp.experts.gate_up_proj', 2), ('mlp.experts.down_proj', 2)]
        >>> [t.key.removeprefix("model.layers.0.") for t in target_tensors(model, ["experts.down_proj"])]
        ['mlp.experts.down_proj']
    """
    from .blocks import _layers_and_prefix

    if isinstance(targets, (list, tuple)) and targets and all(isinstance(t, Target) for t in targets):
        return _check_resolved(model, list(targets), m)  # already resolved: every stage gets the same list
    layers, prefix = _layers_and_prefix(model)
    spec = _name_spec(targets)
    out = []
    for key, layer, module, param, dim, why in _classify(layers, prefix):
        if spec[0] == "all-linear":
            if why is not None:
                continue
        elif not _matches(spec, layer, key):
            continue
        elif dim is None:
            raise ValueError(f"{key}: {why}" if why != ROUTER else
                             f"{key}: a router of class {type(module).__name__} with no known N:M layout; routers "
                             "stay dense")
        out.append(Target(key, layer, module, param, dim))
    if not out:
        example = next((k for k, *_ in _classify(layers, prefix)), prefix + ".0...")
        raise ValueError(f"targets={targets!r} selects no matrix weight inside the decoder blocks of "
                         f"{type(model).__name__} (names look like {example!r})")
    return _check_resolved(model, out, m)


def _check_resolved(model: nn.Module, out: list[Target], m: int | None) -> list[Target]:
    """The targets, each checked: a module of ``model``, not parametrized, groupable by ``m``."""
    modules = {id(mod) for mod in model.modules()}
    for t in out:
        if id(t.module) not in modules:
            raise ValueError(f"target {t.key!r} is not a module of this {type(model).__name__}; resolve the targets "
                             "on the model they are used with")
        if parametrize.is_parametrized(t.module, t.param):
            raise ValueError(f"{t.key}: its {t.param} is parametrized (e.g. torchprox.prune.learnable_nm); remove the "
                             "parametrization (torchprox.prune.remove) first")
        if m is not None:
            check_groupable(t.module, tuple(t.weight.shape), t.dim, m, t.key, t.param)
    return out


def coverage_report(model: nn.Module, n: int, m: int, targets=None) -> dict[str, Any]:
    r"""How much of the decoder blocks is N:M: by count of weights, over every matrix weight of the blocks.

    Returns:
        `{"matrix_weights": int, "nm_weights": int, "coverage": nm_weights / matrix_weights, "dense": {tensor
            name: why}}`: `nm_weights` counts the entries of the tensors that are exactly N:M along their
            input dim; `dense` lists every other matrix weight with the reason (a router, an unknown layout,
            not selected by `targets`, or not N:M).

    Examples:
        >>> import torch, transformers
        >>> from torchprox.llm import magnitude_prune
        >>> cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
        >>> model = transformers.MixtralForCausalLM(cfg)
        >>> _ = magnitude_prune(model, 2, 4)
        >>> r = coverage_report(model, 2, 4)
        >>> r["matrix_weights"], r["nm_weights"], list(r["dense"])       # everything but the router
        (27776, 27648, ['model.layers.0.mlp.gate.weight'])
    """
    from .blocks import _layers_and_prefix

    layers, prefix = _layers_and_prefix(model)
    chosen = {(id(t.module), t.param) for t in target_tensors(model, targets, m=None)} if targets is not None \
        else None
    total = nm = 0
    dense: dict[str, str] = {}
    for key, layer, module, param, dim, why in _classify(layers, prefix):
        tensor = getattr(module, param)
        name = f"{layer}.{param}"
        total += tensor.numel()
        if chosen is not None and (id(module), param) not in chosen:
            dense[name] = why or "not selected by targets"
            continue
        if why is not None:
            dense[name] = why
            continue
        if tensor.shape[dim] % m:
            dense[name] = f"size {tensor.shape[dim]} along dim {dim} is not a multiple of m={m}"
            continue
        frac = float(nm_fraction(tensor.detach(), n, m, dim))
        if frac == 1.0:
            nm += tensor.numel()
        else:
            dense[name] = f"not exactly {n}:{m} ({100 * frac:.1f}% of its groups are)"
    return {"matrix_weights": total, "nm_weights": nm, "coverage": nm / total if total else math.nan, "dense": dense}
