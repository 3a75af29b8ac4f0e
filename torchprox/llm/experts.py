r"""Per-expert calibration inputs of fused Mixture-of-Experts modules: what each expert's projections multiply.

Inside transformers' fused experts there is no per-expert submodule to hook, and the default backend
(``grouped_mm``) never materialises an expert's input on its own. A forward hook on the experts module sees
its call, ``(hidden (T, H), top_k_index (T, k), top_k_weights (T, k))`` for every backend, and
[`routed_inputs`][torchprox.llm.experts.routed_inputs] recomputes from it what expert e's projections see:

    tokens_e = {t : e ∈ top_k_index[t]},   r_t = the routing weight of e for token t
    gate_up_proj (or up_proj) input:  X_e = hidden[tokens_e]                       (rows, H)
    down_proj input:                  h_e = gate(X_e W_gu[e] + b[e])                (rows, I)

with ``gate`` the module's own ``_apply_gate`` (``act(up)`` when it has no gate). These modules scale expert
e's *output* by r_t, so the error a pruned expert adds to the block output is r_t · ΔW x_t for each row.
torchprox therefore weights each row by its routing weight (row x_t → r_t x_t): Wanda's ‖X_j‖² and
SparseGPT's Hessian of expert e are Σ_t r_t² x_tj² and Σ_t r_t² x_t x_tᵀ over its tokens. ``Llama4TextExperts``
gets its routing scores already multiplied into its input (``(E·T, H)``, unrouted rows exactly 0), so its rows
are used as they are, without the all-zero ones. An expert no calibration token reaches has no statistics
(``tokens`` 0): the callers fall back to magnitude for it and count it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from .targets import Target, expert_layout

__all__ = ["ExpertInputStats", "routed_inputs", "supports_capture"]


def _kind(module: nn.Module) -> str | None:
    name = parametrize.type_before_parametrizations(module).__name__
    if name == "Llama4TextExperts":
        return "llama4"
    if isinstance(module.__dict__.get("is_transposed"), bool) and "has_gate" in module.__dict__:
        if module.__dict__.get("has_post_expert_norm"):
            return None  # a norm between the expert and its routing weight: the row weighting above is wrong
        return "flagged"
    return None


def supports_capture(module: nn.Module) -> bool:
    """Whether [`routed_inputs`][torchprox.llm.experts.routed_inputs] knows how ``module`` routes its inputs:
    transformers' flagged experts classes (without ``has_post_expert_norm``) and ``Llama4TextExperts``.

    Examples:
        >>> import torch, transformers
        >>> cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
        >>> mlp = transformers.MixtralForCausalLM(cfg).model.layers[0].mlp
        >>> supports_capture(mlp.experts), supports_capture(mlp.gate)
        (True, False)
    """
    return bool(expert_layout(module)) and _kind(module) is not None


def _arg(args: tuple, kwargs: dict, i: int, names: tuple[str, ...]):
    if len(args) > i:
        return args[i]
    for name in names:
        if name in kwargs:
            return kwargs[name]
    raise TypeError(f"cannot find argument {i} ({' / '.join(names)}) of the experts call")


def _project(module: nn.Module, x: Tensor, name: str, e: int) -> Tensor:
    w = getattr(module, name)[e]
    y = x @ w if module.is_transposed else F.linear(x, w)
    bias = getattr(module, name + "_bias", None) if module.__dict__.get("has_bias") else None
    return y if bias is None else y + bias[e]


@torch.no_grad()
def routed_inputs(module: nn.Module, args: tuple, kwargs: dict | None = None
                  ) -> Iterator[tuple[int, dict[str, Tensor], Tensor | None]]:
    r"""``(e, {parameter: input rows of expert e}, routing weights (rows,) or None)`` for every expert that the
    call ``module(*args, **kwargs)`` routes at least one token to.

    The rows of each parameter are what expert e's slice of it multiplies (see the module docstring); the
    weights are ``top_k_weights`` of those tokens (None for ``Llama4TextExperts``, whose inputs carry them).

    Raises:
        TypeError: ``module`` is not a fused-experts class torchprox can capture (`supports_capture`).

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
        >>> experts = transformers.MixtralForCausalLM(cfg).model.layers[0].mlp.experts
        >>> hidden, index = torch.randn(6, 32), torch.tensor([[0, 1]] * 5 + [[1, 2]])   # expert 3 unused
        >>> weights = torch.full((6, 2), 0.5)
        >>> [(e, tuple(x["gate_up_proj"].shape), tuple(x["down_proj"].shape)) for e, x, _ in
        ...  routed_inputs(experts, (hidden, index, weights))]
        [(0, (5, 32), (5, 64)), (1, (6, 32), (6, 64)), (2, (1, 32), (1, 64))]
    """
    kind = _kind(module) if expert_layout(module) else None
    if kind is None:
        raise TypeError(f"{type(module).__name__}: torchprox cannot capture per-expert inputs of this class")
    kwargs = kwargs or {}
    hidden = _arg(args, kwargs, 0, ("hidden_states",))
    if kind == "llama4":
        experts = module.gate_up_proj.shape[0]
        x_all = hidden.reshape(experts, -1, hidden.shape[-1])
        for e in range(experts):
            x = x_all[e][x_all[e].ne(0).any(-1)]
            if x.shape[0] == 0:
                continue
            gate, up = (x @ module.gate_up_proj[e]).chunk(2, dim=-1)
            yield e, {"gate_up_proj": x, "down_proj": up * module.act_fn(gate)}, None
        return
    index = _arg(args, kwargs, 1, ("top_k_index", "router_indices", "selected_experts"))
    weights = _arg(args, kwargs, 2, ("top_k_weights", "routing_weights"))
    hidden = hidden.reshape(-1, hidden.shape[-1])
    first = "gate_up_proj" if module.has_gate else "up_proj"
    for e in torch.unique(index).tolist():  # one host sync per call: calibration only
        if not 0 <= e < getattr(module, first).shape[0]:
            continue  # expert-parallel sentinels
        tok, pos = torch.where(index == e)
        x = hidden[tok]
        y = _project(module, x, first, e)
        h = module._apply_gate(y) if module.has_gate else module.act_fn(y)
        yield e, {first: x, "down_proj": h}, weights[tok, pos]


class ExpertInputStats:
    r"""Forward hooks on fused-experts modules that accumulate, for every expert tensor target and every expert,
    ``compute(rows)`` over the rows its slice multiplies (routing-weighted, see the module docstring).

    After the calibration forward(s): ``stats[key]`` is ``(experts, *compute's shape)`` (zeros for experts no
    token reached) and ``tokens[key]`` the ``(experts,)`` row counts.

    Examples:
        >>> import torch, transformers
        >>> from torchprox.llm.targets import target_tensors
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
        >>> model = transformers.MixtralForCausalLM(cfg).eval()
        >>> experts = [t for t in target_tensors(model) if t.experts]
        >>> with ExpertInputStats(experts, lambda x: x.square().sum(0)) as stats, torch.no_grad():
        ...     _ = model(torch.randint(0, 64, (2, 8)))
        >>> tuple(stats.stats["model.layers.0.mlp.experts.down_proj"].shape), int(stats.tokens["model.layers.0.mlp.experts.down_proj"].sum())
        ((4, 64), 32)
    """

    def __init__(self, targets: list[Target], compute: Callable[[Tensor], Tensor]):
        self.targets = [t for t in targets if t.experts]
        bad = [t for t in self.targets if not supports_capture(t.module)]
        if bad:
            raise TypeError(f"{bad[0].key}: torchprox cannot capture per-expert inputs of "
                            f"{type(bad[0].module).__name__} (see torchprox.llm.experts.supports_capture)")
        self.compute = compute
        self.stats: dict[str, Tensor] = {}
        self.tokens: dict[str, Tensor] = {t.key: torch.zeros(t.experts, dtype=torch.long) for t in self.targets}
        self._handles = []

    def _hook(self, targets: list[Target]):
        def hook(module, args, kwargs, output):
            for e, inputs, weights in routed_inputs(module, args, kwargs):
                for t in targets:
                    x = inputs[t.param].float()
                    if weights is not None:
                        x = x * weights.to(x.dtype).unsqueeze(-1)
                    value = self.compute(x)
                    if t.key not in self.stats:
                        self.stats[t.key] = value.new_zeros((t.experts, *value.shape))
                    self.stats[t.key][e] += value
                    self.tokens[t.key][e] += x.shape[0]
        return hook

    def __enter__(self) -> ExpertInputStats:
        by_module: dict[int, list[Target]] = {}
        for t in self.targets:
            by_module.setdefault(id(t.module), []).append(t)
        try:
            for group in by_module.values():
                self._handles.append(group[0].module.register_forward_hook(self._hook(group), with_kwargs=True))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False
