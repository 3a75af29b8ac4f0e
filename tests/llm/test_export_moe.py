"""Export of N:M Mixture-of-Experts models (fused 3-D expert tensors): save → plain-transformers reload → check.

save_pretrained writes the experts in each architecture's original checkpoint format (Mixtral: per-expert w1/w2/w3,
Qwen2/3-MoE, OLMoE, DeepSeek-V3: per-expert gate/up/down_proj, GPT-OSS and Llama 4: fused (E, in, out) as is), so
the manifest must name the saved keys and their group dims (issue 18, item 5)."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchprox.cli import main  # noqa: E402
from torchprox.llm import MANIFEST, check_sparse, memory_report, save_sparse, sparse_manifest  # noqa: E402
from torchprox.llm.targets import target_tensors  # noqa: E402
from torchprox.prox import nm_mask  # noqa: E402
from torchprox.prune import is_nm  # noqa: E402

from .tiny import MOE_ARCHS, tiny_moe  # noqa: E402

IDS = torch.arange(40).remainder(63).view(2, 20)


@torch.no_grad()
def make_nm(model, n=2, m=4):
    """2:4 by magnitude along each target's input dim, linears and fused experts alike (what magnitude does)."""
    for t in target_tensors(model):
        t.weight.data.masked_fill_(~nm_mask(t.weight.abs(), n, m, dim=t.dim), 0)
    return model


def sparse_moe(arch):
    return make_nm(tiny_moe(arch))


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_moe_saves_reloads_and_checks(arch, tmp_path):
    from safetensors.torch import load_file

    model = sparse_moe(arch)
    targets = target_tensors(model)
    assert any(t.experts for t in targets)
    out = tmp_path / arch
    save_sparse(model, None, out, sparse_manifest(model, 2, 4, method="magnitude"))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "torchprox-sparse/2"
    assert set(manifest["layers"]) == {t.key for t in targets} and all(v["ok"] for v in manifest["layers"].values())
    experts = [t for t in targets if t.experts]
    for t in experts:  # 3-D entries carry their true input dim (1 for GPT-OSS / Llama 4, 2 otherwise)
        assert manifest["layers"][t.key] == {"shape": list(t.weight.shape), "dim": t.dim, "nm_fraction": 1.0,
                                             "ok": True}
    assert manifest["coverage"]["coverage"] == manifest["coverage"]["nm_weights"] / manifest["coverage"][
        "matrix_weights"] > 0.9
    assert all("router" in why for why in manifest["coverage"]["dense"].values())

    saved = load_file(out / "model.safetensors")
    assert set(manifest["tensors"]) <= set(saved)
    sources = {}
    for key, info in manifest["tensors"].items():  # every saved target tensor is N:M along its recorded dim
        assert is_nm(saved[key], 2, 4, dim=info["dim"]), key
        sources.setdefault(info["source"], []).append(key)
    assert set(sources) == set(manifest["layers"])
    for t in experts:  # each expert of each fused tensor is in the checkpoint, and N:M
        keys = sources[t.key]
        assert sum(saved[k].numel() for k in keys) == t.weight.numel()
        if len(keys) == 1:  # saved fused as is
            assert keys == [t.tensor_name] and saved[t.tensor_name].shape == t.weight.shape
            assert all(is_nm(saved[t.tensor_name][e], 2, 4, dim=t.dim - 1) for e in range(t.experts))
        else:  # one 2-D matrix per expert (and per projection when gate_up is split)
            assert len(keys) % t.experts == 0 and all(saved[k].dim() == 2 for k in keys)

    reloaded = type(model).from_pretrained(out).eval()  # plain transformers, no torchprox
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)
    auto = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(auto(IDS).logits, model(IDS).logits)
    for t in target_tensors(reloaded):
        assert is_nm(t.weight, 2, 4, dim=t.dim), t.key

    report = check_sparse(out)
    assert report["ok"] and set(report["layers"]) == set(manifest["layers"])
    assert set(report["tensors"]) == set(manifest["tensors"]) and all(v["ok"] for v in report["tensors"].values())
    assert report["coverage"] == manifest["coverage"]

    from_model, from_dir = memory_report(model), memory_report(out)
    assert set(from_dir["layers"]) == set(from_model["layers"])
    for key in ("targets_dense_bytes", "targets_compressed_bytes"):
        assert from_dir[key] == from_model[key], key
    for t in experts:
        assert from_dir["layers"][t.key]["dense_bytes"] == from_model["layers"][t.key]["dense_bytes"]
        assert from_model["layers"][t.key]["shape"] == list(t.weight.shape) and from_model["layers"][t.key]["is_nm"]


def test_mixtral_manifest_names_the_per_expert_keys(tmp_path):
    model = sparse_moe("mixtral")
    out = tmp_path / "mixtral"
    save_sparse(model, None, out, sparse_manifest(model, 2, 4))
    tensors = json.loads((out / MANIFEST).read_text())["tensors"]
    gate_up = "model.layers.1.mlp.experts.gate_up_proj"
    assert tensors["model.layers.1.block_sparse_moe.experts.3.w1.weight"] == {"dim": 1, "source": gate_up}
    assert tensors["model.layers.1.block_sparse_moe.experts.3.w3.weight"] == {"dim": 1, "source": gate_up}
    assert tensors["model.layers.1.block_sparse_moe.experts.0.w2.weight"] == {
        "dim": 1, "source": "model.layers.1.mlp.experts.down_proj"}
    assert tensors["model.layers.0.self_attn.q_proj.weight"] == {"dim": 1, "source": "model.layers.0.self_attn.q_proj"}


def test_check_finds_one_dense_expert(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    for arch, key in (("qwen3_moe", "model.layers.0.mlp.experts.2.gate_proj.weight"),
                      ("gpt_oss", "model.layers.0.mlp.experts.gate_up_proj")):
        model = sparse_moe(arch)
        out = tmp_path / arch
        save_sparse(model, None, out, sparse_manifest(model, 2, 4))
        weights = load_file(out / "model.safetensors")
        if weights[key].dim() == 3:
            weights[key][2].fill_(1.0)  # expert 2 of the fused (E, in, out) tensor made dense
        else:
            weights[key].fill_(1.0)
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
        report = check_sparse(out)
        assert not report["ok"] and report["tensors"][key]["ok"] is False
        source = report["tensors"][key]["source"]
        assert report["layers"][source] is False
        assert sum(not ok for ok in report["layers"].values()) == 1
        if weights[key].dim() == 3:
            assert report["tensors"][key]["experts_not_nm"] == [2]
            assert "experts [2] are not 2:4" in report["problems"][source]
        else:  # one of the 8 per-expert matrices of the fused gate_up_proj
            assert report["problems"][source] == f"{key}: 0.00% of its groups are 2:4"
            assert report["nm_fraction"][source] == 7 / 8
        assert main(["check", str(out)]) == 1
        assert f"NOT 2:4: {source}" in capsys.readouterr().out


def test_a_conversion_that_breaks_the_groups_is_refused(tmp_path, monkeypatch):
    import transformers.core_model_loading as cml

    real = cml.revert_weight_conversion

    def permuting(model, state_dict):  # a checkpoint format that reverses the input dim of the expert matrices
        out = real(model, state_dict)
        return {k: v.flip(-1) if ".experts." in k else v for k, v in out.items()}

    model = sparse_moe("qwen3_moe")
    monkeypatch.setattr(cml, "revert_weight_conversion", permuting)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"experts\.0\.down_proj\.weight .*N:M groups would be lost"):
        save_sparse(model, None, out, sparse_manifest(model, 2, 4))
    assert not out.exists() and list(tmp_path.iterdir()) == []

    def shifting(model, state_dict):  # a rotation by 2 keeps runs consecutive but misaligns them
        out = real(model, state_dict)
        return {k: v.roll(2, -1) if ".experts." in k else v for k, v in out.items()}

    monkeypatch.setattr(cml, "revert_weight_conversion", shifting)
    with pytest.raises(ValueError, match="aligned groups of 4"):
        save_sparse(model, None, out, sparse_manifest(model, 2, 4))

    def dropping(model, state_dict):  # an expert left out of the checkpoint
        out = real(model, state_dict)
        return {k: v for k, v in out.items() if ".experts.3." not in k}

    monkeypatch.setattr(cml, "revert_weight_conversion", dropping)
    with pytest.raises(ValueError, match=r"writes 6144 entries of model\.layers\.0\.mlp\.experts\.gate_up_proj"):
        save_sparse(model, None, out, sparse_manifest(model, 2, 4))
    assert not out.exists()


def test_saving_a_parametrized_expert_tensor_raises(tmp_path):
    from torch.nn.utils import parametrize

    from torchprox.prune import learnable_nm

    class Scale(torch.nn.Module):  # any parametrization: save_pretrained would write '...original' instead
        def forward(self, w):
            return w * 1.0

    model = sparse_moe("mixtral")
    experts = model.model.layers[0].mlp.experts
    manifest = sparse_manifest(model, 2, 4)
    parametrize.register_parametrization(experts, "gate_up_proj", Scale())
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.experts\.gate_up_proj is parametrized"):
        save_sparse(model, None, tmp_path / "out", manifest)
    parametrize.remove_parametrizations(experts, "gate_up_proj")
    learnable_nm(experts, "down_proj", dim=2)
    with pytest.raises(ValueError, match="remove_all"):
        save_sparse(model, None, tmp_path / "out", manifest)
    assert not (tmp_path / "out").exists()


def test_cli_check_on_a_saved_moe(tmp_path, capsys):
    model = sparse_moe("gpt_oss")
    out = tmp_path / "gpt_oss"
    save_sparse(model, None, out, sparse_manifest(model, 2, 4))
    assert main(["check", str(out)]) == 0
    text = capsys.readouterr().out
    n = len(target_tensors(model))
    assert f"{n}/{n} layers exactly 2:4" in text
    assert "2:4 coverage:" in text and "dense: 2 router" in text


@pytest.mark.parametrize("arch", ["mixtral", "gpt_oss"])
def test_to_semi_structured_reports_fused_experts_it_cannot_convert(arch, caplog):
    from torchprox.llm import to_semi_structured

    model = tiny_moe(arch)
    for t in target_tensors(model):  # only the experts are 2:4: no linear to convert, nothing needs CUDA
        if t.experts:
            with torch.no_grad():
                t.weight.masked_fill_(~nm_mask(t.weight.abs(), 2, 4, dim=t.dim), 0)
    experts = [t for t in target_tensors(model) if t.experts]
    with caplog.at_level("WARNING", logger="torchprox.llm.semi_structured"):
        result = to_semi_structured(model)
    assert result["converted"] == [] and set(result["skipped"]) == {t.tensor_name for t in experts}
    assert all("not converted, CUDA 2:4 kernels take 2-D weights" in why for why in result["skipped"].values())
    assert f"{len(experts)} fused expert tensor(s) are 2:4 but stay dense-stored" in caplog.text
    assert all(type(t.weight) is torch.nn.Parameter for t in experts)
