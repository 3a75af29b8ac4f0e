r"""ProxSparse for causal LMs: learn an N:M mask end to end, then apply it to the original, frozen weights.

For every target matrix W (initialised to the original W0, which stays frozen and bit-exact) the run solves,
over calibration batches x,

    min_W  L(W; x) + Σ_matrices λ_W · R(W),      R(W) = Σ_groups e_{n+1}(|w_g|)   (zero iff N:M),

with [`torchprox.ProxAdam`][torchprox.optim.proxadam.ProxAdam]: an Adam step on the language-model loss L, then the exact prox of λ_W·R in
Adam's diagonal metric (``metric="adam"``, the default: argmin_w Σ_i (w_i − θ_i)² / (2 s_i) + λ_W R(w) with
s_i = lr / (√v̂_i + ε), so the prox moves each weight in proportion to its own Adam step and weights with
consistently large gradients resist it) and a constant λ; ``metric="identity"`` with ``lam=0.02`` is the
paper's recipe (s_i = 1). On the embedded default, at about the same learning time, the Adam metric reaches a
mask-only held-out perplexity of 63.2 against 89.1 for the identity metric (docs/choosing-lambda.md). After
the last step the mask is the top-n of every
group of |W_j|·‖X_j‖₂ (the learned weights scaled by the norms of their input features over the calibration
blocks; ``mask_scores="weight"`` takes the paper's top-n of |W|) and the model's weight becomes ``W0 ⊙ mask``:
no kept weight is ever updated. On the embedded default the two extractions from the same learned weights give
89.1 (activation) and 92.9 (weight) held-out perplexity; groups that are already exactly N:M get the same mask
either way.

**Normalised λ.** R is homogeneous of degree n+1 in |w| and prox_{λR}(c·y) = c·prox_{c^{n-1}λR}(y), so the
same λ means very different things on matrices of different scale. With ``lam_normalization="rms"`` (the
default) the given ``lam`` is read on the scale of a matrix whose entries have unit RMS:

    λ_W = lam / rms(W0)^(n-1),       rms(W0) = sqrt(mean(W0²)),

which makes one setting transfer across layers and models. ``lam_normalization="none"`` uses ``lam`` as is
(the paper's λ).

**Normalised lr.** Adam's step is in absolute weight units (about lr per step whatever the gradient's scale),
so with ``lr_normalization="rms"`` (the default) the given ``lr`` is also read per unit RMS of the matrix:

    lr_W = lr · rms(W0),

so every matrix's Adam step is the same fraction of its own scale (the prox's metric s_i then grows as
rms(W0)², so λ_W is not exactly scale-free with it: docs/choosing-lambda.md). The default
lr 5e-3 ≈ 1e-3 / 0.19 (0.19: the median rms(W0) of the embedded SmolLM2's matrices) keeps that model's
steps where the earlier absolute lr 1e-3 had them (held-out perplexity 63.3 against 63.4), and transfers to
models whose weights are of another scale: on Gemma-3-270M (rms 0.04) the absolute lr 1e-3 gives 124.2, the normalised one 69.7
(docs/benchmarks.md). ``lr_normalization="none"`` uses ``lr`` as is (``DEFAULT_LR["none"]`` = 1e-3).

**λ schedule.** ``lam_ramp=f`` raises λ linearly from 0 to its value over the first fraction ``f`` of the
steps (λ_t = λ · min(1, (t+1) / (f · steps))), so the loss moves the weights before the regularizer pins the
groups; ``lam_ramp=0`` is the paper's constant λ.

**Optional weight update** (``reconstruct=``, not part of the paper: the output is then no longer
``W0 ⊙ mask``; see [`torchprox.llm.reconstruct`][torchprox.llm.reconstruct]). Once the learned mask is fixed, ``"obs"`` updates the
kept weights block by block with SparseGPT's OBS solver restricted to that mask, on the first
``reconstruct_blocks`` calibration blocks; ``"finetune"`` trains the kept weights on the LM loss for
``reconstruct_steps`` steps (lr ``reconstruct_lr``, linear decay) with the mask frozen. The mask-only result
stays the default.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._files import atomic_write, remove_stale_temporaries
from ..optim import LAM_SCALINGS, METRICS, ProxAdam
from ..prox import check_nm
from ..prune import (apply_learned_masks, frozen_weight_penalty, learnable_nm_model, nm_fraction, nm_parametrizations,
                     remove_all, restore_dense)
from ._runtime import block_order, freeze, is_dtensor, restore_requires_grad, train_lm
from .baselines import _InputStats
from .distill import distillation_loss, parse_loss
from .experts import ExpertInputStats, supports_capture
from .reconstruct import _targets as _reconstruct_targets
from .reconstruct import finetune_masked, obs_update
from .targets import Target, along_input_dim, target_key, target_tensors

logger = logging.getLogger(__name__)

__all__ = ["ProxSparseConfig", "learn_masks", "DEFAULT_LAM", "DEFAULT_LR", "RECONSTRUCTS"]


#: ``ProxSparseConfig.reconstruct``'s values: the optional weight update after the mask is fixed.
RECONSTRUCT_OBS, RECONSTRUCT_FINETUNE = "obs", "finetune"
RECONSTRUCTS = (None, RECONSTRUCT_OBS, RECONSTRUCT_FINETUNE)

#: The recipe's λ for each ProxAdam metric (``ProxSparseConfig(lam=None)``): 0.001 in Adam's diagonal metric,
#: the paper's 0.02 in the identity metric.
DEFAULT_LAM = {"adam": 0.001, "identity": 0.02}

#: The recipe's peak lr for each ``lr_normalization`` (``ProxSparseConfig(lr=None)``): 5e-3 per unit RMS of
#: each matrix (``"rms"``, the default), 1e-3 in absolute weight units (``"none"``).
DEFAULT_LR = {"rms": 5e-3, "none": 1e-3}

# ProxSparseConfig's numeric fields: (integer?, accepted values, message). Every value must also be finite.
_NUMBER_FIELDS = {
    "lam": (False, lambda v: v >= 0, "must be a finite number >= 0"),
    "lr": (False, lambda v: v > 0, "must be a finite number > 0"),
    "steps": (True, lambda v: v >= 1, "must be an integer >= 1"),
    "batch_size": (True, lambda v: v >= 1, "must be an integer >= 1"),
    "warmup": (False, lambda v: 0 <= v < 1, "is a fraction of the steps in [0, 1)"),
    "grad_clip": (False, lambda v: v > 0, "must be None (no clipping) or a finite number > 0"),
    "lam_ramp": (False, lambda v: 0 <= v <= 1, "is a fraction of the steps in [0, 1]"),
    "reconstruct_blocks": (True, lambda v: v >= 1, "must be an integer >= 1"),
    "reconstruct_steps": (True, lambda v: v >= 1, "must be an integer >= 1"),
    "reconstruct_lr": (False, lambda v: v > 0, "must be a finite number > 0"),
    "frozen_lam": (False, lambda v: v >= 0, "must be a finite number >= 0"),
    "log_every": (True, lambda v: v >= 1, "must be an integer >= 1"),
    "checkpoint_every": (True, lambda v: v >= 0, "must be an integer >= 0 (0: no checkpoints)"),
    "seed": (True, lambda v: -2**63 <= v < 2**64, "must be an integer in [-2**63, 2**64) (torch.manual_seed)"),
    "kd_temperature": (False, lambda v: v > 0, "must be a finite number > 0"),
}
_CHOICE_FIELDS = {
    "lam_normalization": ("rms", "none"), "lr_normalization": tuple(DEFAULT_LR), "metric": METRICS,
    "lam_scaling": LAM_SCALINGS, "mask_scores": ("weight", "activation"), "reconstruct": RECONSTRUCTS,
}


@dataclass
class ProxSparseConfig:
    """Settings of a ProxSparse run (plain data: saved in checkpoints and manifests).

    Attributes:
        lam: λ of the N:M regularizer (normalised per matrix, see the module docstring); None (the default):
            the metric's recipe value, [`DEFAULT_LAM`][torchprox.llm.proxsparse.DEFAULT_LAM] (0.001 with ``metric="adam"``, 0.02 with
            ``"identity"``), resolved when the config is made.
        lr: peak Adam learning rate, per unit RMS of each matrix with ``lr_normalization="rms"`` (the
            default) or absolute with ``"none"``; None (the default): the recipe value for the normalization,
            [`DEFAULT_LR`][torchprox.llm.proxsparse.DEFAULT_LR] (5e-3 with ``"rms"``, 1e-3 with ``"none"``).
        steps: optimizer steps; each sees ``batch_size`` calibration blocks.
        batch_size: blocks per step.
        warmup: fraction of steps of linear warm-up, followed by linear decay to 0.
        grad_clip: max global gradient norm (``None``: no clipping).
        lam_normalization: ``"rms"`` (the default) or ``"none"``.
        lr_normalization: ``"rms"`` (the default) or ``"none"``.
        metric: ProxAdam's metric: ``"adam"`` (the default) or ``"identity"`` (the paper).
        lam_scaling: ProxAdam's λ scaling: ``"constant"`` λ (the default, the paper) or ``"lr"``.
        mask_scores: ``"activation"`` (the default: top-n of |W|·‖X_j‖₂ with input norms from the calibration
            blocks, computed once on the dense model) or ``"weight"`` (top-n of |W|, the paper).
        lam_ramp: fraction of the steps over which λ rises linearly from 0 (0: constant λ, as the paper).
        reconstruct: ``None`` (mask only: every weight is ``W0 ⊙ mask``), ``"obs"`` or ``"finetune"`` (then
            update the kept weights; see the module docstring).
        reconstruct_blocks: calibration blocks used by ``"obs"``.
        reconstruct_steps: the masked fine-tune's steps (of ``batch_size`` blocks).
        reconstruct_lr: the masked fine-tune's peak lr.
        reconstruct_loss: the masked fine-tune's loss, as ``loss`` (e.g. ``"lm+kd"``); its teacher is the dense
            W0, kept aside for the fine-tune (one more copy of the targets, in place of the Adam state of the
            learning).
        frozen_lam: weight of the paper's "frozen weight" regularizer, added to the loss as
            ``frozen_lam · mean_ij (W_ij (W_ij − W0_ij) / W0_ij)²`` over all target weights (zero when every
            weight is either 0 or its original value; 0 disables it). It keeps the trained network close to
            the ``W0 ⊙ mask`` that is finally used.
        log_every: steps between checks of the fraction of groups already N:M.
        checkpoint_every: steps between checkpoints (0: none) when a checkpoint directory is given.
        seed: seed of anything random in the run.
        loss: the training loss, a sum of weighted terms: ``"lm"`` (next-token loss, the default), ``"kd"``
            (KL from the dense model's next-token distribution), ``"hidden"`` (each block's output against the
            dense one's, normalised MSE), e.g. ``"lm+kd"`` or ``"0.5*lm+0.5*kd"``. The dense model is the same
            modules computing with W0 (no second copy); see [`torchprox.llm.distill`][torchprox.llm.distill].
        kd_temperature: τ of the ``"kd"`` term (softmax of logits / τ, scaled by τ²).

    Per target matrix W (original W0) the run uses ``λ_W = lam / rms(W0)^(n−1)`` (``lam_normalization="rms"``)
    and ``lr_W = lr · rms(W0)`` (``lr_normalization="rms"``); at step t the lr follows a linear warm-up then
    a linear decay to 0, and ``λ_t = λ_W · min(1, (t+1) / (lam_ramp · steps))``.

    Examples:
        >>> cfg = ProxSparseConfig(lam=0.05, steps=100, lam_ramp=0.2)
        >>> cfg.lam, cfg.steps, cfg.to_dict()["lam_normalization"]
        (0.05, 100, 'rms')
        >>> ProxSparseConfig().lam, ProxSparseConfig(metric="identity").lam      # lam=None: the metric's default
        (0.001, 0.02)
        >>> ProxSparseConfig().lr, ProxSparseConfig(lr_normalization="none").lr   # lr=None: per normalization
        (0.005, 0.001)
        >>> ProxSparseConfig(warmup=1.5)
        Traceback (most recent call last):
            ...
        ValueError: warmup is a fraction of the steps in [0, 1), got 1.5
    """

    lam: float | None = None
    lr: float | None = None
    steps: int = 100
    batch_size: int = 1
    warmup: float = 0.1
    grad_clip: float | None = 1.0
    lam_normalization: str = "rms"
    lr_normalization: str = "rms"
    metric: str = "adam"
    lam_scaling: str = "constant"
    mask_scores: str = "activation"
    lam_ramp: float = 0.0
    reconstruct: str | None = None
    reconstruct_blocks: int = 64
    reconstruct_steps: int = 40
    reconstruct_lr: float = 2e-4
    reconstruct_loss: str = "lm"
    frozen_lam: float = 0.0
    log_every: int = 10
    checkpoint_every: int = 0
    seed: int = 0
    loss: str = "lm"
    kd_temperature: float = 1.0

    def __post_init__(self) -> None:
        """Every field checked (type, finiteness, range, choice), so a bad setting fails here, before any
        model is touched; the message names the field, its value and the accepted range. ``lam=None``
        becomes the metric's [`DEFAULT_LAM`][torchprox.llm.proxsparse.DEFAULT_LAM], ``lr=None`` the
        normalization's [`DEFAULT_LR`][torchprox.llm.proxsparse.DEFAULT_LR]."""
        for key, choice, defaults in (("lam", "metric", DEFAULT_LAM), ("lr", "lr_normalization", DEFAULT_LR)):
            if getattr(self, key) is None:
                if getattr(self, choice) not in defaults:
                    raise ValueError(f"{choice} must be one of {tuple(defaults)}, got {getattr(self, choice)!r}")
                setattr(self, key, defaults[getattr(self, choice)])
        for key, (integer, ok, text) in _NUMBER_FIELDS.items():
            value = getattr(self, key)
            if key == "grad_clip" and value is None:
                continue
            kind = numbers.Integral if integer else numbers.Real
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not ok(value):
                raise ValueError(f"{key} {text}, got {value!r}")
        for key, allowed in _CHOICE_FIELDS.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        parse_loss(self.reconstruct_loss)
        if "lm" not in parse_loss(self.loss) and self.metric == "adam":
            raise ValueError(
                f"loss {self.loss!r} with metric='adam' would never move W: without 'lm' the loss and its gradient "
                "are exactly 0 at W = W0, and the Adam metric takes no prox step where v̂ = 0; add 'lm' (e.g. "
                f"'lm+{self.loss}') or use metric='identity'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rms(t: Tensor) -> float:
    return float(t.detach().double().square().mean().sqrt().clamp_min(1e-12))


def _param_groups(model: nn.Module, cfg: ProxSparseConfig) -> tuple[list[dict], list[str]]:
    """One ProxAdam group per learnable matrix, with its own λ_W (and lr_W), and the matrices' keys (the
    module name for a ``weight``, ``"<module>.<param>"`` otherwise, as
    [`Target.key`][torchprox.llm.targets.Target])."""
    groups, names = [], []
    for qualname, module, tname, plist, p in nm_parametrizations(model):
        if p.state != "learning":
            continue
        scale = _rms(p.w0)
        lam = cfg.lam / scale ** (p.n - 1) if cfg.lam_normalization == "rms" else cfg.lam
        lr = cfg.lr * scale if cfg.lr_normalization == "rms" else cfg.lr
        groups.append({
            "params": [plist.original], "prox": "nm", "lam": lam, "lr": lr, "initial_lr": lr,
            "prox_kwargs": {"n": p.n, "m": p.m, "dim": p.dim}, "metric": cfg.metric, "lam_scaling": cfg.lam_scaling,
        })
        names.append(target_key(qualname, tname))
    return groups, names


def _schedule(cfg: ProxSparseConfig):
    warm = max(1, round(cfg.warmup * cfg.steps)) if cfg.warmup > 0 else 0

    def factor(step: int) -> float:  # step = number of optimizer steps taken so far
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))

    return factor


def _lam_factor(cfg: ProxSparseConfig, step: int) -> float:
    """λ_t / λ at optimizer step ``step`` (0-based): a linear ramp over the first ``lam_ramp`` of the steps."""
    ramp = cfg.lam_ramp * cfg.steps
    return 1.0 if ramp <= 0 else min(1.0, (step + 1) / ramp)


def nm_progress(model: nn.Module) -> dict[str, Any] | None:
    r"""How far the learnable (learning-state) N:M weights W of ``model`` are from being exactly N:M.

    For layer l with weight W_l of ``numel_l`` entries in groups of m along its group dim,
    ``groups_l = numel_l / m`` and ``ok_l`` = the number of groups with at most n nonzeros. Returns

    ``{"nm_fraction": Σ ok_l / Σ groups_l, "nm_layers_done": #{l : ok_l = groups_l}, "nm_layers": #layers}``

    or None when the model has no learning-state N:M layer. (One host sync per layer: for logging.)

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm
        >>> lin = learnable_nm(torch.nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     _ = lin.parametrizations.weight.original[0].zero_()   # row 0: 2 groups, both N:M now
        >>> nm_progress(lin)
        {'nm_fraction': 0.5, 'nm_layers_done': 0, 'nm_layers': 1}
    """
    ok = total = done = layers = 0
    for _, _, _, plist, p in nm_parametrizations(model):
        if p.state != "learning":
            continue
        w = plist.original.detach()
        if is_dtensor(w):
            w = w.full_tensor()
        groups = w.numel() // p.m
        good = round(float(nm_fraction(w, p.n, p.m, p.dim)) * groups)
        ok, total, layers = ok + good, total + groups, layers + 1
        done += good == groups
    if layers == 0:
        return None
    return {"nm_fraction": ok / total if total else 1.0, "nm_layers_done": done, "nm_layers": layers}


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, or written for other inputs or settings."""


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically ([`torchprox._files.atomic_write`][torchprox._files.atomic_write])."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _tensors_sha256(tensors) -> str:
    """sha256 over ``(name, dtype, shape, bytes)`` of every ``(name, tensor)``, in the given order (about
    0.6 s per GB on one CPU core: 0.3-0.6 s for a 135M-parameter fp32 model)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


#: What each fingerprint entry means, for the error on a mismatch.
_FINGERPRINT = {
    "weights": "the model's weights (another model, or a modified one)",
    "calib": "the calibration tokens (other data, seed or number of blocks)",
    "seqlen": "seqlen",
    "pattern": "the N:M pattern",
    "targets": "the target layers",
    "config": "the settings (ProxSparseConfig)",
}


def _fingerprint(model: nn.Module, calib: Tensor, n: int, m: int, cfg: ProxSparseConfig,
                 names: list[str]) -> dict[str, Any]:
    """What a checkpoint's run started from: a hash of every parameter of ``model`` (the W0 the mask is
    applied to; tied parameters once) and of the calibration tokens, seqlen, the pattern, the target names and
    the settings. Resuming requires equality of all of them."""
    return {"weights": _tensors_sha256(model.named_parameters()), "calib": _tensors_sha256([("calib", calib)]),
            "seqlen": int(calib.shape[1]), "pattern": f"{n}:{m}", "targets": list(names), "config": cfg.to_dict()}


def _load_checkpoint(path: Path, fingerprint: dict[str, Any], shapes: list[torch.Size]) -> dict[str, Any]:
    """Read ``path`` (``weights_only=True``) and check it was written by a run on the same inputs.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        CheckpointError: unreadable (truncated, corrupt, not a checkpoint) or written by a run whose
            fingerprint ([`_fingerprint`][torchprox.llm.proxsparse._fingerprint]) differs; the message names what differs.
    """
    if path is None or not path.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, bad pickle, I/O error: all mean unusable
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt: {reason}); delete it and "
                              "start a new run") from None
    keys = {"fingerprint", "step", "loss", "nm_fraction", "weights", "optimizer", "scheduler"}
    if not isinstance(state, dict) or not keys <= state.keys():
        missing = sorted(keys - set(state)) if isinstance(state, dict) else sorted(keys)
        raise CheckpointError(f"{path} is not a torchprox checkpoint of this version (missing {', '.join(missing)}); "
                              "delete it and start a new run")
    theirs = state["fingerprint"]
    differ = [what for key, what in _FINGERPRINT.items()
              if not isinstance(theirs, dict) or theirs.get(key) != fingerprint[key]]
    if not differ and [tuple(w.shape) for w in state["weights"]] != [tuple(s) for s in shapes]:
        differ = ["the saved weights' shapes"]
    if differ:
        detail = "; ".join(differ)
        if isinstance(theirs, dict) and theirs.get("seqlen") != fingerprint["seqlen"]:
            detail = detail.replace("seqlen", f"seqlen ({theirs.get('seqlen')} there, {fingerprint['seqlen']} here)")
        raise CheckpointError(f"{path} was written by a run with other settings or inputs; they differ in: {detail}. "
                              "Resume with the same model, data and settings, or start a new run")
    return state


@torch.no_grad()
def _input_norms(model: nn.Module, chosen: list[Target], calib: Tensor, batch_size: int
                 ) -> tuple[dict[str, Tensor], dict[str, list[int]]]:
    r"""Input-feature norms of the targets over the calibration blocks (dense model, one pass), by key.

    - a linear weight: ‖X_j‖₂ over every row its layer multiplies, ``(in,)``;
    - a fused expert tensor ``(E, ...)``: per expert, ‖r ⊙ X_{e,j}‖₂ over the rows routed to expert e, each row
      scaled by its routing weight r ([`ExpertInputStats`][torchprox.llm.experts.ExpertInputStats]), ``(E, in)``.
      An expert that no calibration token reaches (or only with routing weight 0) has no norms: its row is
      1 (the mask is then the top-n of |W| alone; all-zero scores would keep the lowest indices), and it is
      listed in the second result, ``{key: [expert, ...]}``.

    Targets whose inputs cannot be captured (another kind of tensor, or experts modules that
    [`supports_capture`][torchprox.llm.experts.supports_capture] refuses) get no entry (top-n of |W|; logged).
    """
    linear = {t.key: t.module for t in chosen if t.is_linear}
    experts = [t for t in chosen if t.experts and supports_capture(t.module)]
    other = [t.key for t in chosen if t.key not in linear and t not in experts]
    if other:
        logger.warning("mask_scores='activation': no input norms for %d target(s) (%s); their masks are the "
                       "top-n of |W|", len(other), ", ".join(other[:3]))
    sq_norms = lambda x: x.float().square().sum(0)  # noqa: E731
    with _InputStats(linear, sq_norms) as seen, ExpertInputStats(experts, sq_norms) as stats:
        device = next(model.parameters()).device
        for i in range(0, calib.shape[0], batch_size):
            model(input_ids=calib[i:i + batch_size].to(device), use_cache=False)
    norms = {k: v.sqrt() for k, v in seen.stats.items()}
    unrouted: dict[str, list[int]] = {}
    for t in experts:
        in_features = t.weight.shape[t.dim]
        sums = stats.stats.get(t.key, torch.zeros(t.experts, in_features, device=t.weight.device))
        empty = sums.eq(0).all(-1)  # no routed row, or only with routing weight 0
        norms[t.key] = torch.where(empty.unsqueeze(-1), torch.ones_like(sums), sums.sqrt())
        if bool(empty.any()):
            unrouted[t.key] = empty.nonzero().flatten().tolist()
    return norms, unrouted


def _vocab_size(model: nn.Module) -> int | None:
    emb = model.get_input_embeddings() if callable(getattr(model, "get_input_embeddings", None)) else None
    if isinstance(getattr(emb, "num_embeddings", None), int):
        return emb.num_embeddings
    return getattr(getattr(model, "config", None), "vocab_size", None)


def check_calib(model: nn.Module, calib: Tensor, batch_size: int = 1) -> None:
    """ValueError unless ``calib`` is an integer tensor ``(B, seqlen)`` of token ids the model can run:
    ``B >= batch_size`` blocks, ``2 <= seqlen <=`` the model's positions (``config.max_position_embeddings``
    where set), every id in ``[0, vocab size)``. Reads the ids' min and max once (one host sync)."""
    if not isinstance(calib, Tensor) or calib.dim() != 2:
        got = f"shape {tuple(calib.shape)}" if isinstance(calib, Tensor) else type(calib).__name__
        raise ValueError(f"calib must be a LongTensor (B, seqlen) of token ids, got {got}")
    if calib.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"calib must hold integer token ids (torch.long), got dtype {calib.dtype}")
    blocks, seqlen = calib.shape
    if blocks < batch_size or blocks == 0:
        raise ValueError(f"calib has {blocks} blocks but batch_size={batch_size} needs at least {max(batch_size, 1)}; "
                         "lower batch_size or give more calibration blocks")
    if seqlen < 2:
        raise ValueError(f"calib blocks have {seqlen} token(s); the language-model loss needs seqlen >= 2")
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and seqlen > positions:
        raise ValueError(f"calib blocks of {seqlen} tokens exceed the model's {positions} positions "
                         "(config.max_position_embeddings); use a shorter seqlen")
    vocab = _vocab_size(model)
    low, high = torch.aminmax(calib)
    low, high = int(low), int(high)
    if low < 0 or (isinstance(vocab, int) and high >= vocab):
        raise ValueError(f"calib holds token id {low if low < 0 else high} outside the model's vocabulary "
                         f"[0, {vocab}); tokenize with the model's own tokenizer")


def learn_masks(
    model: nn.Module,
    calib: Tensor,
    n: int = 2,
    m: int = 4,
    config: ProxSparseConfig | None = None,
    *,
    targets=None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    offload_w0: bool = False,
) -> dict[str, Any]:
    """Learn an N:M mask for the matrix weights of ``model``'s decoder blocks with ProxSparse and apply it in place.

    The targets are [`target_tensors`][torchprox.llm.targets.target_tensors]: every linear weight and every
    fused Mixture-of-Experts tensor ``(experts, ...)``, each grouped along its true input dim (dim 2 for
    ``F.linear(x, W[e])`` layouts, dim 1 for the transposed ``x @ W[e]`` ones of GPT-OSS and Llama 4); routers
    stay dense.

    Args:
        model: a Hugging Face causal LM (its weights are the W0 that the mask is applied to).
        calib: ``LongTensor (B, seqlen)`` calibration blocks; step i uses ``batch_size`` of them, in a seeded
            order (cycled when there are fewer than ``steps × batch_size``).
        n: nonzeros kept per group (``0 < n < m``).
        m: the group size (consecutive weights along the layer's input dimension).
        config: [`ProxSparseConfig`][torchprox.llm.proxsparse.ProxSparseConfig] (defaults if None).
        targets: PEFT-style targets (see [`target_tensors`][torchprox.llm.targets.target_tensors], e.g.
            ``["q_proj", "experts.gate_up_proj"]``); default every matrix weight of the decoder blocks except
            routers.
        checkpoint_dir: where ``checkpoint.pt`` is written every ``config.checkpoint_every`` steps (atomically;
            an existing one is replaced when ``resume`` is False). It holds a fingerprint of the run's inputs: a
            sha256 of the model's parameters at the start (W0) and of ``calib``, seqlen, the pattern, the
            targets and ``config``.
        resume: continue from ``checkpoint_dir/checkpoint.pt``; the result equals an uninterrupted run. The
            checkpoint is read with ``weights_only=True`` and checked before the model is touched: a missing
            one raises FileNotFoundError; an unreadable one, or one whose fingerprint differs,
            `CheckpointError` (a ValueError) naming what differs.
        progress: a tqdm bar with the loss and the fraction of groups already N:M.
        offload_w0: keep the frozen W0 copies on CPU.

    Returns:
        A report, a dict with the keys `config`, `steps`, `tokens`, `seconds`, `seconds_per_step`,
            `loss` (per step), `nm_fraction` (logged (step, fraction) pairs), `targets` (their number),
            `unrouted_experts` (``{key: [expert, ...]}``: the experts of each fused tensor that no calibration
            token reached, whose activation scores fell back to |W| alone; None with ``mask_scores="weight"``,
            which runs no calibration pass) and `peak_rss_gb`. On return
            every target weight is exactly ``W0 ⊙ mask`` (a plain Parameter again) and every other parameter
            is unchanged.

    Raises:
        ValueError / TypeError: bad ``n, m``, ``config``, ``calib`` (see `check_calib`) or ``targets``
            (no match, or a size not a multiple of ``m``), or ``config.reconstruct`` cannot update a target
            (its own check of the targets); raised before the model is touched.
        FloatingPointError: learning diverged (a non-finite loss at some step, checked on the loss each step
            already reads, or non-finite learned weights at the end, one check), or the dense model's
            activations on ``calib`` overflow; the message names the step or layers and says to lower ``lr``.

    Any error while the mask is being learned (including ``KeyboardInterrupt``) restores the model to its
    input weights, bit for bit, with its ``requires_grad`` flags, before it propagates. (Once the masks
    are applied, an error in ``reconstruct`` leaves the model masked, exactly N:M.)

    Each step: ``W ← prox_{λ_t·R}(W − Adam(∇_W L(W; x)))`` on a batch x of ``batch_size`` blocks, with
    ``R(W) = Σ_groups e_{n+1}(|w_g|)`` (zero iff every group of m is N:M); at the end
    ``mask = topn(|W| · ‖X_j‖₂)`` (``mask_scores="activation"``) or ``topn(|W|)`` per group of m along the
    input dim and ``weight = W0 ⊙ mask``. ``tokens`` in the report is ``steps × batch_size × seqlen``.

    **Experts.** A fused expert tensor's activation scores use each expert's own input norms: the rows routed
    to it, each scaled by its routing weight (see [`torchprox.llm.experts`][torchprox.llm.experts]). An expert
    no calibration token reaches gets norms of 1 (its mask is the top-n of |W|; never all-zero scores) and is
    listed in ``unrouted_experts`` (and logged). During learning, an expert that the step's tokens do not reach
    gets a zero gradient. With ``metric="adam"`` (the default) its Adam step is 0 and, where Adam's v̂ = 0
    (never a nonzero gradient so far), ProxAdam's prox step is 0 too instead of the formula's lr/ε, an
    effectively infinite step that would zero the group at once (see [`ProxAdam`][torchprox.optim.proxadam.ProxAdam]):
    the decision is *no prox where v̂ = 0*. So an expert untouched by the data keeps W = W0, bit for bit, until
    it is routed, and if it never is, its mask is that of W0 (the top-n of |W0|, times its norms, which are 1
    when the calibration blocks miss it too). Once routed, v̂ > 0 and the prox acts on it, also on later steps
    that miss it (it then moves by the prox alone). With ``metric="identity"`` the prox step is 1 whatever the
    gradient, so every step's prox shrinks an unrouted expert toward N:M too (as the paper's recipe would).

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)                 # a tiny Llama: 1 block of 7 linears
        >>> from torchprox.prune import is_nm
        >>> calib = torch.randint(0, 64, (4, 16))                     # 4 calibration blocks of 16 tokens
        >>> w0 = model.model.layers[0].mlp.down_proj.weight.detach().clone()
        >>> report = learn_masks(model, calib, 2, 4, ProxSparseConfig(steps=4, log_every=2), progress=False)
        >>> report["steps"], report["tokens"], report["targets"], len(report["loss"])
        (4, 64, 7, 4)
        >>> w = model.model.layers[0].mlp.down_proj.weight                   # (32, 64), now W0 ⊙ mask
        >>> is_nm(w, 2, 4, dim=1), bool(torch.equal(w, w0 * (w != 0)))
        (True, True)
    """
    check_nm(n, m)
    cfg = ProxSparseConfig() if config is None else config
    if not isinstance(cfg, ProxSparseConfig):
        raise TypeError(f"config must be a ProxSparseConfig or None, got {type(cfg).__name__}")
    check_calib(model, calib, cfg.batch_size)
    chosen = target_tensors(model, targets, m=m)
    names = [t.key for t in chosen]
    _check_reconstruct(model, cfg, chosen)
    ckpt = _Checkpoint.open(checkpoint_dir, model, calib, n, m, cfg, names)
    # Read and checked before the model is touched.
    state = ckpt.load([t.weight.shape for t in chosen]) if resume else None
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        act_norms, unrouted = _activation_norms(model, calib, cfg, chosen)
        freeze(model)
        _make_learnable(model, chosen, n, m, offload_w0)
        run = _Run(model, cfg)
        if state is not None:
            run.restore(state)
            logger.info("resumed from %s at step %d", ckpt.path, run.start)
        seconds = run.train(calib, ckpt, progress)
        masks, dense = _extract(model, run, act_norms, requires)
    except BaseException:
        _restore_input(model, requires)
        raise
    _reconstruct(model, calib, cfg, masks, n, m, progress, dense)
    return {
        "config": cfg.to_dict(), "steps": cfg.steps, "tokens": cfg.steps * cfg.batch_size * calib.shape[1],
        "seconds": seconds, "seconds_per_step": seconds / max(cfg.steps - run.start, 1), "loss": run.losses,
        "nm_fraction": run.fractions, "targets": len(run.names), "unrouted_experts": unrouted,
        "peak_rss_gb": _peak_rss_gb(),
    }


def _check_reconstruct(model: nn.Module, cfg: ProxSparseConfig, chosen: list[Target]) -> None:
    """Before anything is touched: ``cfg.reconstruct``'s stage accepts a mask for every target (reconstruct's
    own check, on zero-memory stand-in masks named as [`apply_learned_masks`][torchprox.prune.learnable.apply_learned_masks]
    names them), so it cannot fail on them after the learning (e.g. fused expert tensors it cannot update)."""
    if cfg.reconstruct is None:
        return
    stand_in = {t.tensor_name: torch.zeros((), dtype=torch.bool).expand(t.weight.shape) for t in chosen}
    try:
        _reconstruct_targets(model, stand_in)
    except ValueError as err:
        raise ValueError(f"reconstruct={cfg.reconstruct!r} cannot update these targets: {err}; use "
                         "reconstruct=None or targets without them") from None


def _make_learnable(model: nn.Module, chosen: list[Target], n: int, m: int, offload_w0: bool) -> None:
    """One [`learnable_nm_model`][torchprox.prune.learnable.learnable_nm_model] call (every target validated
    before any is changed): linear weights by module name, every other tensor as ``(module, param, dim)``."""
    linear = [t.key for t in chosen if t.is_linear]
    tensors = [(t.module, t.param, t.dim) for t in chosen if not t.is_linear]
    learnable_nm_model(model, n=n, m=m, targets=linear + tensors, offload_w0=offload_w0)


def _restore_input(model: nn.Module, requires: dict[str, bool]) -> None:
    """After a failed run: every layer still learning gets W0 back (bit for bit), any parametrization left
    is removed, and every parameter's ``requires_grad`` is what it was on entry."""
    restore_dense(model)
    remove_all(model)
    restore_requires_grad(model, requires)


def _check_finite(values: list[Tensor], names: list[str], what: str, fix: str) -> None:
    """FloatingPointError naming the first tensors with a NaN or inf entry (one host sync for all)."""
    finite = torch.stack([torch.isfinite(v).all().cpu() for v in values]).tolist() if values else []
    bad = [name for name, ok in zip(names, finite) if not ok]
    if bad:
        raise FloatingPointError(f"{what} non-finite in {len(bad)} of {len(names)} layers ({', '.join(bad[:3])}"
                                 f"{', ...' if len(bad) > 3 else ''}); {fix}")


def _activation_norms(model: nn.Module, calib: Tensor, cfg: ProxSparseConfig, chosen: list[Target]
                      ) -> tuple[dict[str, Tensor] | None, dict[str, list[int]] | None]:
    """The dense model's input norms of every target (``mask_scores="activation"``), checked finite, and the
    unrouted experts ``{key: [expert, ...]}`` (see [`_input_norms`][torchprox.llm.proxsparse._input_norms]);
    ``(None, None)`` for ``mask_scores="weight"``."""
    if cfg.mask_scores != "activation":
        return None, None
    norms, unrouted = _input_norms(model, chosen, calib, cfg.batch_size)
    _check_finite(list(norms.values()), list(norms), "activation norms of the calibration blocks are",
                  "the dense model overflows on them; check the model's dtype and weights, or use "
                  "mask_scores='weight'")
    if unrouted:
        logger.warning("no calibration token reached %d expert(s) (%s); their masks are the top-n of |W| alone",
                       sum(map(len, unrouted.values())),
                       ", ".join(f"{k}: {v}" for k, v in list(unrouted.items())[:3]))
    return norms, unrouted


class _Checkpoint:
    """``checkpoint_dir/checkpoint.pt`` of a run and the fingerprint of its inputs (a run without a
    checkpoint directory has ``path`` None: nothing is read or written)."""

    def __init__(self, path: Path | None, fingerprint: dict[str, Any] | None) -> None:
        self.path, self.fingerprint = path, fingerprint

    @classmethod
    def open(cls, checkpoint_dir, model: nn.Module, calib: Tensor, n: int, m: int, cfg: ProxSparseConfig,
             names: list[str]) -> "_Checkpoint":
        if checkpoint_dir is None:
            return cls(None, None)
        path = Path(checkpoint_dir) / "checkpoint.pt"
        remove_stale_temporaries(path)  # .checkpoint.pt.tmp-PID of killed runs
        return cls(path, _fingerprint(model, calib, n, m, cfg, names))

    def load(self, shapes: list[torch.Size]) -> dict[str, Any]:
        return _load_checkpoint(self.path, self.fingerprint, shapes)

    def due(self, cfg: ProxSparseConfig, steps_done: int) -> bool:
        return self.path is not None and cfg.checkpoint_every > 0 and steps_done % cfg.checkpoint_every == 0

    def save(self, run: "_Run", steps_done: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save({
            "fingerprint": self.fingerprint, "config": run.cfg.to_dict(), "targets": run.names, "step": steps_done,
            "loss": run.losses, "nm_fraction": run.fractions, "weights": [p.detach() for p in run.params],
            "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
        }, self.path)


class _Run:
    """The learning state of a ProxSparse run on a model whose targets are learnable: one ProxAdam group per
    target ([`_param_groups`][torchprox.llm.proxsparse._param_groups]), the lr schedule, the
    seeded block order, and what the run has logged (losses, N:M fractions)."""

    def __init__(self, model: nn.Module, cfg: ProxSparseConfig) -> None:
        groups, self.names = _param_groups(model, cfg)
        self.model, self.cfg = model, cfg
        # torch's fused Adam kernel where it has one (CPU and CUDA). ProxAdam makes the same choice itself when
        # some group has λ > 0, but keeps AdamW's default (the for-loop kernel) at lam=0, whose bits differ.
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        self.opt = ProxAdam(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0, fused=fused or None)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _schedule(cfg))
        self.params = [g["params"][0] for g in groups]
        self.base_lams = [g["lam"] for g in groups]
        self.start, self.losses, self.fractions = 0, [], []

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state (already checked against this run's inputs)."""
        with torch.no_grad():
            for p, w in zip(self.params, state["weights"]):
                p.copy_(w)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.start, self.losses = state["step"], state["loss"]
        self.fractions = [tuple(f) for f in state["nm_fraction"]]

    def _set_lam(self, step: int) -> None:
        for group, lam in zip(self.opt.param_groups, self.base_lams):
            group["lam"] = lam * _lam_factor(self.cfg, step)

    def _penalty(self, model: nn.Module) -> Tensor:
        return self.cfg.frozen_lam / sum(p.numel() for p in self.params) * frozen_weight_penalty(model)

    def _after_step(self, step: int, loss: float, ckpt: _Checkpoint) -> dict[str, str]:
        """Divergence check, N:M log every ``log_every`` steps, checkpoint; the progress bar's postfix."""
        cfg = self.cfg
        self.losses.append(loss)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"learning diverged: the loss is {loss} at step {step + 1} (lr={cfg.lr}, lam={cfg.lam}); "
                "lower lr. The model was restored to its input weights")
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            self.fractions.append((step + 1, nm_progress(self.model)["nm_fraction"]))
            logger.info("step %d loss %.4f N:M groups %.2f%%", step + 1, loss, 100 * self.fractions[-1][1])
        if ckpt.due(cfg, step + 1):
            ckpt.save(self, step + 1)
        return {"nm": f"{100 * self.fractions[-1][1]:.1f}%" if self.fractions else "-"}

    def train(self, calib: Tensor, ckpt: _Checkpoint, progress: bool) -> float:
        """The remaining steps (see [`torchprox.llm._runtime.train_lm`][torchprox.llm._runtime.train_lm]); the learned weights are checked
        finite at the end. Returns the seconds taken."""
        cfg = self.cfg
        order = block_order(calib.shape[0], cfg.steps, cfg.batch_size, cfg.seed)
        _, seconds = train_lm(
            self.model, calib, order, self.opt, self.sched, start=self.start, progress=progress, desc="proxsparse",
            params=self.params, grad_clip=cfg.grad_clip, before_step=self._set_lam,
            extra_loss=self._penalty if cfg.frozen_lam else None,
            loss_fn=None if cfg.loss == "lm" else distillation_loss(cfg.loss, cfg.kd_temperature),
            after_step=lambda step, loss: self._after_step(step, loss, ckpt))
        _check_finite(self.params, self.names, "learning diverged: the learned weights are",
                      f"lower lr (lr={cfg.lr}). The model was restored to its input weights")
        return seconds


def _extract(model: nn.Module, run: _Run, act_norms: dict[str, Tensor] | None,
             requires: dict[str, bool]) -> dict[str, Tensor]:
    """mask = top-n of every group of |W| (times the input norms with activation scores: ‖X_j‖₂ along the
    group dim, per expert for a fused expert tensor); every target becomes ``W0 ⊙ mask``, a plain Parameter.
    With ``reconstruct="obs"`` the targets are the dense W0 instead (the OBS update compensates W0's pruning
    error). Returns the masks (keyed by qualified tensor name, as
    [`apply_learned_masks`][torchprox.prune.learnable.apply_learned_masks])."""
    if act_norms is not None:  # activation-aware extraction: scale each column by its input norm first
        learning = {target_key(qualname, tname): p
                    for qualname, _, tname, _, p in nm_parametrizations(model) if p.state == "learning"}
        with torch.no_grad():
            for name, w in zip(run.names, run.params):
                if name in act_norms:
                    w.mul_(along_input_dim(act_norms[name], w.dim(), learning[name].dim).to(w.dtype))
    keep = run.cfg.reconstruct == RECONSTRUCT_OBS or (
        run.cfg.reconstruct == RECONSTRUCT_FINETUNE and set(parse_loss(run.cfg.reconstruct_loss)) - {"lm"})
    dense = ({(qualname, module, tname): p.w0 for qualname, module, tname, _, p in nm_parametrizations(model)
              if p.state == "learning"} if keep else {})
    masks = apply_learned_masks(model, optimizer=run.opt)
    remove_all(model)
    restore_requires_grad(model, requires)
    if run.cfg.reconstruct == RECONSTRUCT_OBS:
        with torch.no_grad():
            for (_, module, tname), w0 in dense.items():
                getattr(module, tname).copy_(w0)
        return masks, None
    return masks, {f"{q}.{tname}": w0.to(getattr(module, tname)) for (q, module, tname), w0 in dense.items()} or None


def _reconstruct(model: nn.Module, calib: Tensor, cfg: ProxSparseConfig, masks: dict[str, Tensor], n: int, m: int,
                 progress: bool, dense: dict[str, Tensor] | None = None) -> None:
    """The optional weight update of the kept weights (``cfg.reconstruct``; ``dense``: W0 for a distilling
    fine-tune)."""
    if cfg.reconstruct == RECONSTRUCT_OBS:
        obs_update(model, calib[:cfg.reconstruct_blocks], masks, n, m, progress=progress)
    elif cfg.reconstruct == RECONSTRUCT_FINETUNE:
        finetune_masked(model, calib, masks, cfg.reconstruct_steps, cfg.reconstruct_lr, cfg.batch_size, cfg.seed,
                        progress=progress, loss=cfg.reconstruct_loss, kd_temperature=cfg.kd_temperature, dense=dense)


def _peak_rss_gb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    except (ImportError, AttributeError):
        return float("nan")


def config_json(cfg: ProxSparseConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)
