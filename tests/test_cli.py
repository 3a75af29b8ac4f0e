"""The ``torchprox`` command line on a tiny model directory and a tiny text corpus."""
import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchprox.cli import check_dir, main  # noqa: E402
from torchprox.prune import is_nm  # noqa: E402

from .llm.tiny import save_tiny_model, tiny_texts  # noqa: E402


@pytest.fixture
def model_dir(tmp_path):
    return save_tiny_model(tmp_path / "tiny")


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for i, text in enumerate(tiny_texts()):
        (d / f"doc{i}.txt").write_text(text)
    return d


def files_of(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "proxsparse"])
def test_sparsify_then_check_and_eval(method, model_dir, data_dir, tmp_path, capsys):
    before = files_of(model_dir)
    out = tmp_path / f"out-{method}"
    args = ["sparsify", str(model_dir), "--data", str(data_dir), "--pattern", "2:4", "--method", method,
            "--out", str(out), "--seqlen", "16", "--calib-blocks", "4", "--steps", "3"]
    assert main(args) == 0
    assert files_of(model_dir) == before  # the input model is never modified on disk
    manifest = json.loads((out / "torchprox.json").read_text())
    assert manifest["pattern"] == "2:4" and manifest["method"] == method
    assert len(manifest["layers"]) == 14 and all(v["ok"] for v in manifest["layers"].values())
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)  # plain transformers loads it
    for name, mod in reloaded.named_modules():
        if name in manifest["layers"]:
            assert is_nm(mod.weight, 2, 4, dim=1)
    assert main(["check", str(out)]) == 0
    assert "14/14 layers exactly 2:4" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", str(data_dir), "--seqlen", "16", "--max-tokens", "256"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["perplexity"] > 1 and result["tokens"] == 256


def test_check_fails_on_a_dense_layer(model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sparsify", str(model_dir), "--method", "magnitude", "--out", str(out), "--data", str(data_dir)]) == 0
    from safetensors.torch import load_file, save_file

    weights = load_file(out / "model.safetensors")
    key = "model.layers.0.mlp.up_proj.weight"
    weights[key] = torch.ones_like(weights[key])
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    assert check_dir(out)["layers"]["model.layers.0.mlp.up_proj"] is False
    assert main(["check", str(out)]) == 1
    assert "NOT 2:4: model.layers.0.mlp.up_proj" in capsys.readouterr().out


def test_errors(model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    cases = [
        (["sparsify", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")], "not found"),
        (["sparsify", str(model_dir), "--out", str(out), "--method", "magnitude"], "--overwrite"),
        (["sparsify", str(model_dir), "--out", str(model_dir), "--method", "magnitude"], "never overwritten"),
        (["check", str(tmp_path)], "torchprox.json"),
    ]
    for args, message in cases:
        assert main(args) == 2
        assert message in capsys.readouterr().err
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["sparsify", str(model_dir), "--data", str(binary), "--out", str(tmp_path / "o2")]) == 2
    assert "data.bin" in capsys.readouterr().err
    for bad in ("3:2", "2-4"):
        with pytest.raises(SystemExit) as exc:
            main(["sparsify", str(model_dir), "--pattern", bad, "--out", str(tmp_path / "o3")])
        assert exc.value.code == 2
        assert bad in capsys.readouterr().err
    # --overwrite replaces an existing output
    assert main(["sparsify", str(model_dir), "--out", str(out), "--method", "magnitude", "--overwrite",
                 "--data", str(data_dir)]) == 0
    assert (out / "torchprox.json").exists()


# ------------------------------------------------------------------------------------------------ user errors
# Issue 21, items 11 and 12: every user error is one line on stderr and exit 2, found before the model is loaded.


def run_cli(argv):
    """``main(argv)`` as a process would see it: (exit status, stdout, stderr); argparse's exit included."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc, err, command, *needles, loaded=False):
    """Exit 2 and one stderr line ``torchprox COMMAND: error: ...`` containing every needle (``loaded``: the
    error comes after the model was loaded, so transformers' "Loading weights" bar or a learning progress bar
    may precede that line)."""
    lines = err.strip().splitlines()
    if loaded:
        lines = [line for line in err.replace("\r", "\n").splitlines()
                 if line.strip() and not line.startswith("Loading weights") and "%|" not in line]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"torchprox {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if the model is loaded (the CLI imports load_model when it loads)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"load_model{args} was called for an invalid invocation")

    monkeypatch.setattr("torchprox.llm.models.load_model", refuse)
    monkeypatch.setattr("torchprox.llm.load_model", refuse)  # the CLI loads through the package's name


SPARSIFY_ERRORS = [  # (extra flags, what the one-line message must contain)
    (["--lam", "-1"], "--lam"), (["--lam", "nan"], "--lam"), (["--lam", "inf"], "--lam"),
    (["--lr", "0"], "--lr"), (["--lr=-0.001"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--steps", "0"], "--steps"), (["--steps", "-5"], "--steps"), (["--steps", "1.5"], "--steps"),
    (["--warmup", "1"], "--warmup"), (["--warmup=-0.1"], "--warmup"), (["--warmup", "nan"], "--warmup"),
    (["--lam-ramp", "2"], "--lam-ramp"), (["--lam-ramp", "-inf"], "--lam-ramp"),
    (["--batch-size", "0"], "--batch-size"), (["--calib-blocks", "0"], "--calib-blocks"),
    (["--seqlen", "1"], "--seqlen"), (["--seqlen", "0"], "--seqlen"), (["--seed", "-1"], "--seed"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--resume"], "--checkpoint-every"),
    (["--resume", "--checkpoint-every", "1", "--method", "magnitude"], "--resume"),
    (["--seqlen", "200"], "--seqlen 200 is longer than the model's 128 positions"),
    (["--seqlen", "99999999999999999999"], "--seqlen"),
    (["--pattern", "2:5"], "--pattern 2:5: m=5 must divide"), (["--pattern", "1:64"], "--pattern 1:64"),
    (["--pattern", "4:2"], "--pattern"), (["--pattern", "two:four"], "--pattern"),
    (["--targets", "nope", "zip"], "--targets nope zip"),
    (["--method", "foo"], "--method"),
    (["--data", "MISSING"], "--data"),
    (["--loss", "ce"], "unknown term 'ce'"), (["--loss", "lm+lm"], "appears twice"),
    (["--loss", "kd"], "would never move W"), (["--reconstruct-loss", "x"], "--reconstruct-loss"),
    (["--kd-temperature", "0"], "--kd-temperature"), (["--lr-normalization", "per-matrix"], "--lr-normalization"),
]


@pytest.mark.parametrize("flags, message", SPARSIFY_ERRORS, ids=[" ".join(f) for f, _ in SPARSIFY_ERRORS])
def test_sparsify_flag_errors_are_one_line_before_loading(flags, message, model_dir, data_dir, tmp_path,
                                                         no_model_loading):
    flags = [str(tmp_path / "missing") if f == "MISSING" else f for f in flags]
    rc, _, err = run_cli(["sparsify", model_dir, "--data", data_dir, "--out", tmp_path / "out", "--seqlen", "16",
                          "--steps", "2", *flags])
    assert_one_line_error(rc, err, "sparsify", message)
    assert not (tmp_path / "out").exists()


def test_model_and_data_errors_are_one_line_before_loading(model_dir, data_dir, tmp_path, no_model_loading):
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)))
    no_config = tmp_path / "empty-model"
    no_config.mkdir()
    cases = [
        (["sparsify", tmp_path / "missing", "--out", tmp_path / "o"], "sparsify", "not found"),
        (["sparsify", model_dir / "config.json", "--out", tmp_path / "o"], "sparsify", "not a .gguf"),
        (["sparsify", no_config, "--out", tmp_path / "o"], "sparsify", "no config.json"),
        (["sparsify", model_dir, "--data", binary, "--seqlen", "16", "--out", tmp_path / "o"], "sparsify", "data.bin"),
        (["sparsify", model_dir], "sparsify", "--out"),
        (["eval", tmp_path / "missing"], "eval", "not found"),
        (["eval", model_dir, "--data", tmp_path / "missing"], "eval", "--data"),
        (["eval", model_dir, "--data", data_dir, "--seqlen", "500"], "eval", "--seqlen 500"),
        (["eval", model_dir, "--data", data_dir, "--seqlen", "16", "--max-tokens", "8"], "eval", "--max-tokens 8"),
        (["eval", model_dir, "--data", data_dir, "--seqlen", "1"], "eval", "--seqlen"),
        (["eval", model_dir, "--data", data_dir, "--batch-size", "0"], "eval", "--batch-size"),
        (["demo", "--threads", "0"], "demo", "--threads"),
        (["demo", "--threads", "100000000000"], "demo", "--threads"),
    ]
    for argv, command, message in cases:
        rc, _, err = run_cli(argv)
        assert_one_line_error(rc, err, command, message)


def test_too_small_corpus_names_the_flags_and_numbers(model_dir, data_dir, tmp_path):
    before = files_of(model_dir)
    rc, _, err = run_cli(["sparsify", model_dir, "--data", data_dir, "--out", tmp_path / "o", "--seqlen", "16",
                          "--steps", "300"])  # 300 blocks of 16 tokens; the corpus's calibration part has 2100
    assert_one_line_error(rc, err, "sparsify", "2100 tokens", "4800", "--steps (300)", "--batch-size (1)",
                          "--seqlen (16)", loaded=True)
    rc, _, err = run_cli(["sparsify", model_dir, "--data", data_dir, "--out", tmp_path / "o", "--seqlen", "16",
                          "--method", "wanda", "--calib-blocks", "1000"])
    assert_one_line_error(rc, err, "sparsify", "2100 tokens", "16000", "--calib-blocks (1000)", "--seqlen (16)",
                          loaded=True)
    assert not (tmp_path / "o").exists() and files_of(model_dir) == before


def test_diverged_learning_is_one_line_and_writes_nothing(model_dir, data_dir, tmp_path):
    """--lr 1e30 diverges: one line naming the cause, exit 2, no output and the input model untouched."""
    before = files_of(model_dir)
    rc, _, err = run_cli(["sparsify", model_dir, "--data", data_dir, "--out", tmp_path / "o", "--seqlen", "16",
                          "--steps", "3", "--lr", "1e30"])
    assert_one_line_error(rc, err, "sparsify", "diverged", "lr", loaded=True)
    assert not (tmp_path / "o").exists() and files_of(model_dir) == before


def test_sparsify_defaults_are_the_library_recipe(monkeypatch):
    """One source of truth: the CLI's ProxSparse defaults are ProxSparseConfig's, whatever they are."""
    import dataclasses

    from torchprox.cli import _config_from_args, build_parser
    from torchprox.llm.proxsparse import ProxSparseConfig

    names = [f.name for f in dataclasses.fields(ProxSparseConfig)]
    changed = dict(zip(names, ProxSparseConfig.__init__.__defaults__))
    changed.update(steps=37, batch_size=3, lr=3e-4, warmup=0.25, lam=0.007, lam_ramp=0.5, seed=11,
                   lr_normalization="none")
    monkeypatch.setattr(ProxSparseConfig.__init__, "__defaults__", tuple(changed[k] for k in names))
    args = build_parser().parse_args(["sparsify", "m", "--out", "o"])
    assert _config_from_args(args) == ProxSparseConfig(reconstruct=None)
    assert _config_from_args(args).lr == 3e-4
    assert (args.steps, args.batch_size, args.warmup, args.lam_ramp, args.seed) == (37, 3, 0.25, 0.5, 11)
    assert args.lr_normalization == "none"
    flags = ["sparsify", "m", "--out", "o", "--lr-normalization", "rms", "--lr", "5e-2"]
    assert _config_from_args(build_parser().parse_args(flags)) == ProxSparseConfig(lr_normalization="rms", lr=5e-2)


def test_lam_lr_default_reconstruct_and_methods_come_from_the_library():
    """One source of truth: --lam's per-metric default and --lr's per-normalization default are
    ProxSparseConfig's (lam=None, lr=None), --reconstruct takes every value the config takes, --method's
    choices are sparsify's METHODS."""
    from torchprox.cli import _config_from_args, build_parser
    from torchprox.llm import DEFAULT_LAM, DEFAULT_LR, RECONSTRUCTS, ProxSparseConfig
    from torchprox.llm.sparsify import METHODS

    parser = build_parser()
    for metric, lam in DEFAULT_LAM.items():
        cfg = _config_from_args(parser.parse_args(["sparsify", "m", "--out", "o", "--metric", metric]))
        assert cfg.lam == lam == ProxSparseConfig(metric=metric).lam
    for norm, lr in DEFAULT_LR.items():
        cfg = _config_from_args(parser.parse_args(["sparsify", "m", "--out", "o", "--lr-normalization", norm]))
        assert cfg.lr == lr == ProxSparseConfig(lr_normalization=norm).lr
    for value in RECONSTRUCTS:
        flags = [] if value is None else ["--reconstruct", value]
        assert _config_from_args(parser.parse_args(["sparsify", "m", "--out", "o", *flags])).reconstruct == value
    for method in METHODS:
        assert parser.parse_args(["sparsify", "m", "--out", "o", "--method", method]).method == method


def test_sparsify_reconstruct_finetune_end_to_end(model_dir, data_dir, tmp_path):
    out = tmp_path / "ft"
    assert main(["sparsify", str(model_dir), "--data", str(data_dir), "--out", str(out), "--seqlen", "16",
                 "--steps", "2", "--reconstruct", "finetune"]) == 0
    manifest = json.loads((out / "torchprox.json").read_text())
    assert manifest["report"]["config"]["reconstruct"] == "finetune"
    assert manifest["format"] == "torchprox-sparse/2" and all(v["ok"] for v in manifest["layers"].values())


def test_check_rejects_invalid_outputs(model_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli(["sparsify", model_dir, "--method", "magnitude", "--out", out])[0] == 0
    manifest = json.loads((out / "torchprox.json").read_text())
    weights = (out / "model.safetensors").read_bytes()

    def manifest_with(**fields):
        return json.dumps({k: v for k, v in {**manifest, **fields}.items() if v is not None})

    cases = {  # name: (file, new bytes or text, message)
        "no layers": ("torchprox.json", manifest_with(layers={}), "'layers'"),
        "layers missing": ("torchprox.json", manifest_with(layers=None), "'layers'"),
        "dim missing": ("torchprox.json", manifest_with(layers={k: {"ok": True} for k in manifest["layers"]}), "'dim'"),
        "invalid json": ("torchprox.json", "{not json", "JSON"),
        "not an object": ("torchprox.json", "[1, 2]", "JSON object"),
        "wrong format": ("torchprox.json", manifest_with(format="other/9"), "format 'other/9'"),
        "no format": ("torchprox.json", manifest_with(format=None), "format None"),
        "bad pattern": ("torchprox.json", manifest_with(pattern="4:2"), "n=4, m=2"),
        "empty weights": ("model.safetensors", b"", "model.safetensors is truncated"),
        "truncated header": ("model.safetensors", weights[:50], "model.safetensors is truncated"),
        "truncated data": ("model.safetensors", weights[:-100], "model.safetensors is truncated"),
        "missing shard": ("model.safetensors.index.json", json.dumps({"weight_map": {"x.weight": "gone.safetensors"}}),
                          "gone.safetensors"),
    }
    for name, (file, content, message) in cases.items():
        bad = tmp_path / name.replace(" ", "-")
        shutil.copytree(out, bad)
        (bad / file).write_bytes(content if isinstance(content, bytes) else content.encode())
        rc, _, err = run_cli(["check", bad])
        assert_one_line_error(rc, err, "check", message)
    (out / "model.safetensors").unlink()
    assert_one_line_error(*run_cli(["check", out])[::2], "check", "no *.safetensors")


def test_check_reports_ungroupable_layers_as_not_nm(model_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli(["sparsify", model_dir, "--method", "magnitude", "--out", out])[0] == 0
    manifest = json.loads((out / "torchprox.json").read_text())
    (out / "torchprox.json").write_text(json.dumps({**manifest, "pattern": "1:64"}))
    rc, text, err = run_cli(["check", out])
    assert rc == 1 and not err
    assert "0/14 layers exactly 1:64" in text
    assert "NOT 1:64: model.layers.0.self_attn.q_proj (size 32 along dim 1 is not a multiple of m=64)" in text
    assert "NOT 1:64: model.layers.0.mlp.down_proj (0.00% of its groups are 1:64)" in text


def test_sparsify_prints_coverage_and_warns_about_dense_matrices(model_dir, data_dir, tmp_path):
    out = tmp_path / "all"
    rc, text, err = run_cli(["sparsify", model_dir, "--method", "magnitude", "--out", out, "--data", data_dir])
    assert rc == 0 and "2:4 coverage: 100.0% of the decoder blocks' matrix weights" in text
    assert "WARNING" not in err
    out = tmp_path / "q"
    rc, text, err = run_cli(["sparsify", model_dir, "--method", "magnitude", "--out", out, "--data", data_dir,
                             "--targets", "q_proj"])
    assert rc == 0 and "2:4 coverage: 11.1% of the decoder blocks' matrix weights (2048 of 18432); dense: 12 other(s)" in text
    warning = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warning) == 1 and warning[0].startswith("torchprox sparsify: WARNING: 12 matrix weight(s) of the "
                                                       "decoder blocks stayed dense: ")
    assert "model.layers.1.mlp.down_proj.weight (not selected by targets)" in warning[0]
    rc, text, err = run_cli(["check", out])  # check repeats the manifest's coverage and the warning
    assert rc == 0 and "2:4 coverage: 11.1%" in text and "torchprox check: WARNING: 12 matrix weight(s)" in err


@pytest.fixture
def moe_dir(tmp_path):
    from .llm.tiny import tiny_moe, tiny_tokenizer

    path = tmp_path / "moe"
    tiny_moe("qwen3_moe").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_sparsify_checks_expert_targets_against_the_pattern(moe_dir, data_dir, tmp_path):
    rc, _, err = run_cli(["sparsify", moe_dir, "--method", "magnitude", "--out", tmp_path / "out", "--data", data_dir,
                          "--targets", "experts.gate_up_proj", "--pattern", "1:3"])
    assert_one_line_error(rc, err, "sparsify", "m=3 must divide the input size of every target layer [32]")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ packaged models
@pytest.mark.parametrize("name", ["llama3", "gemma", "gemma3", "smollm"])
def test_unknown_model_name_is_one_line_exit_2_before_any_work(name, data_dir, tmp_path, no_model_loading,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    for argv, command in ((["sparsify", name, "--out", tmp_path / "o"], "sparsify"), (["eval", name], "eval")):
        rc, _, err = run_cli(argv)
        assert_one_line_error(rc, err, command, f"model '{name}' not found", "'gemma3-270m'", "'default'")
    assert not (tmp_path / "o").exists()


def test_packaged_gemma_without_its_packages_is_one_line_exit_2(tmp_path, no_model_loading, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a))
    monkeypatch.setenv("TORCHPROX_CACHE", str(tmp_path / "cache"))
    for argv, command in ((["sparsify", "gemma3-270m", "--out", tmp_path / "o"], "sparsify"),
                          (["eval", "Gemma3-270M"], "eval")):
        rc, _, err = run_cli(argv)
        assert_one_line_error(rc, err, command, "Gemma-3-270M packages are not installed",
                              "bash scripts/setup.sh --gemma")
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()


@pytest.fixture
def packaged_gemma_is_the_tiny_model(model_dir, tmp_path, monkeypatch):
    """'gemma3-270m' resolves to the tiny model directory (its 'cache'); returns the names load_model got."""
    from torchprox import llm

    loaded = []
    real_load = llm.load_model

    def load(name, *args, **kwargs):
        loaded.append(name)
        return real_load(model_dir if name == "gemma3-270m" else name, *args, **kwargs)

    monkeypatch.setenv("TORCHPROX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(llm, "packaged_model_source", lambda name: model_dir)
    monkeypatch.setattr(llm, "load_model", load)
    return loaded


def test_packaged_names_are_accepted_as_model(packaged_gemma_is_the_tiny_model, data_dir, tmp_path, capsys):
    loaded = packaged_gemma_is_the_tiny_model
    assert main(["eval", "gemma3-270m", "--data", str(data_dir), "--seqlen", "16", "--max-tokens", "64"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "gemma3-270m" and result["perplexity"] > 1 and loaded == ["gemma3-270m"]
    out = tmp_path / "gemma-2of4"
    assert main(["sparsify", "gemma3-270m", "--method", "magnitude", "--data", str(data_dir), "--out", str(out)]) == 0
    assert json.loads((out / "torchprox.json").read_text())["source_model"] == "gemma3-270m"
    # the packaged model's cache is an input: never an output
    inside = tmp_path / "cache" / "gemma3-270m-f32" / "out"
    rc, _, err = run_cli(["sparsify", "gemma3-270m", "--method", "magnitude", "--out", inside])
    assert_one_line_error(rc, err, "sparsify", "lies inside the gemma3-270m model's cache")
