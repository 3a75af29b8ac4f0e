"""Tests for torchprox.llm.data: built-in corpus, text sources, token blocks."""

import importlib.util

import pytest
import torch

from torchprox.llm import corpus, data
from torchprox.llm.data import (
    builtin_articles,
    builtin_corpus,
    calibration_blocks,
    evaluation_blocks,
    load_texts,
    split_texts,
    strip_wiki_markup,
    tokenize_blocks,
)

HAS_GENSIM = importlib.util.find_spec("gensim") is not None
needs_gensim = pytest.mark.skipif(not HAS_GENSIM, reason="gensim (its test data file) not installed")


class CharTokenizer:
    """A stub HF-like tokenizer: one id per character (ord % 64), records the kwargs it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, text, add_special_tokens=True, **kwargs):
        self.calls.append(dict(add_special_tokens=add_special_tokens, **kwargs))
        ids = [ord(c) % 64 for c in text]
        if add_special_tokens:
            ids = [63] + ids  # a BOS that must never appear
        return {"input_ids": ids}


class EncodeOnlyTokenizer:
    def encode(self, text, add_special_tokens=True):
        return [ord(c) % 64 for c in text]


# --------------------------------------------------------------------------------------------------- markup
@pytest.mark.parametrize(
    "src, expected",
    [
        ("'''Albedo''' is [[light|reflected light]].", "Albedo is reflected light."),
        ("A {{cite|x={{nested|y}}|z}}B", "A B"),
        ("See [[Paris]] and [[de:Paris]].", "See Paris and."),
        ("x<ref name=a>foo {{bar}}</ref> y<ref name=b/> z", "x y z"),
        ("a\n{| class=wikitable\n|-\n| 1 || {{t|2}}\n|}\nb", "a\n\nb"),
        ("== History ==\nText", "History\nText"),
        ("[[File:X.jpg|thumb|A [[cat]] [above] here]]Body", "Body"),
        ("[[Category:Foo]]Bar", "Bar"),
        ("<sub>2</sub>O &amp;nbsp;x", "2O x"),
        ("[http://example.com Example site] and [http://bare.org]", "Example site and"),
        ("* item one\n# item two", "item one\nitem two"),
        ("unclosed {{ template stays text", "unclosed template stays text"),
    ],
)
def test_strip_wiki_markup_cases(src, expected):
    assert strip_wiki_markup(src) == expected


# ----------------------------------------------------------------------------------------- builtin corpus
@needs_gensim
def test_builtin_articles_count_and_clean():
    articles = builtin_articles()
    assert len(articles) == 106
    titles = [t for t, _ in articles]
    assert titles[0] == "Anarchism" and titles[-1] == "Algorithm"
    assert len(set(titles)) == len(titles)
    for title, text in articles:
        assert text.strip(), title
        for residue in ("{{", "}}", "[[", "]]", "<ref", "'''", "{|"):
            assert residue not in text, (title, residue)
    total = sum(len(t) for _, t in articles)
    assert 2_500_000 < total < 3_500_000


@needs_gensim
def test_builtin_corpus_split():
    calib, evals = builtin_corpus()
    assert (len(calib), len(evals)) == (74, 32)
    assert set(calib).isdisjoint(evals)
    assert calib[0].startswith(" = Anarchism = \n")
    assert evals[0].startswith(" = Articles of Confederation = \n")
    # deterministic, and a fresh list each call (callers may mutate it)
    calib2, evals2 = builtin_corpus()
    assert calib2 == calib and evals2 == evals
    calib2.clear()
    assert len(builtin_corpus()[0]) == 74
    assert load_texts("builtin") == calib + evals


def test_missing_gensim_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps gensim==4\.4\.0"):
        corpus._gensim_data_path()


# ------------------------------------------------------------------------------------------------ sources
def test_load_texts_file_dir_list(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first é", encoding="utf-8")
    (tmp_path / "c.md").write_text("third", encoding="utf-8")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    assert load_texts(tmp_path) == ["first é", "second", "third"]
    assert load_texts(str(tmp_path / "a.txt")) == ["first é"]
    assert load_texts(["x", "y"]) == ["x", "y"]


def test_load_texts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_texts(tmp_path / "nope.txt")
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"abc\x00\xff")
    with pytest.raises(ValueError, match="weights.txt"):
        load_texts(binary)
    latin1 = tmp_path / "latin.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.txt"):
        load_texts(latin1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .txt"):
        load_texts(empty)
    with pytest.raises(ValueError, match="unsupported"):
        load_texts(42)


def test_load_texts_dataset_like():
    class FakeDataset:
        column_names = ["text", "id"]

        def __getitem__(self, key):
            return {"text": ["doc one", "doc two"], "id": [0, 1]}[key]

    assert load_texts(FakeDataset()) == ["doc one", "doc two"]


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets not installed")
def test_load_texts_real_dataset():
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a b", "c d"]})
    assert load_texts(ds) == ["a b", "c d"]


def test_split_texts():
    docs = [f"doc{i}" for i in range(10)]
    calib, evals = split_texts(docs)
    assert calib == docs[:7] and evals == docs[7:]
    assert split_texts(["a", "b"]) == (["a"], ["b"])
    calib, evals = split_texts(["p1\n\np2\n\np3\n\np4"])  # one document: split into paragraphs
    assert calib == ["p1", "p2", "p3"] and evals == ["p4"]
    assert split_texts(["l1\nl2"]) == (["l1"], ["l2"])
    with pytest.raises(ValueError):
        split_texts(["one line"])


# ------------------------------------------------------------------------------------------------- blocks
def test_tokenize_blocks_contiguous():
    tok = CharTokenizer()
    blocks = tokenize_blocks(tok, ["abcdefgh", "ijklmnop"], seqlen=4)
    stream = [ord(c) % 64 for c in "abcdefgh\n\nijklmnop"]  # 18 tokens -> 4 full windows
    assert blocks.dtype == torch.long and blocks.shape == (4, 4)
    assert blocks.flatten().tolist() == stream[:16]
    assert tok.calls == [dict(add_special_tokens=False, verbose=False)]  # tokenized once, no BOS
    assert tokenize_blocks(tok, "abcdefgh", seqlen=4, n_blocks=1).tolist() == [stream[:4]]
    assert tokenize_blocks(tok, ["abcdefgh", "ijklmnop"], seqlen=4, max_tokens=9).shape == (2, 4)


def test_tokenize_blocks_encode_only_and_tensor_output():
    assert tokenize_blocks(EncodeOnlyTokenizer(), "abcdefgh", seqlen=4).shape == (2, 4)

    class TensorTok:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": torch.tensor([[ord(c) % 64 for c in text]])}

    assert tokenize_blocks(TensorTok(), "abcdefgh", seqlen=4).tolist() == [
        [ord(c) % 64 for c in "abcd"],
        [ord(c) % 64 for c in "efgh"],
    ]


def test_tokenize_blocks_random_windows():
    text = "".join(chr(48 + (i % 61)) for i in range(64 * 20))  # windows differ
    tok = CharTokenizer()
    windows = tokenize_blocks(tok, text, seqlen=64)  # all 20 windows
    a = tokenize_blocks(tok, text, seqlen=64, n_blocks=8, sample="random", seed=3)
    b = tokenize_blocks(tok, text, seqlen=64, n_blocks=8, sample="random", seed=3)
    c = tokenize_blocks(tok, text, seqlen=64, n_blocks=8, sample="random", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every drawn block is one of the non-overlapping windows, and they are distinct
    rows = {tuple(r) for r in windows.tolist()}
    assert all(tuple(r) in rows for r in a.tolist())


def test_tokenize_blocks_distinct_random_windows():
    class CountingTok:  # ids 0..N-1, so every window is unique
        def encode(self, text, add_special_tokens=True):
            return list(range(len(text)))

    blocks = tokenize_blocks(CountingTok(), "x" * 1000, seqlen=10, n_blocks=50, sample="random", seed=0)
    assert len({r[0] for r in blocks.tolist()}) == 50
    assert all(r[0] % 10 == 0 for r in blocks.tolist())  # aligned, non-overlapping windows
    assert blocks.tolist() == [list(range(r[0], r[0] + 10)) for r in blocks.tolist()]


def test_tokenize_blocks_errors():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match=r"10 tokens.*16 are needed"):
        tokenize_blocks(tok, "abcdefghij", seqlen=4, n_blocks=4)
    with pytest.raises(ValueError, match=r"3 tokens.*4 are needed"):
        tokenize_blocks(tok, "abc", seqlen=4)
    with pytest.raises(ValueError, match="n_blocks"):
        tokenize_blocks(tok, "abcdefgh", seqlen=4, sample="random")
    with pytest.raises(ValueError, match="sample"):
        tokenize_blocks(tok, "abcdefgh", seqlen=4, sample="strided")
    with pytest.raises(ValueError, match="seqlen"):
        tokenize_blocks(tok, "abcdefgh", seqlen=0)


def test_calibration_and_evaluation_blocks_user_source(tmp_path):
    for i in range(10):
        (tmp_path / f"doc{i:02d}.txt").write_text(chr(65 + i) * 40, encoding="utf-8")
    tok = CharTokenizer()
    calib = calibration_blocks(tok, tmp_path, seqlen=8, n_blocks=5, seed=1)
    evalb = evaluation_blocks(tok, tmp_path, seqlen=8, max_tokens=64)
    assert calib.shape == (5, 8) and evalb.shape == (8, 8)
    calib_ids = set(calib.flatten().tolist()) - {ord("\n") % 64}
    eval_ids = set(evalb.flatten().tolist()) - {ord("\n") % 64}
    assert calib_ids <= {(65 + i) % 64 for i in range(7)}  # first 7 documents
    assert eval_ids <= {(65 + i) % 64 for i in range(7, 10)}  # last 3 documents
    assert torch.equal(calib, calibration_blocks(tok, tmp_path, seqlen=8, n_blocks=5, seed=1))


@needs_gensim
def test_builtin_blocks_with_stub_tokenizer():
    tok = CharTokenizer()
    calib = calibration_blocks(tok, "builtin", seqlen=128, n_blocks=4)
    evalb = evaluation_blocks(tok, "builtin", seqlen=128, max_tokens=1024)
    assert calib.shape == (4, 128) and evalb.shape == (8, 128)
    expected = [ord(c) % 64 for c in builtin_corpus()[1][0][:1024]]
    assert evalb.flatten().tolist() == expected


@needs_gensim
def test_news_corpus_is_a_second_builtin_split_by_article():
    from torchprox.llm.data import news_corpus

    calib, evals = news_corpus()
    assert (len(calib), len(evals)) == (210, 90)
    assert calib[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert news_corpus() == (calib, evals) and not set(calib) & set(evals)
    assert load_texts("news") == calib + evals


def test_every_documented_llm_name_is_importable_from_the_package():
    """docs/api/llm.md says everything it lists is importable from torchprox.llm (split_texts, wanda_scores and
    sparsegpt_solve were not); moved functions stay importable from their old modules too."""
    import re
    from pathlib import Path

    import torchprox.llm as llm
    from torchprox.llm import export

    page = (Path(__file__).parents[2] / "docs" / "api" / "llm.md").read_text()
    documented = {name.strip() for members in re.findall(r"members: \[([^\]]*)\]", page) for name in members.split(",")}
    assert documented and documented <= set(llm.__all__)
    assert all(getattr(llm, name) is not None for name in llm.__all__)
    assert data.strip_wiki_markup is llm.data.strip_wiki_markup and data.builtin_corpus is llm.builtin_corpus
    assert export.to_semi_structured is llm.to_semi_structured
    # one public nm_fraction (torchprox.prune's, a Tensor), not a second one returning a float
    assert "nm_fraction" not in llm.baselines.__all__ and "nm_fraction" not in llm.__all__


# ---------------------------------------------------------------------------------------------------- BOS
def word_tokenizer(bos: bool):
    """A word-level tokenizer (w0..w63 -> 0..63) built in code; with ``bos`` its post-processor adds w63 (the BOS,
    id 63) first, as Gemma's does; without, it declares the same bos_token but adds nothing (as SmolLM2's)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="w63 $A", special_tokens=[("w63", 63)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", bos_token="w63")


def words(start, count):
    return " ".join(f"w{i % 63}" for i in range(start, start + count))


def test_windows_start_with_bos_when_the_tokenizer_adds_one():
    tok = word_tokenizer(bos=True)
    assert tok("w1")["input_ids"] == [63, 1] and tok.bos_token_id == 63
    text = [words(0, 30), words(30, 20)]  # 50 text tokens (ids 0..49), none of them the BOS
    blocks = tokenize_blocks(tok, text, seqlen=8)
    assert blocks.dtype == torch.long and blocks.shape == (7, 8)  # 50 // 7 windows of BOS + 7 text tokens
    assert (blocks[:, 0] == 63).all() and not (blocks[:, 1:] == 63).any()
    assert blocks[:, 1:].flatten().tolist() == list(range(49))  # the text stream in order, nothing skipped
    # max_tokens caps the window tokens: 3 windows of 8
    assert torch.equal(tokenize_blocks(tok, text, seqlen=8, max_tokens=24), blocks[:3])
    # random windows are the same BOS windows, drawn
    drawn = tokenize_blocks(tok, text, seqlen=8, n_blocks=4, sample="random", seed=1)
    assert drawn.shape == (4, 8) and {tuple(r) for r in drawn.tolist()} <= {tuple(r) for r in blocks.tolist()}
    # bos=False: the plain windows
    assert torch.equal(tokenize_blocks(tok, text, seqlen=8, bos=False), torch.arange(48).view(6, 8))
    with pytest.raises(ValueError, match=r"50 tokens.*70 are needed.*BOS"):
        tokenize_blocks(tok, text, seqlen=8, n_blocks=10)
    with pytest.raises(ValueError, match="seqlen"):
        tokenize_blocks(tok, text, seqlen=1)


def test_calibration_and_evaluation_blocks_get_bos_too():
    tok = word_tokenizer(bos=True)
    docs = [words(4 * d, 20) for d in range(10)]  # 10 docs of 20 tokens (ids 4d .. 4d+19)
    calib = calibration_blocks(tok, docs, seqlen=16, n_blocks=4, seed=0)
    evalb = evaluation_blocks(tok, docs, seqlen=16, max_tokens=64)
    assert calib.shape == (4, 16) and evalb.shape == (4, 16)
    assert (calib[:, 0] == 63).all() and (evalb[:, 0] == 63).all()
    assert evalb[0, 1:6].tolist() == [28, 29, 30, 31, 32]  # doc 7 (words 28..) right after the BOS
    assert torch.equal(calib, calibration_blocks(tok, docs, seqlen=16, n_blocks=4, seed=0))


def test_a_tokenizer_without_bos_gives_the_plain_windows():
    tok = word_tokenizer(bos=False)
    assert tok("w1")["input_ids"] == [1] and tok.bos_token_id == 63  # declares a BOS, never adds it (SmolLM2)
    text = [words(0, 50)]
    plain = torch.arange(48).view(6, 8)
    assert torch.equal(tokenize_blocks(tok, text, seqlen=8), plain)
    assert torch.equal(tokenize_blocks(tok, text, seqlen=8, n_blocks=3, sample="random", seed=2),
                       plain[torch.randperm(6, generator=torch.Generator().manual_seed(2))[:3]])
    forced = tokenize_blocks(tok, text, seqlen=8, bos=True)  # forced: BOS + 7 text tokens
    assert forced.shape == (7, 8) and (forced[:, 0] == 63).all()
    with pytest.raises(ValueError, match="bos_token_id"):
        tokenize_blocks(CharTokenizer(), "abcdefgh", seqlen=4, bos=True)


def test_bos_is_detected_by_tokenizing_not_from_the_flag():
    class FlagSaysNo(CharTokenizer):  # Gemma's tokenizer: add_bos_token False, yet it adds BOS
        bos_token_id = 62
        add_bos_token = False

        def __call__(self, text, add_special_tokens=True, **kwargs):
            out = super().__call__(text, add_special_tokens=False, **kwargs)["input_ids"]
            return {"input_ids": [62] + out if add_special_tokens else out}

    class FlagSaysYes(CharTokenizer):
        bos_token_id = 62
        add_bos_token = True

        def __call__(self, text, add_special_tokens=True, **kwargs):
            return super().__call__(text, add_special_tokens=False, **kwargs)

    stream = [ord(c) % 64 for c in "abcdefgh"]
    assert tokenize_blocks(FlagSaysNo(), "abcdefgh", seqlen=4).tolist() == [[62] + stream[:3], [62] + stream[3:6]]
    assert tokenize_blocks(FlagSaysYes(), "abcdefgh", seqlen=4).tolist() == [stream[:4], stream[4:]]
