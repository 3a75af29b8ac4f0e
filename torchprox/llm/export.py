r"""Exporting an N:M-sparse causal LM: a dense checkpoint with verified N:M zeros, plus what it saves.

- [`sparse_manifest`][torchprox.llm.export.sparse_manifest] / [`save_sparse`][torchprox.llm.export.save_sparse]: ``save_pretrained`` (plain ``AutoModelForCausalLM
  .from_pretrained`` loads it, no torchprox needed) plus a ``torchprox.json`` manifest (pattern, per-target
  N:M check, coverage, and which saved tensor holds which target along which dim), written atomically.
- [`check_sparse`][torchprox.llm.export.check_sparse]: re-reads the saved safetensors and verifies every tensor of the manifest is exactly
  N:M along its saved dim (the ``torchprox check`` command); a fused 3-D expert tensor is checked per expert.
- [`to_semi_structured`][torchprox.llm.semi_structured.to_semi_structured] (a runtime CUDA conversion) lives in
  [`torchprox.llm.semi_structured`][torchprox.llm.semi_structured] and is re-exported here.
- [`memory_report`][torchprox.llm.export.memory_report]: dense bytes vs the bytes of the compressed N:M representation, per target layer and
  in total.

Mixture-of-Experts models: transformers 5.x holds the experts of a projection as one 3-D tensor, but
``save_pretrained`` may write them back in the architecture's original checkpoint format
(``transformers.core_model_loading.revert_weight_conversion``): Mixtral writes ``...experts.{e}.w1/w2/w3.weight``,
Qwen2/3-MoE, OLMoE and DeepSeek-V3 ``...experts.{e}.gate_proj/up_proj/down_proj.weight`` (2-D, one per expert),
GPT-OSS and Llama 4 the fused (experts, in, out) tensors as they are. The manifest therefore records the saved keys
(`saved_tensors`), and [`save_sparse`][torchprox.llm.export.save_sparse] refuses a conversion that would break the N:M groups.
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
from torch.nn.utils import parametrize

# The file helpers save_sparse uses (and the CLI and models.py reach through this module): torchprox._files.
from .._files import fsync_tree, output_lock, remove_stale_temporaries, replace_dir
from .semi_structured import to_semi_structured  # re-exported: it lived here

__all__ = ["MANIFEST", "save_sparse", "sparse_manifest", "check_sparse", "memory_report", "check_replaceable"]

logger = logging.getLogger(__name__)

MANIFEST = "torchprox.json"
#: The manifest format written: ``layers`` (per target, in memory), ``tensors`` (per saved tensor) and ``coverage``.
FORMAT = "torchprox-sparse/2"
#: Older manifests still read by `check_sparse` and `memory_report`: ``layers`` only, each saved as ``<name>.weight``.
FORMAT_V1 = "torchprox-sparse/1"

# ------------------------------------------------------------------------------------------------ manifest


def layer_checks(model: nn.Module, n: int, m: int, targets=None) -> dict[str, dict[str, Any]]:
    """``{target key: {"shape", "dim", "nm_fraction", "ok"}}`` for every target of ``model`` (every matrix weight
    of the decoder blocks by default, fused 3-D expert tensors included, see
    [`torchprox.llm.target_tensors`][torchprox.llm.targets.target_tensors]); ``ok`` iff exactly N:M along the
    target's input dim ``dim``.

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
    from .targets import target_tensors

    out = {}
    for t in target_tensors(model, targets):
        frac = float(nm_fraction(t.weight.detach(), n, m, t.dim))
        out[t.key] = {"shape": list(t.weight.shape), "dim": t.dim, "nm_fraction": frac, "ok": frac == 1.0}
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
    """The ``torchprox.json`` manifest of a sparse ``model``: ``format`` (`FORMAT`), ``pattern`` (``"n:m"``),
    ``targets``, ``layers`` (`layer_checks`, keyed by target key), ``coverage``
    ([`coverage_report`][torchprox.llm.targets.coverage_report]: the share of the decoder blocks' matrix weights
    that are N:M, and what stayed dense and why), ``versions``, plus any extra plain-data ``fields`` (method,
    report...). [`save_sparse`][torchprox.llm.export.save_sparse] adds ``tensors`` (`saved_tensors`: what the
    saved files hold) when it writes it.

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
        >>> manifest["coverage"]["coverage"], manifest["coverage"]["dense"]
        (1.0, {})
        >>> out = tempfile.mkdtemp()
        >>> save_sparse(model, None, out, manifest, overwrite=True)
        >>> check_sparse(out)["ok"]
        True
        >>> r = memory_report(model)
        >>> r["targets_compressed_bytes"] < r["targets_dense_bytes"]     # values + 2-bit indices
        True
    """
    from .targets import coverage_report

    manifest = {"format": FORMAT, "pattern": f"{n}:{m}", "targets": targets or "decoder-matrices",
                "layers": layer_checks(model, n, m, targets), "coverage": coverage_report(model, n, m, targets),
                "versions": _versions()}
    manifest.update(fields)
    return manifest


def save_sparse(model, tokenizer, out, manifest: dict[str, Any], overwrite: bool = False) -> None:
    """``save_pretrained`` + manifest into ``out``, atomically (a temporary sibling renamed into place).

    The model must hold plain weights (no parametrization left, on a linear or a fused expert tensor): the
    checkpoint then has the usual keys and plain ``transformers.AutoModelForCausalLM.from_pretrained(out)`` loads
    it. (``save_pretrained`` of a parametrized tensor writes its ``original`` under another key: the reloaded
    model would silently hold random weights there.)

    A manifest with ``layers`` (from [`sparse_manifest`][torchprox.llm.export.sparse_manifest]) is written in
    format `FORMAT` with ``tensors`` = `saved_tensors` for those targets: the keys the checkpoint conversion of
    transformers gives them, each with its group dim in the saved tensor. Everything is checked before anything
    is written.

    Writing: the files go to ``.{out}.tmp-PID`` next to ``out`` and are fsynced; an existing ``out`` is moved
    aside to ``.{out}.old-PID``, the new directory renamed into place, then the old one deleted. If that
    rename fails the old one is moved back. While writing, ``.{out}.lock`` is held (`output_lock`), so a
    second writer to the same ``out`` fails at once. Leftovers of a killed writer are cleaned first
    (`remove_stale_temporaries`: a previous ``out`` left only in ``.{out}.old-PID`` is moved back).
    Missing parent directories are created.

    Raises:
        ValueError: the model still has torchprox N:M parametrizations (call
            [`torchprox.prune.apply_learned_masks`][torchprox.prune.learnable.apply_learned_masks] and [`torchprox.prune.remove_all`][torchprox.prune.remove.remove_all] first) or
            any other parametrization; the manifest's ``layers`` are not this model's targets; the checkpoint
            conversion of transformers would break the N:M groups of a target (`saved_tensors`).
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
    _check_plain_weights(model)
    if isinstance(manifest, dict) and isinstance(manifest.get("layers"), dict) and manifest["layers"]:
        manifest = {**manifest, "format": FORMAT, "tensors": _manifest_tensors(model, manifest)}
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


def _check_plain_weights(model: nn.Module) -> None:
    """ValueError naming the first parametrized tensor of ``model`` (torchprox's N:M ones first)."""
    from ..prune import nm_parametrizations

    left = [q for q, *_ in nm_parametrizations(model)]
    if left:
        raise ValueError(f"{len(left)} module(s) of {type(model).__name__} still have a torchprox N:M "
                         f"parametrization (e.g. {left[0]!r}); call torchprox.prune.apply_learned_masks(model) and "
                         "torchprox.prune.remove_all(model) before saving, so the checkpoint has plain weights")
    for qualname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            name = next(iter(module.parametrizations.keys()))
            raise ValueError(f"{qualname or type(model).__name__}.{name} is parametrized "
                             f"({type(module.parametrizations[name][0]).__name__}); save_pretrained would write its "
                             "'original' under another key and the reloaded model would hold random weights there: "
                             f"call torch.nn.utils.parametrize.remove_parametrizations(module, {name!r}) first")


def _manifest_tensors(model: nn.Module, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`saved_tensors` for exactly the targets the manifest's ``layers`` name (ValueError if ``model`` lacks one)."""
    from ..prox import parse_pattern
    from .targets import target_tensors

    keys = list(manifest["layers"])
    _, m = parse_pattern(manifest.get("pattern", "2:4"))
    try:
        chosen = [t for t in target_tensors(model, keys) if t.key in manifest["layers"]]
    except ValueError as err:
        raise ValueError(f"the manifest's layers do not match {type(model).__name__}: {err}") from None
    missing = sorted(set(keys) - {t.key for t in chosen})
    if missing:
        raise ValueError(f"the manifest lists {len(missing)} layer(s) that {type(model).__name__} has no target "
                         f"for (e.g. {missing[0]!r}); build it with sparse_manifest(model, ...) of this model")
    return saved_tensors(model, chosen, m)


# ------------------------------------------------------------------------------------------------ saved layout

_PROBE_BLOCK = 1 << 22  # entries per block when a saved probe is checked in full


def saved_tensors(model: nn.Module, targets, m: int) -> dict[str, dict[str, Any]]:
    r"""Which tensors ``save_pretrained`` writes for ``targets``, each with the dim its N:M groups run along.

    ``save_pretrained`` passes the state dict through transformers' ``revert_weight_conversion`` (the
    architecture's original checkpoint format: e.g. Mixtral's fused (E, 2I, H) ``gate_up_proj`` becomes 2·E
    matrices ``...experts.{e}.w1/w3.weight``). This runs that same function, one decoder block at a time, on
    cheap *probes* instead of the weights: target k of a block becomes the int32 tensor
    ``(k << b) + j`` at index j along its input dim (``b`` bits hold the largest input size), ``expand``\ ed to
    the weight's shape (no allocation unless the conversion copies); every other tensor of the block is -1.
    Each output then tells where its entries came from. An output is accepted when exactly one dim d carries
    consecutive input indices and every run of ``m`` consecutive entries along d is one aligned group of one
    target (``(k, j), (k, j + 1), ..., (k, j + m - 1)`` with ``j % m == 0``); every entry of every target must
    be written exactly once. Then the saved tensor is N:M along d iff the target is N:M along its input dim.

    Args:
        targets: [`Target`][torchprox.llm.targets.Target]\ s, e.g. from
            [`target_tensors`][torchprox.llm.targets.target_tensors].
    Returns:
        ``{saved key: {"dim": d, "source": target key}}`` (``source`` is a list of keys when a conversion
        concatenates several targets into one saved tensor). Without a conversion this is
        ``{t.tensor_name: {"dim": t.dim, "source": t.key}}``.
    Raises:
        ValueError: a conversion breaks the groups (permutes, splits or mixes the input dim), mixes a target with
            a non-target tensor, or drops or duplicates entries: saving would lose the N:M structure.

    Examples:
        >>> import transformers
        >>> from torchprox.llm import target_tensors
        >>> cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4)
        >>> model = transformers.MixtralForCausalLM(cfg)
        >>> saved = saved_tensors(model, target_tensors(model, ["experts.gate_up_proj"]), 4)
        >>> len(saved), saved["model.layers.0.block_sparse_moe.experts.3.w3.weight"]   # 4 experts x (w1, w3)
        (8, {'dim': 1, 'source': 'model.layers.0.mlp.experts.gate_up_proj'})
    """
    from .blocks import _layers_and_prefix

    targets = list(targets)
    _, prefix = _layers_and_prefix(model)
    by_name = {t.tensor_name: t for t in targets}
    ignore = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    blocks: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name in ignore or not name.startswith(prefix + ".") or not isinstance(tensor, torch.Tensor):
            continue
        blocks.setdefault(name[len(prefix) + 1:].split(".", 1)[0], {})[name] = tensor
    missing = sorted(set(by_name) - {k for block in blocks.values() for k in block})
    if missing:
        raise ValueError(f"target {missing[0]!r} is not in the state dict of {type(model).__name__} under {prefix!r}")
    out: dict[str, dict[str, Any]] = {}
    for block in blocks.values():
        local = [by_name[k] for k in block if k in by_name]
        if local:
            out.update(_block_saved_tensors(model, block, local, m))
    return out


def _revert(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What ``save_pretrained`` does to the keys and tensors of ``state`` (identity without transformers'
    checkpoint conversions, or for a PEFT-wrapped model, which it saves unconverted)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # pragma: no cover - transformers < 5
        return state
    if getattr(model, "_hf_peft_config_loaded", False) or not hasattr(model, "config"):
        return state
    return revert_weight_conversion(model, state)


def _block_saved_tensors(model, block: dict[str, torch.Tensor], local: list, m: int) -> dict[str, dict[str, Any]]:
    """`saved_tensors` for one decoder block: ``block`` its state dict, ``local`` its targets (probe k = index)."""
    bits = max(t.weight.shape[t.dim] for t in local).bit_length()
    if len(local) >= 1 << (31 - bits):  # pragma: no cover - thousands of targets in one block
        raise ValueError(f"{len(local)} targets of input size < 2**{bits} in one block do not fit an int32 probe")
    index = {t.tensor_name: k for k, t in enumerate(local)}
    probes = {}
    for name, tensor in block.items():
        if name in index:
            t = local[index[name]]
            view = [1] * tensor.dim()
            view[t.dim] = tensor.shape[t.dim]
            line = (index[name] << bits) + torch.arange(tensor.shape[t.dim], dtype=torch.int32)
            probes[name] = line.view(view).expand(tensor.shape)
        else:
            probes[name] = torch.full((), -1, dtype=torch.int32).expand(tensor.shape)
    saved = _revert(model, probes)
    written = torch.zeros(len(local), dtype=torch.int64)
    out: dict[str, dict[str, Any]] = {}
    for key, probe in saved.items():
        if not isinstance(probe, torch.Tensor) or probe.numel() == 0:
            continue
        if int(probe[(0,) * probe.dim()]) < 0:
            if int(probe.max()) >= 0:
                raise ValueError(_broken(model, key, probe, "mixes a target with a tensor that is not one"))
            continue
        dim = _saved_group_dim(model, key, probe, bits)
        counts = _group_sources(model, key, probe, dim, m, bits, len(local))
        written += counts
        sources = [local[k].key for k in counts.nonzero().flatten().tolist()]
        out[key] = {"dim": dim, "source": sources[0] if len(sources) == 1 else sources}
    for t, count in zip(local, written.tolist()):
        if count != t.weight.numel():
            raise ValueError(f"saving {type(model).__name__}: transformers' checkpoint conversion "
                             f"(revert_weight_conversion) writes {count} entries of {t.key} {tuple(t.weight.shape)}, "
                             f"not its {t.weight.numel()}: refusing to write a checkpoint whose N:M weights cannot "
                             "be accounted for")
    return out


def _broken(model, key: str, probe: torch.Tensor, how: str) -> str:
    return (f"saving {type(model).__name__}: transformers' checkpoint conversion (revert_weight_conversion) writes "
            f"{key} {tuple(probe.shape)} in a layout that {how}: its N:M groups would be lost; refusing to save "
            "(save_pretrained(..., save_original_format=False) keeps the in-memory layout)")


def _saved_group_dim(model, key: str, probe: torch.Tensor, bits: int) -> int:
    """The one dim of a saved probe along which its entries come from consecutive inputs of one target."""
    origin = [0] * probe.dim()
    dims = []
    for d in range(probe.dim()):
        if probe.shape[d] > 1:
            a, b = origin.copy(), origin.copy()
            b[d] = 1
            if int(probe[tuple(b)]) == int(probe[tuple(a)]) + 1:
                dims.append(d)
    if len(dims) != 1:
        raise ValueError(_broken(model, key, probe, "does not keep the input dim of its target together"))
    return dims[0]


def _group_sources(model, key: str, probe: torch.Tensor, dim: int, m: int, bits: int, count: int) -> torch.Tensor:
    """Entries written per target (int64, length ``count``) after checking every run of m along ``dim``."""
    x = probe.movedim(dim, -1)
    size = x.shape[-1]
    if size % m:
        raise ValueError(_broken(model, key, probe, f"has {size} entries along dim {dim}, not a multiple of m={m}"))
    repeat = 1
    if all(st == 0 or sz == 1 for st, sz in zip(x.stride()[:-1], x.shape[:-1])):  # an unconverted probe
        repeat, x = math.prod(x.shape[:-1]), x[(0,) * (x.dim() - 1)]
    mats = [x.reshape(-1, size)] if x.dim() <= 2 or x.is_contiguous() else [x[i].reshape(-1, size) for i in
                                                                             range(x.shape[0])]
    step = max(1, _PROBE_BLOCK // size)
    offsets = torch.arange(m, dtype=torch.int32)
    counts = torch.zeros(count, dtype=torch.int64)
    for rows in mats:
        for start in range(0, rows.shape[0], step):
            g = rows[start:start + step].reshape(-1, size // m, m)
            src, idx = g >> bits, g & ((1 << bits) - 1)
            first = src[..., 0]
            bad = bool((g < 0).any() | (src != first.unsqueeze(-1)).any() | (first >= count).any()
                       | (idx != idx[..., :1] + offsets).any() | (idx[..., 0] % m != 0).any())
            if bad:
                raise ValueError(_broken(model, key, probe, f"breaks the aligned groups of {m} consecutive inputs"))
            counts += torch.bincount(first.flatten().long(), minlength=count) * (m * repeat)
    return counts


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
    """``path/torchprox.json``, validated: a JSON object with ``format`` `FORMAT` or `FORMAT_V1`, a valid
    ``pattern``, a non-empty ``layers`` object ``{name: {"dim": int >= 0, ...}}`` (0 or 1 in `FORMAT_V1`) and, in
    `FORMAT`, a non-empty ``tensors`` object ``{saved key: {"dim": int >= 0, "source": layer name(s)}}``.

    Returns the manifest with ``tensors`` filled in for a `FORMAT_V1` one (``{name}.weight`` per layer).

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
    if manifest.get("format") not in (FORMAT, FORMAT_V1):
        raise ValueError(f"{file}: format {manifest.get('format')!r} is not {FORMAT!r} or {FORMAT_V1!r}: not a "
                         "torchprox output (or one written by another version)")
    try:
        parse_pattern(manifest.get("pattern"))
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from None
    v1 = manifest["format"] == FORMAT_V1
    dims = "0 or 1" if v1 else "an integer >= 0"
    layers = manifest.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise ValueError(f"{file}: 'layers' must list the checked layers as a non-empty object "
                         f"{{name: {{'dim': {dims}}}}}, got {reprlib.repr(layers)}")
    for name, info in layers.items():
        dim = info.get("dim") if isinstance(info, dict) else None
        if type(dim) is not int or dim < 0 or (v1 and dim > 1):
            raise ValueError(f"{file}: layer {name!r} needs 'dim' {dims} (the weight's input dim), got "
                             f"{reprlib.repr(info)}")
    if v1:
        return {**manifest, "tensors": {f"{name}.weight": {"dim": info["dim"], "source": name}
                                        for name, info in layers.items()}}
    tensors = manifest.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise ValueError(f"{file}: 'tensors' must list the saved tensors as a non-empty object "
                         f"{{key: {{'dim': int, 'source': layer}}}}, got {reprlib.repr(tensors)}")
    for key, info in tensors.items():
        dim = info.get("dim") if isinstance(info, dict) else None
        src = _sources(info) if isinstance(info, dict) else []
        if type(dim) is not int or dim < 0 or not src or not all(s in layers for s in src):
            raise ValueError(f"{file}: tensor {key!r} needs 'dim' (an integer >= 0, its group dim) and 'source' (a "
                             f"layer of 'layers' or a list of them), got {reprlib.repr(info)}")
    return manifest


def _sources(info: dict[str, Any]) -> list[str]:
    """The layer names a manifest ``tensors`` entry comes from (``source``: a name or a list of names)."""
    src = info.get("source")
    src = [src] if isinstance(src, str) else src
    return src if isinstance(src, list) and all(isinstance(x, str) for x in src) else []


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


def _tensor_check(tensor: torch.Tensor, n: int, m: int, dim: int) -> dict[str, Any]:
    """``{"nm_fraction": float or None, "ok": bool}`` of a saved tensor grouped by m along ``dim``, plus
    ``"problem"`` when it cannot be grouped and, for a 3-D (experts, ., .) tensor, ``"experts_not_nm"``: the
    experts (index along dim 0) that are not exactly N:M."""
    from ..prox import group_view

    if tensor.dim() < 2 or dim >= tensor.dim():
        return {"nm_fraction": None, "ok": False,
                "problem": f"tensor of shape {tuple(tensor.shape)} has no group dim {dim} of a matrix"}
    if tensor.shape[dim] % m:
        return {"nm_fraction": None, "ok": False,
                "problem": f"size {tensor.shape[dim]} along dim {dim} is not a multiple of m={m}"}
    groups, _ = group_view(tensor, m, dim, name=f"tensor of shape {tuple(tensor.shape)}")
    good = (groups != 0).sum(-1) <= n
    out = {"nm_fraction": float(good.float().mean()), "ok": bool(good.all())}
    if tensor.dim() == 3 and dim != 0:  # experts along dim 0: groups run inside each expert's matrix
        out["experts_not_nm"] = (~good.view(tensor.shape[0], -1).all(-1)).nonzero().flatten().tolist()
    return out


def check_sparse(path) -> dict[str, Any]:
    r"""Verify that every tensor listed in ``path/torchprox.json`` is exactly N:M in the saved weights.

    Reads the safetensors files directly (no model is built, shards of a sharded checkpoint included): each
    saved tensor of the manifest's ``tensors`` (`saved_tensors`; for a `FORMAT_V1` manifest, ``name.weight``
    per layer) must have at most n nonzeros in every m consecutive entries along its ``dim``; a fused 3-D
    expert tensor is checked per expert (its groups run inside each expert's matrix, and the experts that fail
    are listed). A layer (target) is N:M iff all its saved tensors are and it has at least one. A missing
    tensor fails.

    Returns:
        A dict `{"pattern": "n:m", "layers": {name: bool}, "nm_fraction": {name: float or None},
            "problems": {name: why}, "tensors": {saved key: {"dim", "source", "ok", "nm_fraction", and
            "problem" or "experts_not_nm" where they apply}}, "coverage": the manifest's coverage (None in
            old manifests), "ok": bool}`: per layer, the fraction over all its saved groups; a layer with a
            missing or ungroupable tensor has fraction None and the reason in ``problems``.

    Raises:
        FileNotFoundError: ``path`` is not a directory, has no manifest, no ``*.safetensors``, or a shard its
            index lists is missing.
        ValueError: the manifest is not valid (not JSON; ``format``, ``pattern``, ``layers``, ``tensors`` or a
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
        >>> result["tensors"]["model.layers.0.mlp.down_proj.weight"]
        {'dim': 1, 'source': 'model.layers.0.mlp.down_proj', 'nm_fraction': 1.0, 'ok': True}
    """
    from safetensors import SafetensorError, safe_open

    from ..prox import parse_pattern

    path = Path(path)
    manifest = _read_manifest(path)
    n, m = parse_pattern(manifest["pattern"])
    where = {key: f for f in _safetensors_files(path) for key in _safetensors_header(f)}
    tensors: dict[str, dict[str, Any]] = {}
    for key, info in manifest["tensors"].items():
        entry = {"dim": info["dim"], "source": info["source"]}
        if key not in where:
            tensors[key] = {**entry, "nm_fraction": None, "ok": False, "problem": f"no {key} in the safetensors files"}
            continue
        try:
            with safe_open(str(where[key]), "pt") as st:
                tensor = st.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{where[key]}: cannot read {key} ({' '.join(str(err).split())})") from None
        tensors[key] = {**entry, **_tensor_check(tensor, n, m, info["dim"])}
        tensors[key]["numel"] = tensor.numel()
    layers, fractions, problems = _per_layer(manifest, tensors)
    for entry in tensors.values():
        entry.pop("numel", None)
    return {"pattern": manifest["pattern"], "layers": layers, "nm_fraction": fractions, "problems": problems,
            "tensors": tensors, "coverage": manifest.get("coverage"), "ok": all(layers.values())}


def _tensor_problem(row: dict[str, Any], pattern: str, single: bool) -> str | None:
    """Why a checked saved tensor is not N:M (None if it is, or, for a layer's only 2-D tensor, when its
    fraction says it all)."""
    if row.get("problem"):
        return row["problem"]
    if row.get("experts_not_nm"):
        return f"experts {row['experts_not_nm']} are not {pattern}"
    if not row["ok"] and not single:
        return f"{row['nm_fraction']:.2%} of its groups are {pattern}"
    return None


def _per_layer(manifest, tensors) -> tuple[dict[str, bool], dict[str, float | None], dict[str, str]]:
    """Per manifest layer: N:M iff all its saved tensors are (and it has one); the fraction of its groups over
    all of them (None if one is missing or ungroupable); the problems of its tensors."""
    mine: dict[str, list[str]] = {name: [] for name in manifest["layers"]}
    for key, info in manifest["tensors"].items():
        for src in _sources(info):
            mine[src].append(key)
    layers, fractions, problems = {}, {}, {}
    for name, keys in mine.items():
        rows = [tensors[k] for k in keys]
        layers[name] = bool(rows) and all(r["ok"] for r in rows)
        known = rows and all(r["nm_fraction"] is not None for r in rows)
        fractions[name] = (sum(r["nm_fraction"] * r.get("numel", 1) for r in rows) / sum(r.get("numel", 1) for r in rows)
                           if known else None)
        why = [(k, _tensor_problem(r, manifest["pattern"], single=len(rows) == 1)) for k, r in zip(keys, rows)]
        why = [(k, w) for k, w in why if w]
        if not rows:
            problems[name] = "the manifest lists no saved tensor for it"
        elif len(rows) == 1 and why:
            problems[name] = why[0][1]
        elif why:
            problems[name] = "; ".join(f"{k}: {w}" for k, w in why)
    return layers, fractions, problems


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

    ``model_or_dir`` is a model (its targets, by default every matrix weight of the decoder blocks, fused 3-D
    expert tensors included, see [`torchprox.llm.target_tensors`][torchprox.llm.targets.target_tensors];
    pattern ``n:m``, default 2:4) or a directory written by [`save_sparse`][torchprox.llm.export.save_sparse]
    (its manifest's saved tensors and pattern; sizes and dtypes are read from the safetensors headers, N:M-ness
    with [`check_sparse`][torchprox.llm.export.check_sparse]; a layer's row sums its saved tensors, e.g. the
    2·E per-expert matrices Mixtral writes for one fused ``gate_up_proj``). Only tensors that are exactly N:M
    (``is_nm``) can be stored compressed; the totals count the others as dense. Metadata bytes are rounded up
    per tensor, so the two forms can differ by a byte per saved tensor when a tensor's metadata bits are not a
    multiple of 8.

    Returns:
        A dict `{"pattern", "layers": {name: {"shape", "dtype", "is_nm", "dense_bytes", "values_bytes",
            "metadata_bytes", "compressed_bytes"}}, "targets_dense_bytes", "targets_compressed_bytes",
            "model_dense_bytes", "model_compressed_bytes", "ratio"}` where ``model_*`` counts every stored
            tensor (a model: its ``state_dict`` tensors, shared ones once; a directory: every tensor of the
            checkpoint) and ``ratio`` = model_compressed / model_dense. The directory form adds ``tensors``:
            the same row per saved tensor.

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
        check = check_sparse(path)["tensors"]
        saved = {}
        for key, info in manifest["tensors"].items():
            head = headers.get(key)
            if head is None:
                raise ValueError(f"{path}: tensor {key!r} of the manifest is not in the safetensors files")
            saved[key] = _row(head["shape"], head["dtype"], _SAFETENSORS_BYTES[head["dtype"]], n, m, check[key]["ok"])
        layers = _layer_rows(manifest, saved)
        total = sum(info["data_offsets"][1] - info["data_offsets"][0] for info in headers.values())
    dense = sum(r["dense_bytes"] for r in layers.values())
    comp = sum(r["compressed_bytes"] if r["is_nm"] else r["dense_bytes"] for r in layers.values())
    model_comp = total - dense + comp
    report = {"pattern": f"{n}:{m}", "layers": layers, "targets_dense_bytes": dense,
              "targets_compressed_bytes": comp, "model_dense_bytes": total, "model_compressed_bytes": model_comp,
              "ratio": model_comp / total if total else 1.0}
    if not isinstance(model_or_dir, nn.Module):
        report["tensors"] = saved
    return report


def _layer_rows(manifest: dict[str, Any], saved: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per manifest layer, the byte counts of its saved tensors summed (N:M iff all of them are); ``shape`` is
    the layer's in-memory shape and ``dtype`` the saved one."""
    mine: dict[str, list[str]] = {name: [] for name in manifest["layers"]}
    for key, info in manifest["tensors"].items():
        for src in _sources(info):
            mine[src].append(key)
    out = {}
    for name, keys in mine.items():
        rows = [saved[k] for k in keys]
        if not rows:
            raise ValueError(f"layer {name!r} of the manifest has no saved tensor in its 'tensors'")
        shape = manifest["layers"][name].get("shape") or rows[0]["shape"]
        out[name] = {"shape": list(shape), "dtype": rows[0]["dtype"], "is_nm": all(r["is_nm"] for r in rows),
                     **{k: sum(r[k] for r in rows) for k in ("dense_bytes", "values_bytes", "metadata_bytes",
                                                             "compressed_bytes")}}
    return out


def _model_layers(model: nn.Module, n: int, m: int, targets) -> dict[str, dict[str, Any]]:
    from ..prune import is_nm
    from .targets import target_tensors

    out = {}
    for t in target_tensors(model, targets):
        w = t.weight.detach()
        dtype = str(w.dtype).removeprefix("torch.")
        out[t.key] = _row(tuple(w.shape), dtype, w.element_size(), n, m, is_nm(w, n, m, dim=t.dim))
    return out
