"""The documentation site builds with ``mkdocs build --strict`` (warnings are errors): every page, every
snippet-included example script, every API reference entry generated from the docstrings and every image."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python",
                                                             "material")),
    reason="the docs extra is not installed (mkdocs, mkdocstrings[python], mkdocs-material): "
           "pip install -e '.[docs]' or run scripts/setup.sh")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with ``mkdocs build --strict`` (warnings are errors)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


API_PAGES = ["api/prox", "api/optim", "api/prune", "api/llm", "api/llm-ecosystem"]


def _visible_text(html: str) -> str:
    """The page's prose as a reader sees it: no code blocks, inline code, MathML, scripts or tags."""
    for tag in ("script", "style", "pre", "code", "math"):
        html = re.sub(rf"<{tag}\b.*?</{tag}>", " ", html, flags=re.S)
    return unescape(re.sub(r"<[^>]+>", " ", html))


def test_mkdocs_build_strict(site):
    for page in ["index.html", "concepts/index.html", "benchmarks/index.html", "api/prox/index.html",
                 "api/optim/index.html", "api/prune/index.html", "api/llm/index.html",
                 "api/llm-ecosystem/index.html", "tutorials/custom-prox/index.html"]:
        assert (site / page).is_file(), page
    api = (site / "api" / "prox" / "index.html").read_text()
    assert "prox_nm" in api and "register_prox" in api  # the reference is generated from the docstrings


@pytest.mark.parametrize("page", API_PAGES)
def test_api_pages_render_their_markup(site, page):
    """No reST role, literal-block ``::`` or LaTeX left raw on an API page."""
    text = _visible_text((site / page / "index.html").read_text())
    roles = re.findall(r":(?:func|class|mod|meth|attr|data|obj|exc):\s*`?[\w.~]+", text)
    assert not roles, f"{page}: raw reST roles {roles[:5]}"
    literal = re.findall(r"\w+::(?:\s|$)", text)
    assert not literal, f"{page}: raw '::' after {literal[:5]}"
    assert "``" not in text, f"{page}: raw double backticks"


@pytest.mark.parametrize("page", [p.relative_to(ROOT / "docs").with_suffix("").as_posix()
                                  for p in sorted((ROOT / "docs").rglob("*.md"))])
def test_math_is_rendered_at_build_time(site, page):
    """Every formula is MathML in the built page (drawn offline, no CDN): no \\( or \\[ left for a script."""
    html_path = site / ("index.html" if page == "index" else f"{page}/index.html")
    text = _visible_text(html_path.read_text())
    assert "\\(" not in text and "\\[" not in text, f"{page}: unrendered LaTeX"
    assert "cdn." not in html_path.read_text(), f"{page}: loads something from a CDN"


def test_proxadam_page_documents_its_arguments(site):
    """The central class's page shows the algorithm and every argument, not only a signature: each argument
    is a row of the parameters table (its name in code, then its description)."""
    html = (site / "api" / "optim" / "index.html").read_text()
    rows = re.findall(r"<tr[^>]*>\s*<td[^>]*>\s*<code>(\w+)</code>", html)
    for arg in ("params", "lr", "prox", "lam", "prox_kwargs", "metric", "lam_scaling", "foreach", "fused"):
        assert arg in rows, f"ProxAdam's page has no parameter row for {arg} (rows: {rows})"
    assert html.count("<math") >= 1, "the algorithm box is not rendered"
    assert "Everything before the λ_t line" in _visible_text(html)


def test_results_tables_match_their_rows():
    """Every generated table in README and the docs equals what benchmarks/results/recipes.jsonl gives."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "results_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_docs_images_are_committed():
    """The site must build without running any benchmark: every image a page links to is in docs/."""
    import re

    for md in (ROOT / "docs").rglob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text()):
            assert (md.parent / target).resolve().is_file(), f"{md.relative_to(ROOT)} links a missing {target}"


def test_moe_tutorial_example_runs_and_prints_what_it_says(tmp_path, monkeypatch):
    """docs/tutorials/moe.md's example, run as is: each print matches the comment line under it."""
    pytest.importorskip("transformers")
    import contextlib
    import io

    text = (ROOT / "docs" / "tutorials" / "moe.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    expected = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "moe.md", "exec"), {})
    assert out.getvalue().splitlines() == expected
