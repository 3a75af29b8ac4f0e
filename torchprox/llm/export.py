r"""Exporting an N:M-sparse causal LM: a dense checkpoint with verified N:M zeros, plus what it saves.

- [`sparse_manifest`][torchprox.llm.export.sparse_manifest] / [`save_sparse`][torchprox.llm.export.save_sparse]: ``save_pretrained`` (plain ``AutoModelForCausalLM
  .from_pretrained`` loads it, no torchprox needed) plus a ``torchprox.json`` manifest (pattern, per-layer
  N:M check, versions), written atomically.
- [`check_sparse`][torchprox.llm.export.check_sparse]: re-reads the saved safetensors and verifies every layer of the manifest is exactly
  N:M (the ``torchprox check`` command).
- [`to_semi_structured`][torchprox.llm.semi_structured.to_semi_structured] (a runtime CUDA conversion) lives in
  [`torchprox.llm.semi_structured`][torchprox.llm.semi_structured] and is re-exported here.
- [`memory_report`][torchprox.llm.export.memory_report]: dense bytes vs the bytes of the compressed N:M representation, per target layer and
  in total.
"""
from __future__ import annotations

import json
import logging
import math
import os
import reprlib
import shutil
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The file helpers save_sparse uses (and the CLI and models.py reach through this module): torchprox._files.
from .._files import fsync_tree, output_lock, remove_stale_temporaries, replace_dir
from .semi_structured import to_semi_structured  # re-exported: it lived here

__all__ = ["MANIFEST", "save_sparse", "sparse_manifest", "check_sparse", "memory_report", "check_replaceable"]

logger = logging.getLogger(__name__)

MANIFEST = "torchprox.json"
FORMAT = "torchprox-sparse/1"

# ------------------------------------------------------------------------------------------------ manifest


def layer_checks(model: nn.Module, n: int, m: int, targets=None) -> dict[str, dict[str, Any]]:
    """``{qualified name: {"shape", "dim", "nm_fraction", "ok"}}`` for every target linear of ``model``
    (the decoder linears by default, see [`torchprox.llm.target_linears`][torchprox.llm.blocks.target_linears]); ``ok`` iff exactly N:M along
    the layer's input dim.

    ``nm_fraction`` = #groups of m consecutive inputs with at most n nonzeros / #groups (``numel / m``).

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> from torchprox.llm import magnitude_prune
        >>> _ = magnitude_prune(model, 2, 4, targets=["q_proj"])
        >>> checks = layer_checks(model, 2, 4)
        >>> checks["model.layers.0.self_attn.q_proj"]
        {'shape': [32, 32], 'dim': 1, 'nm_fraction': 1.0, 'ok': True}
        >>> checks["model.layers.0.mlp.up_proj"]["ok"]
        False
    """
    from ..prune import nm_fraction
    from .blocks import linear_group_dim, target_linears

    out = {}
    for name, mod in target_linears(model, targets):
        dim = linear_group_dim(mod)
        frac = float(nm_fraction(mod.weight.detach(), n, m, dim))
        out[name] = {"shape": list(mod.weight.shape), "dim": dim, "nm_fraction": frac, "ok": frac == 1.0}
    return out


def _versions() -> dict[str, str]:
    from .. import __version__

    v = {"torchprox": __version__, "torch": torch.__version__}
    try:
        import transformers

        v["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return v


def sparse_manifest(model: nn.Module, n: int = 2, m: int = 4, targets=None, **fields: Any) -> dict[str, Any]:
    """The ``torchprox.json`` manifest of a sparse ``model``: ``format``, ``pattern`` (``"n:m"``), ``targets``,
    ``layers`` (`layer_checks`), ``versions``, plus any extra plain-data ``fields`` (method, report...).

    Examples:
        A tiny Llama built from a config, made 2:4 by magnitude, saved, re-checked from disk and measured:

        >>> import tempfile, torch, transformers
        >>> from torchprox.llm import sparsify, save_sparse, check_sparse, memory_report
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> _ = sparsify(model, None, 2, 4, method="magnitude", progress=False)
        >>> manifest = sparse_manifest(model, 2, 4, method="magnitude")
        >>> manifest["pattern"], len(manifest["layers"])          # 7 linears in one Llama block
        ('2:4', 7)
        >>> out = tempfile.mkdtemp()
        >>> save_sparse(model, None, out, manifest, overwrite=True)
        >>> check_sparse(out)["ok"]
        True
        >>> r = memory_report(model)
        >>> r["targets_compressed_bytes"] < r["targets_dense_bytes"]     # values + 2-bit indices
        True
    """
    manifest = {"format": FORMAT, "pattern": f"{n}:{m}", "targets": targets or "decoder-linears",
                "layers": layer_checks(model, n, m, targets), "versions": _versions()}
    manifest.update(fields)
    return manifest


def save_sparse(model, tokenizer, out, manifest: dict[str, Any], overwrite: bool = False) -> None:
    """``save_pretrained`` + manifest into ``out``, atomically (a temporary sibling renamed into place).

    The model must hold plain weights (no torchprox parametrization left): the checkpoint then has the
    usual keys and plain ``transformers.AutoModelForCausalLM.from_pretrained(out)`` loads it.

    Writing: the files go to ``.{out}.tmp-PID`` next to ``out`` and are fsynced; an existing ``out`` is moved
    aside to ``.{out}.old-PID``, the new directory renamed into place, then the old one deleted. If that
    rename fails the old one is moved back. While writing, ``.{out}.lock`` is held (`output_lock`), so a
    second writer to the same ``out`` fails at once. Leftovers of a killed writer are cleaned first
    (`remove_stale_temporaries`: a previous ``out`` left only in ``.{out}.old-PID`` is moved back).
    Missing parent directories are created.

    Raises:
        ValueError: the model still has torchprox N:M parametrizations (call
            [`torchprox.prune.apply_learned_masks`][torchprox.prune.learnable.apply_learned_masks] and [`torchprox.prune.remove_all`][torchprox.prune.remove.remove_all] first).
        FileExistsError: ``out`` exists and ``overwrite`` is False; ``out`` exists and is neither a torchprox
            output (a directory with a ``torchprox.json``) nor an empty directory: ``overwrite`` never replaces
            anything else; another process is writing ``out``.

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> import os, tempfile
        >>> from torchprox.llm import magnitude_prune
        >>> _ = magnitude_prune(model, 2, 4)
        >>> out = os.path.join(tempfile.mkdtemp(), "tiny-2of4")
        >>> save_sparse(model, None, out, sparse_manifest(model, 2, 4, method="magnitude"))
        >>> sorted(os.listdir(out))
        ['config.json', 'generation_config.json', 'model.safetensors', 'torchprox.json']
        >>> save_sparse(model, None, out, {})
        Traceback (most recent call last):
            ...
        FileExistsError: output directory ... already exists; pass --overwrite to replace it
        >>> save_sparse(model, None, os.path.dirname(out), {}, overwrite=True)   # not a torchprox output
        Traceback (most recent call last):
            ...
        FileExistsError: ... is not a torchprox output (no torchprox.json); ...
    """
    from ..prune import nm_parametrizations

    left = [q for q, *_ in nm_parametrizations(model)]
    if left:
        raise ValueError(f"{len(left)} module(s) of {type(model).__name__} still have a torchprox N:M "
                         f"parametrization (e.g. {left[0]!r}); call torchprox.prune.apply_learned_masks(model) and "
                         "torchprox.prune.remove_all(model) before saving, so the checkpoint has plain weights")
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        remove_stale_temporaries(out)
        check_replaceable(out, overwrite)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            fsync_tree(tmp)
            check_replaceable(out, overwrite)
            replace_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ replacing


def is_torchprox_output(path) -> bool:
    """Whether ``path`` is a directory written by [`save_sparse`][torchprox.llm.export.save_sparse] (it holds a ``torchprox.json``)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / MANIFEST).is_file()


def check_replaceable(out, overwrite: bool) -> None:
    """Raise FileExistsError unless ``out`` is absent, or ``overwrite`` and ``out`` is a torchprox output or an
    empty directory (nothing else is ever replaced).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     check_replaceable(f"{tmp}/new", overwrite=False)     # absent: fine
        ...     check_replaceable(tmp, overwrite=True)               # an empty directory: fine
        ...     check_replaceable(tmp, overwrite=False)
        Traceback (most recent call last):
            ...
        FileExistsError: output directory ... already exists; pass --overwrite to replace it
    """
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"output directory {out} already exists; pass --overwrite to replace it")
    empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    if not (empty or is_torchprox_output(out)):
        raise FileExistsError(f"{out} exists and is not a torchprox output (no {MANIFEST}); overwrite only "
                              "replaces a directory written by torchprox: choose another output or remove it yourself")


# ------------------------------------------------------------------------------------------------ checking


def _read_manifest(path: Path) -> dict[str, Any]:
    """``path/torchprox.json``, validated: a JSON object with ``format`` [`FORMAT`][torchprox.llm.export.FORMAT], a valid ``pattern`` and
    a non-empty ``layers`` object ``{name: {"dim": 0 or 1, ...}}``.

    Raises:
        FileNotFoundError: ``path`` is not a directory or has no manifest.
        ValueError: the manifest cannot be read, is not JSON, or a field is missing or invalid (one line
            naming the file and the field).
    """
    from ..prox import parse_pattern

    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory")
    file = path / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no {MANIFEST}: not a torchprox output directory")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{file} is not a readable JSON manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{file}: expected a JSON object, got a {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{file}: format {manifest.get('format')!r} is not {FORMAT!r}: not a torchprox output "
                         "(or one written by another version)")
    try:
        parse_pattern(manifest.get("pattern"))
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from None
    layers = manifest.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise ValueError(f"{file}: 'layers' must list the checked layers as a non-empty object "
                         f"{{name: {{'dim': 0 or 1}}}}, got {reprlib.repr(layers)}")
    for name, info in layers.items():
        dim = info.get("dim") if isinstance(info, dict) else None
        if type(dim) is not int or dim not in (0, 1):
            raise ValueError(f"{file}: layer {name!r} needs 'dim' 0 or 1 (the weight's input dim), got "
                             f"{reprlib.repr(info)}")
    return manifest


def _safetensors_files(path: Path) -> list[Path]:
    """The ``*.safetensors`` files of ``path``; every shard a ``*.safetensors.index.json`` lists must exist."""
    for index in sorted(path.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{index} is not a valid safetensors index ({type(err).__name__}: {err})") from None
        missing = sorted(str(s) for s in shards if not (path / str(s)).is_file())
        if missing:
            raise FileNotFoundError(f"{path}: weights file {missing[0]} listed in {index.name} is missing")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} holds no *.safetensors weights")
    return files


def _safetensors_header(file: Path) -> dict[str, dict]:
    """``{key: {"dtype", "shape", "data_offsets"}}`` from a safetensors header (8-byte LE length + JSON).

    ValueError (naming the file) if it is not a complete safetensors file: shorter than its header, a header
    that is not a JSON object of tensors, or tensor data past the end of the file (truncated)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{file} is truncated or not a safetensors file: {size} bytes")
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            raise ValueError(f"{file} is truncated or not a safetensors file: its header needs {8 + length} bytes, "
                             f"the file has {size}")
        try:
            header = json.loads(f.read(length))
            header.pop("__metadata__", None)
            end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise ValueError(f"{file} has an invalid safetensors header ({type(err).__name__}: {err})") from None
    if 8 + length + end > size:
        raise ValueError(f"{file} is truncated: its tensors end at byte {8 + length + end}, the file has {size}")
    return header


def _layer_fraction(tensor: torch.Tensor, n: int, m: int, dim: int) -> tuple[float | None, str | None]:
    """(fraction of N:M groups, None), or (None, why) for a weight that cannot be grouped by m along ``dim``."""
    from ..prune import nm_fraction

    if tensor.dim() != 2:
        return None, f"weight of shape {tuple(tensor.shape)} is not a matrix"
    if tensor.shape[dim] % m:
        return None, f"size {tensor.shape[dim]} along dim {dim} is not a multiple of m={m}"
    return float(nm_fraction(tensor, n, m, dim=dim)), None


def check_sparse(path) -> dict[str, Any]:
    r"""Verify that every layer listed in ``path/torchprox.json`` is exactly N:M in the saved weights.

    Reads the safetensors files directly (no model is built, shards of a sharded checkpoint included): for
    each layer ``name`` of the manifest, ``name.weight`` must have at most n nonzeros in every m consecutive
    entries along the manifest's ``dim`` for that layer. A layer missing from the weights fails.

    Returns:
        A dict `{"pattern": "n:m", "layers": {name: bool}, "nm_fraction": {name: float or None},
            "problems": {name: why}, "ok": bool}`: a layer whose weight is missing or cannot be grouped by
            m along its ``dim`` is not N:M, with fraction None and the reason in ``problems``.

    Raises:
        FileNotFoundError: ``path`` is not a directory, has no manifest, no ``*.safetensors``, or a shard its
            index lists is missing.
        ValueError: the manifest is not valid (not JSON; ``format``, ``pattern``, ``layers`` or a layer's
            ``dim`` missing or wrong; no layers at all), or a weights file is truncated or corrupt. Every
            message is one line naming the file.

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> import tempfile
        >>> from torchprox.llm import magnitude_prune
        >>> _ = magnitude_prune(model, 2, 4, targets=["mlp.down_proj"])
        >>> out = tempfile.mkdtemp()
        >>> save_sparse(model, None, out, sparse_manifest(model, 2, 4), overwrite=True)
        >>> result = check_sparse(out)
        >>> result["ok"], result["layers"]["model.layers.0.mlp.down_proj"], result["layers"]["model.layers.0.mlp.up_proj"]
        (False, True, False)
    """
    from safetensors import SafetensorError, safe_open

    from ..prox import parse_pattern

    path = Path(path)
    manifest = _read_manifest(path)
    n, m = parse_pattern(manifest["pattern"])
    where = {key: f for f in _safetensors_files(path) for key in _safetensors_header(f)}
    layers: dict[str, bool] = {}
    fractions: dict[str, float | None] = {}
    problems: dict[str, str] = {}
    for name, info in manifest["layers"].items():
        key = f"{name}.weight"
        if key not in where:
            layers[name], fractions[name], problems[name] = False, None, f"no {key} in the safetensors files"
            continue
        try:
            with safe_open(str(where[key]), "pt") as st:
                tensor = st.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{where[key]}: cannot read {key} ({' '.join(str(err).split())})") from None
        frac, why = _layer_fraction(tensor, n, m, info["dim"])
        layers[name], fractions[name] = frac == 1.0, frac
        if why:
            problems[name] = why
    return {"pattern": manifest["pattern"], "layers": layers, "nm_fraction": fractions, "problems": problems,
            "ok": all(layers.values())}


# ------------------------------------------------------------------------------------------------ memory

_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def compressed_bytes(numel: int, element_size: int, n: int = 2, m: int = 4) -> dict[str, int]:
    r"""Bytes of an N:M matrix of ``numel`` entries stored compressed, as semi-structured kernels store it.

    Kept values: ``numel · n/m`` entries of ``element_size`` bytes. Metadata: the position of every kept
    value inside its group of m, ``⌈log2 m⌉`` bits each (2 bits for 2:4; cuSPARSELt and CUTLASS pack
    exactly these 4 bits per group of 4):

        values   = numel · n/m · element_size
        metadata = ⌈numel · n/m · ⌈log2 m⌉ / 8⌉
        2:4 fp16: (0.5 · 2 + 0.5 · 2/8) / 2 = 1.125 / 2 bytes per weight = 56.25 % of dense (1.78× smaller)

    Examples:
        >>> compressed_bytes(4096 * 4096, 2)
        {'dense': 33554432, 'values': 16777216, 'metadata': 2097152, 'compressed': 18874368}
    """
    kept = numel * n // m
    values = kept * element_size
    metadata = math.ceil(kept * math.ceil(math.log2(m)) / 8)
    return {"dense": numel * element_size, "values": values, "metadata": metadata, "compressed": values + metadata}


def _row(shape, dtype: str, element_size: int, n: int, m: int, is_nm: bool | None) -> dict[str, Any]:
    numel = math.prod(shape)
    b = compressed_bytes(numel, element_size, n, m)
    return {"shape": list(shape), "dtype": dtype, "is_nm": is_nm, "dense_bytes": b["dense"],
            "values_bytes": b["values"], "metadata_bytes": b["metadata"], "compressed_bytes": b["compressed"]}


def memory_report(model_or_dir, n: int | None = None, m: int | None = None, targets=None) -> dict[str, Any]:
    r"""Dense bytes vs the bytes of the compressed N:M representation (see `compressed_bytes`).

    ``model_or_dir`` is a model (its target linears, by default every decoder linear, see
    [`torchprox.llm.target_linears`][torchprox.llm.blocks.target_linears]; pattern ``n:m``, default 2:4) or a directory written by
    [`save_sparse`][torchprox.llm.export.save_sparse] (its manifest's layers and pattern; sizes and dtypes are read from the safetensors
    headers, N:M-ness with [`check_sparse`][torchprox.llm.export.check_sparse]). Only layers that are exactly N:M (``is_nm``) can be stored
    compressed; the totals count the others as dense.

    Returns:
        A dict `{"pattern", "layers": {name: {"shape", "dtype", "is_nm", "dense_bytes", "values_bytes",
            "metadata_bytes", "compressed_bytes"}}, "targets_dense_bytes", "targets_compressed_bytes",
            "model_dense_bytes", "model_compressed_bytes", "ratio"}` where ``model_*`` counts every stored
            tensor (a model: its ``state_dict`` tensors, shared ones once; a directory: every tensor of the
            checkpoint) and ``ratio`` = model_compressed / model_dense.

    Examples:
        >>> import torch, transformers
        >>> from torchprox.llm import magnitude_prune
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> _ = magnitude_prune(model, 2, 4, targets=["q_proj"])
        >>> r = memory_report(model, targets=["q_proj"])         # one 2:4 (32, 32) fp32 weight: 4096 dense bytes
        >>> r["layers"]["model.layers.0.self_attn.q_proj"]["is_nm"], r["targets_dense_bytes"]
        (True, 4096)
        >>> r["targets_compressed_bytes"], r["ratio"] < 1          # 2048 bytes of values + 128 of 2-bit indices
        (2176, True)
    """
    if isinstance(model_or_dir, nn.Module):
        n, m = (2 if n is None else n), (4 if m is None else m)
        layers = _model_layers(model_or_dir, n, m, targets)
        seen, total = set(), 0
        for t in model_or_dir.state_dict(keep_vars=True).values():  # what save_pretrained stores
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    else:
        path = Path(model_or_dir)
        manifest = _read_manifest(path)
        from ..prox import parse_pattern

        pn, pm = parse_pattern(manifest["pattern"])
        if (n is not None and n != pn) or (m is not None and m != pm):
            raise ValueError(f"{path}: the manifest says {pn}:{pm}, not {n}:{m}; pass n=None, m=None")
        n, m = pn, pm
        headers = {k: v for f in _safetensors_files(path) for k, v in _safetensors_header(f).items()}
        check = check_sparse(path)["layers"]
        layers = {}
        for name in manifest["layers"]:
            info = headers.get(f"{name}.weight")
            if info is None:
                raise ValueError(f"{path}: layer {name!r} of the manifest has no weight {name}.weight in the "
                                 "safetensors files")
            layers[name] = _row(info["shape"], info["dtype"], _SAFETENSORS_BYTES[info["dtype"]], n, m, check[name])
        total = sum(info["data_offsets"][1] - info["data_offsets"][0] for info in headers.values())
    dense = sum(r["dense_bytes"] for r in layers.values())
    comp = sum(r["compressed_bytes"] if r["is_nm"] else r["dense_bytes"] for r in layers.values())
    model_comp = total - dense + comp
    return {"pattern": f"{n}:{m}", "layers": layers, "targets_dense_bytes": dense, "targets_compressed_bytes": comp,
            "model_dense_bytes": total, "model_compressed_bytes": model_comp,
            "ratio": model_comp / total if total else 1.0}


def _model_layers(model: nn.Module, n: int, m: int, targets) -> dict[str, dict[str, Any]]:
    from ..prune import is_nm
    from .blocks import linear_group_dim, target_linears

    out = {}
    for name, mod in target_linears(model, targets):
        w = mod.weight.detach()
        dtype = str(w.dtype).removeprefix("torch.")
        out[name] = _row(tuple(w.shape), dtype, w.element_size(), n, m, is_nm(w, n, m, dim=linear_group_dim(mod)))
    return out
