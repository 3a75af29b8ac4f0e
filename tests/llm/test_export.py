"""Export of an N:M-sparse tiny Llama: plain-transformers reload, check_sparse, semi-structured 2:4, memory."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchprox import ProxAdam  # noqa: E402
from torchprox.cli import main  # noqa: E402
from torchprox.llm import (MANIFEST, check_sparse, magnitude_prune, memory_report, save_sparse,  # noqa: E402
                           sparse_manifest, to_semi_structured)
from torchprox.llm.export import compressed_bytes  # noqa: E402
from torchprox.prune import apply_learned_masks, is_nm, learnable_nm_model, prox_param_groups, remove_all  # noqa: E402

from .tiny import tiny_llama, tiny_tokenizer  # noqa: E402

IDS = torch.arange(40).remainder(63).view(2, 20)


def learned_sparse_model():
    """ProxAdam-learned 2:4 masks on a tiny Llama, applied and baked (the ProxSparse path)."""
    model = tiny_llama()
    assert len(learnable_nm_model(model, n=2, m=4)) == 14  # every decoder linear, not lm_head
    opt = ProxAdam(prox_param_groups(model, lam=3.0), lr=1e-3)
    for _ in range(3):
        model(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
        opt.zero_grad()
    apply_learned_masks(model, optimizer=opt)
    remove_all(model)
    return model


def magnitude_sparse_model():
    model = tiny_llama()
    magnitude_prune(model, 2, 4)
    return model


@pytest.mark.parametrize("make", [learned_sparse_model, magnitude_sparse_model])
def test_saved_dir_reloads_with_plain_transformers(make, tmp_path, capsys):
    model = make()
    out = tmp_path / "sparse"
    save_sparse(model, tiny_tokenizer(), out, sparse_manifest(model, 2, 4, method=make.__name__))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["pattern"] == "2:4" and manifest["method"] == make.__name__ and len(manifest["layers"]) == 14
    assert all(v["ok"] for v in manifest["layers"].values())

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()  # no torchprox involved
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model.eval()(IDS).logits)
    for name in manifest["layers"]:
        assert is_nm(reloaded.get_submodule(name).weight, 2, 4, dim=1)

    report = check_sparse(out)
    assert report["ok"] and report["pattern"] == "2:4" and set(report["layers"]) == set(manifest["layers"])
    assert all(f == 1.0 for f in report["nm_fraction"].values())
    assert main(["check", str(out)]) == 0 and "14/14 layers exactly 2:4" in capsys.readouterr().out
    assert not list(tmp_path.glob(".sparse.tmp-*"))  # the atomic write left no temporary directory


def test_check_sparse_finds_a_dense_or_missing_layer(tmp_path):
    from safetensors.torch import load_file, save_file

    model = magnitude_sparse_model()
    out = tmp_path / "sparse"
    save_sparse(model, None, out, sparse_manifest(model, 2, 4))
    weights = load_file(out / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][0, :4] = 1.0  # one group of 4 nonzeros
    del weights["model.layers.0.self_attn.q_proj.weight"]
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    report = check_sparse(out)
    assert not report["ok"]
    assert report["layers"]["model.layers.1.mlp.down_proj"] is False
    assert 0.9 < report["nm_fraction"]["model.layers.1.mlp.down_proj"] < 1.0
    assert report["layers"]["model.layers.0.self_attn.q_proj"] is False
    assert report["nm_fraction"]["model.layers.0.self_attn.q_proj"] is None
    assert sum(report["layers"].values()) == 12
    with pytest.raises(FileNotFoundError, match=MANIFEST):
        check_sparse(tmp_path)


def test_save_sparse_refuses_a_parametrized_model(tmp_path):
    model = tiny_llama()
    learnable_nm_model(model)
    with pytest.raises(ValueError, match="remove_all"):
        save_sparse(model, None, tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def tree(path):
    """{relative path: bytes} of every file under ``path``."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def dead_pid():
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_overwrite_replaces_only_a_torchprox_output(tmp_path):
    model = magnitude_sparse_model()
    user = tmp_path / "project"
    (user / "data").mkdir(parents=True)
    (user / "data" / "notes.txt").write_text("mine")
    before = tree(user)
    with pytest.raises(FileExistsError, match="is not a torchprox output"):
        save_sparse(model, None, user, sparse_manifest(model, 2, 4), overwrite=True)
    assert tree(user) == before and sorted(p.name for p in tmp_path.iterdir()) == ["project"]
    out = tmp_path / "out"
    save_sparse(model, None, out, sparse_manifest(model, 2, 4, method="first"))
    save_sparse(model, None, out, sparse_manifest(model, 2, 4, method="second"), overwrite=True)
    assert json.loads((out / MANIFEST).read_text())["method"] == "second" and check_sparse(out)["ok"]
    empty = tmp_path / "empty"
    empty.mkdir()
    save_sparse(model, None, empty, sparse_manifest(model, 2, 4), overwrite=True)  # nothing to lose
    assert check_sparse(empty)["ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out", "project"]  # no temporaries left


def test_failed_final_rename_restores_the_previous_output(tmp_path, monkeypatch):
    import os

    from torchprox.llm import export

    model = magnitude_sparse_model()
    out = tmp_path / "out"
    save_sparse(model, None, out, sparse_manifest(model, 2, 4, method="first"))
    before = tree(out)
    real = os.replace

    def failing(src, dst):
        if str(src).endswith(f".out.tmp-{os.getpid()}"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(export.os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        save_sparse(model, None, out, sparse_manifest(model, 2, 4, method="second"), overwrite=True)
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_leftovers_of_a_killed_save_are_restored_or_removed(tmp_path):
    import os

    model = magnitude_sparse_model()
    out = tmp_path / "out"
    save_sparse(model, None, out, sparse_manifest(model, 2, 4, method="first"))
    before = tree(out)
    pid = dead_pid()
    out.rename(tmp_path / f".out.old-{pid}")  # killed between moving the old output aside and the rename
    (tmp_path / f".out.tmp-{pid}").mkdir()
    (tmp_path / f".out.tmp-{pid}" / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(FileExistsError, match="already exists"):  # the old output is back, so: exists
        save_sparse(model, None, out, sparse_manifest(model, 2, 4, method="second"))
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / f".out.old-{pid}").mkdir()  # killed while deleting the old output after the rename
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a save still running in a live process: left alone
    live.mkdir()
    save_sparse(model, None, out, sparse_manifest(model, 2, 4, method="second"), overwrite=True)
    assert json.loads((out / MANIFEST).read_text())["method"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]


def test_a_second_writer_of_the_same_output_fails_at_once(tmp_path):
    import fcntl
    import os

    model = magnitude_sparse_model()
    out = tmp_path / "out"
    fd = os.open(tmp_path / ".out.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process writing out would
        with pytest.raises(FileExistsError, match="another process is writing"):
            save_sparse(model, None, out, sparse_manifest(model, 2, 4))
        assert not out.exists()
    finally:
        os.close(fd)
    save_sparse(model, None, out, sparse_manifest(model, 2, 4))
    assert check_sparse(out)["ok"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_to_semi_structured_needs_cuda_fp16(tmp_path):
    model = magnitude_sparse_model()
    with pytest.raises(ValueError, match=r"CUDA GPU with compute capability >= 8\.0.*fp16/bf16") as err:
        to_semi_structured(model)
    assert "model.layers.0.self_attn.q_proj" in str(err.value) and "(32, 32)" in str(err.value)
    assert type(model.model.layers[0].self_attn.q_proj.weight) is torch.nn.Parameter  # nothing converted
    with pytest.raises(ValueError, match="exactly 2:4"):
        to_semi_structured(model, n=1, m=4)
    assert to_semi_structured(tiny_llama()) == {"converted": [], "skipped": {}}  # no 2:4 layer: nothing to do


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="needs a CUDA GPU with compute capability >= 8.0")
def test_to_semi_structured_on_cuda():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(config).eval()
    magnitude_prune(model, 2, 4)
    model = model.to("cuda", torch.float16)
    ids = torch.randint(0, 64, (4, 32), device="cuda")
    with torch.no_grad():
        dense = model(ids).logits.float()
        result = to_semi_structured(model)
        assert len(result["converted"]) == 14 and not result["skipped"]
        assert isinstance(model.model.layers[0].mlp.up_proj.weight, torch.sparse.SparseSemiStructuredTensor)
        sparse = model(ids).logits.float()
    torch.testing.assert_close(sparse, dense, rtol=2e-2, atol=2e-2)


def test_compressed_bytes_arithmetic():
    # 2:4 fp16 4096 x 4096: half the values (16 MiB) + 2 bits per kept value (2 MiB) = 18 MiB vs 32 MiB.
    assert compressed_bytes(4096 * 4096, 2) == {"dense": 32 << 20, "values": 16 << 20, "metadata": 2 << 20,
                                                "compressed": 18 << 20}
    # 1:4 needs 2 bits per kept value too; 2:8 needs 3.
    assert compressed_bytes(64, 4, 1, 4)["metadata"] == 4 and compressed_bytes(64, 4, 2, 8)["metadata"] == 6


def test_memory_report_model_and_dir_agree(tmp_path):
    model = magnitude_sparse_model()
    with torch.no_grad():  # make one target dense again: it must count as dense
        model.model.layers[1].mlp.up_proj.weight.fill_(0.5)
    rep = memory_report(model)
    q = rep["layers"]["model.layers.0.self_attn.q_proj"]
    assert q == {"shape": [32, 32], "dtype": "float32", "is_nm": True, "dense_bytes": 4096, "values_bytes": 2048,
                 "metadata_bytes": 128, "compressed_bytes": 2176}
    assert rep["layers"]["model.layers.1.mlp.up_proj"]["is_nm"] is False
    dense_targets = sum(r["dense_bytes"] for r in rep["layers"].values())
    assert rep["targets_dense_bytes"] == dense_targets
    up = rep["layers"]["model.layers.1.mlp.up_proj"]
    assert rep["targets_compressed_bytes"] == sum(r["compressed_bytes"] for r in rep["layers"].values()) \
        - up["compressed_bytes"] + up["dense_bytes"]
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    assert rep["model_dense_bytes"] == total  # LlamaForCausalLM's rotary buffer is not persistent
    assert rep["model_compressed_bytes"] == total - rep["targets_dense_bytes"] + rep["targets_compressed_bytes"]
    assert 0.5 < rep["ratio"] < 1.0

    out = tmp_path / "sparse"
    save_sparse(model, None, out, sparse_manifest(model, 2, 4))
    from_dir = memory_report(out)
    assert from_dir["layers"] == {k: {**v, "dtype": "F32"} for k, v in rep["layers"].items()}
    for key in ("targets_dense_bytes", "targets_compressed_bytes", "model_dense_bytes", "model_compressed_bytes"):
        assert from_dir[key] == rep[key], key
    with pytest.raises(ValueError, match="manifest says 2:4"):
        memory_report(out, n=1, m=4)


@pytest.mark.parametrize("name", ["torchprox.llm.export", "torchprox.llm.trainer"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
