"""A name registry of proximal operators, so optimizers find them by plain-string name.

Every registered operator has the signature ``fn(y, lam, *, step=1.0, **kwargs) -> Tensor`` and returns
``argmin_w ½ Σ (w − y)² / step + lam · R(w)`` (out of place). ``step`` is a Python/0-d scalar or a tensor
shaped like ``y`` (a diagonal metric), finite and >= 0: a step entry 0 means "not moved" (the entry, or for a
penalty that couples a group the whole group, is returned unchanged); an operator that guarantees this carries
``zero_step_still = True`` (every built-in does), and ProxAdam, which passes zero steps where a weight must
stay as Adam left it, discards another operator's result at those entries itself. ProxAdam calls ``get_prox(name)(p, lam, step=..., **prox_kwargs)``, or,
when the operator carries an in-place twin as its ``inplace`` attribute (same signature, updates ``y`` and
returns it), that twin on the parameter itself.

An operator may be registered with a ``check(y, **kwargs)`` that raises ``ValueError`` when it cannot serve a
tensor of ``y``'s shape with these keyword arguments (e.g. ``n >= m``, a size not a multiple of ``m``).
[`check_prox_call`][torchprox.prox.registry.check_prox_call] runs it after a generic check that the operator's signature takes the keywords, so an
optimizer rejects a bad param group when the group is added, before any step.

An operator that couples entries in groups (N:M, group lasso) declares them with a ``grouping(shape, **kwargs)
-> (dim, group_size)``; [`prox_grouping`][torchprox.prox.registry.prox_grouping] looks it up, so a sharded optimizer
(FSDP2's ``DTensor`` parameters) can check that every shard holds whole groups without knowing the operator.

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

import inspect
from typing import Callable

import torch

from ._groups import check_nm, group_view

__all__ = ["register_prox", "get_prox", "available_prox", "check_prox_call", "prox_grouping"]

ProxFn = Callable[..., "torch.Tensor"]
CheckFn = Callable[..., None]
GroupingFn = Callable[..., "tuple[int, int] | None"]

_REGISTRY: dict[str, ProxFn] = {}
_CHECKS: dict[str, CheckFn] = {}
_GROUPINGS: dict[str, GroupingFn] = {}


def register_prox(name: str, *, overwrite: bool = False, check: CheckFn | None = None,
                  grouping: GroupingFn | None = None) -> Callable[[ProxFn], ProxFn]:
    """Decorator: register ``fn`` under ``name`` (a non-empty string).

    Registering a taken name raises ``ValueError`` unless ``overwrite=True``. The operator must follow the
    contract above: ``fn(y, lam, *, step=1.0, **kwargs)`` returns ``argmin_w ½ Σ (w − y)² / step + lam · R(w)``,
    shaped like ``y``; ``step`` is a scalar or a tensor shaped like ``y``.

    ``check`` (optional): ``check(y, **kwargs)`` raises ``ValueError`` when ``fn(y, lam, **kwargs)`` would fail
    for a tensor of ``y``'s shape and dtype (it must only read ``y``'s metadata, never its values). Without
    one, [`check_prox_call`][torchprox.prox.registry.check_prox_call] still checks that ``fn``'s signature takes the keyword arguments.

    ``grouping`` (optional): ``grouping(shape, **kwargs) -> (dim, group_size)``, the dim along which, and the
    size of the groups in which, ``fn(y, lam, **kwargs)`` couples the entries of a ``y`` of this shape (its
    prox is separable over these groups, e.g. ``"nm"``: ``(dim, m)``). None (the default): the operator is
    elementwise, so any split of ``y`` into shards is fine. Read by
    [`prox_grouping`][torchprox.prox.registry.prox_grouping].

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
        for what, arg in (("check", check), ("grouping", grouping)):
            if arg is not None and not callable(arg):
                raise TypeError(f"register_prox({name!r}, {what}=...) needs a callable, got {type(arg).__name__}")
        if name in _REGISTRY and not overwrite and _REGISTRY[name] is not fn:
            raise ValueError(f"a prox named {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = fn
        if check is None:
            _CHECKS.pop(name, None)
        else:
            _CHECKS[name] = check
        if grouping is None:
            _GROUPINGS.pop(name, None)
        else:
            _GROUPINGS[name] = grouping
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


def check_prox_call(name: str, y: "torch.Tensor | None" = None, *, step=None, **kwargs) -> None:
    """Raise ``ValueError`` if ``get_prox(name)(y, lam, step=s, **kwargs)`` cannot run: ``name`` unknown, a
    keyword the operator's signature does not take (or a required one missing), or, given ``y``, what the
    operator's registered ``check(y, **kwargs)`` rejects (given ``step``, a number or a tensor standing for a
    diagonal metric, it is passed on as ``check(y, step=step, **kwargs)``). Reads only ``y``'s shape and dtype
    (no host sync).

    Examples:
        >>> import torch
        >>> check_prox_call("nm", torch.zeros(4, 8), n=2, m=4, dim=1)
        >>> check_prox_call("nm", n=2, m=4, groups=3)
        Traceback (most recent call last):
            ...
        ValueError: prox 'nm' takes no keyword argument 'groups' (it takes n, m, dim)
        >>> check_prox_call("nm", torch.zeros(4, 6), n=2, m=4, dim=1)
        Traceback (most recent call last):
            ...
        ValueError: y of shape (4, 6): its size 6 along dim 1 is not a multiple of m=4; choose a dim whose size is a multiple of 4 or exclude this tensor
    """
    fn = get_prox(name)
    _check_signature(name, fn, kwargs)
    check = _CHECKS.get(name)
    if y is not None and check is not None:
        if step is not None and _takes_step(check):
            check(y, step=step, **kwargs)
        else:
            check(y, **kwargs)


def prox_grouping(name: str, shape, **kwargs) -> "tuple[int, int] | None":
    """``(dim, group_size)``: the groups along ``dim`` (as declared, possibly negative) of ``group_size``
    consecutive entries that the operator ``name`` couples in a tensor of ``shape`` called with ``kwargs``, or
    None for an elementwise operator (none declared at [`register_prox`][torchprox.prox.registry.register_prox]).
    ``ValueError`` for an unknown ``name``. Reads only the shape.

    Examples:
        >>> prox_grouping("nm", (8, 16), n=2, m=4, dim=1)
        (1, 4)
        >>> prox_grouping("group_lasso", (8, 16))            # group_size None: the whole last dim
        (-1, 16)
        >>> prox_grouping("l1", (8, 16)) is None               # elementwise
        True
    """
    get_prox(name)  # the unknown-name error
    grouping = _GROUPINGS.get(name)
    return None if grouping is None else grouping(tuple(shape), **kwargs)


def _takes_step(check: CheckFn) -> bool:
    """Whether a registered check accepts ``step=`` (the built-ins do; a user's ``check(y, **kwargs)`` may not)."""
    try:
        params = inspect.signature(check).parameters
    except (TypeError, ValueError):
        return False
    return "step" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _check_signature(name: str, fn: ProxFn, kwargs: dict) -> None:
    """``ValueError`` unless ``fn(y, lam, step=1.0, **kwargs)`` binds to ``fn``'s signature."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return
    try:
        sig.bind(None, 0.0, step=1.0, **kwargs)
    except TypeError as e:
        takes = [p.name for p in list(sig.parameters.values())[2:]
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "step"]
        unknown = [k for k in kwargs if k not in sig.parameters]
        what = f"takes no keyword argument {unknown[0]!r}" if unknown else f"cannot be called with {kwargs}: {e}"
        raise ValueError(f"prox {name!r} {what} (it takes {', '.join(takes) or 'no keyword arguments'})") from None


def _check_layout(y: "torch.Tensor", size: int, dim: int) -> None:
    """``ValueError`` unless ``y`` splits into groups of ``size`` along ``dim`` (shape only: a meta tensor)."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ValueError(f"dim must be an integer, got {dim!r}")
    group_view(torch.empty(tuple(y.shape), device="meta"), size, dim, name="y")


def check_nm_args(y: "torch.Tensor", n: int = 2, m: int = 4, dim: int = -1, step=1.0, **_) -> None:
    """The check of the N:M operators (``"nm"``, ``"nm_projection"``): ``0 < n < m``, ``y``'s size along
    ``dim`` a multiple of ``m`` and, with a tensor ``step`` (a diagonal metric, for training), a pattern the
    metric prox serves in reasonable time (`torchprox.prox.nm.check_metric_pattern`)."""
    check_nm(n, m)
    _check_layout(y, m, dim)
    if isinstance(step, torch.Tensor):
        from .nm import check_metric_pattern

        check_metric_pattern(n, m, training=True)


def check_group_lasso_args(y: "torch.Tensor", group_size: int | None = None, dim: int = -1, **_) -> None:
    """The check of ``"group_lasso"``: ``group_size`` a positive integer (or None: the whole ``dim``) dividing
    ``y``'s size along ``dim``."""
    if group_size is None:
        if y.dim() == 0 or not -y.dim() <= dim < y.dim():
            _check_layout(y, 1, dim)  # the 0-d / dim out of range message
        group_size = y.shape[dim]
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer or None, got {group_size!r}")
    _check_layout(y, group_size, dim)


def nm_grouping(shape: tuple, n: int = 2, m: int = 4, dim: int = -1, **_) -> tuple[int, int]:
    """The grouping of the N:M operators: ``m`` consecutive entries along ``dim``."""
    return dim, m


def group_lasso_grouping(shape: tuple, group_size: int | None = None, dim: int = -1, **_) -> tuple[int, int | None]:
    """The grouping of ``"group_lasso"``: ``group_size`` consecutive entries along ``dim`` (None: the whole
    ``dim``, when ``dim`` is a valid index of ``shape``)."""
    if group_size is None and isinstance(dim, int) and -len(shape) <= dim < len(shape):
        group_size = shape[dim]
    return dim, group_size
