r"""The frozen-weight N:M parametrization behind [`torchprox.prune.learnable_nm`][torchprox.prune.learnable.learnable_nm].

One [`NMParametrization`][torchprox.prune.parametrization.NMParametrization] sits first in ``module.parametrizations[name]`` (a
``torch.nn.utils.parametrize.ParametrizationList``) and has two states:

``"learning"`` (after [`learnable_nm`][torchprox.prune.learnable.learnable_nm])
    ``parametrizations[name].original`` is the learnable copy ``W`` (the module's own Parameter object,
    initialised to W0) and ``forward(W) = W``: the module computes with W and the optimizer updates W.
    The original weight ``W0`` is the persistent buffer ``parametrizations[name][0].w0``: frozen (a buffer
    has no gradient and is in no optimizer), and bit exact under casts (see below).

``"masked"`` (after [`apply_learned_masks`][torchprox.prune.learnable.apply_learned_masks])
    ``mask`` is a bool buffer, exactly N:M (``n`` kept of every ``m`` along ``dim``), ``original`` holds
    ``W0 ⊙ mask`` in place of W (same Parameter object, its storage replaced, ``requires_grad=False``),
    ``w0`` is released and ``forward(X) = X ⊙ mask`` (so the weight stays N:M even if the user unfreezes
    ``original`` for masked fine-tuning).

Protection of W0:

- ``model.to(dtype)``, ``.half()``, ``.bfloat16()``, ``.double()`` never cast ``w0``: `_apply` probes
  the conversion on an empty tensor and, when it would change the dtype, only moves ``w0`` (bit-exact copy).
  Device moves apply, unless ``offload_w0=True``, which keeps ``w0`` on the CPU.
- ``load_state_dict`` takes the stored ``w0`` bit for bit, with its own dtype (no silent rounding cast).
- Loading a masked checkpoint into a learning-state layer (or the reverse) switches the layer's state first,
  so ``state_dict`` round-trips in both states with the same module structure. A layer loads all or nothing:
  when the checkpoint's tensors for it do not fit (another shape, a state switch without ``original``),
  ``load_state_dict`` raises and the layer is left exactly as it was (its state, W, W0 and mask).

Serialization goes through ``state_dict`` (``torch.save(model)`` of a parametrized module is refused by
``torch.nn.utils.parametrize`` itself; after [`remove`][torchprox.prune.remove] the module pickles again).
State-dict keys (for ``Linear`` ``fc``): learning — ``fc.parametrizations.weight.original`` (W) and
``fc.parametrizations.weight.0.w0`` (W0); masked — ``...original`` (W0 ⊙ mask) and ``...0.mask``.
"""
from __future__ import annotations

import contextlib

from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..prox import check_nm

__all__ = ["NMParametrization", "nm_parametrizations", "original_weights"]

LEARNING = "learning"
MASKED = "masked"


class NMParametrization(nn.Module):
    r"""Frozen-weight parametrization: ``forward(W) = W`` while learning, ``X ⊙ mask`` once masked.

    Not meant to be built directly: use [`torchprox.prune.learnable_nm`][torchprox.prune.learnable.learnable_nm].

    Args:
        w0: the original weight W0 (already a detached copy; stored as the persistent buffer ``w0``).
        n: nonzeros kept per group (``0 < n < m``).
        m: the group size.
        dim: the group dim of the weight (groups of ``m`` consecutive entries along it).
        offload_w0: keep ``w0`` on the CPU through device moves.
        orig_requires_grad: the weight's ``requires_grad`` before registration, restored by ``remove``
            (W itself always requires grad while learning).

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm
        >>> lin = learnable_nm(torch.nn.Linear(8, 2))
        >>> p = lin.parametrizations.weight[0]
        >>> p.state, p.n, p.m, p.dim, tuple(p.w0.shape)
        ('learning', 2, 4, 1, (2, 8))
    """

    def __init__(self, w0: Tensor, n: int, m: int, dim: int, offload_w0: bool = False,
                 orig_requires_grad: bool = True) -> None:
        super().__init__()
        check_nm(n, m)
        self.n, self.m, self.dim = n, m, dim
        self.offload_w0 = bool(offload_w0)
        self.orig_requires_grad = bool(orig_requires_grad)
        self.register_buffer("w0", w0)
        self.register_buffer("mask", None)

    @property
    def state(self) -> str:
        """``"learning"`` or ``"masked"``."""
        return MASKED if self.mask is not None else LEARNING

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}"

    #: Set by [`original_weights`][torchprox.prune.parametrization.original_weights]: the forward returns W0.
    _use_w0 = False

    def forward(self, X: Tensor) -> Tensor:
        if self._use_w0 and self.w0 is not None:
            return self.w0.to(device=X.device, dtype=X.dtype)
        mask = self.mask
        return X if mask is None else X * mask

    def right_inverse(self, value: Tensor) -> Tensor:
        """Assigning ``module.weight = value`` sets the learnable copy W (masked: ``original``); never W0."""
        return value

    def extra_repr(self) -> str:
        return f"pattern={self.pattern}, dim={self.dim}, state={self.state}, offload_w0={self.offload_w0}"

    # -- state switches ---------------------------------------------------------------------------------
    def _to_masked(self, plist: parametrize.ParametrizationList, weight: Tensor, mask: Tensor) -> None:
        """Release W and W0: ``original`` (same Parameter object) takes ``weight``, frozen; ``mask`` is kept."""
        original = plist.original
        with torch.no_grad():
            original.requires_grad_(False)
            original.grad = None
            original.set_(weight)
        self.w0 = None
        self.mask = mask

    def _to_learning(self, plist: parametrize.ParametrizationList) -> None:
        """Back to the learning state with a placeholder ``w0`` (used only to load a learning checkpoint)."""
        original = plist.original
        device = torch.device("cpu") if self.offload_w0 else original.device
        self.mask = None
        self.w0 = torch.empty(original.shape, dtype=original.dtype, device=device)
        original.requires_grad_(True)

    # -- W0 protection ------------------------------------------------------------------------------------
    def _protected_w0(self, fn, w0: Tensor) -> Tensor:
        """``w0`` after the conversion ``fn``: never a dtype change; no device move when offloaded."""
        probe = fn(torch.empty(0, dtype=w0.dtype, device=w0.device))
        if not isinstance(probe, Tensor):
            return w0
        if self.offload_w0 and probe.device != w0.device:
            return w0
        if probe.dtype != w0.dtype:
            if w0.is_meta or probe.is_meta:  # no data to keep: only the placement matters
                return torch.empty(w0.shape, dtype=w0.dtype, device=probe.device)
            return w0.to(device=probe.device)  # bit-exact move, dtype kept
        return fn(w0)

    def _apply(self, fn, recurse: bool = True):
        w0 = self._buffers.get("w0")
        if w0 is None:
            return super()._apply(fn, recurse)
        self._buffers["w0"] = None  # keep torch's own conversion away from W0
        try:
            out = super()._apply(fn, recurse)
            w0 = self._protected_w0(fn, w0)
        finally:
            self._buffers["w0"] = w0
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        src = state_dict.get(prefix + "w0")
        cur = self.w0
        if (isinstance(src, Tensor) and cur is not None and src.shape == cur.shape and src.dtype != cur.dtype
                and src.is_floating_point()):
            # Take the checkpoint's W0 with its own dtype: a copy_ into the current buffer would round it.
            self.w0 = torch.empty(cur.shape, dtype=src.dtype, device=cur.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _checkpoint_problem(plist, state_dict, prefix: str) -> str | None:
    """Why the checkpoint's tensors for this layer cannot be loaded into it (None when they can).

    Each of ``original``, ``0.w0``, ``0.mask`` that is present must be a tensor of the layer's shape; a
    checkpoint holds ``0.w0`` (learning) or ``0.mask`` (masked), never both; and a checkpoint in the other
    state must also hold ``original``, since switching the state replaces W (or releases W0).
    """
    shape = tuple(plist.original.shape)
    for key in ("original", "0.w0", "0.mask"):
        if prefix + key not in state_dict:
            continue
        src = state_dict[prefix + key]
        if not isinstance(src, Tensor) or tuple(src.shape) != shape:
            got = tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__
            return f"size mismatch for {prefix}{key}: the checkpoint holds {got}, the layer's weight is {shape}"
    has_w0, has_mask = prefix + "0.w0" in state_dict, prefix + "0.mask" in state_dict
    if has_w0 and has_mask:
        return f"the checkpoint holds both {prefix}0.w0 (learning state) and {prefix}0.mask (masked state)"
    p = plist[0]
    switches = (has_mask and p.mask is None) or (has_w0 and p.w0 is None)
    if switches and prefix + "original" not in state_dict:
        return (f"the checkpoint holds {prefix}0.{'mask' if has_mask else 'w0'} but no {prefix}original; "
                "switching the layer's state needs both")
    return None


def sync_state_on_load(plist, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                        error_msgs) -> None:
    """Load-state-dict pre-hook on the ParametrizationList: match the checkpoint's state (masked/learning).

    All or nothing per layer: when the checkpoint's tensors for this layer do not fit it (see
    [`_checkpoint_problem`][torchprox.prune.parametrization._checkpoint_problem]), none of them is loaded, the state is not switched, and the reason goes to
    ``error_msgs`` (so ``load_state_dict`` raises its RuntimeError, strict or not) with the layer exactly as
    it was: W, W0 and the mask bit for bit.
    """
    p = plist[0]
    if not isinstance(p, NMParametrization):
        return
    problem = _checkpoint_problem(plist, state_dict, prefix)
    if problem is not None:  # load the layer's own tensors instead: a no-op, and no "missing key" noise
        state_dict.pop(prefix + ("0.w0" if p.w0 is None else "0.mask"), None)
        state_dict[prefix + "original"] = plist.original.detach()
        state_dict[prefix + "0." + ("mask" if p.w0 is None else "w0")] = p.mask if p.w0 is None else p.w0
        error_msgs.append(f"{problem}; this layer was left unchanged")
        return
    if p.mask is None and prefix + "0.mask" in state_dict:
        original = plist.original
        mask = torch.zeros(original.shape, dtype=torch.bool, device=original.device)
        p._to_masked(plist, original.detach().clone(), mask)
    elif p.w0 is None and prefix + "0.w0" in state_dict:
        p._to_learning(plist)


def get_nm_parametrization(module: nn.Module, name: str = "weight") -> NMParametrization | None:
    """The [`NMParametrization`][torchprox.prune.parametrization.NMParametrization] on ``module.<name>``, or None.

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm
        >>> lin = learnable_nm(torch.nn.Linear(8, 2), n=2, m=4)
        >>> p = get_nm_parametrization(lin)
        >>> (p.n, p.m, p.dim, p.state), get_nm_parametrization(torch.nn.Linear(8, 2))
        ((2, 4, 1, 'learning'), None)
    """
    if not parametrize.is_parametrized(module, name):
        return None
    p = module.parametrizations[name][0]
    return p if isinstance(p, NMParametrization) else None


def nm_parametrizations(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, parametrize.ParametrizationList,
                                                           NMParametrization]]:
    """``(qualname, module, tensor_name, parametrization_list, nm_parametrization)`` for every torchprox
    N:M parametrization in ``model`` (each module once).

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm
        >>> model = torch.nn.Sequential(learnable_nm(torch.nn.Linear(8, 4)), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> [(q, t, p.n, p.m) for q, _, t, _, p in nm_parametrizations(model)]
        [('0', 'weight', 2, 4)]
    """
    for qualname, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            if isinstance(plist[0], NMParametrization):
                yield qualname, module, tensor_name, plist, plist[0]


def qualified(qualname: str, tensor_name: str) -> str:
    return f"{qualname}.{tensor_name}" if qualname else tensor_name


@contextlib.contextmanager
def original_weights(model: nn.Module):
    r"""Inside the block, every learning-state N:M weight of ``model`` is W0 again: the model computes as the
    dense original, with no second copy of it (a teacher for distillation while its mask is learned).

    Each learning-state [`NMParametrization`][torchprox.prune.parametrization.NMParametrization] returns its
    buffer W0 (moved to W's device and dtype) instead of W; masked layers are unaffected (their W0 is gone).
    Nothing is copied or changed: on exit the forward uses W again. Gradients do not reach W through a forward
    run inside the block (run it under ``torch.no_grad()``).

    Examples:
        >>> import torch
        >>> from torchprox.prune import learnable_nm
        >>> lin = learnable_nm(torch.nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     _ = lin.parametrizations.weight.original.zero_()                # W = 0, W0 untouched
        >>> with original_weights(lin):
        ...     bool(lin.weight.abs().sum() > 0)
        True
        >>> bool(lin.weight.abs().sum() > 0)
        False
    """
    learning = [p for _, _, _, _, p in nm_parametrizations(model) if p.state == LEARNING]
    for p in learning:
        p._use_w0 = True
    try:
        yield model
    finally:
        for p in learning:
            p._use_w0 = False
