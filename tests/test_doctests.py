"""The docstring examples of every public module run and print what they say (doctest, ELLIPSIS).

Modules whose examples need the real embedded model or the built-in corpus (``torchprox.llm.data``,
``.evaluate``, ``.models``, ``.sparsify``, ``.demo`` and the package docstring of ``torchprox.llm``) are left out:
their examples are illustrations of the real workflow, which the slow tests cover."""
from __future__ import annotations

import doctest
import importlib
import importlib.util

import pytest
import torch

CORE = ["torchprox.prox.nm", "torchprox.prox.l1", "torchprox.prox.group_lasso", "torchprox.prox.registry",
        "torchprox.optim.proxadam", "torchprox.prune", "torchprox.prune.parametrization",
        "torchprox.prune.learnable", "torchprox.prune.oneshot", "torchprox.prune.remove",
        "torchprox.prune.report", "torchprox.prune.penalty"]
LLM = ["torchprox.llm.export", "torchprox.llm.trainer", "torchprox.llm.blocks"]
HAS_LLM = all(importlib.util.find_spec(p) is not None for p in ("transformers", "peft"))


@pytest.mark.parametrize("name", CORE + [pytest.param(n, marks=pytest.mark.skipif(
    not HAS_LLM, reason="needs the llm extra (transformers, peft)")) for n in LLM])
def test_docstring_examples(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    finally:
        torch.set_num_threads(threads)
    assert result.failed == 0
    assert result.attempted > 0
