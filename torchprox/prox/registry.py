"""A name registry of proximal operators, so optimizers find them by plain-string name.

Every registered operator has the signature ``fn(y, lam, *, step=1.0, **kwargs) -> Tensor`` and returns
``argmin_w ½ Σ (w − y)² / step + lam · R(w)`` (out of place). ``step`` is a Python/0-d scalar or a tensor
shaped like ``y`` (a diagonal metric). ProxAdam calls ``get_prox(name)(p, lam, step=..., **prox_kwargs)``, or,
when the operator carries an in-place twin as its ``inplace`` attribute (same signature, updates ``y`` and
returns it), that twin on the parameter itself.

Examples:
    >>> import torch
    >>> from torchprox.prox import register_prox, get_prox
    >>> @register_prox("clip_box")
    ... def prox_box(y, lam, *, step=1.0, bound=1.0):
    ...     return y.clamp(-bound, bound)        # prox of the indicator of a box (lam is unused)
    >>> get_prox("clip_box")(torch.tensor([-3.0, 0.5, 2.0]), 0.0)
    tensor([-1.0000,  0.5000,  1.0000])
"""
from __future__ import annotations

from typing import Callable

ProxFn = Callable[..., "torch.Tensor"]  # noqa: F821

_REGISTRY: dict[str, ProxFn] = {}


def register_prox(name: str, *, overwrite: bool = False) -> Callable[[ProxFn], ProxFn]:
    """Decorator: register ``fn`` under ``name`` (a non-empty string).

    Registering a taken name raises ``ValueError`` unless ``overwrite=True``. The operator must follow the
    contract above: ``fn(y, lam, *, step=1.0, **kwargs)`` returns ``argmin_w ½ Σ (w − y)² / step + lam · R(w)``,
    shaped like ``y``; ``step`` is a scalar or a tensor shaped like ``y``.

    Examples:
        >>> import torch
        >>> @register_prox("scale_shrink", overwrite=True)
        ... def prox_ridge(y, lam, *, step=1.0):
        ...     return y / (1 + 2 * lam * step)       # the prox of lam · ||w||² (ridge)
        >>> "scale_shrink" in available_prox()
        True
        >>> register_prox("scale_shrink")(lambda y, lam, *, step=1.0: y)
        Traceback (most recent call last):
            ...
        ValueError: a prox named 'scale_shrink' is already registered; pass overwrite=True to replace it
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"prox name must be a non-empty string, got {name!r}")

    def decorator(fn: ProxFn) -> ProxFn:
        if not callable(fn):
            raise TypeError(f"register_prox({name!r}) needs a callable, got {type(fn).__name__}")
        if name in _REGISTRY and not overwrite and _REGISTRY[name] is not fn:
            raise ValueError(f"a prox named {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = fn
        return fn

    return decorator


def get_prox(name: str) -> ProxFn:
    """The operator registered under ``name``; ``ValueError`` listing the known names otherwise.

    Examples:
        >>> import torch
        >>> get_prox("l1")(torch.tensor([-2.0, 0.3, 1.5]), 0.5)       # soft thresholding
        tensor([-1.5000,  0.0000,  1.0000])
        >>> get_prox("nm")(torch.tensor([1.0, 0.98, 0.96, 0.94]), 1.1, n=2, m=4)   # exact, even at near-ties
        tensor([0.6490, 0.6009, 0.5310, 0.0000])
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ValueError(f"unknown prox {name!r}; registered: {known}") from None


def available_prox() -> list[str]:
    """Sorted names of all registered operators.

    Examples:
        >>> {"nm", "nm_projection", "l1", "group_lasso"} <= set(available_prox())
        True
    """
    return sorted(_REGISTRY)
