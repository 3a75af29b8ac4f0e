"""Text data for calibration and evaluation: text sources, their split, token blocks.

Everything here is deterministic and offline (nothing is ever downloaded).

* `builtin_articles` / [`builtin_corpus`][torchprox.llm.corpus.builtin_corpus]: the 106 Wikipedia articles shipped in gensim 4.4.0's test
  data (CC BY-SA), wiki markup stripped, split by article into calibration (first 74) and evaluation (last 32).
* [`news_corpus`][torchprox.llm.corpus.news_corpus]: a second built-in corpus of another kind of English, ``"news"``: the 300 Australian news
  articles of gensim's Lee background corpus, split 70/30 by article (for checking that a recipe transfers).
* [`load_texts`][torchprox.llm.data.load_texts]: ``"builtin"``, ``"news"``, a UTF-8 text file, a directory of ``.txt``/``.md`` files, a list of strings,
  or a ``datasets.Dataset`` with a ``"text"`` column -> list of documents.
* [`split_texts`][torchprox.llm.data.split_texts]: the deterministic document split used for user sources (last 30% for evaluation).
* [`tokenize_blocks`][torchprox.llm.data.tokenize_blocks]: documents -> ``LongTensor (B, seqlen)`` of non-overlapping token windows, each
  starting with BOS when the tokenizer adds one by default (Gemma does, SmolLM2 does not).
* [`calibration_blocks`][torchprox.llm.data.calibration_blocks] / [`evaluation_blocks`][torchprox.llm.data.evaluation_blocks]: the two convenience wrappers.

Examples:
    With the real tokenizer and the built-in corpus (``tokenizer`` from [`torchprox.llm.load_default_model`][torchprox.llm.models.load_default_model]):

    >>> calib = calibration_blocks(tokenizer, "builtin", seqlen=512, n_blocks=64)  # doctest: +SKIP
    >>> evalb = evaluation_blocks(tokenizer, "builtin", seqlen=512)  # doctest: +SKIP
    >>> calib.shape, evalb.shape  # doctest: +SKIP
    (torch.Size([64, 512]), torch.Size([32, 512]))

    The same calls on a list of documents with a tiny word-level tokenizer:

    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import PreTrainedTokenizerFast
    >>> backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
    >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")   # a tiny word-level tokenizer
    >>> texts = [" ".join(f"w{(d + i) % 64}" for i in range(100)) for d in range(10)]   # 10 docs of 100 tokens
    >>> calibration_blocks(tok, texts, seqlen=16, n_blocks=4).shape    # random windows of the first 7 docs
    torch.Size([4, 16])
    >>> evaluation_blocks(tok, texts, seqlen=16, max_tokens=64).shape  # first 64 tokens of the last 3 docs
    torch.Size([4, 16])
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

# Re-exported: the corpora and the markup cleaner lived here (torchprox.llm.data.builtin_corpus keeps working).
from .corpus import GENSIM_DATA_FILE, CALIB_FRACTION, builtin_articles, builtin_corpus, news_corpus
from .markup import strip_wiki_markup

__all__ = [
    "BUILTIN_SOURCES",
    "load_texts",
    "split_texts",
    "tokenize_blocks",
    "calibration_blocks",
    "evaluation_blocks",
]

# ----------------------------------------------------------------------------------------------------------
# User sources
# ----------------------------------------------------------------------------------------------------------
_TEXT_SUFFIXES = (".txt", ".md")
_BUILTINS = {"builtin": builtin_corpus, "news": news_corpus}
#: The names [`load_texts`][torchprox.llm.data.load_texts] and the block builders take as built-in sources.
BUILTIN_SOURCES = tuple(_BUILTINS)


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise ValueError(f"{path} looks like a binary file, not UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load_texts(source: Any) -> list[str]:
    """Load documents from a source; returns a list of strings (one per document).

    ``source`` may be:

    * ``"builtin"``: the built-in corpus, calibration then evaluation articles (see [`builtin_corpus`][torchprox.llm.corpus.builtin_corpus]);
    * ``"news"``: the second built-in corpus (see [`news_corpus`][torchprox.llm.corpus.news_corpus]);
    * a path (str or ``os.PathLike``) to a UTF-8 text file: one document;
    * a path to a directory: every ``*.txt`` / ``*.md`` file directly inside it, sorted by name, one document
      each;
    * a list/tuple of strings: returned as a list;
    * a ``datasets.Dataset`` with a ``"text"`` column (``datasets`` is not required otherwise).

    Raises FileNotFoundError for a missing path and ValueError for a binary / non-UTF-8 file (naming it), an
    empty directory or an unsupported object.

    Examples:
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "b.md").write_text("second document")
        >>> _ = (folder / "a.txt").write_text("first document")
        >>> load_texts(folder)                                   # sorted by file name
        ['first document', 'second document']
        >>> load_texts(["one", "two"]), len(load_texts("builtin"))
        (['one', 'two'], 106)
    """
    if isinstance(source, str) and source in _BUILTINS:
        calib, evals = _BUILTINS[source]()
        return calib + evals
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"text source {str(source)!r} does not exist (expected 'builtin', a UTF-8 text file or a "
                "directory of .txt/.md files)"
            )
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _TEXT_SUFFIXES)
            if not files:
                raise ValueError(f"directory {path} contains no .txt or .md files")
            return [_read_text_file(p) for p in files]
        return [_read_text_file(path)]
    if isinstance(source, (list, tuple)):
        if not all(isinstance(t, str) for t in source):
            raise ValueError("a list source must contain only strings")
        return list(source)
    column_names = getattr(source, "column_names", None)
    if column_names is not None:
        if isinstance(column_names, dict):  # datasets.DatasetDict
            raise ValueError(f"got a DatasetDict with splits {sorted(column_names)}; pass one split, e.g. ds['train']")
        if "text" not in column_names:
            raise ValueError(f"dataset has no 'text' column (columns: {list(column_names)})")
        return [t for t in source["text"] if isinstance(t, str)]
    raise ValueError(
        f"unsupported text source of type {type(source).__name__}: expected 'builtin', a path, a list of strings "
        "or a datasets.Dataset with a 'text' column"
    )


def split_texts(texts: Sequence[str], eval_fraction: float = 1 - CALIB_FRACTION) -> tuple[list[str], list[str]]:
    """Deterministic calibration / evaluation split of a user source: ``(calib_texts, eval_texts)``.

    The last ``eval_fraction`` (30%) of the documents, rounded and at least one, are for evaluation; the rest
    for calibration. A single document is first split into paragraphs (at blank lines, or at line breaks if it
    has no blank lines) so that both parts are non-empty.

    With D documents: ``n_eval = min(D − 1, max(1, round(eval_fraction · D)))``.

    Examples:
        >>> split_texts(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])
        (['a', 'b', 'c', 'd', 'e', 'f', 'g'], ['h', 'i', 'j'])
        >>> split_texts(["first paragraph\\n\\nsecond\\n\\nthird"])          # one document: split into paragraphs
        (['first paragraph', 'second'], ['third'])
    """
    docs = [t for t in texts if t.strip()]
    if len(docs) == 1:
        text = docs[0]
        parts = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
        if len(parts) < 2:
            parts = [p for p in text.splitlines() if p.strip()]
        if len(parts) < 2:
            raise ValueError("cannot split a single one-line document into calibration and evaluation parts")
        docs = parts
    if len(docs) < 2:
        raise ValueError(f"need at least 2 non-empty documents to split, got {len(docs)}")
    n_eval = min(len(docs) - 1, max(1, round(eval_fraction * len(docs))))
    return docs[: len(docs) - n_eval], docs[len(docs) - n_eval :]


# ----------------------------------------------------------------------------------------------------------
# Tokenization
# ----------------------------------------------------------------------------------------------------------
def _ids(out: Any) -> list[int]:
    """The token ids of one text from a tokenizer's output (a dict-like with ``input_ids``, a list, a tensor)."""
    ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    if isinstance(ids, torch.Tensor):
        ids = ids.reshape(-1).tolist()
    if ids and isinstance(ids[0], (list, tuple)):  # batched output for a single text
        ids = ids[0]
    return list(ids)


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, for HF tokenizers and simple stubs alike."""
    if callable(tokenizer):
        try:
            out = tokenizer(text, add_special_tokens=False, verbose=False)
        except TypeError:
            out = tokenizer(text, add_special_tokens=False)
    elif hasattr(tokenizer, "encode"):
        out = tokenizer.encode(text, add_special_tokens=False)
    else:
        raise TypeError(f"tokenizer of type {type(tokenizer).__name__} is neither callable nor has .encode")
    return _ids(out)


def _default_bos(tokenizer: Any) -> int | None:
    """``bos_token_id`` if the tokenizer puts it first when called with its defaults, else None.

    Asked by tokenizing ``"a"``: flags such as ``add_bos_token`` are not reliable (GGUF-converted Gemma
    tokenizers add BOS whatever theirs says). Stubs without ``bos_token_id`` never get one."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if not isinstance(bos, int) or isinstance(bos, bool) or not callable(tokenizer):
        return None
    try:
        ids = _ids(tokenizer("a"))
    except Exception:  # noqa: BLE001 - a tokenizer that cannot be asked is treated as adding nothing
        return None
    return bos if ids and ids[0] == bos else None


def _window_bos(tokenizer: Any, bos: bool | None) -> int | None:
    """The id each window starts with (None: none): ``bos=None`` asks the tokenizer, True forces its BOS."""
    if bos is None:
        return _default_bos(tokenizer)
    if not bos:
        return None
    token = getattr(tokenizer, "bos_token_id", None)
    if token is None:
        raise ValueError("bos=True, but the tokenizer has no bos_token_id")
    return int(token)


def tokenize_blocks(
    tokenizer: Any,
    texts: str | Sequence[str],
    seqlen: int,
    n_blocks: int | None = None,
    *,
    max_tokens: int | None = None,
    sample: str = "contiguous",
    seed: int = 0,
    bos: bool | None = None,
) -> torch.Tensor:
    """Tokenize documents into non-overlapping windows: a ``LongTensor`` of shape ``(B, seqlen)``.

    The documents are joined with ``"\\n\\n"`` and tokenized once, without BOS or other special tokens. The
    token stream (cut to its first ``max_tokens`` tokens if given) is split into ``len // seqlen``
    non-overlapping windows (a trailing partial window is dropped).

    BOS: a model trained with a BOS token first in every sequence (Gemma) scores much worse without it, so
    when the tokenizer adds BOS by default (``tokenizer("a")`` starts with ``bos_token_id``; flags like
    ``add_bos_token`` are not trusted) each window is BOS followed by the next ``seqlen - 1`` text tokens: the
    windows keep their length ``seqlen``, cover ``seqlen - 1`` text tokens each, and ``max_tokens`` caps the
    window tokens (``B ≤ max_tokens // seqlen``). ``bos=True`` forces this with the tokenizer's
    ``bos_token_id``, ``bos=False`` turns it off; with a tokenizer that adds no BOS (SmolLM2, the default
    ``bos=None``) the windows are exactly the plain ones. Then:

    * ``sample="contiguous"`` (evaluation): the first ``n_blocks`` windows, or all of them if ``n_blocks`` is
      None;
    * ``sample="random"`` (calibration, as Wanda/SparseGPT draw random segments): ``n_blocks`` distinct windows
      drawn with ``torch.Generator().manual_seed(seed)``, in drawn order. Windows never overlap, so no token
      is seen twice.

    ``tokenizer`` is a Hugging Face tokenizer or any object whose ``__call__`` returns ``{"input_ids": ids}``
    (or whose ``encode`` returns ids). Raises ValueError if there are fewer tokens than needed (the message
    gives both counts).

    With T tokens (after ``max_tokens``) there are ``⌊T / seqlen⌋`` windows; window k is tokens
    ``[k·seqlen, (k+1)·seqlen)``. With BOS and T text tokens: ``min(⌊T / (seqlen − 1)⌋, ⌊max_tokens / seqlen⌋)``
    windows, window k is BOS then text tokens ``[k·(seqlen − 1), (k+1)·(seqlen − 1))``.

    Examples:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
        >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")   # a tiny word-level tokenizer
        >>> tokenize_blocks(tok, ["w1 w2 w3 w4 w5", "w6 w7 w8 w9"], seqlen=4)   # 9 tokens: 2 windows
        tensor([[1, 2, 3, 4],
                [5, 6, 7, 8]])
        >>> texts = [" ".join(f"w{i % 64}" for i in range(500))]
        >>> tokenize_blocks(tok, texts, seqlen=32, n_blocks=8, sample="random", seed=0).shape
        torch.Size([8, 32])

        A tokenizer whose post-processor adds a BOS (id 63) gets it first in every window:

        >>> from tokenizers import processors
        >>> backend.post_processor = processors.TemplateProcessing(single="w63 $A", special_tokens=[("w63", 63)])
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", bos_token="w63")
        >>> tok("w1")["input_ids"], tok("w1", add_special_tokens=False)["input_ids"]
        ([63, 1], [1])
        >>> tokenize_blocks(tok, ["w1 w2 w3 w4 w5", "w6 w7 w8 w9"], seqlen=4)   # BOS + 3 text tokens each
        tensor([[63,  1,  2,  3],
                [63,  4,  5,  6],
                [63,  7,  8,  9]])
    """
    if not isinstance(seqlen, int) or seqlen < 1:
        raise ValueError(f"seqlen must be a positive int, got {seqlen!r}")
    if n_blocks is not None and (not isinstance(n_blocks, int) or n_blocks < 1):
        raise ValueError(f"n_blocks must be a positive int or None, got {n_blocks!r}")
    if max_tokens is not None and max_tokens < seqlen:
        raise ValueError(f"max_tokens={max_tokens} is smaller than one block of seqlen={seqlen}")
    if sample not in ("contiguous", "random"):
        raise ValueError(f"sample must be 'contiguous' or 'random', got {sample!r}")
    if sample == "random" and n_blocks is None:
        raise ValueError("sample='random' needs n_blocks")
    bos_id = _window_bos(tokenizer, bos)
    if bos_id is not None and seqlen < 2:
        raise ValueError(f"seqlen must be at least 2 when every window starts with BOS, got {seqlen}")
    body = seqlen - (bos_id is not None)  # text tokens per window
    if isinstance(texts, str):
        texts = [texts]
    ids = torch.tensor(_encode(tokenizer, "\n\n".join(texts)), dtype=torch.long)
    n_tok = ids.numel()
    n_windows = n_tok // body if max_tokens is None else min(n_tok // body, max_tokens // seqlen)
    needed = body * (n_blocks or 1)
    if n_windows < (n_blocks or 1):
        where = f" (within max_tokens={max_tokens})" if max_tokens is not None and max_tokens < n_tok else ""
        each = " (BOS + seqlen-1 text tokens each)" if bos_id is not None else ""
        raise ValueError(
            f"not enough text: {n_tok} tokens{where}, but {needed} are needed for "
            f"{n_blocks or 1} block(s) of seqlen={seqlen}{each}"
        )
    windows = ids[: n_windows * body].view(n_windows, body)
    if bos_id is not None:
        windows = torch.cat([torch.full((n_windows, 1), bos_id, dtype=torch.long), windows], dim=1)
    if sample == "random":
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(n_windows, generator=gen)[:n_blocks]
        return windows[idx].clone()
    return windows[: n_blocks or n_windows].clone()


def _split_source(source: Any) -> tuple[list[str], list[str]]:
    if isinstance(source, str) and source in _BUILTINS:
        return _BUILTINS[source]()
    return split_texts(load_texts(source))


def calibration_blocks(
    tokenizer: Any, source: Any = "builtin", seqlen: int = 512, n_blocks: int = 64, seed: int = 0,
    *, bos: bool | None = None
) -> torch.Tensor:
    """``n_blocks`` random windows ``(n_blocks, seqlen)`` from the calibration part of ``source``.

    ``"builtin"`` uses the first 74 articles; any other source (see [`load_texts`][torchprox.llm.data.load_texts]) is split with
    [`split_texts`][torchprox.llm.data.split_texts] (first 70% of documents). Deterministic for a given ``seed``. Each window starts with
    BOS when the tokenizer adds one by default (``bos``: see [`tokenize_blocks`][torchprox.llm.data.tokenize_blocks]).

    Examples:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
        >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")   # a tiny word-level tokenizer
        >>> texts = [" ".join(f"w{(d + i) % 64}" for i in range(100)) for d in range(10)]   # 10 docs of 100 tokens
        >>> blocks = calibration_blocks(tok, texts, seqlen=16, n_blocks=4, seed=0)   # from the first 7 docs
        >>> blocks.shape, bool(torch.equal(blocks, calibration_blocks(tok, texts, seqlen=16, n_blocks=4, seed=0)))
        (torch.Size([4, 16]), True)

        With the real tokenizer: ``calibration_blocks(tokenizer, "builtin", seqlen=512, n_blocks=64)`` is
        ``(64, 512)``.
    """
    calib, _ = _split_source(source)
    return tokenize_blocks(tokenizer, calib, seqlen, n_blocks, sample="random", seed=seed, bos=bos)


def evaluation_blocks(
    tokenizer: Any, source: Any = "builtin", seqlen: int = 512, max_tokens: int | None = 16384,
    *, bos: bool | None = None
) -> torch.Tensor:
    """The first ``max_tokens // seqlen`` contiguous windows ``(B, seqlen)`` of the evaluation part of ``source``.

    ``"builtin"`` uses the last 32 articles; any other source is split with [`split_texts`][torchprox.llm.data.split_texts] (last 30% of
    documents, at least one). ``max_tokens`` caps the tokens used (None: all full windows); a source with
    fewer tokens gives fewer windows, and one with less than ``seqlen`` tokens raises ValueError. Each window
    starts with BOS when the tokenizer adds one by default (then it holds ``seqlen - 1`` text tokens; ``bos``:
    see [`tokenize_blocks`][torchprox.llm.data.tokenize_blocks]).

    Examples:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
        >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")   # a tiny word-level tokenizer
        >>> texts = [" ".join(f"w{(d + i) % 64}" for i in range(100)) for d in range(10)]   # 10 docs of 100 tokens
        >>> evaluation_blocks(tok, texts, seqlen=16, max_tokens=None).shape   # all of the last 3 docs: 300 tokens
        torch.Size([18, 16])
        >>> evaluation_blocks(tok, texts, seqlen=16, max_tokens=64)[0, :6]   # doc 7 starts with w7
        tensor([ 7,  8,  9, 10, 11, 12])

        With the real tokenizer: ``evaluation_blocks(tokenizer, "builtin")`` is ``(32, 512)``, the first
        16,384 evaluation tokens.
    """
    _, evals = _split_source(source)
    return tokenize_blocks(tokenizer, evals, seqlen, max_tokens=max_tokens, sample="contiguous", bos=bos)
