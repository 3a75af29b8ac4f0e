"""Views of a tensor as ``(groups, size)`` along one dim: the layout every group-wise prox works on."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def check_nm(n: int, m: int) -> None:
    """Validate an N:M pattern: integers with ``0 < n < m`` (at most n nonzeros in every m)."""
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise ValueError(f"n and m must be integers, got n={n!r}, m={m!r}")
    if not 0 < n < m:
        raise ValueError(f"an N:M pattern needs 0 < n < m (n kept of every m), got n={n}, m={m}")


def check_float(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, bfloat16 and float16 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def group_view(t: Tensor, size: int, dim: int, name: str = "y") -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``t`` as a ``(G, size)`` tensor of consecutive runs along ``dim``, and the map back to ``t``'s shape.

    A ``dim`` whose length is not a multiple of ``size`` is a ``ValueError`` (never silent padding).
    """
    if t.dim() == 0:
        raise ValueError(f"{name} is a 0-d tensor; it needs a dimension to group along")
    if not -t.dim() <= dim < t.dim():
        raise ValueError(f"dim={dim} is out of range for {name} of shape {tuple(t.shape)}")
    dim = dim % t.dim()
    length = t.shape[dim]
    if length % size:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)}: its size {length} along dim {dim} is not a multiple of "
            f"m={size}; choose a dim whose size is a multiple of {size} or exclude this tensor"
        )
    moved = t.movedim(dim, -1)
    moved_shape = moved.shape
    groups = moved.reshape(-1, size)

    def restore(g: Tensor) -> Tensor:
        return g.reshape(moved_shape).movedim(-1, dim)

    return groups, restore


def group_step(step, y: Tensor, size: int, dim: int, dtype: torch.dtype):
    """A scalar step stays a Python float or 0-d tensor; a tensor step is grouped like ``y``."""
    if isinstance(step, Tensor) and step.dim() > 0:
        if step.shape != y.shape:
            try:
                step = step.expand(y.shape)
            except RuntimeError:
                raise ValueError(
                    f"step of shape {tuple(step.shape)} does not match y of shape {tuple(y.shape)}; "
                    "pass a scalar or a tensor shaped like y"
                ) from None
        return group_view(step.to(dtype), size, dim, name="step")[0]
    if isinstance(step, Tensor):
        return step.to(dtype)
    step = float(step)
    if not step > 0:
        raise ValueError(f"step must be positive, got {step}")
    return step


def check_lam(lam):
    """λ as given when a tensor (no host sync); a Python λ must be finite and >= 0."""
    if isinstance(lam, Tensor):
        return lam
    lam = float(lam)
    if not (lam >= 0 and lam != float("inf")):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    return lam
