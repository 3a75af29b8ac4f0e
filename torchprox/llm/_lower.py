"""The only place where ``torchprox.llm`` imports private names of the layers below it (prox, prune).

Every module of ``llm/`` takes these names from here, so switching them to public names (once ``prox`` and
``prune`` export them) is one edit in this file.
"""
from ..prox._groups import check_nm  # noqa: F401
from ..prune._layers import check_groupable, is_hf_conv1d, name_matches, select_modules  # noqa: F401
from ..prune._layers import _compile_targets as compile_targets  # noqa: F401
from ..prune.parametrization import nm_parametrizations  # noqa: F401

__all__ = ["check_nm", "check_groupable", "is_hf_conv1d", "name_matches", "select_modules",
           "compile_targets", "nm_parametrizations"]
