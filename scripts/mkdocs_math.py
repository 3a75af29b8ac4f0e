"""mkdocs hook: render the site's math to MathML at build time (no JavaScript, no CDN, works offline).

``pymdownx.arithmatex`` (generic mode) wraps ``\\( ... \\)`` in ``<span class="arithmatex">`` and ``\\[ ... \\]``
in ``<div class="arithmatex">``, in the pages and in the docstrings mkdocstrings renders. This hook replaces each
with the MathML that ``latex2mathml`` (the ``docs`` extra) converts it to, before the search plugin indexes the
page, so browsers draw it natively and search snippets hold the rendered text instead of LaTeX. A formula that
uses a LaTeX command ``latex2mathml`` does not know is a build error (a warning under ``mkdocs build --strict``),
never raw LaTeX on a page.
"""
from __future__ import annotations

import html
import logging
import re

from latex2mathml.converter import convert

log = logging.getLogger("mkdocs.hooks.math")

_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])\s*</(?P=tag)>',
    re.S,
)
_UNKNOWN = re.compile(r">[^<]*(\\[^<]*|&amp;|&(?!#)[^<]*)<")  # LaTeX (a command, an & alignment) left as text
# latex2mathml spaces | and \| as binary operators (| w |); as delimiters they take no space of their own
_BARS = re.compile(r'<mo( fence="false")? stretchy="false">(&#x0007C;|&#x02016;)</mo>|<mo>(&#x0007C;)</mo>')


def to_mathml(latex: str, display: bool) -> str:
    """The MathML of one formula (``display``: a block formula). Raises ValueError on an unknown command."""
    mathml = convert(latex.strip(), display="block" if display else "inline")
    mathml = _BARS.sub(lambda m: f'<mo lspace="0" rspace="0">{m.group(2) or m.group(3)}</mo>', mathml)
    bad = _UNKNOWN.search(mathml)
    if bad:
        raise ValueError(f"unsupported LaTeX {bad.group(0)[1:-1].strip()!r} in {latex.strip()!r}")
    return mathml


def on_page_content(content: str, page, **_kwargs) -> str:
    def replace(match: re.Match) -> str:
        block = match.group("block") is not None
        latex = html.unescape(match.group("block") if block else match.group("inline"))
        try:
            mathml = to_mathml(latex, block)
        except ValueError as err:  # strict builds fail on warnings
            log.warning("%s: %s", page.file.src_path, err)
            return match.group(0)
        return f'<div class="math">{mathml}</div>' if block else mathml

    return _MATH.sub(replace, content)
