"""Shared helpers for the torchprox.prune tests: layer factories, bitwise comparison, a reference mask."""
from __future__ import annotations

import torch
from torch import nn

_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
             torch.float16: torch.int16}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bit pattern (distinguishes -0.0 from 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    return torch.equal(a.view(_INT_VIEW[a.dtype]), b.view(_INT_VIEW[b.dtype]))


def hf_conv1d(nx: int, nf: int) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    return Conv1D(nf=nf, nx=nx)  # weight (nx, nf) = (in, out)


def make_layer(kind: str, seed: int = 0):
    """(layer, input, group dim) for each supported layer type; every grouped size is a multiple of 8."""
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(16, 6), torch.randn(5, 16), 1
    if kind == "conv1d":
        return nn.Conv1d(8, 6, 3), torch.randn(2, 8, 7), 1
    if kind == "conv2d":
        return nn.Conv2d(8, 4, (3, 2)), torch.randn(2, 8, 5, 5), 1
    if kind == "hf_conv1d":
        layer = hf_conv1d(16, 6)
        nn.init.normal_(layer.weight)
        return layer, torch.randn(3, 5, 16), 0
    raise ValueError(kind)


LAYER_KINDS = ["linear", "conv1d", "conv2d", "hf_conv1d"]


def reference_mask(scores: torch.Tensor, n: int, m: int, dim: int) -> torch.Tensor:
    """Pure-Python top-n of every m along dim; ties keep the lower index."""
    moved = scores.detach().movedim(dim, -1).double()
    flat = moved.reshape(-1, m).tolist()
    rows = []
    for group in flat:
        order = sorted(range(m), key=lambda i: (-group[i], i))
        keep = set(order[:n])
        rows.append([i in keep for i in range(m)])
    return torch.tensor(rows, dtype=torch.bool).reshape(moved.shape).movedim(-1, dim)


def nonzeros_per_group(t: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    return (t.detach().movedim(dim, -1).reshape(-1, m) != 0).sum(-1)
