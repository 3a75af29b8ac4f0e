r"""Learn an N:M mask with a frozen original weight: register, build ProxAdam groups, apply the mask.

The ProxSparse workflow:

    learnable_nm_model(model, n=2, m=4)              # W0 frozen (buffer), W = copy of W0 is learned
    opt = ProxAdam(prox_param_groups(model, lam=0.1), lr=1e-4)
    ...train: loss.backward(); opt.step(); opt.zero_grad()   # Adam step on W, then prox_nm on W
    apply_learned_masks(model, optimizer=opt)        # mask = top-n of m of |W|; weight = W0 ⊙ mask
    remove_all(model)                                # plain Parameters again (torchprox.prune.remove)

Only the *mask* is learned: the learned values of W choose which weights to keep and are then discarded;
every kept weight is W0's value, bit for bit.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..prox import check_nm
from ..prox.nm import nm_mask
from ._layers import check_groupable, check_not_shared, describe, resolve_dim, select_modules, split_param_targets
from .parametrization import (NMParametrization, sync_state_on_load, get_nm_parametrization, nm_parametrizations,
                              qualified)

__all__ = ["learnable_nm", "learnable_nm_model", "prox_param_groups", "apply_learned_masks", "restore_dense"]

logger = logging.getLogger("torchprox.prune")


def _check_target(module: nn.Module, name: str, qualname: str | None) -> None:
    """A plain floating-point Parameter that no other reparametrization owns."""
    where = describe(module, qualname)
    if parametrize.is_parametrized(module, name):
        kind = "torchprox N:M" if isinstance(module.parametrizations[name][0], NMParametrization) else "another"
        raise ValueError(f"{where}: {name!r} already has {kind} parametrization; torchprox.prune.remove(module, "
                         f"{name!r}) (or torch.nn.utils.parametrize.remove_parametrizations) first")
    if hasattr(module, name + "_orig") and hasattr(module, name + "_mask"):
        raise ValueError(f"{where}: {name!r} is pruned with torch.nn.utils.prune; call "
                         f"torch.nn.utils.prune.remove(module, {name!r}) first")
    param = module._parameters.get(name)
    if not isinstance(param, nn.Parameter):
        other = getattr(module, name, None)
        what = f" ({name!r} is a {type(other).__name__}, not an nn.Parameter)" if other is not None else ""
        raise ValueError(f"{where}: has no Parameter named {name!r} to make learnable{what}; its Parameters: "
                         f"{list(module._parameters)}")
    if not param.is_floating_point():
        raise ValueError(f"{where}: {name!r} has dtype {param.dtype}; N:M learning needs a floating-point weight")


def _register(module: nn.Module, name: str, n: int, m: int, dim: int, offload_w0: bool) -> None:
    weight = module._parameters[name]
    with torch.no_grad():
        w0 = weight.detach().to(device="cpu" if offload_w0 else weight.device, copy=True)
    p = NMParametrization(w0, n, m, dim, offload_w0=offload_w0, orig_requires_grad=weight.requires_grad)
    parametrize.register_parametrization(module, name, p)
    plist = module.parametrizations[name]
    plist.register_load_state_dict_pre_hook(sync_state_on_load)
    plist.original.requires_grad_(True)  # W is learnable even in a frozen model; remove() restores the flag


def learnable_nm(module: nn.Module, name: str = "weight", n: int = 2, m: int = 4, dim: int | None = None,
                 offload_w0: bool = False) -> nn.Module:
    r"""Make ``module.<name>`` a learnable N:M weight with a frozen, bit-exact original.

    Registers a [`NMParametrization`][torchprox.prune.parametrization.NMParametrization] with
    ``torch.nn.utils.parametrize``. Afterwards

    - ``module.parametrizations[name].original`` is W, the learnable copy (the module's own Parameter
      object, so it starts equal to W0; ``requires_grad=True`` even if the weight was frozen — [`remove`][torchprox.prune.remove]
      restores the original flag); the forward uses ``module.<name> = W``;
    - ``module.parametrizations[name][0].w0`` is W0, a persistent buffer: no optimizer, ``zero_grad``,
      ``model.to(dtype)`` / ``.half()`` or ``load_state_dict`` changes it silently (see the parametrization).

    Groups are ``m`` consecutive entries along ``dim``, by default the reduction (input) dim of the layer:
    ``nn.Linear.weight`` (out, in) → dim 1; ``transformers.pytorch_utils.Conv1D.weight`` (in, out) → dim 0;
    ``nn.Conv{1,2,3}d.weight`` (out, in/groups, *k) → dim 1, i.e. ``m`` consecutive input channels at each
    (output channel, kernel position).

    Args:
        module: the layer.
        name: the parameter to parametrize.
        n: keep at most ``n`` of every ``m`` (``0 < n < m``).
        m: the group size (consecutive weights along the group dim).
        dim: the group dim; None picks the layer's reduction dim (ValueError for unknown layer types).
        offload_w0: keep W0 on the CPU (device moves of the model leave it there) to save accelerator memory.
    Returns:
        ``module``.
    Raises:
        ValueError: the size along ``dim`` is not a multiple of ``m`` (the message names the module, its
        shape and the fix), the tensor is already parametrized or pruned, it is not a float Parameter, or
        it is shared with another module (tied weights, e.g. ``lm_head`` and the input embedding: the
        message names both and how to untie them). Nothing is changed when it raises.

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm
        >>> lin = learnable_nm(torch.nn.Linear(8, 4), n=2, m=4)
        >>> lin.parametrizations.weight.original.requires_grad, lin.parametrizations.weight[0].w0.requires_grad
        (True, False)
    """
    check_nm(n, m)
    _check_target(module, name, None)
    dim = resolve_dim(module, name, dim, None)
    check_groupable(module, tuple(getattr(module, name).shape), dim, m, None, name)
    check_not_shared(module, name)
    _register(module, name, n, m, dim, offload_w0)
    return module


def learnable_nm_model(model: nn.Module, n: int = 2, m: int = 4, targets="all-linear", exclude=None,
                       dim: int | None = None, offload_w0: bool = False) -> list[str]:
    r"""Apply [`learnable_nm`][torchprox.prune.learnable.learnable_nm] to the ``weight`` of every targeted module of ``model``.

    Targets are chosen PEFT-style:

    - ``"all-linear"`` (default): every ``nn.Linear`` and transformers ``Conv1D`` except the output head
      (``lm_head``, ``get_output_embeddings()``, or a weight tied to an embedding). A layer whose grouped
      dim is not a multiple of ``m``, or whose weight is shared with another module, is skipped with a
      logged warning.
    - a list of names or name suffixes (``["q_proj", "v_proj"]``), or a regex string / ``re.Pattern``
      matched against the full qualified name. These are explicit: a matched module that cannot be grouped
      (size not a multiple of ``m``, no default dim, no float ``weight``, shared weight) is a ``ValueError``
      naming the module and its shape.

    - tensor targets ``(module, "param_name")`` or ``(module, "param_name", dim)`` (alone or in the list,
      mixed with names): any floating-point ``nn.Parameter`` of a submodule of ``model``, e.g. a fused
      expert tensor (experts, out, in) that the forward applies as ``F.linear(x, W[e])``. Its group dim is
      the tuple's ``dim``, else ``dim=``, else the layout registered for the module's class with
      [`register_layout`][torchprox.prune._layers.register_layout], else (only for ``"weight"`` of a known
      layer) the layer's default; otherwise a ``ValueError`` naming the class, the parameter and its shape
      (never a guess). Tensor targets are explicit: any problem is an error; ``exclude`` does not apply.

    ``exclude`` (names/suffixes or regex) removes modules from the selection. Modules already learnable are
    left as they are. Every target is validated before any is changed, so an error leaves ``model`` as it was.

    Returns:
        the qualified names made learnable: module names (``weight``) for name-selected modules, in
        ``named_modules`` order, then ``"<module>.<param_name>"`` for tensor targets, in the given order.

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm_model
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        >>> learnable_nm_model(mlp, n=2, m=4)
        ['0', '2']
        >>> class Experts(torch.nn.Module):                    # (experts, in, out), applied as x @ W[e]
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.randn(3, 8, 4))
        >>> model = torch.nn.Sequential(Experts())
        >>> learnable_nm_model(model, targets=[(model[0], "w", 1)])
        ['0.w']
    """
    check_nm(n, m)
    name_targets, tensor_targets = split_param_targets(targets)
    selected = select_modules(model, name_targets, exclude) if name_targets is not None else []
    if not selected and not tensor_targets:
        raise ValueError(f"targets={targets!r} (exclude={exclude!r}) matched no module of "
                         f"{type(model).__name__}")
    names = {id(mod): q for q, mod in model.named_modules()}
    candidates = [(qualname, module, "weight", dim, explicit, qualname) for qualname, module, explicit in selected]
    for module, tname, tdim in tensor_targets:
        if id(module) not in names:
            raise ValueError(f"target ({type(module).__name__}, {tname!r}): that module is not a submodule of "
                             f"{type(model).__name__}; pass a module of the model")
        q = names[id(module)]
        candidates.append((q, module, tname, dim if tdim is None else tdim, True, qualified(q, tname)))
    uses = Counter(id(p) for _, mod in model.named_modules() for p in mod._parameters.values() if p is not None)
    plan, skipped, seen = [], [], set()
    for qualname, module, tname, given_dim, explicit, label in candidates:
        if (id(module), tname) in seen:
            continue
        seen.add((id(module), tname))
        if get_nm_parametrization(module, tname) is not None:
            logger.info("torchprox.prune: %s is already learnable; left as is", describe(module, label))
            continue
        try:
            d = _plan_target(module, tname, given_dim, m, qualname, uses)
        except ValueError as err:
            if explicit:
                raise
            skipped.append(str(err))
            continue
        plan.append((label, module, tname, d))
    if skipped:
        logger.warning("torchprox.prune: skipped %d module(s) that cannot be made N:M learnable:\n  %s",
                       len(skipped), "\n  ".join(skipped))
    for _, module, tname, d in plan:
        _register(module, tname, n, m, d, offload_w0)
    return [label for label, _, _, _ in plan]


def _plan_target(module: nn.Module, name: str, dim: int | None, m: int, qualname: str, uses: Counter) -> int:
    """The normalised group dim of ``module.<name>`` after every check of ``learnable_nm``; ValueError if
    it cannot be made learnable (``uses`` counts how many module slots hold each Parameter)."""
    _check_target(module, name, qualname)
    d = resolve_dim(module, name, dim, qualname)
    weight = module._parameters[name]
    check_groupable(module, tuple(weight.shape), d, m, qualname, name)
    if uses[id(weight)] > 1:
        raise ValueError(
            f"{describe(module, qualname)}: its {name} of shape {tuple(weight.shape)} is shared "
            "with another module (tied weights); parametrizing it would untie them. Exclude it")
    return d


def prox_param_groups(model: nn.Module, lam: float, n: int | None = None, m: int | None = None,
                      metric: str = "identity", lam_scaling: str = "constant", *, include_rest: bool = True,
                      rest: dict | None = None, **extra) -> list[dict]:
    r"""ProxAdam param groups for every learnable N:M weight of ``model``, plus one plain group.

    One group per distinct ``(n, m, dim)`` (so ``nn.Linear``/convs, dim 1, and transformers ``Conv1D``,
    dim 0, get separate groups), holding the learnable copies W:

        {"params": [W, ...], "prox": "nm", "lam": lam, "prox_kwargs": {"n": n, "m": m, "dim": dim},
         "metric": metric, "lam_scaling": lam_scaling, **extra}

    then, when ``include_rest``, ``{"params": [...], "prox": None, "lam": 0.0, **rest}`` with every other
    parameter that requires grad (W0 is a buffer, never a parameter). Empty groups are omitted. All values
    are plain data, so ``ProxAdam.state_dict()`` loads with ``weights_only=True``.

    Args:
        model: a model prepared with [`learnable_nm`][torchprox.prune.learnable.learnable_nm] / [`learnable_nm_model`][torchprox.prune.learnable.learnable_nm_model].
        lam: λ of the N:M regularizer.
        n: None uses each layer's own pattern (set by ``learnable_nm``); if given it must match it.
        m: likewise.
        metric: ProxAdam's group option (see [`torchprox.ProxAdam`][torchprox.optim.proxadam.ProxAdam]).
        lam_scaling: ProxAdam's group option (likewise).
        include_rest: add the plain group.
        rest: extra keys for the plain group (e.g. ``{"lr": 1e-5}``).
        **extra: extra keys for the N:M groups (e.g. ``lr=1e-4, weight_decay=0.0``).

    Examples:
        >>> import torch
        >>> from torchprox import ProxAdam
        >>> from torchprox.prune import learnable_nm_model, prox_param_groups
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        >>> _ = learnable_nm_model(mlp)
        >>> groups = prox_param_groups(mlp, lam=0.1)
        >>> [(g["prox"], len(g["params"])) for g in groups]
        [('nm', 2), (None, 2)]
        >>> opt = ProxAdam(groups, lr=1e-3)
    """
    nm_groups: dict[tuple[int, int, int], list[Tensor]] = {}
    seen: set[int] = set()
    for qualname, module, tname, plist, p in nm_parametrizations(model):
        if p.state != "learning":
            continue
        if (n is not None and n != p.n) or (m is not None and m != p.m):
            raise ValueError(
                f"{describe(module, qualname)}: registered as {p.pattern} but prox_param_groups was asked for "
                f"{n}:{m}; pass n=None, m=None to use each layer's pattern, or re-register the layer")
        w = plist.original
        if not w.requires_grad or id(w) in seen:
            continue
        seen.add(id(w))
        nm_groups.setdefault((p.n, p.m, p.dim), []).append(w)
    if not nm_groups:
        raise ValueError("no learnable N:M weight in the model; call torchprox.prune.learnable_nm(...) or "
                         "learnable_nm_model(...) first (layers already masked are not learnable)")
    groups = [
        {"params": params, "prox": "nm", "lam": lam, "prox_kwargs": {"n": gn, "m": gm, "dim": gd},
         "metric": metric, "lam_scaling": lam_scaling, **extra}
        for (gn, gm, gd), params in nm_groups.items()
    ]
    if include_rest:
        others = [q for q in model.parameters() if q.requires_grad and id(q) not in seen]
        if others:
            groups.append({"params": others, "prox": None, "lam": 0.0, **(rest or {})})
    return groups


def _drop_optimizer_state(optimizer: torch.optim.Optimizer, param: Tensor) -> None:
    optimizer.state.pop(param, None)


@torch.no_grad()
def apply_learned_masks(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Tensor]:
    r"""Choose the mask from the learned W and make every learnable weight exactly ``W0 ⊙ mask``.

    For each learning-state layer: ``mask = nm_mask(|W|, n, m, dim)`` (the top ``n`` of every group of
    ``m`` by magnitude; ties keep the lower index, so the mask is reproducible bit for bit). Then

    - ``original`` (the same Parameter object that held W) gets ``W0 ⊙ mask`` as its data and
      ``requires_grad=False``; its ``.grad`` is dropped, and so is W's storage;
    - the buffer ``w0`` is released and the bool buffer ``mask`` is stored; ``module.weight`` is
      ``original ⊙ mask``.

    The kept values are W0's, bit for bit, in W's current dtype (W0's own dtype unless the model was cast
    after [`learnable_nm`][torchprox.prune.learnable.learnable_nm]; then they are W0 rounded once to that dtype — cast the model back, e.g.
    ``model.float()``, before this call to keep W0's dtype). No kept weight is updated.

    Optimizer state: an optimizer still references the Parameter and keeps its Adam moments (two tensors
    of W's size) until it is dropped; pass ``optimizer=`` to delete those state entries now. The parameter
    no longer requires grad, so further steps skip it.

    Args:
        model: a model (or a single layer) with learning-state N:M parametrizations.
        optimizer: optional; its state for every masked W is deleted.
    Returns:
        ``{qualified tensor name: bool mask}`` for the layers masked by this call.

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm, apply_learned_masks, is_nm
        >>> lin = learnable_nm(torch.nn.Linear(8, 2))
        >>> masks = apply_learned_masks(lin)
        >>> list(masks), is_nm(lin.weight, 2, 4, dim=1)
        (['weight'], True)
    """
    out: dict[str, Tensor] = {}
    for qualname, module, tname, plist, p in nm_parametrizations(model):
        if p.state != "learning":
            continue
        w = plist.original
        mask = nm_mask(w.detach().abs(), p.n, p.m, p.dim)
        w0 = p.w0.to(device=w.device, dtype=w.dtype)
        # In W's memory layout: nm_mask along a dim other than the last returns a permuted view, and a Parameter
        # keeping that layout would run other kernels (other rounding) than the same model saved and reloaded.
        weight = torch.empty_like(w).copy_(torch.where(mask, w0, torch.zeros((), dtype=w.dtype, device=w.device)))
        if optimizer is not None:
            _drop_optimizer_state(optimizer, w)
        p._to_masked(plist, weight, mask)
        out[qualified(qualname, tname)] = mask
    if not out:
        logger.warning("torchprox.prune.apply_learned_masks: no learning-state N:M layer in %s",
                       type(model).__name__)
    return out


@torch.no_grad()
def restore_dense(model: nn.Module) -> list[str]:
    r"""Undo [`learnable_nm`][torchprox.prune.learnable.learnable_nm] on every learning-state layer of ``model``: the weight is W0 again.

    Each such ``module.<name>`` becomes a plain Parameter (the object that held W) holding W0 bit for bit,
    in W0's dtype, with its ``.grad`` dropped and its ``requires_grad`` as before [`learnable_nm`][torchprox.prune.learnable.learnable_nm]; the
    learned W is discarded. Layers already masked are left as they are. Use it to abandon a learning run
    (e.g. after a divergence) with the model exactly as it was.

    Returns:
        the qualified tensor names restored.

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm, restore_dense
        >>> lin = torch.nn.Linear(8, 2)
        >>> w0 = lin.weight.detach().clone()
        >>> _ = learnable_nm(lin)
        >>> _ = lin.parametrizations.weight.original.data.fill_(float("nan"))   # a diverged W
        >>> restore_dense(lin), type(lin).__name__, torch.equal(lin.weight, w0)
        (['weight'], 'Linear', True)
    """
    todo = [(qualname, module, tname, plist, p) for qualname, module, tname, plist, p in nm_parametrizations(model)
            if p.state == "learning"]
    for _, module, tname, plist, p in todo:
        original = plist.original
        original.grad = None
        original.data = p.w0.to(device=original.device, copy=True)
        parametrize.remove_parametrizations(module, tname, leave_parametrized=True)
        getattr(module, tname).requires_grad_(p.orig_requires_grad)
    return [qualified(q, t) for q, _, t, _, _ in todo]
