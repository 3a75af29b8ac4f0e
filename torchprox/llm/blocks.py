"""Decoder-block plumbing for Hugging Face causal LMs: find the blocks and their linear layers, capture the
first block's inputs, and run calibration data through the blocks one at a time.

The layer-by-layer (sequential) scheme of SparseGPT and Wanda: calibration sequences are embedded up to the
first decoder block (a forward-pre-hook on that block records its hidden states and keyword arguments and
stops the forward), then each block is run on the stored hidden states — once to collect statistics, and,
after the caller has pruned it, once more to produce the next block's inputs. Only ``B × seqlen × hidden``
activations are kept, on the block's device.

transformers 5.x passes decoder layers a ``cache=`` argument (formerly ``past_key_values``); reusing it across
calls would make every call append to one shared cache. The captured keyword arguments therefore drop every
cache argument and set ``use_cache=False``.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..prune import check_groupable, is_hf_conv1d, select_modules
from ._runtime import module_device, progress_bar

__all__ = ["decoder_layers", "target_linears", "linear_group_dim"]

#: keyword names under which decoder layers receive a KV cache (transformers 4.x and 5.x, GPT-2 style).
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")

# Attribute paths of the decoder-block list, tried in order.
_LAYER_PATHS = (
    "model.layers",          # Llama, Mistral, Qwen2/3, SmolLM, Gemma, Phi-3
    "transformer.h",         # GPT-2, GPT-J, GPT-Neo, BLOOM, Falcon
    "model.decoder.layers",  # OPT
    "gpt_neox.layers",       # GPT-NeoX, Pythia
    "transformer.layers",
    "transformer.blocks",    # MPT
    "layers",                # a bare decoder (e.g. LlamaModel)
    "h",                     # a bare GPT2Model
    "decoder.layers",
)


def _getattr_path(obj: Any, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _layers_and_prefix(model: nn.Module) -> tuple[nn.ModuleList, str]:
    for path in _LAYER_PATHS:
        layers = _getattr_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            for name, mod in model.named_modules():
                if mod is layers:
                    return layers, name
    # PEFT wrappers (PeftModel → LoraModel → the transformers model): look through them.
    base = getattr(model, "get_base_model", None)
    if callable(base):
        inner = base()
        if inner is not model:
            layers, _ = _layers_and_prefix(inner)
            for name, mod in model.named_modules():
                if mod is layers:
                    return layers, name
    raise TypeError(
        f"cannot find the decoder blocks of {type(model).__name__}: expected an nn.ModuleList at one of "
        f"{', '.join(_LAYER_PATHS)} (Llama/Mistral/Qwen/SmolLM-style model.layers or GPT-2-style "
        "transformer.h)"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder blocks of a Hugging Face causal LM.

    ``model.model.layers`` (Llama, Mistral, Qwen, SmolLM, ...), ``model.transformer.h`` (GPT-2 style),
    ``model.model.decoder.layers`` (OPT), ``model.gpt_neox.layers``; PEFT wrappers are looked through.
    Anything else is a ``TypeError`` naming the paths tried.

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg).eval()
        >>> layers = decoder_layers(model)                            # model.model.layers
        >>> len(layers), type(layers[0]).__name__
        (2, 'LlamaDecoderLayer')
        >>> decoder_layers(torch.nn.Linear(2, 2))
        Traceback (most recent call last):
            ...
        TypeError: cannot find the decoder blocks of Linear: ...
    """
    return _layers_and_prefix(model)[0]


def _is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def linear_group_dim(module: nn.Module) -> int:
    """The input (reduction) dim of the weight: 1 for ``nn.Linear`` (out, in), 0 for HF ``Conv1D`` (in, out).

    Examples:
        >>> import torch
        >>> from transformers.pytorch_utils import Conv1D
        >>> linear_group_dim(torch.nn.Linear(8, 4)), linear_group_dim(Conv1D(4, 8))     # Conv1D(nf=out, nx=in)
        (1, 0)
    """
    return 0 if is_hf_conv1d(module) else 1


def target_linears(model: nn.Module, targets=None, m: int | None = None) -> list[tuple[str, nn.Module]]:
    """Ordered ``[(qualified_name, module)]`` of the linear layers inside the decoder blocks to prune.

    Args:
        targets: ``None`` or ``"all-linear"``: every ``nn.Linear`` (and HF ``Conv1D``) in the decoder blocks
            (never embeddings or ``lm_head``, which live outside them). Otherwise PEFT-style: a list of
            names or dotted suffixes (``["q_proj", "mlp.down_proj"]``) or a regex string (full match of the
            qualified name, e.g. ``r".*\\.layers\\.[0-3]\\..*_proj"``). Matches that are not linear layers
            (attention modules, norms) are skipped; selecting no linear layer at all is a ``ValueError``.
        m: when given, every selected weight must be groupable into runs of ``m`` along its input dim
            (``ValueError`` naming the module otherwise; torchprox never pads).

    Examples:
        >>> import transformers
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> [name for name, _ in target_linears(model)][:3]
        ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj', 'model.layers.0.self_attn.v_proj']
        >>> len(target_linears(model)), len(target_linears(model, ["q_proj", "mlp.down_proj"]))
        (14, 4)
    """
    layers, prefix = _layers_and_prefix(model)
    inside = {id(module) for module in layers.modules()}
    # torchprox.prune's PEFT-style selector; llm keeps the linear layers inside the decoder blocks and skips
    # explicit matches that are not linear (prune's callers refuse those instead).
    selected = select_modules(model, "all-linear" if targets is None else targets)
    out = [(name, module) for name, module, _explicit in selected if id(module) in inside and _is_linear_like(module)]
    if not out:
        raise ValueError(
            f"targets={targets!r} selects no linear layer inside the decoder blocks of {type(model).__name__} "
            f"(names look like {next((n for n, mod in layers.named_modules(prefix=prefix) if _is_linear_like(mod)), prefix + '.0...')!r})"
        )
    for name, module in out:
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(
                f"{name}: its weight is parametrized (e.g. torchprox.prune.learnable_nm); remove the "
                "parametrization (torchprox.prune.remove) before a one-shot baseline"
            )
        if m is not None:
            check_groupable(module, module.weight.shape, linear_group_dim(module), m, name)
    return out


# --------------------------------------------------------------------------------------------------------
# Capture of the first block's inputs


def _to(obj, device):
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _same(a, b) -> bool:
    """Structural equality of captured kwargs (tensors compared by value)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and a.device == b.device and torch.equal(a, b))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b) if type(a) is type(b) else False
    except Exception:  # noqa: BLE001 - objects without a usable ==
        return a is b


def _block_kwargs(block: nn.Module, args: tuple, kwargs: dict) -> tuple[Tensor, dict]:
    """Split a block call into (hidden_states, keyword arguments), binding positionals by name, dropping
    every cache argument and setting ``use_cache=False``."""
    kwargs = dict(kwargs)
    try:
        sig = inspect.signature(block.forward)
    except (TypeError, ValueError):
        sig = None
    params = list(sig.parameters.values()) if sig is not None else []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    args = list(args)
    if args:
        hidden = args.pop(0)
        names = [p.name for p in positional[1:]]
        if len(args) > len(names):
            raise TypeError(
                f"{type(block).__name__} was called with {len(args) + 1} positional arguments; cannot bind "
                "them to keyword names for a layer-by-layer run"
            )
        for name, value in zip(names, args):
            kwargs[name] = value
    else:
        first = positional[0].name if positional else "hidden_states"
        if first not in kwargs:
            raise TypeError(f"could not find the hidden states among the arguments of {type(block).__name__}")
        hidden = kwargs.pop(first)
    if not isinstance(hidden, Tensor):
        raise TypeError(f"the first argument of {type(block).__name__} is not a tensor: {type(hidden).__name__}")
    for key in CACHE_KWARGS:
        kwargs.pop(key, None)
    if has_var_kw or any(p.name == "use_cache" for p in params) or sig is None:
        kwargs["use_cache"] = False
    for flag in ("output_attentions",):
        if kwargs.get(flag):
            kwargs[flag] = False
    return hidden, kwargs


class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    """The hidden states entering the current block, in micro-batches, and each micro-batch's keyword
    arguments for the block (attention mask, position ids, rotary position embeddings, ...; no cache).

    ``hidden[k]`` is ``(batch_k, seqlen, hidden_size)``; ``run(block, update=True)`` replaces every
    ``hidden[k]`` by ``block(hidden[k], **kwargs[k])``, the inputs of the next block.

    Examples:
        >>> import torch, transformers
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg).eval()
        >>> inputs = capture_block_inputs(model, torch.randint(0, 64, (3, 8)), batch_size=2)   # block 0's inputs
        >>> with torch.no_grad():
        ...     inputs.run(decoder_layers(model)[0], update=True)                              # now block 1's
        >>> inputs.num_sequences, tuple(inputs.hidden[0].shape)
        (3, (2, 8, 32))
    """

    hidden: list[Tensor] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)

    @property
    def num_sequences(self) -> int:
        return sum(h.shape[0] for h in self.hidden)

    def run(self, block: nn.Module, update: bool) -> None:
        """Run ``block`` over every micro-batch; with ``update`` its outputs replace the stored inputs."""
        device = module_device(block, self.hidden[0].device if self.hidden else None)
        for i, (h, kw) in enumerate(zip(self.hidden, self.kwargs)):
            if device is not None and h.device != device:
                h, kw = h.to(device), _to(kw, device)
                if update:
                    self.kwargs[i] = kw
            out = block(h, **kw)
            if isinstance(out, (tuple, list)):
                out = out[0]
            elif not isinstance(out, Tensor) and hasattr(out, "__getitem__"):
                out = out[0]
            if update:
                self.hidden[i] = out
            del out


def _as_batches(calib, batch_size: int) -> list[Tensor]:
    """Calibration token ids as a list of (b, seqlen) LongTensors."""
    if isinstance(calib, Tensor):
        seqs = calib.unsqueeze(0) if calib.dim() == 1 else calib
        if seqs.dim() != 2:
            raise ValueError(f"calib must be a (batch, seqlen) tensor of token ids, got shape {tuple(calib.shape)}")
        rows = [seqs]
    elif isinstance(calib, Iterable) and not isinstance(calib, (str, bytes)):
        rows = []
        for item in calib:
            if isinstance(item, dict):
                item = item["input_ids"]
            item = torch.as_tensor(item)
            rows.append(item.unsqueeze(0) if item.dim() == 1 else item)
        if not rows:
            raise ValueError("calib is empty")
        lengths = {r.shape[-1] for r in rows}
        if len(lengths) != 1 or any(r.dim() != 2 for r in rows):
            raise ValueError(f"calibration sequences must all have one length, got lengths {sorted(lengths)}")
        seqs = torch.cat(rows, 0)
    else:
        raise TypeError(f"calib must be a LongTensor (batch, seqlen) or a list of them, got {type(calib).__name__}")
    if seqs.is_floating_point() or seqs.dtype == torch.bool:
        raise TypeError(f"calib must hold integer token ids, got dtype {seqs.dtype}")
    if seqs.shape[0] == 0:
        raise ValueError("calib is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return list(seqs.long().split(batch_size, 0))


def capture_block_inputs(model: nn.Module, calib, batch_size: int = 8) -> BlockInputs:
    """Embed ``calib`` through ``model`` up to its first decoder block and return that block's inputs.

    A forward-pre-hook on the first block records its hidden states and keyword arguments, then stops the
    forward (nothing past the embeddings is computed). Cache arguments are dropped and ``use_cache=False``
    is set. Identical keyword arguments of consecutive micro-batches are stored once.

    ``calib`` ``(num_sequences, seqlen)`` gives ``hidden`` micro-batches of shape ``(≤ batch_size, seqlen,
    hidden_size)``.

    Examples:
        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg).eval()
        >>> inputs = capture_block_inputs(model, torch.randint(0, 64, (5, 16)), batch_size=2)
        >>> [tuple(h.shape) for h in inputs.hidden], inputs.num_sequences
        ([(2, 16, 32), (2, 16, 32), (1, 16, 32)], 5)
    """
    layers = decoder_layers(model)
    first = layers[0]
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = module_device(emb) if emb is not None else module_device(model)
    inputs = BlockInputs()
    caught: dict = {}

    def pre_hook(module, args, kwargs):
        caught["args"], caught["kwargs"] = args, kwargs
        raise _StopForward

    handle = first.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in _as_batches(calib, batch_size):
                caught.clear()
                try:
                    model(input_ids=ids.to(device), use_cache=False)
                except _StopForward:
                    pass
                if "args" not in caught:
                    raise RuntimeError(f"the forward of {type(model).__name__} never reached its first decoder block")
                hidden, kw = _block_kwargs(first, caught["args"], caught["kwargs"])
                if inputs.kwargs and _same(kw, inputs.kwargs[-1]):
                    kw = inputs.kwargs[-1]
                inputs.hidden.append(hidden)
                inputs.kwargs.append(kw)
    finally:
        handle.remove()
        caught.clear()
    return inputs


def run_blocks_sequentially(
    model: nn.Module,
    calib,
    process: Callable[[int, nn.Module, Callable[[], None]], None],
    *,
    blocks: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = False,
    desc: str | None = None,
) -> None:
    """The sequential scheme: for each decoder block ``i`` (in order) call
    ``process(i, block, calibrate)``, where ``calibrate()`` runs the block over the calibration inputs (outputs
    discarded: attach hooks around it), then recompute the block's outputs — after ``process`` has changed it
    — as the inputs of block ``i + 1``.

    ``blocks``: the indices to process (default all); blocks after the last one are not run at all, blocks
    before are only run forward. The model is put in eval mode for the duration and runs under
    ``torch.no_grad``.

    With ``X_0`` the embedded calibration sequences, block i sees ``X_i = block_{i−1}'(X_{i−1})``, where
    ``block'`` is the block as ``process`` left it (e.g. pruned).

    Examples:
        Count the tokens each block's ``mlp.down_proj`` sees, as the one-shot baselines collect statistics:

        >>> import torch, transformers
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg).eval()
        >>> seen = {}
        >>> def process(i, block, calibrate):
        ...     hook = block.mlp.down_proj.register_forward_hook(
        ...         lambda mod, args, out: seen.__setitem__(i, seen.get(i, 0) + args[0].shape[:-1].numel()))
        ...     calibrate()
        ...     hook.remove()
        >>> run_blocks_sequentially(model, torch.randint(0, 64, (4, 16)), process, batch_size=2)
        >>> seen                                                    # 4 sequences × 16 tokens per block
        {0: 64, 1: 64}
    """
    layers = decoder_layers(model)
    todo = sorted(set(range(len(layers)) if blocks is None else blocks))
    if not todo:
        return
    was_training = model.training
    model.eval()
    bar = progress_bar(progress, total=len(todo), desc=desc, unit="block")
    try:
        with torch.no_grad():
            inputs = capture_block_inputs(model, calib, batch_size)
            for i in range(todo[-1] + 1):
                block = layers[i]
                if i in todo:
                    process(i, block, lambda b=block: inputs.run(b, update=False))
                    bar.update(1)
                if i < todo[-1]:
                    inputs.run(block, update=True)
            del inputs
    finally:
        bar.close()
        model.train(was_training)


def block_index(name: str, prefix: str) -> int:
    """The decoder-block index of a qualified module name under ``prefix`` (``"model.layers"``)."""
    rest = name[len(prefix) + 1:] if prefix else name
    match = re.match(r"(\d+)(\.|$)", rest)
    if not match:
        raise ValueError(f"{name!r} is not inside the decoder blocks {prefix!r}")
    return int(match.group(1))


def layers_prefix(model: nn.Module) -> str:
    """The qualified name of the decoder-block list (``"model.layers"``, ``"transformer.h"``, ...)."""
    return _layers_and_prefix(model)[1]
