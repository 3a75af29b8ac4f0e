"""The examples in torchprox.prune's docstrings run and print what they say."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["torchprox.prune", "torchprox.prune.parametrization", "torchprox.prune.learnable",
           "torchprox.prune.oneshot", "torchprox.prune.remove", "torchprox.prune.report",
           "torchprox.prune.penalty"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
