"""Wiki markup to plain text (the built-in corpus is a MediaWiki dump): [`strip_wiki_markup`][torchprox.llm.markup.strip_wiki_markup]."""
from __future__ import annotations

import html
import re

__all__ = ["strip_wiki_markup"]

# Templates {{...}} and tables {|...|} nest; they are removed by a small depth-tracking scan over these tokens.
# Table delimiters only count at the start of a line, so a template ending in "|}}" is not a table end.
_BRACE_TOKEN = re.compile(r"\{\{|\}\}|^[ \t:]*\{\||^[ \t]*\|\}(?!\})", re.M)
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_REF = re.compile(r"<ref\b[^>/]*/>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
_DROP_TAG_BLOCK = re.compile(
    r"<(math|gallery|timeline|score|syntaxhighlight|source|imagemap|graph|chem|ce)\b[^>]*>.*?</\1\s*>", re.S | re.I
)
_HTML_TAG = re.compile(r"</?[a-zA-Z][^<>]*/?>")
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_DROP_NAMESPACES = ("file", "image", "category", "media")
_LINK_TOKEN = re.compile(r"\[\[|\]\]")
_FILE_LINK = re.compile(r"\[\[\s*(?:file|image|category|media)\s*:", re.I)
_INTERWIKI = re.compile(r"^[a-z]{2,3}(?:-[a-z]{2,8})*:")
_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$", re.M)
_BOLD_ITALIC = re.compile(r"'{2,5}")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_LIST_PREFIX = re.compile(r"^[*#:;]+\s*", re.M)
_HRULE = re.compile(r"^-{4,}\s*$", re.M)
_LEFTOVER = re.compile(r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def _remove_nested(text: str) -> str:
    """Delete every outermost ``{{...}}`` / ``{|...|}`` region (nested ones included).

    Unmatched closers are left for [`_LEFTOVER`][torchprox.llm.markup._LEFTOVER]; an opener that is never closed only loses its own token
    (rather than eating the rest of the article).
    """
    out: list[str] = []
    stack: list[tuple[str, int]] = []  # (kind, start offset) of open regions
    keep_from = 0
    for tok in _BRACE_TOKEN.finditer(text):
        s = tok.group().strip(" \t:")
        if s in ("{{", "{|"):
            stack.append((s, tok.start()))
        elif stack and stack[-1][0] == ("{{" if s == "}}" else "{|"):
            _, start = stack.pop()
            if not stack:
                out.append(text[keep_from:start])
                keep_from = tok.end()
    if stack:  # unclosed openers: drop the outermost opener token only, keep the rest
        _, start = stack[0]
        out.append(text[keep_from:start])
        keep_from = start + 2
    out.append(text[keep_from:])
    return "".join(out)


def _drop_file_links(text: str) -> str:
    """Delete ``[[File:...]]``, ``[[Image:...]]``, ``[[Category:...]]`` links, balancing nested ``[[ ]]``.

    A caption may hold links and single brackets (``[above]``), so a plain regex cannot find the end.
    """
    regions: list[tuple[int, int]] = []
    stack: list[int] = []
    for tok in _LINK_TOKEN.finditer(text):
        if tok.group() == "[[":
            stack.append(tok.start())
        elif stack:
            start = stack.pop()
            if _FILE_LINK.match(text, start):
                regions.append((start, tok.end()))
    if not regions:
        return text
    out, keep_from = [], 0
    for start, end in sorted(regions):
        if start >= keep_from:  # regions inside an already deleted one are covered
            out.append(text[keep_from:start])
            keep_from = end
        else:
            keep_from = max(keep_from, end)
    out.append(text[keep_from:])
    return "".join(out)


def _link_text(match: re.Match) -> str:
    body = match.group(1)
    target, sep, label = body.partition("|")
    t = target.strip()
    namespace = t.lstrip(":").split(":", 1)[0].strip().lower() if ":" in t else ""
    if namespace in _DROP_NAMESPACES and not t.startswith(":"):
        return ""  # images, files, categories (captions included)
    if not sep and _INTERWIKI.match(t):
        return ""  # interlanguage links such as [[de:Anarchismus]]
    if sep and label.strip():
        return label.split("|")[-1] if namespace in _DROP_NAMESPACES else label
    return t.lstrip(":")


def strip_wiki_markup(text: str) -> str:
    """Turn MediaWiki source into plain text with a few regular expressions (no wiki parser).

    Removes comments, ``<ref>`` footnotes, templates ``{{...}}`` (nested), tables ``{|...|}``, math/gallery
    blocks, file/image/category and interlanguage links, HTML tags (their content kept), bold/italic quotes,
    list markers and magic words; ``[[a|b]]`` becomes ``b`` and ``[[a]]`` becomes ``a``; ``[http://x label]``
    becomes ``label``; a heading ``== History ==`` becomes the line ``History``. HTML entities are decoded.

    Example:

        >>> strip_wiki_markup("'''Albedo''' {{IPA|x}} is [[light|reflected light]].<ref>R</ref>")
        'Albedo is reflected light.'
    """
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _DROP_TAG_BLOCK.sub("", text)
    text = _remove_nested(text)
    text = _drop_file_links(text)
    while True:  # innermost links first, so a file caption's links resolve before the file link is dropped
        new = _INNER_LINK.sub(_link_text, text)
        if new == text:
            break
        text = new
    text = _EXT_LINK.sub(lambda m: m.group(1) or "", text)
    text = _HTML_TAG.sub("", text)
    text = _HEADING.sub(lambda m: m.group(2), text)
    text = _BOLD_ITALIC.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    text = _HRULE.sub("", text)
    text = _LIST_PREFIX.sub("", text)
    text = _LEFTOVER.sub("", text)
    text = html.unescape(html.unescape(text))  # dumps often double-escape (&amp;nbsp;)
    text = _SPACES.sub(" ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r" ([,.;:])", r"\1", text)  # "word ." left behind by removed templates/refs
    text = re.sub(r"\( *\)", "", text)  # "()" left by removed pronunciation templates
    text = _SPACES.sub(" ", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()
