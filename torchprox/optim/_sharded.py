r"""The local shard a prox works on when a parameter is a ``DTensor`` (FSDP2 ``fully_shard``, tensor parallel).

A prox is *local*: ``prox_{λR}(y)`` decomposes over groups, so each rank can apply it to its own shard as long
as every shard holds whole groups. FSDP2 shards a weight along dim 0 (``Shard(0)``, rows of an
``nn.Linear.weight`` (out, in)), while N:M groups run along the input dim 1, so every group lies in one shard
and the prox of the local shard equals the local part of the prox of the full tensor, with no communication.

DTensor has no sharding rule for torchprox's fused kernels (and a rule would have to redistribute), so the
prox is given ``p.to_local()`` (under ``no_grad`` the very tensor holding this rank's shard) and writes its
result back into it in place.
"""
from __future__ import annotations

import math

from torch import Tensor

from ..prox import prox_grouping

__all__ = ["local_shard"]


def _dtensor_cls():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return DTensor


def is_dtensor(t) -> bool:
    cls = _dtensor_cls()
    return cls is not None and isinstance(t, cls)


def local_shard(t: Tensor, prox: str | None = None, prox_kwargs: dict | None = None) -> Tensor:
    r"""``t`` itself, or for a DTensor its local shard ``t.to_local()`` (shares the shard's storage).

    With ``prox`` (a registered operator's name) the sharding is checked against the groups the operator
    declared at registration (``prox_grouping(prox, t.shape, **prox_kwargs) -> (dim, group_size)``): a
    ``Shard(d)`` placement along the group ``dim`` is accepted only when every shard boundary is a group
    boundary, i.e. the shard size ``ceil(size_d / mesh_size)`` is a multiple of ``group_size``. Sharding along
    any other dim (FSDP2's default ``Shard(0)`` for an ``nn.Linear`` grouped along dim 1), or an elementwise
    operator (no grouping declared), never splits a group.

    Raises:
        ValueError: the shards split groups; the message names the shape, the placements and the fix.
    """
    if not is_dtensor(t):
        return t
    if prox is not None:
        grouping = prox_grouping(prox, t.shape, **(prox_kwargs or {}))
        if grouping is not None:
            _check_whole_groups(t, *grouping)
    return t.to_local()


def _check_whole_groups(t, dim, size) -> None:
    """``ValueError`` if a ``Shard`` placement of ``t`` along ``dim`` cuts a group of ``size`` entries."""
    ndim = t.dim()
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        return  # the prox itself reports a bad dim
    dim %= ndim
    for mesh_dim, placement in enumerate(t.placements):
        if not placement.is_shard() or placement.dim % ndim != dim:
            continue
        chunk = math.ceil(t.shape[dim] / t.device_mesh.size(mesh_dim))
        if chunk % size:
            raise ValueError(
                f"a DTensor parameter of shape {tuple(t.shape)} with placements {tuple(t.placements)} is "
                f"sharded along dim {dim}, the prox's group dim, into shards of {chunk} that split its groups of "
                f"{size}; the prox needs whole groups on each rank. Shard along another dim (FSDP2: "
                f"fully_shard(..., shard_placement_fn=lambda p: Shard({1 if dim == 0 else 0}))) or use a mesh "
                f"size that makes the shard size a multiple of the group size"
            )
