"""torchprox.llm.targets and torchprox.llm.experts: every matrix weight of the decoder blocks, fused experts
included, each along its true input dim; the coverage report; per-expert calibration inputs."""
import pytest
import torch
from torch import nn

from torchprox.llm import magnitude_prune
from torchprox.llm.experts import ExpertInputStats, routed_inputs, supports_capture
from torchprox.llm.targets import ROUTER, coverage_report, expert_layout, target_tensors
from torchprox.prune import register_layout

from .tiny import MOE_ARCHS, tiny_llama, tiny_moe

EXPECTED_DIM = {"gpt_oss": 1, "llama4": 1}  # transposed (experts, in, out); every other arch: 2


def _experts_calls(model, ids):
    """[(experts module, args, kwargs, output)] of one forward."""
    modules = {id(t.module): t.module for t in target_tensors(model) if t.experts}
    calls = []
    handles = [m.register_forward_hook(lambda mod, a, k, out: calls.append((mod, a, k, out)), with_kwargs=True)
               for m in modules.values()]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_every_expert_tensor_is_a_target_along_its_input_dim(arch):
    model = tiny_moe(arch)
    experts = [t for t in target_tensors(model) if t.experts]
    names = {t.tensor_name for t in experts}
    fused = {f"{q}.{p}" for q, mod in model.named_modules() for p in expert_layout(mod)}
    assert names == fused and len(names) >= 2
    assert {t.dim for t in experts} == {EXPECTED_DIM.get(arch, 2)}
    assert all(t.experts == 4 for t in experts)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_the_input_dim_is_what_the_forward_reduces_over(arch):
    """Behavioural probe, replaying each experts call with its routing fixed: perturbing the slices of a
    tensor along its *output* dim at index j changes output feature j only (down_proj), and perturbing
    gate_up's slices along its input dim at j changes nothing when input feature j is zero."""
    torch.manual_seed(1)
    model = tiny_moe(arch)
    targets = {(id(t.module), t.param): t for t in target_tensors(model) if t.experts}
    for mod, args, kwargs, out in _experts_calls(model, torch.randint(0, 64, (2, 8))):
        down = targets[(id(mod), "down_proj")]
        out_dim = 3 - down.dim
        with torch.no_grad():
            saved = mod.down_proj.detach().clone()
            mod.down_proj.select(out_dim, 3).add_(1.0)
            changed = (mod(*args, **kwargs) - out).abs().amax(0) > 1e-6
            mod.down_proj.copy_(saved)
        assert changed[3] and changed.sum() == 1, arch
        gate_up = targets[(id(mod), "gate_up_proj")]
        hidden = args[0].clone()
        hidden[:, 5] = 0
        with torch.no_grad():
            base = mod(hidden, *args[1:], **kwargs)
            saved = mod.gate_up_proj.detach().clone()
            mod.gate_up_proj.select(gate_up.dim, 5).add_(1.0)
            same = torch.allclose(mod(hidden, *args[1:], **kwargs), base, atol=1e-6, rtol=0)
            mod.gate_up_proj.copy_(saved)
        assert same, arch


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_routed_inputs_rebuild_the_experts_output(arch):
    """Σ_e r_t · down_e(h_e) over the captured rows is the module's output: the rows are what each expert
    multiplies, with the routing weights the model applies."""
    model = tiny_moe(arch)
    calls = _experts_calls(model, torch.randint(0, 64, (2, 8)))
    assert calls
    for mod, args, kwargs, out in calls:
        assert supports_capture(mod)
        rebuilt = torch.zeros_like(out)
        transposed = mod.__dict__.get("is_transposed", True)
        experts = mod.down_proj.shape[0]
        for e, rows, weights in routed_inputs(mod, args, kwargs):
            w = mod.down_proj[e]
            y = rows["down_proj"] @ w if transposed else torch.nn.functional.linear(rows["down_proj"], w)
            if mod.__dict__.get("has_bias"):
                y = y + mod.down_proj_bias[e]
            if weights is None:  # Llama 4: rows e·T + t of the (E·T, H) input, the all-zero ones left out
                x_all = args[0].reshape(experts, -1, args[0].shape[-1])[e]
                tokens = x_all.ne(0).any(-1).nonzero().squeeze(-1)
                rebuilt[e * x_all.shape[0] + tokens] = y
            else:
                tok, _ = torch.where(args[1] == e)
                rebuilt.index_add_(0, tok, y * weights.unsqueeze(-1))
        torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-5)


def test_expert_input_stats_count_every_routed_token_once_per_expert():
    model = tiny_moe("mixtral")
    experts = [t for t in target_tensors(model) if t.experts]
    with ExpertInputStats(experts, lambda x: x.square().sum(0)) as stats, torch.no_grad():
        model(torch.randint(0, 64, (3, 8)))
    for t in experts:
        assert int(stats.tokens[t.key].sum()) == 3 * 8 * 2            # top-2 of 4 experts
        assert stats.stats[t.key].shape == (4, t.weight.shape[t.dim])


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_magnitude_covers_every_matrix_but_the_router(arch):
    model = tiny_moe(arch)
    before = coverage_report(model, 2, 4)
    assert before["nm_weights"] == 0
    magnitude_prune(model, 2, 4)
    after = coverage_report(model, 2, 4)
    assert set(after["dense"].values()) == {ROUTER}, after["dense"]
    routers = sum(p.numel() for name, p in model.named_parameters() if name in after["dense"])
    assert after["nm_weights"] == after["matrix_weights"] - routers
    assert after["coverage"] > 0.9


def test_a_dense_model_is_fully_covered():
    model = tiny_llama()
    magnitude_prune(model, 2, 4)
    r = coverage_report(model, 2, 4)
    assert r["coverage"] == 1.0 and r["dense"] == {}


def test_routers_stay_dense_unless_a_linear_one_is_named():
    model = tiny_moe("qwen2_moe")
    keys = [t.key for t in target_tensors(model)]
    assert not any(k.endswith("shared_expert_gate") for k in keys)
    named = [t.key for t in target_tensors(model, ["shared_expert_gate"])]
    assert named == ["model.layers.0.mlp.shared_expert_gate", "model.layers.1.mlp.shared_expert_gate"]
    with pytest.raises(ValueError, match="router of class MixtralTopKRouter"):
        target_tensors(tiny_moe("mixtral"), ["mlp.gate"])


def test_names_select_expert_tensors_by_suffix_module_or_regex():
    model = tiny_moe("mixtral")
    assert [t.param for t in target_tensors(model, ["experts.gate_up_proj"])] == ["gate_up_proj"] * 2
    assert [t.param for t in target_tensors(model, ["experts"])] == ["gate_up_proj", "down_proj"] * 2
    assert [t.key for t in target_tensors(model, r".*\.1\.mlp\.experts\.down_proj")] == [
        "model.layers.1.mlp.experts.down_proj"]


class Mixer(nn.Module):
    """A user's module with a plain 3-D Parameter (experts, in, out), applied as x @ w[e]."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 32, 32))

    def forward(self, x):
        return x


def test_unknown_layout_is_reported_never_guessed_and_an_error_when_named():
    model = tiny_llama()
    model.model.layers[0].mixer = Mixer()
    assert all(t.param != "w" for t in target_tensors(model))
    why = coverage_report(model, 2, 4)["dense"]["model.layers.0.mixer.w"]
    assert "register_layout(Mixer, 'w', dim)" in why
    with pytest.raises(ValueError, match=r"model.layers.0.mixer.w: no known N:M layout for Mixer.w of shape \(2, 32, 32\)"):
        target_tensors(model, ["mixer.w"])


def test_a_registered_layout_makes_it_a_target():
    class Registered(Mixer):
        pass

    register_layout(Registered, "w", 1)
    model = tiny_llama()
    model.model.layers[0].mixer = Registered()
    (target,) = [t for t in target_tensors(model) if t.param == "w"]
    assert (target.key, target.dim, target.experts) == ("model.layers.0.mixer.w", 1, 2)


def test_a_size_not_a_multiple_of_m_names_the_tensor():
    model = tiny_moe("mixtral")
    with pytest.raises(ValueError, match=r"experts.down_proj.*shape \(4, 32, 64\).*not a multiple of 3"):
        target_tensors(model, ["experts.down_proj"], m=3)


def test_a_resolved_list_passes_through_checked():
    model = tiny_moe("mixtral")
    chosen = target_tensors(model, ["experts"])
    assert target_tensors(model, chosen) == chosen
    with pytest.raises(ValueError, match="not a module of this MixtralForCausalLM"):
        target_tensors(tiny_moe("mixtral", seed=1), chosen)
    with pytest.raises(ValueError, match="not a multiple of 3"):
        target_tensors(model, chosen, m=3)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "proxsparse"])
def test_sparsify_resolves_the_targets_once(method, monkeypatch):
    """DESIGN: targets are resolved once per call and every stage receives that list."""
    import torchprox.llm.targets as targets_mod
    from torchprox.llm import sparsify

    calls = []
    real = targets_mod._name_spec
    monkeypatch.setattr(targets_mod, "_name_spec", lambda t: calls.append(t) or real(t))
    options = {"steps": 1} if method == "proxsparse" else {}
    sparsify(tiny_moe("qwen3_moe"), torch.randint(0, 64, (4, 16)), 2, 4, method=method, targets=["experts"],
             progress=False, **options)
    assert calls == [["experts"]]
