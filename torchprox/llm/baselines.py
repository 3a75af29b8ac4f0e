r"""One-shot N:M pruning baselines for Hugging Face causal LMs: magnitude, Wanda and SparseGPT.

Every function prunes the linear layers inside the decoder blocks (default: all of them; never embeddings
or ``lm_head``) **in place** to an exact N:M pattern along the input dim of each weight (dim 1 of an
``nn.Linear`` weight (out, in), dim 0 of a transformers ``Conv1D`` weight (in, out)), and returns a report
``{qualified_name: fraction of groups of m with at most n nonzeros}`` (1.0 for every layer on success).
All masks come from [`torchprox.prox.nm_mask`][torchprox.prox.nm.nm_mask] (top-n of every m, ties → lower index kept).

- [`magnitude_prune`][torchprox.llm.baselines.magnitude_prune]: keep the top-n ``|W_ij|``. Kept weights are unchanged.
- [`wanda_prune`][torchprox.llm.baselines.wanda_prune] (Sun et al., 2023): keep the top-n ``|W_ij| · ‖X_j‖₂``, where ``‖X_j‖₂`` is the norm of
  input feature j over every calibration token. Kept weights are unchanged.
- [`sparsegpt_prune`][torchprox.llm.baselines.sparsegpt_prune] (Frantar & Alistarh, 2023): the OBS solver with weight update. It chooses the
  mask m columns at a time by ``w² / [H⁻¹]_jj²`` and updates the remaining weights to compensate, minimising
  ``‖WX − ŴX‖²`` column by column.

Wanda and SparseGPT are *sequential* over decoder blocks, as in the reference implementations: the
calibration sequences are embedded up to the first block, and each block is run on the outputs of the
already-pruned blocks before it — once with hooks on its linear layers to collect the input statistics,
then, after pruning, once more to produce the next block's inputs (see [`torchprox.llm.blocks`][torchprox.llm.blocks]).
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
from .blocks import (
    block_index, decoder_layers, layers_prefix, linear_group_dim, run_blocks_sequentially, target_linears,
)

__all__ = [
    "magnitude_prune", "wanda_prune", "sparsegpt_prune", "wanda_scores", "sparsegpt_solve",
]

logger = logging.getLogger(__name__)


def _fraction(weight: Tensor, n: int, m: int, dim: int) -> float:
    """[`torchprox.prune.nm_fraction`][torchprox.prune.report.nm_fraction] as a Python float (for reports)."""
    return float(nm_fraction(weight.detach(), n, m, dim))


def layer_report(selected, n: int, m: int) -> dict[str, float]:
    """``{name: fraction of N:M groups}`` of the ``(name, linear)`` pairs in ``selected`` (every method's report)."""
    return {name: _fraction(mod.weight, n, m, linear_group_dim(mod)) for name, mod in selected}


def _apply_mask_(module: nn.Module, keep: Tensor) -> None:
    """Zero the weight outside ``keep`` in place; kept values stay bit-exact (and zeros are +0.0)."""
    with torch.no_grad():
        module.weight.masked_fill_(~keep, 0)


def _by_block(model: nn.Module, selected) -> dict[int, list[tuple[str, nn.Module]]]:
    prefix = layers_prefix(model)
    groups: dict[int, list] = {}
    for name, mod in selected:
        groups.setdefault(block_index(name, prefix), []).append((name, mod))
    return groups


# --------------------------------------------------------------------------------------------------------
# Magnitude


def magnitude_prune(model: nn.Module, n: int = 2, m: int = 4, targets=None, *, progress: bool = False
                    ) -> dict[str, float]:
    """Keep the top-``n`` ``|W|`` of every ``m`` consecutive input weights of each target linear layer.

    Args:
        model: a Hugging Face causal LM (modified in place).
        targets: ``None`` (every linear layer of the decoder blocks), names/suffixes, or a regex (full match of
            the qualified name); see [`torchprox.llm.blocks.target_linears`][torchprox.llm.blocks.target_linears].
        progress: show a tqdm bar over the layers.
    Returns:
        ``{qualified_name: fraction of groups exactly N:M}``.

    For a weight W (out, in) and each group g of ``m`` consecutive inputs in a row,
    ``W_g ← W_g ⊙ topn(|W_g|)``: the ``n`` largest magnitudes are kept bit-exact, the rest set to 0. No
    calibration data is needed.

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
    selected = target_linears(model, targets, m=m)
    for name, mod in progress_iter(selected, progress, desc="magnitude"):
        w = mod.weight.detach()
        _apply_mask_(mod, nm_mask(w.abs(), n, m, dim=linear_group_dim(mod)))
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


def _collect(block_targets, calibrate: Callable[[], None], compute) -> tuple[dict[str, Tensor], dict[str, int]]:
    modules = dict(block_targets)
    with _InputStats(modules, compute) as stats:
        calibrate()
    missing = [name for name in modules if name not in stats.stats]
    if missing:
        raise RuntimeError(f"calibration never reached {missing}; are these layers used in the forward?")
    return stats.stats, stats.count


# --------------------------------------------------------------------------------------------------------
# Wanda


def wanda_scores(weight: Tensor, col_sq_norms: Tensor, dim: int = 1) -> Tensor:
    """Wanda importance ``|W_ij| · ‖X_j‖₂`` (float32) from the summed squared input norms per input feature.

    ``dim`` is the input dim of ``weight`` (1 for ``nn.Linear``, 0 for ``Conv1D``). Shapes: ``weight``
    ``(out, in)`` (or ``(in, out)`` with ``dim=0``), ``col_sq_norms`` ``(in,)`` holding ``Σ_t x_tj²`` over the
    calibration tokens t; the result has the weight's shape.

    Examples:
        >>> import torch
        >>> w = torch.tensor([[1., -2., 3., -4.]])
        >>> sq = torch.tensor([16., 4., 1., 0.25])                 # Σ_t x_tj², so ‖X_j‖₂ = 4, 2, 1, 0.5
        >>> wanda_scores(w, sq)
        tensor([[4., 4., 3., 2.]])
    """
    norms = col_sq_norms.to(device=weight.device, dtype=torch.float32).sqrt()
    shape = [1] * weight.dim()
    shape[dim] = -1
    return weight.detach().abs().float() * norms.reshape(shape)


def _sq_col_norms(x: Tensor) -> Tensor:
    return x.float().square().sum(0).double()


def wanda_prune(model: nn.Module, calib, n: int = 2, m: int = 4, targets=None, *, batch_size: int = 8,
                progress: bool = False) -> dict[str, float]:
    """Wanda: keep the top-``n`` of every ``m`` of ``|W_ij| · ‖X_j‖₂`` (kept weights unchanged).

    ``‖X_j‖₂`` is collected sequentially over decoder blocks: block i sees the calibration data through
    the already-pruned blocks before it.

    Args:
        calib: token ids, a ``(num_sequences, seqlen)`` LongTensor (or a list of equal-length ones).
        batch_size: sequences per forward of a block (memory vs speed; results do not depend on it beyond
            floating-point rounding).
        progress: a tqdm bar over the decoder blocks.
    Returns:
        ``{qualified_name: fraction of groups exactly N:M}``.

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
    selected = target_linears(model, targets, m=m)
    per_block = _by_block(model, selected)

    def process(i, block, calibrate):
        stats, _ = _collect(per_block[i], calibrate, _sq_col_norms)
        for name, mod in per_block[i]:
            dim = linear_group_dim(mod)
            _apply_mask_(mod, nm_mask(wanda_scores(mod.weight, stats[name], dim), n, m, dim=dim))

    run_blocks_sequentially(model, calib, process, blocks=list(per_block), batch_size=batch_size,
                            progress=progress, desc="wanda")
    return layer_report(selected, n, m)


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
                    masks: dict[str, Tensor] | None = None) -> dict[str, float]:
    """SparseGPT: N:M pruning with the OBS weight update, sequential over decoder blocks.

    For every target linear layer of a block, ``H = 2 X Xᵀ / num_sequences`` is accumulated (in
    ``hessian_dtype``) from its inputs while the calibration data runs through the block (after the already
    pruned blocks before it); then each layer is solved by [`sparsegpt_solve`][torchprox.llm.baselines.sparsegpt_solve] and written back in its
    dtype (exactly N:M; kept weights are updated, unlike magnitude and Wanda).

    Args:
        calib: token ids, a ``(num_sequences, seqlen)`` LongTensor (or a list of equal-length ones).
        blocksize: columns per lazy-update block (a multiple of ``m``); ``percdamp``: relative dampening.
        batch_size: sequences per forward of a block.
        progress: a tqdm bar over the decoder blocks.
        masks: optional ``{qualified target name (or its ".weight" tensor name): bool mask}`` of the weight's
            shape: keep these masks and only update the kept weights (every target needs one).
    Returns:
        ``{qualified_name: fraction of groups exactly N:M}``.

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
    selected = target_linears(model, targets, m=m)
    if masks is not None:
        masks = {k.removesuffix(".weight"): v for k, v in masks.items()}
        missing = [name for name, _ in selected if name not in masks]
        if missing:
            raise ValueError(f"masks has no entry for {len(missing)} target(s), e.g. {missing[0]!r}")
    per_block = _by_block(model, selected)

    def xtx(x: Tensor) -> Tensor:
        x = x.to(hessian_dtype)
        return x.t().matmul(x)

    def process(i, block, calibrate):
        stats, counts = _collect(per_block[i], calibrate, xtx)
        for name, mod in per_block[i]:
            H = stats.pop(name)
            H.mul_(2.0 / max(counts[name], 1))
            conv1d = linear_group_dim(mod) == 0
            w = mod.weight.detach()
            keep = None if masks is None else masks[name].to(w.device)
            if keep is not None and conv1d:
                keep = keep.t()
            new, losses = sparsegpt_solve(w.t() if conv1d else w, H, n, m, blocksize, percdamp, keep)
            del H
            with torch.no_grad():
                mod.weight.copy_((new.t() if conv1d else new).to(mod.weight.dtype))
            logger.debug("sparsegpt %s: OBS loss %.4g", name, float(losses.sum()))

    run_blocks_sequentially(model, calib, process, blocks=list(per_block), batch_size=batch_size,
                            progress=progress, desc="sparsegpt")
    return layer_report(selected, n, m)
