"""The ``torchprox`` command line on a tiny model directory and a tiny text corpus."""
import json

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
