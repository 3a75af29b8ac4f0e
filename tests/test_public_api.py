"""One public surface per package: ``__init__.__all__`` is the API, the API pages document exactly it, and no
module imports another layer's private names.

- Each package (``torchprox.prox``, ``.optim``, ``.prune``, ``.llm``) documents every name of its ``__all__``
  once on the ``docs/api/*.md`` pages (mkdocstrings ``:::`` directives and their ``members:`` lists) and
  documents nothing else. A name a package re-exports from a lower layer (``torchprox.llm.parse_pattern`` is
  ``torchprox.prox.parse_pattern``) is documented where it is defined.
- A public submodule's ``__all__`` lists only names its package exports.
- Layers ``prox → optim → prune → llm → cli``: a module may import from another layer only names in that
  layer's package ``__all__``, and never from its ``_private`` modules. ``torchprox/_files.py`` is a base
  module below every layer that all may import.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prox", "optim", "prune", "llm")
LAYERS = (*PACKAGES, "cli")


def _needs(package: str) -> None:
    if package == "llm":
        pytest.importorskip("transformers")


# ------------------------------------------------------------------------------------------------ the docs


def doc_directives(docs: Path = ROOT / "docs" / "api") -> list[tuple[str, str, dict]]:
    """``[(page, target, options)]`` of every ``::: target`` directive on the API pages."""
    out = []
    for page in sorted(docs.glob("*.md")):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"^::: *(\S+)\s*$", line)
            if not match:
                continue
            block = []
            for follow in lines[i + 1:]:
                if follow.strip() and not follow.startswith(" "):
                    break
                block.append(follow)
            options = (yaml.safe_load("\n".join(block)) or {}).get("options", {}) if any(b.strip() for b in block) \
                else {}
            out.append((page.name, match.group(1), options))
    return out


def documented(package: str) -> list[tuple[str, object, str]]:
    """``[(name, object, where)]`` of the names of ``torchprox.<package>`` the API pages document."""
    out = []
    for page, target, options in doc_directives():
        parts = target.split(".")
        if parts[0] != "torchprox" or len(parts) < 2 or parts[1] != package:
            continue
        try:
            obj = importlib.import_module(target)
        except ModuleNotFoundError:
            module = importlib.import_module(".".join(parts[:-1]))
            out.append((parts[-1], getattr(module, parts[-1]), f"{page}: ::: {target}"))
            continue
        members = options.get("members")
        assert members is not None, (f"{page}: ::: {target} documents a module without a members: list; "
                                     "list the names (or members: false)")
        for name in members or []:
            assert hasattr(obj, name), f"{page}: ::: {target} lists {name!r}, which {target} does not have"
            out.append((name, getattr(obj, name), f"{page}: ::: {target}"))
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_docs_document_exactly_the_package_all(package):
    _needs(package)
    pkg = importlib.import_module(f"torchprox.{package}")
    api = list(pkg.__all__)
    assert len(api) == len(set(api)), f"torchprox.{package}.__all__ repeats a name"
    docs = documented(package)
    names = [name for name, _, _ in docs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    assert not repeated, f"documented more than once for torchprox.{package}: {repeated}"
    extra = [f"{name} ({where})" for name, _, where in docs if name not in api]
    assert not extra, f"documented but not in torchprox.{package}.__all__: {extra}"
    for name, obj, where in docs:
        assert getattr(pkg, name) is obj, f"{where}: {name} is not the object torchprox.{package}.{name}"
    elsewhere = {id(obj) for other in PACKAGES if other != package for _, obj, _ in documented(other)}
    missing = [n for n in api if n not in names and id(getattr(pkg, n)) not in elsewhere]
    assert not missing, f"in torchprox.{package}.__all__ but on no API page: {missing}"


def _public_submodules(package: str) -> list[str]:
    pkg = importlib.import_module(f"torchprox.{package}")
    return [f"{pkg.__name__}.{info.name}" for info in pkgutil.iter_modules(pkg.__path__)
            if not info.name.startswith("_")]


@pytest.mark.parametrize("package", PACKAGES)
def test_submodule_all_lists_only_what_the_package_exports(package):
    _needs(package)
    pkg = importlib.import_module(f"torchprox.{package}")
    for name in _public_submodules(package):
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), f"{name} has no __all__; list the names torchprox.{package} exports"
        for attr in module.__all__:
            assert attr in pkg.__all__, (f"{name}.__all__ lists {attr!r}, which torchprox.{package} does not "
                                         "export: export it from the package or drop it from __all__")
            assert getattr(module, attr) is getattr(pkg, attr), f"{name}.{attr} is not torchprox.{package}.{attr}"


def test_the_doc_directive_parser_reads_members_and_class_targets(tmp_path):
    (tmp_path / "a.md").write_text("# t\n\n::: torchprox.prox.nm\n    options:\n      members: [prox_nm, nm_mask]\n"
                                   "      show_root_heading: false\n\n::: torchprox.optim.proxadam.ProxAdam\n\ntext\n")
    assert doc_directives(tmp_path) == [("a.md", "torchprox.prox.nm", {"members": ["prox_nm", "nm_mask"],
                                                                        "show_root_heading": False}),
                                        ("a.md", "torchprox.optim.proxadam.ProxAdam", {})]


# ------------------------------------------------------------------------------------------------ the imports


def _module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "torchprox" and len(parts) > 1 and parts[1] in LAYERS else None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def cross_layer_private_imports(root: Path = ROOT) -> list[str]:
    """``"file:line: name"`` for every import of a name of another layer that is not in that layer's
    ``__all__`` or that comes from one of its ``_private`` modules."""
    apis = {}
    for package in PACKAGES:
        init = root / "torchprox" / package / "__init__.py"
        for node in ast.parse(init.read_text() if init.is_file() else "").body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                apis[package] = set(ast.literal_eval(node.value))
    found = []
    for path in sorted((root / "torchprox").rglob("*.py")):
        module = _module_name(path, root)
        layer = _layer(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(node, module, path.name == "__init__.py")
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                target, names = None, [alias.name for alias in node.names]
            else:
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            if target is None:  # import torchprox.x.y
                for name in names:
                    if _layer(name) not in (None, layer) and any(p.startswith("_") for p in name.split(".")[2:]):
                        found.append(f"{where}: {name}")
                continue
            other = _layer(target)
            if other in (None, layer):
                continue
            private_module = any(p.startswith("_") for p in target.split(".")[2:])
            for name in names:
                if private_module or name.startswith("_") or name not in apis.get(other, ()):
                    found.append(f"{where}: {target}.{name}")
    return found


def test_no_module_imports_another_layers_private_names():
    found = cross_layer_private_imports()
    assert not found, ("imports of names another layer does not export (add them to that package's __all__, "
                       "or keep them inside their layer):\n" + "\n".join(found))


def test_the_import_check_finds_private_and_unexported_names(tmp_path):
    pkg = tmp_path / "torchprox"
    for layer in ("prox", "prune", "llm"):
        (pkg / layer).mkdir(parents=True)
    (pkg / "prox" / "__init__.py").write_text('__all__ = ["check_nm"]\n')
    (pkg / "prune" / "__init__.py").write_text('__all__ = ["select_modules"]\nfrom ..prox._groups import check_nm\n')
    (pkg / "llm" / "__init__.py").write_text('__all__ = []\n')
    (pkg / "llm" / "a.py").write_text("from ..prox import check_nm\nfrom ..prune import select_modules, _hidden\n"
                                      "from ..prune.parametrization import nm_parametrizations\n"
                                      "from .._files import atomic_write\nfrom . import b\nimport torchprox.prox._groups\n")
    assert cross_layer_private_imports(tmp_path) == [
        "torchprox/llm/a.py:2: torchprox.prune._hidden",
        "torchprox/llm/a.py:3: torchprox.prune.parametrization.nm_parametrizations",
        "torchprox/llm/a.py:6: torchprox.prox._groups",
        "torchprox/prune/__init__.py:2: torchprox.prox._groups.check_nm",
    ]

