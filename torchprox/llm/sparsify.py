"""One call for every N:M method: the learned one (ProxSparse) and the one-shot baselines."""
from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import Any

from torch import Tensor, nn

from ..prox import check_nm, parse_pattern
from ..prune import nm_fraction
from .baselines import magnitude_prune, sparsegpt_prune, wanda_prune
from .proxsparse import ProxSparseConfig, check_calib, learn_masks
from .targets import ROUTER, coverage_report, target_tensors

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "sparsify"]

#: The one-shot baselines, and every method [`sparsify`][torchprox.llm.sparsify.sparsify] takes (the CLI's ``--method`` choices).
BASELINES = ("magnitude", "wanda", "sparsegpt")
METHODS = ("proxsparse", *BASELINES)


def sparsify(model: nn.Module, calib: Tensor | None, n: int = 2, m: int = 4, method: str = "proxsparse", *,
             targets=None, config: ProxSparseConfig | None = None, progress: bool = True,
             checkpoint_dir=None, resume: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Make the matrix weights of ``model``'s decoder blocks (linear layers and fused expert tensors, see
    [`target_tensors`][torchprox.llm.targets.target_tensors]) exactly N:M, in place, with ``method``:

    - ``"proxsparse"``: learn the mask end to end ([`torchprox.llm.proxsparse.learn_masks`][torchprox.llm.proxsparse.learn_masks], settings in
      ``config`` or as keyword arguments of [`ProxSparseConfig`][torchprox.llm.proxsparse.ProxSparseConfig]), then ``W0 ⊙ mask``;
    - ``"magnitude"``: top-n of |W|; ``"wanda"``: top-n of |W|·‖X_j‖₂ (sequential over blocks);
    - ``"sparsegpt"``: the OBS solver with its weight update (blocksize 128, dampening 0.01, sequential).

    Args:
        calib: ``LongTensor (B, seqlen)`` calibration blocks (unused by ``"magnitude"``).
        targets: PEFT-style targets (names/suffixes of modules or tensors, or a regex); default every matrix
            weight of the blocks but the routers.
        checkpoint_dir: ``"proxsparse"`` only: where the run's checkpoints are written (see
            [`learn_masks`][torchprox.llm.proxsparse.learn_masks]); a ValueError with another method.
        resume: ``"proxsparse"`` only: continue from the checkpoint in ``checkpoint_dir``.
        kwargs: method options (``ProxSparseConfig`` fields, or ``blocksize``/``percdamp``/``batch_size``).

    Returns:
        `{"method", "pattern", "seconds", "layers": {name: fraction of groups N:M}, "coverage", ...method
            report}`; `coverage` is [`coverage_report`][torchprox.llm.targets.coverage_report]: the share of
            the decoder blocks' matrix weights that are N:M and what stayed dense, and why. With the default
            targets, a matrix weight left dense for any reason but being a router is a `UserWarning` (and a
            logged warning) naming it. `fallbacks` (Wanda, SparseGPT, ProxSparse's activation-aware
            extraction): `{key: [expert, ...]}`, the experts of each fused tensor that no calibration token
            reached, which got the magnitude mask instead.

    Every method leaves each target weight W (out, in) with at most n nonzeros in every group of m
    consecutive inputs (``report["layers"]`` values are 1.0); a result that is not is a RuntimeError, never
    a return. Bad arguments (pattern, method, calib, ProxSparseConfig fields) are a ValueError before the
    model is touched; a diverging ``"proxsparse"`` run is a FloatingPointError with the model restored (see
    [`learn_masks`][torchprox.llm.proxsparse.learn_masks]).

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)                 # a tiny Llama: 1 block of 7 linears
        >>> calib = torch.randint(0, 64, (4, 16))                     # LongTensor (B, seqlen)
        >>> report = sparsify(model, calib, 2, 4, method="wanda", progress=False)
        >>> report["method"], report["pattern"], len(report["layers"]), min(report["layers"].values())
        ('wanda', '2:4', 7, 1.0)
        >>> report = sparsify(model, calib, 2, 4, method="proxsparse", steps=2, progress=False)
        >>> report["steps"], min(report["layers"].values())
        (2, 1.0)
    """
    check_nm(n, m)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "proxsparse" and (checkpoint_dir is not None or resume):
        raise ValueError(f"checkpoint_dir and resume belong to a ProxSparse run; method {method!r} has no checkpoints")
    if method != "magnitude" and calib is None:
        raise ValueError(f"method {method!r} needs calibration blocks (calib=LongTensor (B, seqlen))")
    if method in ("wanda", "sparsegpt"):  # proxsparse: learn_masks checks it against its batch_size
        check_calib(model, calib)
    chosen = target_tensors(model, targets, m=m)  # resolved once: every stage below gets this list
    t0 = time.perf_counter()
    report: dict[str, Any] = {"method": method, "pattern": f"{n}:{m}"}
    if method == "proxsparse":
        if config is not None and kwargs:
            raise ValueError("pass either config= or ProxSparseConfig fields as keywords, not both")
        fields = {f.name for f in dataclasses.fields(ProxSparseConfig)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ValueError(f"unknown ProxSparseConfig field(s) {', '.join(unknown)}; the fields are "
                             f"{', '.join(sorted(fields))}")
        cfg = config or ProxSparseConfig(**kwargs)
        report.update(learn_masks(model, calib, n, m, cfg, targets=chosen, progress=progress,
                                  checkpoint_dir=checkpoint_dir, resume=resume))
        report["layers"] = {t.key: float(nm_fraction(t.weight.detach(), n, m, t.dim))
                            for t in target_tensors(model, chosen, m=m)}
        report["fallbacks"] = report.get("unrouted_experts") or {}
    elif method == "magnitude":
        report["layers"] = magnitude_prune(model, n, m, chosen, progress=progress)
    elif method == "wanda":
        report["fallbacks"] = fallbacks = {}
        report["layers"] = wanda_prune(model, calib, n, m, chosen, progress=progress, fallbacks=fallbacks, **kwargs)
    else:
        report["fallbacks"] = fallbacks = {}
        report["layers"] = sparsegpt_prune(model, calib, n, m, targets=chosen, progress=progress,
                                           fallbacks=fallbacks, **kwargs)
    not_nm = sorted(name for name, frac in report["layers"].items() if frac != 1.0)
    if not_nm:  # never return a model that is not N:M as if it were (e.g. NaN scores in a one-shot method)
        raise RuntimeError(f"{method} left {len(not_nm)} target(s) not exactly {n}:{m} ({', '.join(not_nm[:3])}"
                           f"{', ...' if len(not_nm) > 3 else ''}); check the model's weights and calibration "
                           "data for NaN/inf")
    report["coverage"] = coverage = coverage_report(model, n, m, chosen)
    left = {name: why for name, why in coverage["dense"].items() if why != ROUTER}
    if targets is None and left:  # the default promises every matrix weight of the blocks: say loudly what is not
        message = (f"{len(left)} matrix weight(s) of the decoder blocks stay dense; only "
                   f"{100 * coverage['coverage']:.1f}% of the blocks' matrix weights are {n}:{m}: "
                   + "; ".join(f"{name}: {why}" for name, why in list(left.items())[:3])
                   + ("; ..." if len(left) > 3 else ""))
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
    report["seconds"] = time.perf_counter() - t0
    return report
