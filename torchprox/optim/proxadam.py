r"""ProxAdam: torch's Adam/AdamW step followed by a proximal step on each parameter group.

The Adam part is *not* re-derived: [`ProxAdam`][torchprox.optim.proxadam.ProxAdam] subclasses `torch.optim.AdamW` and runs its
``step`` (single-tensor, ``foreach`` or ``fused`` kernels, exactly as torch picks them), then applies each
group's proximal operator, found by name in `torchprox.prox`'s registry, to the group's parameters.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import AdamW

from ..prox import check_prox_call, get_prox
from ._sharded import local_shard

__all__ = ["ProxAdam", "METRICS", "LAM_SCALINGS"]

METRICS = ("identity", "adam")
LAM_SCALINGS = ("constant", "lr")
_PROX_KEYS = ("prox", "lam", "prox_kwargs", "metric", "lam_scaling")
# Keyword names ProxAdam passes itself; a prox_kwargs entry may not shadow them.
_RESERVED_KWARGS = ("y", "lam", "step")
_PLAIN_TYPES = (bool, int, float, str, type(None))


def _unhooked(fn: Callable) -> Callable:
    """``fn`` without the step-hook/profiler wrapper ``Optimizer._patch_step_function`` puts on a class's step.

    ``Optimizer`` wraps ``type(self).step`` so that step pre/post hooks run around it. Once an ``Adam`` or
    ``AdamW`` instance exists, ``AdamW.step`` carries that wrapper too; calling it from ``ProxAdam.step``
    (already wrapped itself) would run every hook twice. The wrapper is ``functools.wraps``-based and
    marked ``hooked``, so we peel exactly those layers and keep torch's own ``no_grad``/differentiable one.
    """
    while getattr(fn, "hooked", False) and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


def _check_lam(lam: Any) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise ValueError(f"Invalid lam value: {lam!r} (lam must be a finite Python number >= 0)")
    lam = float(lam)
    if not (math.isfinite(lam) and lam >= 0.0):
        raise ValueError(f"Invalid lam value: {lam} (lam must be a finite number >= 0)")
    return lam


def _check_prox(prox: Any) -> str | None:
    if prox is None:
        return None
    if isinstance(prox, str):
        get_prox(prox)  # ValueError naming the unknown prox and listing the registered ones
        return prox
    if callable(prox):
        name = getattr(prox, "__name__", type(prox).__name__)
        raise ValueError(
            f"Invalid prox value: got the callable {name!r}; ProxAdam takes a prox by name so that its "
            "state_dict stays plain data (torch.load(..., weights_only=True)). Register it with "
            "@torchprox.prox.register_prox('my_prox') and pass prox='my_prox'"
        )
    raise ValueError(f"Invalid prox value: {prox!r} (expected a registered prox name, a str, or None)")


def _check_prox_kwargs(prox_kwargs: Any) -> dict:
    if prox_kwargs is None:
        return {}
    if not isinstance(prox_kwargs, dict):
        raise ValueError(
            f"Invalid prox_kwargs value: expected a dict of keyword arguments for the prox, "
            f"got {type(prox_kwargs).__name__}"
        )
    out = {}
    for key, value in prox_kwargs.items():
        if not isinstance(key, str):
            raise ValueError(f"Invalid prox_kwargs key: {key!r} (keys must be strings)")
        if key in _RESERVED_KWARGS:
            raise ValueError(f"Invalid prox_kwargs key: {key!r} is set by ProxAdam itself")
        if not isinstance(value, _PLAIN_TYPES):
            raise ValueError(
                f"Invalid prox_kwargs[{key!r}] value: {type(value).__name__}; values must be plain "
                "int/float/str/bool/None so the state_dict loads with weights_only=True"
            )
        out[key] = value
    return out


def _check_prox_group(group: dict) -> None:
    """Validate and normalize the prox keys of a param group (or of the defaults) in place."""
    group["prox"] = _check_prox(group["prox"])
    group["lam"] = _check_lam(group["lam"])
    group["prox_kwargs"] = _check_prox_kwargs(group["prox_kwargs"])
    if group["metric"] not in METRICS:
        raise ValueError(f"Invalid metric value: {group['metric']!r} (expected one of {', '.join(METRICS)})")
    if group["lam_scaling"] not in LAM_SCALINGS:
        raise ValueError(
            f"Invalid lam_scaling value: {group['lam_scaling']!r} (expected one of {', '.join(LAM_SCALINGS)})"
        )
    if group["lam"] > 0 and group["prox"] is None:
        raise ValueError(
            f"Invalid prox value: None with lam={group['lam']} > 0; pass a prox name (e.g. prox='nm') or "
            "set lam=0 for a group without a prox"
        )
    if group["prox"] is not None:
        check_prox_call(group["prox"], **group["prox_kwargs"])  # keywords the operator does not take


def _check_prox_params(group: dict, index: int, params: list, names: list | None = None) -> None:
    """Check that the group's prox can run on each of its parameters (``params``: the group's tensors), before
    the group joins the optimizer, so that a step never stops half done: real floating-point dtype, and the
    operator's own check (e.g. for ``"nm"``: ``n < m`` and the group dim's size a multiple of ``m``).
    Groups whose prox is off (``prox=None`` or ``lam=0``) take any parameter, as AdamW does."""
    name = group["prox"]
    if name is None or group["lam"] == 0:
        return
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            continue  # torch's add_param_group rejects it
        label = f"param group {index}, parameter {i}" + (f" ({names[i]!r})" if names else "")
        label += f" of shape {tuple(p.shape)}"
        if not p.is_floating_point():
            raise ValueError(
                f"{label} has dtype {p.dtype}; prox {name!r} needs real floating-point parameters: put it in "
                "a group without a prox (prox=None)"
            )
        try:
            step = p if group["metric"] == "adam" else 1.0  # a tensor step: Adam's diagonal metric
            check_prox_call(name, p, step=step, **group["prox_kwargs"])
        except ValueError as e:
            raise ValueError(f"{label}: prox {name!r} with prox_kwargs {group['prox_kwargs']}: {e}") from None


def _group_tensors(group: dict) -> tuple[list, list | None]:
    """The tensors of a param group dict and their names (None when unnamed), as torch will store them.
    ``group["params"]`` must not be an iterator (see ``add_param_group``)."""
    params = group["params"]
    if isinstance(params, Tensor):
        return [params], None
    if isinstance(params, set):
        return [], None  # torch rejects sets
    tensors = [t[1] if isinstance(t, tuple) and len(t) == 2 else t for t in params]
    names = [t[0] for t in params if isinstance(t, tuple) and len(t) == 2]
    return tensors, names if len(names) == len(params) and names else group.get("param_names")


def _check_loaded_state(param_groups: list[dict], state: dict) -> None:
    """Check that a loaded Adam state fits the parameters it is being given to, before it is installed.

    torch's fused Adam kernel reads the moments with the parameter's sizes without checking them, so a state
    saved for other shapes would corrupt memory; the loop and foreach kernels fail in the middle of a step.
    Each parameter's state must have ``step`` (a number or a one-element real tensor) and ``exp_avg``,
    ``exp_avg_sq`` (and, with amsgrad, ``max_exp_avg_sq``): real floating-point tensors shaped like it.
    """
    for g, group in enumerate(param_groups):
        for i, p in enumerate(group["params"]):
            st = state.get(p) if isinstance(p, Tensor) else None
            if not st:
                continue
            where = f"loaded optimizer state for param group {g}, parameter {i} of shape {tuple(p.shape)}"
            keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group.get("amsgrad") else ())
            for key in ("step",) + keys:
                if key not in st:
                    raise ValueError(f"{where}: it has no {key!r} (keys: {sorted(map(str, st))})")
            for key in keys:
                v = st[key]
                if not isinstance(v, Tensor) or not v.is_floating_point() or v.shape != p.shape:
                    what = (f"of shape {tuple(v.shape)} and dtype {v.dtype}" if isinstance(v, Tensor)
                            else f"a {type(v).__name__}")
                    raise ValueError(
                        f"{where}: {key!r} is {what}, expected a real floating-point tensor of shape "
                        f"{tuple(p.shape)}; the state_dict was saved for other parameters (load it into an "
                        "optimizer over the same parameters, in the same groups and order)"
                    )
            step = st["step"]
            ok = (isinstance(step, Tensor) and step.numel() == 1 and not step.is_complex()) or (
                isinstance(step, (int, float)) and not isinstance(step, bool))
            if not ok:
                what = f"of shape {tuple(step.shape)}" if isinstance(step, Tensor) else repr(step)
                raise ValueError(f"{where}: 'step' is {what}, expected a number or a one-element tensor")


def _fused_by_default(param_groups: list[dict]) -> bool:
    """Whether ProxAdam picks torch's fused Adam kernel when the caller chose no kernel: when some group
    has a prox to apply (without one, ProxAdam stays AdamW with AdamW's own default, bit for bit) and every
    parameter is a plain CPU or CUDA floating-point tensor (torch's fused kernel serves those; tensor
    subclasses such as FSDP2's DTensor keep torch's default)."""
    has_prox = any(g["prox"] is not None and g["lam"] > 0 for g in param_groups)
    tensors = [t for g in param_groups for t in g["params"]]
    return has_prox and bool(tensors) and all(
        type(t) in (Tensor, torch.nn.Parameter) and t.device.type in ("cpu", "cuda") and t.is_floating_point()
        for t in tensors
    )


def _scalar(lr: Any) -> Any:
    """A one-element tensor lr (any shape AdamW accepts, e.g. [1, 1]) as a 0-d view; a float as it is."""
    return lr.reshape(()) if isinstance(lr, Tensor) else lr


class ProxAdam(AdamW):
    r"""Implements ProxAdam: an Adam/AdamW step followed by a proximal step on each param group.

    \[
    \begin{array}{l}
         \textbf{input}      : \gamma \text{ (lr)}, \: \beta_1, \beta_2 \text{ (betas)},
             \: \theta_0 \text{ (params)}, \: f(\theta) \text{ (objective)},
             \: \epsilon \text{ (epsilon)}                                                    \\
         \quad\quad \lambda_{wd} \text{ (weight decay)}, \: \lambda \text{ (lam)},
             \: R \text{ (prox)}, \: \textit{metric}, \: \textit{lam_scaling},
             \: \textit{amsgrad}, \: \textit{maximize}                                        \\
         \textbf{initialize} : m_0 \leftarrow 0 \text{ (first moment)}, v_0 \leftarrow 0
             \text{ (second moment)}, \: v_0^{max}\leftarrow 0                          \\
         \textbf{for} \: t=1 \: \textbf{to} \: \ldots \: \textbf{do}                         \\
         \quad\textbf{if} \: \textit{maximize}:                                       \\
         \quad\quad g_t           \leftarrow   -\nabla_{\theta} f_t (\theta_{t-1})         \\
         \quad\textbf{else}                                                           \\
         \quad\quad g_t           \leftarrow   \nabla_{\theta} f_t (\theta_{t-1})          \\
         \quad \theta_t \leftarrow \theta_{t-1} - \gamma \lambda_{wd} \theta_{t-1}    \\
         \quad m_t           \leftarrow   \beta_1 m_{t-1} + (1 - \beta_1) g_t          \\
         \quad v_t           \leftarrow   \beta_2 v_{t-1} + (1-\beta_2) g^2_t          \\
         \quad\widehat{m_t} \leftarrow   m_t/\big(1-\beta_1^t \big)                   \\
         \quad\textbf{if} \: amsgrad                                                  \\
         \quad\quad v_t^{max} \leftarrow \mathrm{max}(v_{t-1}^{max},v_t)                  \\
         \quad\quad\widehat{v_t} \leftarrow v_t^{max}/\big(1-\beta_2^t \big)              \\
         \quad\textbf{else}                                                           \\
         \quad\quad\widehat{v_t} \leftarrow   v_t/\big(1-\beta_2^t \big)                  \\
         \quad\theta_t \leftarrow \theta_t - \gamma \widehat{m_t}/
             \big(\sqrt{\widehat{v_t}} + \epsilon \big)                                       \\
         \quad\textbf{if} \: \textit{lam_scaling} = \text{lr}:
             \: \lambda_t \leftarrow \lambda \gamma_t
             \:\: \textbf{else} \: \lambda_t \leftarrow \lambda                               \\
         \quad\textbf{if} \: \textit{metric} = \text{adam}:
             \: s_t \leftarrow \gamma / \big(\sqrt{\widehat{v_t}} + \epsilon \big)
             \cdot \mathbb{1}[\widehat{v_t} > 0]
             \text{ (elementwise)} \:\: \textbf{else} \: s_t \leftarrow 1                     \\
         \quad\theta_t \leftarrow \mathrm{prox}^{s_t}_{\lambda_t R}(\theta_t)
             = \mathrm{argmin}_w \: \tfrac{1}{2} \sum_i (w_i - \theta_{t,i})^2 / s_{t,i}
             + \lambda_t R(w)                                                                 \\
         \quad\text{where } s_{t,i} = 0 \text{ (} \widehat{v_t}_{,i} = 0 \text{ or } \gamma_t = 0
             \text{): the prox leaves } \theta_{t,i} \text{ (for N:M its group) as Adam left it}   \\
         \textbf{return} \:  \theta_t                                                     \\
    \end{array}
    \]

    Everything before the λ_t line is `torch.optim.AdamW`'s step: ProxAdam subclasses AdamW and
    runs its ``step`` unchanged (same single-tensor / ``foreach`` / ``fused`` kernels), then applies the prox
    in place, under ``no_grad``, to every parameter of the group that has a gradient. With ``prox=None`` or
    ``lam=0`` a group's update is bit for bit AdamW's with the same ``foreach``/``fused`` arguments.

    Kernel choice: explicit ``foreach``/``fused`` arguments are passed to AdamW as given. When both are None
    (and not ``differentiable``), ProxAdam picks ``fused=True`` if some group has a prox to apply and every
    parameter is a plain CPU or CUDA floating-point tensor: torch's fused Adam kernel (the same math; torch
    keeps the for-loop default on CPU for compatibility), so that Adam plus the fused prox kernel costs about
    one default AdamW step. Without any prox it keeps AdamW's default, so ``ProxAdam(params)`` is
    ``AdamW(params, weight_decay=0)`` bit for bit. ``metric="identity"`` with ``lam_scaling="constant"``
    is ProxSparse's update (a plain prox with a constant λ after each Adam step). ``metric="adam"`` measures
    the prox in Adam's own diagonal metric, so the prox shrinks each weight in proportion to its Adam step
    size; ``lam_scaling="lr"`` lets LR schedulers (warm-up, decay) act on λ too.

    Weights without a gradient (``metric="adam"``): where ``v̂ = 0`` the weight has never had a nonzero
    gradient (an MoE expert that received no tokens, an input feature that is always zero; also a gradient so
    small, or so long ago, that ``v`` underflowed), and the formula's step ``s = lr / eps`` (1e5·lr) would be
    an unbounded prox step that zeroes it at once. There the step is 0 instead (also where ``v`` is NaN, after a non-finite gradient:
    one ``torch.where`` into ``s``), and a zero step means "not moved" in every built-in operator: a group holding a weight with
    ``v = 0`` is left as Adam left it (group-wise for N:M, whose groups are coupled: the other weights of that
    group stay too; elementwise for L1), still with the in-place operator (the fused kernel) and no extra
    pass. Likewise ``lr = 0`` gives ``s = 0``: nothing moves. (A user-registered operator without
    ``zero_step_still`` gets the same zero steps, and its result is discarded where ``s = 0``.) When
    GradScaler's fused step skips the update (``found_inf``), the step is multiplied by ``1 − found_inf`` (a
    0-d product), so the prox is skipped too, without a host sync. With ``metric="identity"`` and ``lam_scaling="constant"``, in
    contrast, ``lr = 0`` (e.g. the first step of a warm-up from 0) does *not* stop the prox: ``s = 1`` and
    ``λ_t = λ`` whatever the lr, as the formula says; use ``lam_scaling="lr"`` to let the schedule act on λ.

    Validation: every group is checked when it is added (constructor, ``add_param_group``) and when a
    ``state_dict`` is loaded, before anything changes, so that a step never stops half done: the prox name,
    ``lam``, ``metric``, ``lam_scaling``, that ``prox_kwargs`` fit the operator's signature, that each
    parameter of a group with a prox is real floating-point and passes the operator's own check (registered
    with [`torchprox.prox.register_prox`][torchprox.prox.registry.register_prox]'s ``check``; e.g. ``"nm"``: ``0 < n < m`` and the group dim's
    size a multiple of ``m``), and that a loaded Adam state has each parameter's shape. Errors in AdamW's own
    arguments are AdamW's, with the same types and messages.

    The step performs no ``.item()`` or other host synchronisation of its own: ``lr`` may be a tensor (of
    one element, any shape, as for AdamW), and Adam's ``step`` count is read as a tensor when forming the
    metric.

    Args:
        params (iterable): iterable of parameters or named_parameters to optimize, or of dicts defining
            parameter groups. A group dict may override any of the arguments below, including ``prox``,
            ``lam``, ``prox_kwargs``, ``metric`` and ``lam_scaling``.
        lr (float, Tensor, optional): learning rate γ (default: 1e-3).
        betas (tuple[float | Tensor, float | Tensor], optional): β1, β2 (default: (0.9, 0.999)).
        eps (float, optional): ε added to the denominator (default: 1e-8).
        weight_decay (float, optional): decoupled (AdamW) weight decay λ_wd (default: 0, unlike AdamW's 1e-2).
        prox (str, optional): the name of a proximal operator registered with
            [`torchprox.prox.register_prox`][torchprox.prox.registry.register_prox] (built-ins: ``"nm"``, ``"nm_projection"``, …), or None for
            no prox. A callable is rejected: register it and pass its name, so that the optimizer's
            ``state_dict`` holds only plain data and loads with ``torch.load(..., weights_only=True)``.
        lam (float, optional): λ ≥ 0, the regularization strength (default: 0, no prox). ``lam=0`` skips
            the prox (also for operators such as ``"nm_projection"`` that ignore λ).
        prox_kwargs (dict, optional): extra keyword arguments for the prox, plain ``str → int/float/str/
            bool`` (e.g. ``{"n": 2, "m": 4, "dim": 1}``). The operator is called as
            ``fn(p, lam_eff, step=s, **prox_kwargs)``.
        metric (str, optional): ``"identity"`` (step ``s = 1``) or ``"adam"`` (``s = lr / (sqrt(v̂) + eps)``
            elementwise; with amsgrad ``v̂`` uses ``max_exp_avg_sq``; a weight with ``v̂ = 0`` gets ``s = 0``:
            it, and for N:M its group, is left as Adam left it, see above) (default: ``"identity"``).
        lam_scaling (str, optional): ``"constant"`` (λ_t = λ) or ``"lr"`` (λ_t = λ · the group's current
            lr) (default: ``"constant"``).
        foreach (bool, optional): as for `torch.optim.AdamW`; with ``foreach=fused=None`` a ProxAdam with a
            prox picks the fused kernel (above).
        fused (bool, optional): as for `torch.optim.AdamW` (see ``foreach``).
        maximize (bool, optional): as for `torch.optim.AdamW`.
        capturable (bool, optional): as for `torch.optim.AdamW`.
        differentiable (bool, optional): as for `torch.optim.AdamW`.
        amsgrad (bool, optional): as for `torch.optim.AdamW` (the metric then uses ``max_exp_avg_sq``).

    Examples:
        >>> import torch
        >>> from torchprox import ProxAdam
        >>> model = torch.nn.Linear(16, 8)
        >>> opt = ProxAdam([
        ...     {"params": [model.weight], "prox": "nm", "lam": 0.1, "prox_kwargs": {"n": 2, "m": 4, "dim": 1}},
        ...     {"params": [model.bias]},
        ... ], lr=1e-3)
        >>> model(torch.randn(4, 16)).square().mean().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        prox: str | None = None,
        lam: float = 0.0,
        prox_kwargs: dict | None = None,
        metric: str = "identity",
        lam_scaling: str = "constant",
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        amsgrad: bool = False,
    ) -> None:
        prox_defaults = {
            "prox": prox,
            "lam": lam,
            "prox_kwargs": prox_kwargs,
            "metric": metric,
            "lam_scaling": lam_scaling,
        }
        _check_prox_group(prox_defaults)
        # Optimizer.__init__ replaces self.defaults with Adam's dict and then calls add_param_group for
        # each group; the first add_param_group merges these in (see there).
        self._pending_prox_defaults = prox_defaults
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )
        if fused is None and foreach is None and not differentiable and _fused_by_default(self.param_groups):
            # torch's own default is the for-loop kernel on CPU; with a prox to apply ProxAdam picks the fused
            # one (same Adam math, one pass per tensor: a 2:4 ProxAdam step then costs about what a default
            # AdamW step does). Explicit foreach/fused choices are kept as given. Chosen once the groups are
            # built, so torch's own argument checks run first, with torch's errors. What Adam's constructor
            # does for fused=True (no state exists yet):
            self.defaults["fused"] = True
            for group in self.param_groups:
                if group["fused"] is None and group["foreach"] is None:
                    group["fused"] = True
            self._step_supports_amp_scaling = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its ``prox``, ``lam``, ``prox_kwargs``, ``metric`` and ``lam_scaling`` default
        to the optimizer's and are validated like the constructor's arguments."""
        pending = self.__dict__.pop("_pending_prox_defaults", None)
        if pending is not None:
            self.defaults.update(pending)
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if isinstance(param_group.get("params"), Iterator):
            # read once here, in a new dict: the caller's dict keeps its (now consumed) iterator
            param_group = {**param_group, "params": list(param_group["params"])}
        for key in _PROX_KEYS:
            param_group.setdefault(key, self.defaults[key])
        _check_prox_group(param_group)  # also copies prox_kwargs, so groups never share one dict
        if "params" in param_group:
            _check_prox_params(param_group, len(self.param_groups), *_group_tensors(param_group))
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Install a state (``load_state_dict``, unpickling, deepcopy) after checking it, so that nothing is
        changed when it does not fit: each group's prox settings are validated as in ``add_param_group``
        (against the parameters they will apply to) and each parameter's Adam state must fit the parameter
        (see ``_check_loaded_state``). A state without the prox keys (a plain AdamW one) gets no prox."""
        base = {"prox": None, "lam": 0.0, "prox_kwargs": {}, "metric": "identity", "lam_scaling": "constant"}
        groups = state.get("param_groups", [])
        for key, value in base.items():
            for group in groups:
                group.setdefault(key, dict(value) if isinstance(value, dict) else value)
        for index, group in enumerate(groups):
            _check_prox_group(group)
            _check_prox_params(group, index, group["params"], group.get("param_names"))
        _check_loaded_state(groups, state.get("state", {}))
        super().__setstate__(state)
        for key, value in base.items():
            self.defaults.setdefault(key, value)

    def step(self, closure=None):
        """Perform a single optimization step: torch's AdamW step, then each group's prox.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        Returns:
            the closure's loss, or None.
        """
        loss = _unhooked(AdamW.step)(self, closure)
        self._apply_prox()
        return loss

    def _metric_step(self, group: dict, p: Tensor, lr=None):
        """Adam's diagonal metric for ``p``: ``lr / (sqrt(v̂) + eps)``, ``v̂ = v / (1 − β2^t)``, and 0 where
        ``v = 0`` (the prox leaves those weights, for N:M their groups, as Adam left them; see the class doc)
        or v is NaN (a non-finite gradient: the prox does not act on what diverged; the loss shows it).

        Read from the state AdamW's step just wrote (``step`` is t, ``exp_avg_sq`` or, with amsgrad,
        ``max_exp_avg_sq`` is v), with tensor ops only: ``step`` is a tensor (on CPU, or on the param's
        device when capturable/fused) and is never turned into a Python number. The denominator is formed
        as torch's Adam forms it, ``sqrt(v) / sqrt(1 − β2^t) + eps``; ``lr`` is the group's (a number or a 0-d
        tensor, 0 when the step is skipped; default: the group's).
        """
        state = self.state[p]
        step_t = state["step"]
        v = local_shard(state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"])
        beta2 = group["betas"][1]
        # CPU step: compute the bias correction in float64 (as torch's loop path does in Python floats).
        t = step_t.to(torch.float64) if step_t.device.type == "cpu" else step_t
        bias_correction2_sqrt = (1 - beta2**t).sqrt()
        lr = _scalar(group["lr"]) if lr is None else lr
        moved = v.gt(0)  # False where v = 0 and where v is NaN (non-finite gradients): s = 0 there
        zero = v.new_zeros(())
        if self.defaults["differentiable"]:
            return torch.where(moved, lr / (v.sqrt() / bias_correction2_sqrt).add_(group["eps"]), zero)
        # The same values in place (a float lr divides as torch's `lr / denom` does, a reciprocal then a
        # product), then 0 where v is not > 0: two new tensors instead of five, which matters at a step per
        # weight of the model.
        denom = v.sqrt().div_(bias_correction2_sqrt).add_(group["eps"])
        s = torch.div(lr, denom, out=denom) if isinstance(lr, Tensor) else denom.reciprocal_().mul_(lr)
        return torch.where(moved, s, zero, out=s)

    def _apply_prox(self) -> None:
        found_inf = getattr(self, "found_inf", None)  # set by GradScaler for fused steps
        differentiable = self.defaults["differentiable"]
        with torch.set_grad_enabled(differentiable):
            for group in self.param_groups:
                name, lam, lr = group["prox"], group["lam"], _scalar(group["lr"])
                adam_metric = group["metric"] == "adam"
                if name is None or lam == 0 or (adam_metric and not isinstance(lr, Tensor) and lr == 0):
                    continue  # (metric="adam" with lr = 0: every step s is 0, the prox is the identity)
                fn = get_prox(name)
                inplace = getattr(fn, "inplace", None)
                lam_eff = lam * lr if group["lam_scaling"] == "lr" else lam
                kwargs = group["prox_kwargs"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    # A step 0 leaves the weight (an N:M group) as Adam left it: where v = 0 (metric="adam"),
                    # and everywhere when the fused kernel skipped this step (found_inf: s times 1 - found_inf,
                    # a 0-d product, no pass over the weights).
                    go = None if found_inf is None else 1 - found_inf.to(p.device)  # 0-d: 0 when skipped
                    if adam_metric:
                        s = self._metric_step(group, p, lr if go is None else go * lr)
                    else:
                        s = 1.0 if go is None else go
                    p = local_shard(p, name, kwargs)  # a DTensor (FSDP2): the prox runs on this rank's shard
                    # differentiable: the prox reads a clone, so the in-place update of p below does not
                    # overwrite what autograd saved for the prox's backward. Otherwise a detached alias: the
                    # prox sees a tensor that needs no grad (a view of a leaf that requires grad still says
                    # requires_grad under no_grad), so kernels without autograd, e.g. the fused CPU N:M
                    # kernel, serve it.
                    if inplace is not None and not differentiable:
                        inplace(p.detach(), lam_eff, step=s, **kwargs)  # e.g. the fused kernel, no temporary
                        continue
                    new = fn(p.clone() if differentiable else p.detach(), lam_eff, step=s, **kwargs)
                    if getattr(fn, "zero_step_still", False) or not isinstance(s, Tensor):
                        p.copy_(new)
                    else:  # an operator not known to leave zero steps still: its result discarded there
                        p.copy_(torch.where(s == 0, p, new))
