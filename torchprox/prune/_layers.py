"""Which dim a layer's weight is grouped along, how to name a layer in messages, and PEFT-style target
selection (``"all-linear"``, names/suffixes, regex)."""
from __future__ import annotations

import gc
import re
import sys
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize


def _hf_conv1d_cls():
    """``transformers.pytorch_utils.Conv1D`` if transformers is already imported, else None.

    A module can only be a Conv1D if transformers was imported to build it, so this never imports
    transformers (slow) just to answer "no".
    """
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers ``Conv1D`` (GPT-2 style, weight (in, out)); never imports transformers."""
    cls = _hf_conv1d_cls()
    return cls is not None and isinstance(module, cls)


def layer_kind(module: nn.Module) -> str:
    """The module's class name (the class before any parametrization was injected)."""
    return parametrize.type_before_parametrizations(module).__name__


def describe(module: nn.Module, qualname: str | None = None) -> str:
    """``Linear 'model.layers.0.self_attn.q_proj'`` (or just the class name when the name is unknown)."""
    kind = layer_kind(module)
    return f"{kind} {qualname!r}" if qualname else kind


_LAYOUTS: dict[tuple[type, str], int] = {}


def register_layout(cls: type, param_name: str, dim: int) -> None:
    r"""Declare the N:M group dim of ``param_name`` on every module of class ``cls`` (and its subclasses).

    The group dim is the reduction (input) dim of how the module's forward uses the tensor. For a fused
    expert tensor of shape (experts, out, in) applied as ``F.linear(x, W[e])`` it is ``-1`` (2); for the
    transposed layout (experts, in, out) applied as ``x @ W[e]`` it is ``1`` (or ``-2``). Afterwards
    [`learnable_nm`][torchprox.prune.learnable.learnable_nm] and a ``(module, param_name)`` target of
    [`learnable_nm_model`][torchprox.prune.learnable.learnable_nm_model] use it when ``dim`` is omitted.
    Registering the same ``(cls, param_name)`` again replaces the dim; the most derived class wins.

    Raises:
        TypeError: ``cls`` is not an ``nn.Module`` subclass, ``param_name`` is not a str or ``dim`` not an int.

    Examples:
        >>> import torch
        >>> from torchprox.prune import register_layout
        >>> class Experts(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.randn(2, 4, 8))   # (experts, out, in)
        >>> register_layout(Experts, "w", dim=-1)
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_layout: cls must be an nn.Module subclass, got {cls!r}")
    if not isinstance(param_name, str):
        raise TypeError(f"register_layout: param_name must be a str, got {param_name!r}")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"register_layout: dim must be an int (the reduction/input dim), got {dim!r}")
    _LAYOUTS[(cls, param_name)] = dim


def registered_dim(module: nn.Module, name: str) -> int | None:
    """The dim [`register_layout`][torchprox.prune._layers.register_layout] gave ``(type(module), name)``
    (searching the class's MRO), else None."""
    for klass in parametrize.type_before_parametrizations(module).__mro__:
        if (klass, name) in _LAYOUTS:
            return _LAYOUTS[(klass, name)]
    return None


def default_dim(module: nn.Module, name: str = "weight") -> int | None:
    """The group dim of ``module.<name>``: the reduction (input) dim of its matrix multiply.

    - a layout registered with [`register_layout`][torchprox.prune._layers.register_layout] for the
      module's class and ``name`` → that dim (checked first)
    - ``nn.Linear`` (weight (out, in)) → 1
    - ``transformers.pytorch_utils.Conv1D`` (weight (in, out)) → 0
    - ``nn.Conv1d/2d/3d`` (weight (out, in/groups, *kernel)) → 1: groups of m consecutive input channels
      at each (out, *kernel) position.
    - anything else (transposed convs, embeddings, other tensor names) → None: pass ``dim=`` explicitly.
    """
    registered = registered_dim(module, name)
    if registered is not None:
        return registered
    if name != "weight":
        return None
    if is_hf_conv1d(module):
        return 0
    if isinstance(module, nn.Linear):
        return 1
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return 1
    return None


def resolve_dim(module: nn.Module, name: str, dim: int | None, qualname: str | None) -> int:
    """The normalised group dim of ``module.<name>``: ``dim`` if given, else [`default_dim`][torchprox.prune._layers.default_dim]; a clear
    ``ValueError`` when there is no default or ``dim`` is out of range."""
    weight = getattr(module, name)
    ndim = weight.dim()
    if dim is None:
        dim = default_dim(module, name)
        if dim is None:
            raise ValueError(
                f"{describe(module, qualname)}: no default N:M group dim for its {name!r} of shape "
                f"{tuple(weight.shape)}; torchprox knows nn.Linear (dim 1), transformers Conv1D (dim 0) and "
                "nn.Conv1d/2d/3d (dim 1, input channels), plus layouts given to register_layout. Pass dim= "
                f"explicitly (the reduction/input dim), call torchprox.prune.register_layout("
                f"{layer_kind(module)}, {name!r}, dim), or exclude this module"
            )
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"{describe(module, qualname)}: dim={dim!r} is out of range for {name!r} of shape "
                         f"{tuple(weight.shape)}")
    return dim % ndim


def dim_label(module: nn.Module, dim: int) -> str:
    if is_hf_conv1d(module) and dim == 0:
        return "input features"
    if isinstance(module, nn.Linear) and dim == 1:
        return "input features"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and dim == 1:
        return "input channels per group"
    return f"dim {dim}"


def check_groupable(module: nn.Module, shape: Sequence[int], dim: int, m: int, qualname: str | None,
                    name: str = "weight") -> None:
    """ValueError naming the module, its shape and the fix when ``shape[dim]`` is not a multiple of m."""
    size = shape[dim]
    if size % m:
        raise ValueError(
            f"{describe(module, qualname)}: {name} of shape {tuple(shape)} cannot be grouped into N:M groups of "
            f"m={m}: its size {size} along dim {dim} ({dim_label(module, dim)}) is not a multiple of {m}. "
            f"Exclude this module (e.g. exclude=[{(qualname or '<name>')!r}]) or use an m that divides {size}; "
            "torchprox never pads"
        )


def _held_elsewhere(module: nn.Module, name: str) -> bool:
    """Whether anything but ``module._parameters`` references ``module.<name>``: a cheap refcount test
    (against a probe Parameter referenced the same way) that spares the gc scan of [`_owners`][torchprox.prune._layers._owners]."""
    probe = {name: nn.Parameter(torch.empty(0))}
    return sys.getrefcount(module._parameters[name]) > sys.getrefcount(probe[name])


def _owners(obj: object, attr: str) -> list[nn.Module]:
    """The modules whose ``attr`` dict (``"_parameters"`` or ``"_modules"``) holds ``obj``, found with
    ``gc.get_referrers`` (three heap scans at most: only for error messages and rare cases)."""
    dicts = [d for d in gc.get_referrers(obj) if isinstance(d, dict)]
    if not dicts:
        return []
    holders = gc.get_referrers(*dicts)  # modules whose attribute values are inline, or their __dict__s
    inst = [h for h in holders if isinstance(h, dict)]
    candidates = [h for h in holders if isinstance(h, nn.Module)] + (gc.get_referrers(*inst) if inst else [])
    ids, out = {id(d) for d in dicts}, []
    for mod in candidates:
        if isinstance(mod, nn.Module) and id(mod.__dict__.get(attr)) in ids and all(mod is not o for o in out):
            out.append(mod)
    return out


def _root(module: nn.Module) -> nn.Module:
    """The outermost module that contains ``module`` (climbing parents through ``_modules``)."""
    seen = {id(module)}
    while parents := [p for p in _owners(module, "_modules") if id(p) not in seen]:
        module = parents[0]
        seen.add(id(module))
    return module


def check_not_shared(module: nn.Module, name: str = "weight") -> None:
    """ValueError naming both modules and the fix when ``module.<name>`` is a Parameter that another module
    also holds (tied weights, e.g. ``lm_head`` and the input embedding): pruning one would change the other."""
    param = module._parameters.get(name)
    if param is None or not _held_elsewhere(module, name):
        return
    others = [o for o in _owners(param, "_parameters") if o is not module]
    if not others:
        return
    names = {id(m): q for q, m in _root(module).named_modules(remove_duplicate=False)}
    theirs = ", ".join(describe(o, names.get(id(o))) for o in others)
    raise ValueError(
        f"{describe(module, names.get(id(module)))}: its {name} of shape {tuple(param.shape)} is shared with "
        f"{theirs} (tied weights); making it N:M would change that module too. Untie it first, e.g. for a "
        "Hugging Face model: model.config.tie_word_embeddings = False; model.lm_head.weight = "
        "torch.nn.Parameter(model.lm_head.weight.detach().clone()); or leave this layer dense")


def compile_targets(targets) -> tuple[str, object]:
    """A PEFT-style target spec in the form [`name_matches`][torchprox.prune._layers.name_matches] reads:
    ``("all-linear", None)``, ``("regex", compiled pattern)`` or ``("names", [names or dotted suffixes])``.

    Raises:
        TypeError: not ``"all-linear"``, a regex string / ``re.Pattern``, or an iterable of str.

    Examples:
        >>> compile_targets(["q_proj", ".mlp.down_proj"])
        ('names', ['q_proj', 'mlp.down_proj'])
        >>> compile_targets(r".*_proj")[0]
        'regex'
    """
    if isinstance(targets, str):
        if targets == "all-linear":
            return "all-linear", None
        return "regex", re.compile(targets)
    if isinstance(targets, re.Pattern):
        return "regex", targets
    if isinstance(targets, Iterable):
        names = list(targets)
        if not all(isinstance(t, str) for t in names):
            raise TypeError(f"targets must be 'all-linear', a regex string or a list of names, got {targets!r}")
        return "names", [t.lstrip(".") for t in names]
    raise TypeError(f"targets must be 'all-linear', a regex string or a list of names, got {targets!r}")


def _is_param_target(item) -> bool:
    return isinstance(item, (tuple, list)) and len(item) in (2, 3) and isinstance(item[0], nn.Module)


def split_param_targets(targets) -> tuple[object, list[tuple[nn.Module, str, int | None]]]:
    """Split ``targets`` into the name part for [`select_modules`][torchprox.prune._layers.select_modules]
    (None when there is none) and the ``(module, param_name[, dim])`` tensor targets, as
    ``(module, param_name, dim or None)``. A single tuple is one tensor target."""
    if _is_param_target(targets):
        targets = [targets]
    if isinstance(targets, (str, re.Pattern)) or not isinstance(targets, Iterable):
        return targets, []
    items = list(targets)
    tensors = []
    for item in items:
        if not _is_param_target(item):
            continue
        name, dim = item[1], (item[2] if len(item) == 3 else None)
        if not isinstance(name, str) or (dim is not None and (isinstance(dim, bool) or not isinstance(dim, int))):
            raise TypeError(f"a tensor target is (module, 'param_name') or (module, 'param_name', dim: int), "
                            f"got ({type(item[0]).__name__}, {name!r}{', ' + repr(dim) if len(item) == 3 else ''})")
        tensors.append((item[0], name, dim))
    names = [item for item in items if not _is_param_target(item)]
    return (names if names or not tensors else None), tensors


def name_matches(qualname: str, spec) -> bool:
    """PEFT-style match of a qualified name against a spec from
    [`compile_targets`][torchprox.prune._layers.compile_targets]: a list of names/suffixes (``"q_proj"``
    matches ``"...self_attn.q_proj"``) or a regex (full match of the qualified name).

    Examples:
        >>> spec = compile_targets(["q_proj"])
        >>> name_matches("model.layers.0.self_attn.q_proj", spec), name_matches("model.layers.0.self_attn.k_proj", spec)
        (True, False)
    """
    kind, pat = spec
    if kind == "regex":
        return pat.fullmatch(qualname) is not None
    if kind == "names":
        return any(qualname == t or qualname.endswith("." + t) for t in pat)
    raise AssertionError(kind)


def _is_output_head(model: nn.Module, qualname: str, module: nn.Module, embedding_weights: set[int]) -> bool:
    if qualname.split(".")[-1] == "lm_head":
        return True
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            out = get_out()
        except (NotImplementedError, AttributeError):
            out = None
        if out is module:
            return True
    w = getattr(module, "weight", None)
    return w is not None and id(w) in embedding_weights


def select_modules(model: nn.Module, targets="all-linear", exclude=None):
    """``[(qualname, module, explicit)]`` of the modules ``targets`` selects, minus ``exclude``.

    ``"all-linear"``: every ``nn.Linear`` and HF ``Conv1D`` except the output head (a module named
    ``lm_head``, the model's ``get_output_embeddings()``, or one whose weight is tied to an ``nn.Embedding``).
    Otherwise every module whose qualified name matches (names/suffixes list or full-match regex); those are
    ``explicit`` and a mismatching type or shape is an error for the caller to raise.
    """
    spec = compile_targets(targets)
    excl = compile_targets(exclude) if exclude is not None else None
    if excl is not None and excl[0] == "all-linear":
        raise ValueError("exclude='all-linear' is not meaningful; pass names, suffixes or a regex")
    embedding_weights = {id(mod.weight) for mod in model.modules() if isinstance(mod, nn.Embedding)}
    out = []
    for qualname, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList) or ".parametrizations." in f".{qualname}.":
            continue
        if excl is not None and qualname and name_matches(qualname, excl):
            continue
        if spec[0] == "all-linear":
            if (isinstance(module, nn.Linear) or is_hf_conv1d(module)) and not _is_output_head(
                model, qualname, module, embedding_weights
            ):
                out.append((qualname, module, False))
        elif qualname and name_matches(qualname, spec):
            out.append((qualname, module, True))
    return out
