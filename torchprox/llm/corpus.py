"""The built-in offline corpora, read from data files shipped inside gensim 4.4.0 (gensim is never imported).

* `builtin_articles` / [`builtin_corpus`][torchprox.llm.corpus.builtin_corpus]: the 106 Wikipedia articles of gensim's test data (CC BY-SA),
  wiki markup stripped ([`torchprox.llm.markup.strip_wiki_markup`][torchprox.llm.markup.strip_wiki_markup]), split by article into calibration
  (first 74) and evaluation (last 32).
* [`news_corpus`][torchprox.llm.corpus.news_corpus]: the 300 Australian news articles of gensim's Lee background corpus, split 70/30 by
  article (another kind of English, for checking that a recipe transfers).
"""
from __future__ import annotations

import bz2
import functools
import xml.etree.ElementTree as ET
from pathlib import Path

from ._packages import package_file
from .markup import strip_wiki_markup

__all__ = ["builtin_corpus", "news_corpus"]

#: The wiki dump inside gensim's package, relative to the ``gensim`` package directory.
GENSIM_DATA_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

#: The Lee background corpus (one news article per line) inside gensim's package.
GENSIM_NEWS_FILE = "test/test_data/lee_background.cor"

#: Number of built-in articles that go to calibration (the rest is evaluation), as in the prototype.
BUILTIN_N_CALIB = 74
#: Fraction of documents used for calibration when splitting a user source (the rest is evaluation).
CALIB_FRACTION = 0.7

_GENSIM_HINT = (
    "The built-in corpus is a data file shipped inside gensim 4.4.0 (only that file is used; gensim itself is "
    "never imported). Install it without its dependencies: pip install --no-deps gensim==4.4.0"
)


def _gensim_data_path() -> Path:
    """Locate the wiki dump inside the installed gensim package without importing gensim."""
    return package_file("gensim", GENSIM_DATA_FILE, "gensim", _GENSIM_HINT)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@functools.lru_cache(maxsize=1)
def _builtin_articles_cached() -> tuple[tuple[str, str], ...]:
    path = _gensim_data_path()
    articles = []
    with bz2.open(path, "rb") as fh:
        for _, elem in ET.iterparse(fh, events=("end",)):
            if _local(elem.tag) != "page":
                continue
            fields = {_local(child.tag): child for child in elem}
            title = (fields["title"].text or "").strip() if "title" in fields else ""
            ns = (fields["ns"].text or "").strip() if "ns" in fields else "0"
            text_el = None
            if "revision" in fields:
                for child in fields["revision"]:
                    if _local(child.tag) == "text":
                        text_el = child
            raw = (text_el.text or "") if text_el is not None else ""
            elem.clear()
            if ns != "0" or "redirect" in fields or raw.lstrip().upper().startswith("#REDIRECT"):
                continue
            clean = strip_wiki_markup(raw)
            if title and clean:
                articles.append((title, clean))
    return tuple(articles)


def builtin_articles() -> list[tuple[str, str]]:
    """The built-in offline corpus: ``[(title, plain_text), ...]`` in dump order (106 articles).

    Read from gensim 4.4.0's test data file (see [`GENSIM_DATA_FILE`][torchprox.llm.corpus.GENSIM_DATA_FILE]; only that file is needed, gensim is
    not imported), main-namespace pages only, redirects and empty pages skipped, markup stripped with
    [`strip_wiki_markup`][torchprox.llm.markup.strip_wiki_markup]. Deterministic; parsed once per process (~1 s) and cached.

    Raises ImportError if gensim is not installed (``pip install --no-deps gensim==4.4.0``).

    Examples:
        >>> articles = builtin_articles()
        >>> len(articles), articles[0][0]
        (106, 'Anarchism')
    """
    return list(_builtin_articles_cached())


def builtin_corpus() -> tuple[list[str], list[str]]:
    """``(calib_texts, eval_texts)`` of the built-in corpus, split by article.

    Each document is ``" = {title} = \\n{text}"`` (WikiText-style title line). The first 74 articles are for
    calibration, the remaining 32 for evaluation (≈490k / ≈230k SmolLM2 tokens); if a different gensim
    release yields another article count, the first 70% (rounded) are for calibration.

    Examples:
        >>> calib, evals = builtin_corpus()
        >>> len(calib), len(evals)
        (74, 32)
        >>> calib[0].splitlines()[0], evals[0].splitlines()[0]
        (' = Anarchism = ', ' = Articles of Confederation = ')
    """
    docs = [f" = {title} = \n{text}" for title, text in builtin_articles()]
    n_calib = BUILTIN_N_CALIB if len(docs) == 106 else max(1, min(len(docs) - 1, round(CALIB_FRACTION * len(docs))))
    return docs[:n_calib], docs[n_calib:]


def news_corpus() -> tuple[list[str], list[str]]:
    """``(calib_texts, eval_texts)`` of the second built-in corpus: news, not Wikipedia.

    The Lee background corpus shipped in gensim 4.4.0's test data (`GENSIM_NEWS_FILE`: 300 Australian
    news articles, one per line, ≈80k SmolLM2 tokens), split by article: the first 70% for calibration, the
    rest for evaluation. Raises ImportError if gensim is not installed.

    Examples:
        >>> calib, evals = news_corpus()
        >>> len(calib), len(evals)
        (210, 90)
        >>> calib[0][:40]
        'Hundreds of people have been forced to v'
    """
    path = package_file("gensim", GENSIM_NEWS_FILE, "gensim", _GENSIM_HINT)
    docs = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    n_calib = round(CALIB_FRACTION * len(docs))
    return docs[:n_calib], docs[n_calib:]
