"""LoRA on a torchprox-sparsified tiny Llama: fine-tuning works, the masked merge keeps the model exactly 2:4."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from torchprox.llm import lora_nm_report, merge_lora_nm, sparsify  # noqa: E402
from torchprox.prune import is_nm  # noqa: E402

from .tiny import tiny_llama  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tuning_data():
    g = torch.Generator().manual_seed(0)
    return (5 * torch.arange(24).repeat(8, 1) + torch.randint(0, 3, (8, 24), generator=g)) % 63


def loss_of(model, ids) -> float:
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def sparse_lora_model(**lora):
    model = tiny_llama()
    sparsify(model, None, 2, 4, method="magnitude")  # torchprox's one-shot 2:4 on every decoder linear
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, **lora)
    return peft.get_peft_model(model, config)


def targets_of(model):
    return {name: mod for name, mod in model.named_modules() if name.split(".")[-1] in TARGETS
            and isinstance(mod, torch.nn.Linear)}


@pytest.fixture(scope="module")
def tuned():
    """A LoRA fine-tuned sparse tiny Llama, with its loss before and after tuning."""
    pm = sparse_lora_model()
    ids = tuning_data()
    before = loss_of(pm, ids)
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    pm.train()
    for _ in range(40):
        pm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    pm.eval()
    return pm, before, loss_of(pm, ids)


def test_lora_fine_tuning_of_the_sparse_model_lowers_the_loss(tuned):
    pm, before, after = tuned
    assert after < before - 0.5
    base = pm.get_base_model()
    assert all(not p.requires_grad for n, p in base.named_parameters() if "lora_" not in n)  # W frozen
    for name, mod in targets_of(base).items():
        assert is_nm(mod.weight, 2, 4, dim=1), name  # LoRA never touched the sparse base weights


def test_plain_merge_breaks_2_4_and_masked_merge_keeps_it(tuned):
    pm, before, after = tuned
    plain = copy.deepcopy(pm).merge_and_unload()
    broken = [name for name, mod in targets_of(plain).items() if not is_nm(mod.weight, 2, 4, dim=1)]
    assert len(broken) == 14  # PEFT's merge makes every target dense

    pm = copy.deepcopy(pm)
    expected = {}
    for name, layer in pm.named_modules():
        if isinstance(layer, peft.tuners.lora.Linear):
            w = layer.get_base_layer().weight.detach().clone()
            delta = layer.get_delta_weight("default")
            assert delta.abs().min() < delta.abs().max() and (delta[w == 0] != 0).any()  # a real, dense update
            expected[name.removeprefix("base_model.model.")] = (w, torch.where(w != 0, w + delta, torch.zeros(())))
    report = lora_nm_report(pm)
    assert len(report) == 14 and all(r["base_is_nm"] for r in report.values())
    assert all(0.2 < r["delta_kept"] < 0.9 for r in report.values())

    merged = merge_lora_nm(pm)
    assert isinstance(merged, transformers.LlamaForCausalLM)
    assert not any("lora_" in n for n, _ in merged.named_modules())
    assert set(targets_of(merged)) == set(expected)
    for name, mod in targets_of(merged).items():
        w0, want = expected[name]
        assert type(mod) is torch.nn.Linear and is_nm(mod.weight, 2, 4, dim=1), name
        assert torch.equal(mod.weight, want), name  # kept W + ΔW on the kept positions, bit for bit
        assert torch.equal(mod.weight == 0, (w0 == 0) | (want == 0)), name  # the pruned positions stay 0
    ids = tuning_data()
    merged_loss = loss_of(merged, ids)
    assert merged_loss < before  # the masked merge keeps part of the gain
    assert merged_loss > after - 1e-4  # but not the dropped part: the LoRA model (dense ΔW) was better


def test_merge_errors():
    model = tiny_llama()  # dense: no N:M mask to merge into
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"q_proj'.*not 2:4.*require_nm=False"):
        merge_lora_nm(pm)
    assert isinstance(pm.base_model.model.model.layers[0].self_attn.q_proj, peft.tuners.lora.Linear)  # unchanged

    pm = sparse_lora_model(use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        merge_lora_nm(pm)
    with pytest.raises(ValueError, match="no LoRA layer"):
        merge_lora_nm(tiny_llama())


def test_require_nm_false_merges_dense_targets_densely():
    model = tiny_llama()
    sparsify(model, None, 2, 4, method="magnitude", targets=["q_proj"])
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights=False))
    v = pm.base_model.model.model.layers[0].self_attn.v_proj
    want_v = v.get_base_layer().weight.detach() + v.get_delta_weight("default")
    merged = merge_lora_nm(pm, require_nm=False)
    layer = merged.model.layers[0].self_attn
    assert is_nm(layer.q_proj.weight, 2, 4, dim=1)
    assert not is_nm(layer.v_proj.weight, 2, 4, dim=1)
    torch.testing.assert_close(layer.v_proj.weight, want_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_merge_equals_peft_merge_then_remask(dtype):
    """merge_lora_nm == PEFT's own merge_and_unload followed by re-masking to the base weights' zeros, bit for
    bit: on a kept position both compute W + ΔW (one IEEE add per adapter, same operands, same order), on a
    pruned one both store 0. Two adapters with nonzero B, merged together, in float32 and bfloat16."""
    model = tiny_llama().to(dtype)
    sparsify(model, None, 2, 4, method="magnitude")
    lora = dict(lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=False)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, **lora))
    pm.add_adapter("other", peft.LoraConfig(r=2, **lora))
    both = ["default", "other"]
    ours = merge_lora_nm(copy.deepcopy(pm), adapter_names=both)

    pm = copy.deepcopy(pm)
    keep = {name: layer.get_base_layer().weight != 0 for name, layer in pm.get_base_model().named_modules()
            if isinstance(layer, peft.tuners.lora.Linear)}
    theirs = pm.merge_and_unload(safe_merge=True, adapter_names=both)
    ours_w, theirs_w = targets_of(ours), targets_of(theirs)
    assert len(ours_w) == 14 and set(keep) == set(theirs_w) == set(ours_w)
    for name, mod in theirs_w.items():
        mask = keep[name]
        remasked = torch.where(mask, mod.weight, torch.zeros((), dtype=dtype))
        assert not is_nm(mod.weight, 2, 4, dim=1), name  # PEFT's merge itself is dense
        assert ours_w[name].weight.dtype == dtype and torch.equal(ours_w[name].weight, remasked), name
        assert is_nm(ours_w[name].weight, 2, 4, dim=1), name
    rest = {n: p for n, p in theirs.state_dict().items() if n.removesuffix(".weight") not in theirs_w}
    assert len(rest) > 0 and all(torch.equal(ours.state_dict()[n], p) for n, p in rest.items())  # the rest
