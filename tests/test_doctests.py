"""The docstring examples of every public module run and print what they say (doctest, ELLIPSIS).

Every public module of torchprox (no ``_private`` part in its name) is listed below, and
:func:`test_every_public_module_is_listed` fails when a new one is not. Examples that genuinely need the real
embedded model or a CUDA GPU carry ``# doctest: +SKIP``; everything else runs on tiny models built from configs
(never a download). The ``torchprox.llm`` modules are skipped only when transformers or peft is missing.

Every public function and class (named in its module's ``__all__``) must have an example:
:func:`test_public_api_has_examples`.
"""
from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import pkgutil

import pytest
import torch

import torchprox

CORE = ["torchprox.prox.nm", "torchprox.prox.l1", "torchprox.prox.group_lasso", "torchprox.prox.registry", "torchprox.prox.patterns",
        "torchprox.optim.proxadam", "torchprox.prune", "torchprox.prune.parametrization",
        "torchprox.prune.learnable", "torchprox.prune.oneshot", "torchprox.prune.remove",
        "torchprox.prune.report", "torchprox.prune.penalty"]
LLM = ["torchprox.llm", "torchprox.llm.baselines", "torchprox.llm.blocks", "torchprox.llm.data",
       "torchprox.llm.demo", "torchprox.llm.evaluate", "torchprox.llm.export", "torchprox.llm.models",
       "torchprox.llm.peft", "torchprox.llm.proxsparse", "torchprox.llm.reconstruct", "torchprox.llm.sparsify",
       "torchprox.llm.trainer", "torchprox.llm.corpus", "torchprox.llm.markup", "torchprox.llm.semi_structured",
       "torchprox.llm.targets", "torchprox.llm.experts", "torchprox.llm.distill"]
# Packages that only re-export (their names' examples live in the defining modules) and the CLI.
NO_OWN_EXAMPLES = ["torchprox", "torchprox.prox", "torchprox.optim", "torchprox.cli"]
HAS_LLM = all(importlib.util.find_spec(p) is not None for p in ("transformers", "peft"))
NEEDS_LLM = pytest.mark.skipif(not HAS_LLM, reason="needs the llm extra (transformers, peft)")


def _param(name: str):
    return pytest.param(name, marks=NEEDS_LLM) if name.startswith("torchprox.llm") else name


def _public_modules() -> list[str]:
    found = [info.name for info in pkgutil.walk_packages(torchprox.__path__, "torchprox.")]
    return ["torchprox"] + [n for n in found if not any(part.startswith("_") for part in n.split("."))]


def _run(name: str) -> doctest.TestResults:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    finally:
        torch.set_num_threads(threads)


def test_every_public_module_is_listed():
    assert sorted(_public_modules()) == sorted(CORE + LLM + NO_OWN_EXAMPLES)


@pytest.mark.parametrize("name", [_param(n) for n in CORE + LLM])
def test_docstring_examples(name):
    result = _run(name)
    assert result.failed == 0
    assert result.attempted > 0


@pytest.mark.parametrize("name", [_param(n) for n in NO_OWN_EXAMPLES])
def test_reexporting_modules_doctests(name):
    """Their docstrings may hold examples too (none today); whatever is there must pass."""
    assert _run(name).failed == 0


@pytest.mark.parametrize("name", [_param(n) for n in CORE + LLM])
def test_public_api_has_examples(name):
    module = importlib.import_module(name)
    missing = [attr for attr in getattr(module, "__all__", [])
               if (inspect.isfunction(obj := getattr(module, attr, None)) or inspect.isclass(obj))
               and obj.__module__ == name and ">>>" not in (obj.__doc__ or "")]
    assert not missing, f"{name}: public names without a docstring example: {missing}"
