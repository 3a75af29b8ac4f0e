"""Views of a tensor as ``(groups, size)`` along one dim: the layout every group-wise prox works on."""
from __future__ import annotations

import numbers
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


def check_values(t: Tensor, name: str) -> None:
    """Every entry of the tensor ``t`` finite and >= 0.

    A CPU tensor is checked now (one min/max pass, its result read from host memory) and a bad one is a
    ``ValueError``. A tensor on an
    accelerator, or any tensor inside ``torch.compile``, is checked with ``torch._assert_async``: no host sync;
    a violation surfaces as a RuntimeError at a later synchronizing call (on CUDA, as a device-side assert).
    """
    if t.numel() == 0:
        return
    lo, hi = torch.aminmax(t.detach())
    ok = torch.isfinite(lo) & torch.isfinite(hi) & (lo >= 0)
    if t.device.type == "cpu" and not torch.compiler.is_compiling():
        # Read through numpy: a CPU value in host memory, not a device sync, and no aten._local_scalar_dense
        # (which the prox step's no-sync checks forbid on every device).
        if not bool(ok.numpy()):
            raise ValueError(
                f"{name} must be finite and >= 0 everywhere, got a tensor of shape {tuple(t.shape)} with "
                f"min {lo.item()} and max {hi.item()}"
            )
        return
    torch._assert_async(ok, f"{name} must be finite and >= 0 everywhere")


def _finite_nonnegative_number(value, name: str, what: str) -> float:
    """A Python number ``value`` as a float, finite and >= 0; otherwise a ``TypeError`` / ``ValueError`` that
    names ``name`` (``what``: the forms it may take)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    value = float(value)
    if not (value >= 0 and value != float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_step(step, y: Tensor):
    """A step as the operators take it: a Python number or 0-d tensor (one step for every entry), or a tensor
    broadcastable to ``y`` (a diagonal metric), finite and >= 0 everywhere (a zero entry means "not moved by
    the prox", see each operator); returned as given (a number as a float). ``ValueError`` names the step's
    value or shape otherwise."""
    if isinstance(step, Tensor):
        if step.dim() > 0:
            try:
                fits = torch.broadcast_shapes(step.shape, y.shape) == y.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(
                    f"step of shape {tuple(step.shape)} does not match y of shape {tuple(y.shape)}; "
                    "pass a scalar or a tensor shaped like y"
                )
        check_values(step, "step")
        return step
    return _finite_nonnegative_number(step, "step", "a number or a tensor")


def group_step(step, y: Tensor, size: int, dim: int, dtype: torch.dtype):
    """A scalar step stays a Python float or 0-d tensor; a tensor step is grouped like ``y`` (both validated by
    [`check_step`][torchprox.prox._groups.check_step])."""
    step = check_step(step, y)
    if isinstance(step, Tensor) and step.dim() > 0:
        if step.shape != y.shape:
            step = step.expand(y.shape)
        return group_view(step.to(dtype), size, dim, name="step")[0]
    if isinstance(step, Tensor):
        return step.to(dtype)
    return step


def check_lam(lam):
    """λ as given when a tensor (one element, checked by [`check_values`][torchprox.prox._groups.check_values]: no host sync on an
    accelerator); a Python λ must be a finite number >= 0 (returned as a float)."""
    if isinstance(lam, Tensor):
        if lam.numel() != 1:
            raise ValueError(f"lam must be a number or a one-element tensor, got a tensor of shape {tuple(lam.shape)}")
        check_values(lam, "lam")
        return lam
    return _finite_nonnegative_number(lam, "lam", "a number or a one-element tensor")
