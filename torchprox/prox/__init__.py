"""Proximal operators as pure tensor functions, found by name through a registry.

Every operator returns ``argmin_w ½ Σ (w − y)² / s + λ R(w)`` group by group, where ``s`` is a scalar step
or a tensor shaped like ``y`` (a diagonal metric).
"""
from ._groups import check_nm, group_view
from .patterns import parse_pattern
from .registry import available_prox, check_prox_call, get_prox, prox_grouping, register_prox
from .group_lasso import group_lasso_penalty, prox_group_lasso
from .l1 import prox_l1, prox_l1_
from .nm import check_metric_pattern, nm_mask, nm_penalty, project_nm, project_nm_, prox_nm, prox_nm_

__all__ = [
    "available_prox", "get_prox", "register_prox", "check_prox_call", "prox_grouping",
    "group_lasso_penalty", "prox_group_lasso", "prox_l1", "prox_l1_",
    "nm_mask", "nm_penalty", "project_nm", "project_nm_", "prox_nm", "prox_nm_", "check_metric_pattern",
    "check_nm", "group_view", "parse_pattern",
]
