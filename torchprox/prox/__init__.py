"""Proximal operators as pure tensor functions, found by name through a registry.

Every operator returns ``argmin_w ½ Σ (w − y)² / s + λ R(w)`` group by group, where ``s`` is a scalar step
or a tensor shaped like ``y`` (a diagonal metric).
"""
from .registry import available_prox, get_prox, register_prox
from .nm import nm_mask, nm_penalty, project_nm, project_nm_, prox_nm, prox_nm_

__all__ = [
    "available_prox", "get_prox", "register_prox",
    "nm_mask", "nm_penalty", "project_nm", "project_nm_", "prox_nm", "prox_nm_",
]
