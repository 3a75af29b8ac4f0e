"""2:4 weights as semi-structured sparse tensors on a CUDA GPU (a runtime conversion, not an export format).

[`to_semi_structured`][torchprox.llm.semi_structured.to_semi_structured]: on a CUDA GPU (compute capability >= 8.0, fp16/bf16), every 2:4 ``nn.Linear``
weight becomes a ``torch.sparse.to_sparse_semi_structured`` tensor (cuSPARSELt/CUTLASS 2:4 kernels). Fused 3-D
Mixture-of-Experts tensors are not converted (the kernels take 2-D weights and the experts' forward indexes or
batches the 3-D tensor): they stay dense-stored, and are reported.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ["to_semi_structured"]

logger = logging.getLogger(__name__)


def _semi_structured_constraints(dtype: torch.dtype) -> tuple[int, int] | None:
    """(min rows, min cols) of a 2:4 weight for the backend torch will use (cuSPARSELt, or CUTLASS when
    forced); both dims must be multiples of them."""
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT, \
        SparseSemiStructuredTensorCUTLASS

    cls = SparseSemiStructuredTensorCUTLASS if SparseSemiStructuredTensor._FORCE_CUTLASS else \
        SparseSemiStructuredTensorCUSPARSELT
    conf = cls._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    return None if conf is None else (conf.sparse_min_rows, conf.sparse_min_cols)


def _check_semi_structured_device(name: str, weight: torch.Tensor) -> None:
    need = ("torch.sparse.to_sparse_semi_structured needs a CUDA GPU with compute capability >= 8.0 "
            "(Ampere or newer) and fp16/bf16 weights")
    if weight.device.type != "cuda":
        raise ValueError(f"nn.Linear {name!r}: weight of shape {tuple(weight.shape)} is a {weight.dtype} tensor on "
                         f"{weight.device}; {need}. Move the model first, e.g. model.to('cuda', torch.float16)")
    major, minor = torch.cuda.get_device_capability(weight.device)
    if (major, minor) < (8, 0):
        raise ValueError(f"nn.Linear {name!r}: {weight.device} has compute capability {major}.{minor}; {need}")
    if weight.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"nn.Linear {name!r}: weight dtype {weight.dtype}; {need}. Cast the model first, e.g. "
                         "model.half() or model.bfloat16()")


@torch.no_grad()
def to_semi_structured(model: nn.Module, n: int = 2, m: int = 4) -> dict[str, Any]:
    r"""Replace every exactly-2:4 ``nn.Linear`` weight of ``model`` by a semi-structured sparse tensor.

    Each ``nn.Linear`` whose weight (out, in) has at most 2 nonzeros in every 4 consecutive inputs (dim 1)
    gets ``weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(weight), requires_grad=False)``:
    the kept values (out, in/2) plus 2-bit indices, multiplied by the sparse tensor cores (cuSPARSELt, or
    CUTLASS). Dense linears (e.g. ``lm_head``) are left as they are; a 2:4 layer whose shape the backend
    does not accept (both dims must be multiples of the backend's minimum, e.g. 16 x 16 for fp16 with
    cuSPARSELt, 32 x 64 with CUTLASS) is skipped with a warning. Every layer is validated before any is
    converted. Inference only: the converted weights are frozen.

    Fused Mixture-of-Experts tensors (one 3-D ``nn.Parameter`` per projection holding every expert, e.g.
    Mixtral's ``experts.gate_up_proj``) are **not converted**: semi-structured tensors and their kernels are 2-D
    (``F.linear`` / ``mm``), while the experts' forward indexes ``W[e]`` or runs grouped/batched matmuls on the
    3-D tensor. Each such tensor that is exactly 2:4 along its input dim is listed in ``skipped`` with that
    reason and a warning is logged with their number, so a MoE model is never silently left mostly dense-stored.

    Args:
        model: a 2:4-sparse model on a CUDA GPU with compute capability >= 8.0, in fp16 or bf16, with plain
            weights ([`torchprox.prune.remove_all`][torchprox.prune.remove.remove_all] first).
        n: must be 2 (the only pattern of the sparse tensor cores is 2:4).
        m: must be 4.
    Returns:
        ``{"converted": [qualified names], "skipped": {name: reason}}``: ``skipped`` holds the 2:4 linears of a
        shape the backend refuses and the 2:4 fused expert tensors (by qualified tensor name,
        ``"...experts.gate_up_proj"``).
    Raises:
        ValueError: another pattern; a 2:4 weight on the CPU, on a GPU older than compute capability 8.0, or
            not fp16/bf16 (the message names the layer, its shape, device and dtype, and the fix).

    Examples:
        On an Ampere or newer GPU (not run as a doctest):

        >>> model = model.half().cuda()  # doctest: +SKIP
        >>> report = to_semi_structured(model)  # doctest: +SKIP
        >>> len(report["converted"]), report["skipped"]  # doctest: +SKIP
        (210, {})

        Anywhere else a 2:4 layer is refused before anything is converted:

        >>> import torch
        >>> from torchprox.prune import nm_structured, remove
        >>> lin = remove(nm_structured(torch.nn.Linear(64, 32), n=2, m=4))      # a plain, exactly 2:4 weight
        >>> to_semi_structured(torch.nn.Sequential(lin))
        Traceback (most recent call last):
            ...
        ValueError: ...
    """
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    from ..prune import is_nm

    if (n, m) != (2, 4):
        raise ValueError(f"to_semi_structured: pattern {n}:{m} is not supported; semi-structured sparse tensors "
                         "(NVIDIA sparse tensor cores) hold exactly 2:4")
    todo, skipped = [], {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or isinstance(mod.weight, SparseSemiStructuredTensor):
            continue
        weight = mod.weight
        if weight.dim() != 2 or weight.shape[1] % 4 or not is_nm(weight.detach(), 2, 4, dim=1):
            continue
        _check_semi_structured_device(name, weight)
        rows, cols = weight.shape
        min_rows, min_cols = _semi_structured_constraints(weight.dtype)
        if rows % min_rows or cols % min_cols:
            skipped[name] = (f"shape {tuple(weight.shape)}: both dims must be multiples of ({min_rows}, {min_cols}) "
                             f"for {weight.dtype}")
            continue
        todo.append((name, mod))
    experts = _nm_expert_tensors(model)
    for name, mod in todo:
        mod.weight = nn.Parameter(to_sparse_semi_structured(mod.weight.detach().contiguous()), requires_grad=False)
    if experts:
        logger.warning("to_semi_structured: %d fused expert tensor(s) are 2:4 but stay dense-stored: CUDA 2:4 "
                       "kernels take 2-D weights, and the experts' forward uses the 3-D tensor (e.g. %s)",
                       len(experts), next(iter(experts)))
        skipped.update(experts)
    if skipped:
        logger.warning("to_semi_structured: %d 2:4 layer(s) kept dense:\n  %s", len(skipped),
                       "\n  ".join(f"{k}: {v}" for k, v in skipped.items()))
    return {"converted": [name for name, _ in todo], "skipped": skipped}


def _nm_expert_tensors(model: nn.Module) -> dict[str, str]:
    """``{qualified tensor name: why not converted}`` for every fused 3-D expert tensor of ``model`` that is
    exactly 2:4 along its input dim (the layout of [`torchprox.llm.expert_layout`][torchprox.llm.targets.expert_layout])."""
    from ..prune import is_nm
    from .targets import expert_layout

    out = {}
    for qualname, module in model.named_modules():
        for param, dim in expert_layout(module).items():
            weight = getattr(module, param)
            if weight.dim() == 3 and weight.shape[dim] % 4 == 0 and is_nm(weight.detach(), 2, 4, dim=dim):
                out[f"{qualname}.{param}" if qualname else param] = (
                    f"fused expert tensor of shape {tuple(weight.shape)} (2:4 along dim {dim}): not converted, CUDA 2:4 "
                    "kernels take 2-D weights; it stays dense-stored")
    return out
