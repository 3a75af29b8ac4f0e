r"""One-shot N:M pruning baselines for Hugging Face causal LMs: magnitude, Wanda and SparseGPT.

Every function prunes the matrix weights inside the decoder blocks (default: all of them but the routers, see
[`torchprox.llm.targets.target_tensors`][torchprox.llm.targets.target_tensors]; never embeddings or
``lm_head``) **in place** to an exact N:M pattern along the input dim of each weight (dim 1 of an
``nn.Linear`` weight (out, in), dim 0 of a transformers ``Conv1D`` weight (in, out); dim 2 of a fused
Mixture-of-Experts tensor (experts, out, in), dim 1 of a transposed one (experts, in, out)), and returns a
report ``{key: fraction of groups of m with at most n nonzeros}`` (1.0 for every target on success; the key is
the module name of a linear weight, ``"<module>.<param>"`` of an expert tensor).
All masks come from [`torchprox.prox.nm_mask`][torchprox.prox.nm.nm_mask] (top-n of every m, ties → lower index kept).

- [`magnitude_prune`][torchprox.llm.baselines.magnitude_prune]: keep the top-n ``|W_ij|``. Kept weights are unchanged.
- [`wanda_prune`][torchprox.llm.baselines.wanda_prune] (Sun et al., 2023): keep the top-n ``|W_ij| · ‖X_j‖₂``, where ``‖X_j‖₂`` is the norm of
  input feature j over every calibration token. Kept weights are unchanged.
- [`sparsegpt_prune`][torchprox.llm.baselines.sparsegpt_prune] (Frantar & Alistarh, 2023): the OBS solver with weight update. It chooses the
  mask m columns at a time by ``w² / [H⁻¹]_jj²`` and updates the remaining weights to compensate, minimising
  ``‖WX − ŴX‖²`` column by column.

Wanda and SparseGPT are *sequential* over decoder blocks, as in the reference implementations: the
calibration sequences are embedded up to the first block, and each block is run on the outputs of the
already-pruned blocks before it — once with hooks on its linear layers and experts modules to collect the
input statistics, then, after pruning, once more to produce the next block's inputs (see
[`torchprox.llm.blocks`][torchprox.llm.blocks]).

**Mixture-of-Experts** (fused expert tensors): each expert e is its own layer. Its statistics come only from
the tokens routed to e ([`torchprox.llm.experts.ExpertInputStats`][torchprox.llm.experts.ExpertInputStats]):
the hidden states of those tokens for ``gate_up_proj``/``up_proj``, e's own intermediate activations for
``down_proj``. Each row is scaled by its routing weight r_t (row x_t → r_t x_t), because the model scales
expert e's output by r_t, so the error a pruned expert adds to the block's output is r_t · ΔW x_t: Wanda's
``‖X_j‖²`` of expert e is ``Σ_t r_t² x_tj²`` and SparseGPT's Hessian ``2 Σ_t r_t² x_t x_tᵀ / rows_e`` over its
rows (Llama 4 feeds its experts inputs already scaled by the routing score; they are used as they are).

**Fallback to magnitude**: an expert that no calibration token reaches has no statistics; it gets the
magnitude mask (top-n ``|W|``, kept weights unchanged; SparseGPT makes no update for it, and with given
``masks`` applies its mask as is). So does every expert of a module whose routing torchprox cannot observe
([`supports_capture`][torchprox.llm.experts.supports_capture] is False), and a non-linear tensor with a
registered layout. Each fallback is logged as a warning and, when the caller passes ``fallbacks={}``, recorded
in it as ``{key: [expert indices]}`` (``None`` for a whole non-expert tensor).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor, nn

from ..prox import nm_mask
from ..prune import nm_fraction
from ..prox import check_nm
from ._runtime import progress_iter
from .blocks import block_index, layers_prefix, run_blocks_sequentially
from .experts import ExpertInputStats, supports_capture
from .targets import Target, along_input_dim, target_tensors

__all__ = [
    "magnitude_prune", "wanda_prune", "sparsegpt_prune", "wanda_scores", "sparsegpt_solve",
]

logger = logging.getLogger(__name__)


def _fraction(weight: Tensor, n: int, m: int, dim: int) -> float:
    """[`torchprox.prune.nm_fraction`][torchprox.prune.report.nm_fraction] as a Python float (for reports)."""
    return float(nm_fraction(weight.detach(), n, m, dim))


def layer_report(selected: list[Target], n: int, m: int) -> dict[str, float]:
    """``{key: fraction of N:M groups}`` of the [`Target`][torchprox.llm.targets.Target]s in ``selected`` (every
    method's report)."""
    return {t.key: _fraction(t.weight, n, m, t.dim) for t in selected}


def _apply_mask_(t: Target, keep: Tensor) -> None:
    """Zero the target's tensor outside ``keep`` in place; kept values stay bit-exact (and zeros are +0.0)."""
    with torch.no_grad():
        t.weight.masked_fill_(~keep, 0)


def _magnitude_mask(weight: Tensor, n: int, m: int, dim: int) -> Tensor:
    return nm_mask(weight.detach().abs(), n, m, dim=dim)


def _by_block(model: nn.Module, selected: list[Target]) -> dict[int, list[Target]]:
    prefix = layers_prefix(model)
    groups: dict[int, list[Target]] = {}
    for t in selected:
        groups.setdefault(block_index(t.layer, prefix), []).append(t)
    return groups


# --------------------------------------------------------------------------------------------------------
# Magnitude


def magnitude_prune(model: nn.Module, n: int = 2, m: int = 4, targets=None, *, progress: bool = False
                    ) -> dict[str, float]:
    """Keep the top-``n`` ``|W|`` of every ``m`` consecutive input weights of each target matrix weight.

    Args:
        model: a Hugging Face causal LM (modified in place).
        targets: ``None`` (every matrix weight of the decoder blocks but the routers: linear layers and fused
            expert tensors), names/suffixes, or a regex (full match of the module name or the key); see
            [`torchprox.llm.targets.target_tensors`][torchprox.llm.targets.target_tensors].
        progress: show a tqdm bar over the targets.
    Returns:
        ``{key: fraction of groups exactly N:M}``.

    For a weight W and each group g of ``m`` consecutive entries along its input dim (any layout: a fused
    expert tensor is grouped per expert along its own input dim), ``W_g ← W_g ⊙ topn(|W_g|)``: the ``n``
    largest magnitudes are kept bit-exact, the rest set to 0. No calibration data is needed.

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg).eval()          # a tiny Llama: 2 blocks of 7 linears
        >>> from torchprox.prune import is_nm
        >>> w0 = model.model.layers[0].mlp.up_proj.weight.detach().clone()            # (64, 32)
        >>> report = magnitude_prune(model, 2, 4)
        >>> len(report), min(report.values())
        (14, 1.0)
        >>> w = model.model.layers[0].mlp.up_proj.weight
        >>> is_nm(w, 2, 4, dim=1), bool(torch.equal(w[w != 0], w0[w != 0]))        # kept weights unchanged
        (True, True)
    """
    check_nm(n, m)
    selected = target_tensors(model, targets, m=m)
    for t in progress_iter(selected, progress, desc="magnitude"):
        _apply_mask_(t, _magnitude_mask(t.weight, n, m, t.dim))
    return layer_report(selected, n, m)


# --------------------------------------------------------------------------------------------------------
# Shared hook machinery


class _InputStats:
    """Forward hooks on linear layers that feed each call's input (tokens × in) to a per-layer accumulator.

    Layers fed the very same input tensor in a row (q/k/v, gate/up) can share one computation of the
    statistic: ``compute(x)`` is cached for the last input tensor seen (identity and version checked).
    """

    def __init__(self, modules: dict[str, nn.Module], compute: Callable[[Tensor], Tensor]):
        self.modules = modules
        self.compute = compute
        self.stats: dict[str, Tensor] = {}
        self.count: dict[str, int] = {name: 0 for name in modules}
        self._last = None
        self._handles = []

    def _hook(self, name):
        def hook(module, inputs, output):
            x = inputs[0]
            last = self._last
            if last is not None and last[0] is x and last[1] == x._version:
                value = last[2]
            else:
                value = self.compute(x.detach().reshape(-1, x.shape[-1]))
                self._last = (x, x._version, value)  # holding x keeps its identity unique
            if name in self.stats:
                self.stats[name].add_(value)
            else:
                self.stats[name] = value.clone()
            self.count[name] += x.shape[0] if x.dim() > 2 else 1
        return hook

    def __enter__(self):
        try:
            for name, mod in self.modules.items():
                self._handles.append(mod.register_forward_hook(self._hook(name)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._last = None
        return False


def _observable(t: Target) -> bool:
    """Whether torchprox sees what ``t`` multiplies: a linear layer's inputs, or the rows routed to each expert
    of a fused-experts module it can capture."""
    return t.is_linear or (t.experts is not None and supports_capture(t.module))


def _collect(block_targets: list[Target], calibrate: Callable[[], None], compute
             ) -> tuple[dict[str, Tensor], dict[str, int | Tensor]]:
    """One calibration pass of a block with hooks on its linear targets and its experts modules.

    Returns ``(stats, rows)``: a linear target's ``stats[key]`` is ``Σ compute(X)`` over its input batches and
    ``rows[key]`` the number of sequences seen; an expert tensor's ``stats[key]`` is ``(experts, *compute's
    shape)`` over each expert's routed, routing-weighted rows and ``rows[key]`` the ``(experts,)`` row counts
    (no ``stats`` entry when no token reached the module). Targets that are not `_observable` get neither."""
    linears = {t.key: t.module for t in block_targets if t.is_linear}
    experts = [t for t in block_targets if not t.is_linear and _observable(t)]
    with _InputStats(linears, compute) as stats, ExpertInputStats(experts, compute) as routed:
        calibrate()
    missing = [key for key in linears if key not in stats.stats]
    if missing:
        raise RuntimeError(f"calibration never reached {missing}; are these layers used in the forward?")
    return {**stats.stats, **routed.stats}, {**stats.count, **routed.tokens}


def _fallback_experts(t: Target, stats: dict[str, Tensor], rows: dict) -> list[int] | None:
    """The experts of ``t`` without calibration rows (all of them when ``t`` is not `_observable` or its module
    never ran); ``None`` for a whole non-linear 2-D tensor whose inputs torchprox cannot see; ``[]`` if none."""
    if t.experts is None:
        return None
    if t.key not in stats:
        return list(range(t.experts))
    return rows[t.key].eq(0).nonzero().flatten().tolist()


def _report_fallbacks(method: str, fell_back: dict[str, list[int] | None], fallbacks: dict | None) -> None:
    """Log the magnitude fallbacks as a warning and copy them into the caller's ``fallbacks`` dict."""
    if fallbacks is not None:
        fallbacks.update(fell_back)
    if fell_back:
        count = sum(1 if v is None else len(v) for v in fell_back.values())
        logger.warning("%s: %d expert(s)/tensor(s) got no calibration statistics (no routed token, or routing "
                       "torchprox cannot observe) and fell back to the magnitude mask: %s", method, count,
                       "; ".join(f"{k}: {'all' if v is None else v}" for k, v in fell_back.items()))


# --------------------------------------------------------------------------------------------------------
# Wanda


def wanda_scores(weight: Tensor, col_sq_norms: Tensor, dim: int = 1) -> Tensor:
    """Wanda importance ``|W_ij| · ‖X_j‖₂`` (float32) from the summed squared input norms per input feature.

    ``dim`` is the input dim of ``weight`` (1 for ``nn.Linear``, 0 for ``Conv1D``). Shapes: ``weight``
    ``(out, in)`` (or ``(in, out)`` with ``dim=0``), ``col_sq_norms`` ``(in,)`` holding ``Σ_t x_tj²`` over the
    calibration tokens t; the result has the weight's shape. For a fused expert tensor ``(experts, ·, ·)``
    with input dim 1 or 2, ``col_sq_norms`` may be ``(experts, in)``: expert e's norms scale ``weight[e]``.

    Examples:
        >>> import torch
        >>> w = torch.tensor([[1., -2., 3., -4.]])
        >>> sq = torch.tensor([16., 4., 1., 0.25])                 # Σ_t x_tj², so ‖X_j‖₂ = 4, 2, 1, 0.5
        >>> wanda_scores(w, sq)
        tensor([[4., 4., 3., 2.]])
        >>> experts = torch.ones(2, 1, 4)                          # (experts, out, in): dim 2
        >>> wanda_scores(experts, torch.stack([sq, 4 * sq]), dim=2)
        tensor([[[4.0000, 2.0000, 1.0000, 0.5000]],
        <BLANKLINE>
                [[8.0000, 4.0000, 2.0000, 1.0000]]])
    """
    norms = col_sq_norms.to(device=weight.device, dtype=torch.float32).sqrt()
    dim = dim % weight.dim()
    if norms.dim() == 2:
        if weight.dim() != 3 or dim == 0 or tuple(norms.shape) != (weight.shape[0], weight.shape[dim]):
            raise ValueError(f"per-expert col_sq_norms of shape {tuple(norms.shape)} need a weight (experts, ·, ·) "
                             f"with input dim 1 or 2 of those sizes, got weight {tuple(weight.shape)}, dim={dim}")
    return weight.detach().abs().float() * along_input_dim(norms, weight.dim(), dim)


def _sq_col_norms(x: Tensor) -> Tensor:
    return x.float().square().sum(0).double()


def wanda_prune(model: nn.Module, calib, n: int = 2, m: int = 4, targets=None, *, batch_size: int = 8,
                progress: bool = False, fallbacks: dict[str, list[int] | None] | None = None) -> dict[str, float]:
    """Wanda: keep the top-``n`` of every ``m`` of ``|W_ij| · ‖X_j‖₂`` (kept weights unchanged).

    ``‖X_j‖₂`` is collected sequentially over decoder blocks: block i sees the calibration data through
    the already-pruned blocks before it. Each expert e of a fused expert tensor gets its own ``‖X_j‖₂`` from
    the rows routed to it, routing-weighted (see the module docstring); an expert without rows gets the
    magnitude mask.

    Args:
        calib: token ids, a ``(num_sequences, seqlen)`` LongTensor (or a list of equal-length ones).
        batch_size: sequences per forward of a block (memory vs speed; results do not depend on it beyond
            floating-point rounding).
        progress: a tqdm bar over the decoder blocks.
        fallbacks: when given (a dict), filled with ``{key: [experts that fell back to magnitude]}`` (``None``
            for a whole non-expert tensor); the fallbacks are also logged as a warning.
    Returns:
        ``{key: fraction of groups exactly N:M}``.

    Per group g of ``m`` inputs: ``W_g ← W_g ⊙ topn(|W_g| · ‖X_g‖₂)`` with ``X`` the layer's inputs
    ``(tokens, in)`` over all calibration tokens (see [`wanda_scores`][torchprox.llm.baselines.wanda_scores]).

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg).eval()          # a tiny Llama: 2 blocks of 7 linears
        >>> from torchprox.prune import is_nm
        >>> calib = torch.randint(0, 64, (4, 16))                       # 4 sequences of 16 token ids
        >>> report = wanda_prune(model, calib, 2, 4)
        >>> len(report), min(report.values())
        (14, 1.0)
        >>> is_nm(model.model.layers[1].self_attn.o_proj.weight, 2, 4, dim=1)
        True
    """
    check_nm(n, m)
    selected = target_tensors(model, targets, m=m)
    per_block = _by_block(model, selected)
    fell_back: dict[str, list[int] | None] = {}

    def process(i, block, calibrate):
        stats, rows = _collect(per_block[i], calibrate, _sq_col_norms)
        for t in per_block[i]:
            _apply_mask_(t, _wanda_mask(t, stats, rows, n, m, fell_back))

    run_blocks_sequentially(model, calib, process, blocks=list(per_block), batch_size=batch_size,
                            progress=progress, desc="wanda")
    _report_fallbacks("wanda", fell_back, fallbacks)
    return layer_report(selected, n, m)


def _wanda_mask(t: Target, stats: dict[str, Tensor], rows: dict, n: int, m: int,
                fell_back: dict[str, list[int] | None]) -> Tensor:
    """Wanda's mask of one target; experts without statistics get the magnitude mask (recorded in
    ``fell_back``)."""
    if t.is_linear:
        return nm_mask(wanda_scores(t.weight, stats[t.key], t.dim), n, m, dim=t.dim)
    empty = _fallback_experts(t, stats, rows)
    if empty is None or len(empty) == t.experts:
        fell_back[t.key] = empty
        return _magnitude_mask(t.weight, n, m, t.dim)
    keep = nm_mask(wanda_scores(t.weight, stats[t.key], t.dim), n, m, dim=t.dim)
    if empty:
        fell_back[t.key] = empty
        keep[empty] = _magnitude_mask(t.weight[empty], n, m, t.dim)
    return keep


# --------------------------------------------------------------------------------------------------------
# SparseGPT


def sparsegpt_solve(weight: Tensor, hessian: Tensor, n: int = 2, m: int = 4, blocksize: int = 128,
                    percdamp: float = 0.01, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""The SparseGPT OBS solver for one layer: an exact N:M weight close to ``weight`` in the metric ``H``.

    Args:
        weight: ``(out, in)`` (``nn.Linear`` layout); N:M groups run along dim 1.
        hessian: ``(in, in)``, ``H = 2 X Xᵀ / num_samples`` (any positive scale works: dampening is relative).
            Not modified.
        blocksize: columns processed per lazy-update block (a multiple of ``m``).
        percdamp: dampening ``percdamp · mean(diag H)`` added to the diagonal.
        mask: optional bool ``(out, in)`` N:M mask to keep instead of choosing one: the same column-by-column
            OBS update, restricted to a given (e.g. learned) mask — SparseGPT's approximation of
            ``argmin_{W' ⊙ ¬mask = 0} tr((W' − W) H (W' − W)ᵀ)``.
    Returns:
        ``(new_weight, losses)``: the pruned and updated weight in float32 (exactly N:M along dim 1) and the
        per-row OBS loss estimate ``½ Σ_j (w_j − q_j)² / [H⁻¹]_jj``.

    Algorithm (as the reference implementation): dead inputs (``H_jj = 0``) get weight 0 and ``H_jj = 1``;
    after dampening, ``U = chol(H⁻¹)ᵀ`` (upper). Columns are visited left to right in blocks; at the first
    column of every group of ``m``, the mask keeps the top-``n`` of ``w_j² / U_jj²`` (with ``w`` already updated
    by the errors of earlier columns); each column's error ``(w − q) / U_jj`` is propagated to the later columns
    of the block through row j of ``U``, and to the later blocks in one matrix product.

    Examples:
        With correlated inputs (as in a network), the OBS update makes the layer's output error
        ``‖(W − Q) X‖²`` much smaller than plain magnitude masking does:

        >>> import torch
        >>> from torchprox.prox import nm_mask
        >>> from torchprox.prune import is_nm
        >>> _ = torch.manual_seed(0)
        >>> W, X = torch.randn(4, 16), torch.randn(16, 8) @ torch.randn(8, 64)   # weight (out, in), X (in, samples)
        >>> H = 2 * X @ X.T / 64
        >>> Q, losses = sparsegpt_solve(W, H, 2, 4, blocksize=8)
        >>> Q.shape, losses.shape, is_nm(Q, 2, 4, dim=1)
        (torch.Size([4, 16]), torch.Size([4]), True)
        >>> magnitude = W * nm_mask(W.abs(), 2, 4, dim=1)
        >>> bool(((W - Q) @ X).square().sum() < ((W - magnitude) @ X).square().sum())
        True
    """
    check_nm(n, m)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must be ({cols}, {cols}) for a weight of shape {tuple(weight.shape)}, "
                         f"got {tuple(hessian.shape)}")
    if cols % m:
        raise ValueError(f"weight of shape {tuple(weight.shape)}: {cols} input features are not a multiple of m={m}")
    if blocksize < m or blocksize % m:
        raise ValueError(f"blocksize must be a positive multiple of m={m}, got {blocksize}")
    if not percdamp >= 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp}")
    if mask is not None and (mask.shape != weight.shape or mask.dtype != torch.bool):
        raise ValueError(f"mask must be a bool tensor of the weight's shape {tuple(weight.shape)}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    device = weight.device
    W = weight.detach().to(torch.float32).clone()
    H = hessian.detach().to(device=device).clone()
    if not H.is_floating_point():
        raise TypeError(f"hessian must be floating point, got {H.dtype}")
    if H.dtype not in (torch.float32, torch.float64):
        H = H.float()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    diag = torch.arange(cols, device=device)
    mean_diag = torch.mean(torch.diagonal(H))
    damp = percdamp * mean_diag
    for attempt in range(8):
        Hd = H.clone()
        Hd[diag, diag] += damp
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                break
        # Not numerically positive definite: more dampening (the reference would fail here).
        damp = mean_diag * max(percdamp, 1e-4) * 10 ** (attempt + 1)
        logger.warning("sparsegpt: Hessian not positive definite; retrying with dampening %.3g", float(damp))
    else:
        raise RuntimeError("sparsegpt: the Hessian stays singular even with heavy dampening")
    del H, Hd, L, Hinv
    U = U.to(torch.float32)
    losses = torch.zeros(rows, device=device, dtype=torch.float32)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diagonal(U1)
        keep1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            if i % m == 0 and mask is not None:
                keep1[:, i:i + m] = mask[:, i1 + i:i1 + i + m]
            elif i % m == 0:
                score = W1[:, i:i + m].square() / d1[i:i + m].square().unsqueeze(0)
                keep1[:, i:i + m] = nm_mask(score, n, m, dim=1)
            w = W1[:, i]
            d = d1[i]
            q = torch.where(keep1[:, i], w, torch.zeros_like(w))
            Q1[:, i] = q
            err = (w - q) / d
            losses += err.square() / 2
            W1[:, i:].sub_(err.unsqueeze(1) * U1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        if i2 < cols:
            W[:, i2:].sub_(Err1.matmul(U[i1:i2, i2:]))
    return W, losses


def sparsegpt_prune(model: nn.Module, calib, n: int = 2, m: int = 4, blocksize: int = 128,
                    percdamp: float = 0.01, targets=None, *, batch_size: int = 8,
                    hessian_dtype: torch.dtype = torch.float32, progress: bool = False,
                    masks: dict[str, Tensor] | None = None,
                    fallbacks: dict[str, list[int] | None] | None = None) -> dict[str, float]:
    """SparseGPT: N:M pruning with the OBS weight update, sequential over decoder blocks.

    For every target linear layer of a block, ``H = 2 X Xᵀ / num_sequences`` is accumulated (in
    ``hessian_dtype``) from its inputs while the calibration data runs through the block (after the already
    pruned blocks before it); then each layer is solved by [`sparsegpt_solve`][torchprox.llm.baselines.sparsegpt_solve] and written back in its
    dtype (exactly N:M; kept weights are updated, unlike magnitude and Wanda). Each expert e of a fused expert
    tensor is solved on its own, oriented (out, in), with ``H_e = 2 Σ_t r_t² x_t x_tᵀ / rows_e`` over the rows
    routed to it (see the module docstring); an expert without rows gets the magnitude mask (or its given
    mask) and no update. The Hessians of a block's experts are held together: ``experts × in²`` values per
    expert tensor.

    Args:
        calib: token ids, a ``(num_sequences, seqlen)`` LongTensor (or a list of equal-length ones).
        blocksize: columns per lazy-update block (a multiple of ``m``); ``percdamp``: relative dampening.
        batch_size: sequences per forward of a block.
        progress: a tqdm bar over the decoder blocks.
        masks: optional ``{key (or a linear's ".weight" tensor name): bool mask}`` of the tensor's shape
            (3-D for an expert tensor): keep these masks and only update the kept weights (every target needs
            one).
        fallbacks: when given (a dict), filled with ``{key: [experts that fell back to magnitude]}`` (``None``
            for a whole non-expert tensor); the fallbacks are also logged as a warning.
    Returns:
        ``{key: fraction of groups exactly N:M}``.

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg).eval()          # a tiny Llama: 2 blocks of 7 linears
        >>> from torchprox.prune import is_nm
        >>> calib = torch.randint(0, 64, (4, 16))
        >>> w0 = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
        >>> report = sparsegpt_prune(model, calib, 2, 4, blocksize=32)
        >>> len(report), min(report.values())
        (14, 1.0)
        >>> w = model.model.layers[0].self_attn.q_proj.weight
        >>> is_nm(w, 2, 4, dim=1), bool(torch.equal(w[w != 0], w0[w != 0]))     # kept weights are updated
        (True, False)
    """
    check_nm(n, m)
    if blocksize < m or blocksize % m:
        raise ValueError(f"blocksize must be a positive multiple of m={m}, got {blocksize}")
    if hessian_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"hessian_dtype must be torch.float32 or torch.float64, got {hessian_dtype}")
    selected = target_tensors(model, targets, m=m)
    if masks is not None:
        masks = _check_masks(selected, masks)
    per_block = _by_block(model, selected)
    fell_back: dict[str, list[int] | None] = {}

    def xtx(x: Tensor) -> Tensor:
        x = x.to(hessian_dtype)
        return x.t().matmul(x)

    def process(i, block, calibrate):
        stats, rows = _collect(per_block[i], calibrate, xtx)
        for t in per_block[i]:
            keep = None if masks is None else masks[t.key].to(t.weight.device)
            if t.is_linear:
                _sparsegpt_linear(t, stats.pop(t.key), rows[t.key], keep, n, m, blocksize, percdamp)
            else:
                _sparsegpt_experts(t, stats.pop(t.key, None), rows.get(t.key), keep, n, m, blocksize, percdamp,
                                   fell_back)

    run_blocks_sequentially(model, calib, process, blocks=list(per_block), batch_size=batch_size,
                            progress=progress, desc="sparsegpt")
    _report_fallbacks("sparsegpt", fell_back, fallbacks)
    return layer_report(selected, n, m)


def _check_masks(selected: list[Target], masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """``masks`` by target key (a ``".weight"`` suffix dropped), checked against every target before any work."""
    masks = {k.removesuffix(".weight"): v for k, v in masks.items()}
    missing = [t.key for t in selected if t.key not in masks]
    if missing:
        raise ValueError(f"masks has no entry for {len(missing)} target(s), e.g. {missing[0]!r}")
    for t in selected:
        mask = masks[t.key]
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != t.weight.shape:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask for {t.key!r} must be bool of shape {tuple(t.weight.shape)}, got {got}")
    return masks


def _sparsegpt_linear(t: Target, H: Tensor, count: int, keep: Tensor | None, n: int, m: int, blocksize: int,
                      percdamp: float) -> None:
    """Solve one linear layer (a Conv1D weight (in, out) is solved transposed) and write it back."""
    H.mul_(2.0 / max(count, 1))
    conv1d = t.dim == 0
    w = t.weight.detach()
    if keep is not None and conv1d:
        keep = keep.t()
    new, losses = sparsegpt_solve(w.t() if conv1d else w, H, n, m, blocksize, percdamp, keep)
    del H
    with torch.no_grad():
        t.weight.copy_((new.t() if conv1d else new).to(t.weight.dtype))
    logger.debug("sparsegpt %s: OBS loss %.4g", t.key, float(losses.sum()))


def _sparsegpt_experts(t: Target, H: Tensor | None, rows: Tensor | None, keep: Tensor | None, n: int, m: int,
                       blocksize: int, percdamp: float, fell_back: dict[str, list[int] | None]) -> None:
    """Solve every expert of a fused tensor against its own Hessian ``H[e] · 2 / rows[e]``, oriented (out, in)
    (an (experts, in, out) tensor is solved transposed); experts without rows (every one when ``H`` is None)
    get ``keep[e]`` or the magnitude mask, without update (recorded in ``fell_back``)."""
    w = t.weight.detach()
    empty = _fallback_experts(t, {} if H is None else {t.key: H}, {t.key: rows})
    if empty is None:  # a non-linear 2-D tensor with a registered layout: its inputs are unknown
        fell_back[t.key] = None
        _apply_mask_(t, keep if keep is not None else _magnitude_mask(w, n, m, t.dim))
        return
    transposed = t.dim == 1
    counts = rows.tolist() if H is not None else [0] * t.experts
    for e in range(t.experts):
        we = w[e]
        if counts[e] == 0:
            ke = keep[e] if keep is not None else _magnitude_mask(we, n, m, t.dim - 1)
            with torch.no_grad():
                we.masked_fill_(~ke, 0)
            continue
        ke = None if keep is None else (keep[e].t() if transposed else keep[e])
        new, losses = sparsegpt_solve(we.t() if transposed else we, H[e] * (2.0 / counts[e]), n, m, blocksize,
                                      percdamp, ke)
        with torch.no_grad():
            we.copy_((new.t() if transposed else new).to(we.dtype))
        logger.debug("sparsegpt %s[%d]: OBS loss %.4g", t.key, e, float(losses.sum()))
    if empty:
        fell_back[t.key] = empty
