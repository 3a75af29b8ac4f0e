"""The one-shot baselines and the weight updates on Mixture-of-Experts models (fused 3-D expert tensors):
every expert N:M along its true input dim, per-expert routing-aware statistics checked against a slow
token-by-token reference, and the magnitude fallback of experts that no calibration token reaches."""
import copy
import logging

import pytest
import torch
from torch.nn import functional as F

from torchprox.llm import baselines
from torchprox.llm.baselines import magnitude_prune, sparsegpt_prune, wanda_prune
from torchprox.llm.reconstruct import finetune_masked, obs_update
from torchprox.llm.targets import ROUTER, coverage_report, target_tensors
from torchprox.prox import nm_mask
from torchprox.prune import is_nm

from .tiny import MOE_ARCHS, tiny_moe

N, M = 2, 4
METHODS = {"magnitude": magnitude_prune, "wanda": wanda_prune, "sparsegpt": sparsegpt_prune}
# The flagged (@use_experts_implementation) classes: routed by (hidden, top_k_index, top_k_weights).
FLAGGED = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss")


@pytest.fixture
def calib():
    return torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))


def run(method, model, calib, **kwargs):
    fn = METHODS[method]
    return fn(model, N, M, **kwargs) if method == "magnitude" else fn(model, calib, N, M, **kwargs)


def expert_targets(model):
    return [t for t in target_tensors(model) if t.experts]


def magnitude(w, dim):
    return nm_mask(w.abs(), N, M, dim=dim)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_every_expert_tensor_is_nm_along_its_input_dim_and_only_routers_stay_dense(arch, method, calib):
    model = tiny_moe(arch)
    experts = expert_targets(model)
    w0 = {t.key: t.weight.detach().clone() for t in experts}
    fallbacks = {}
    report = run(method, model, calib, **({} if method == "magnitude" else {"fallbacks": fallbacks}))
    assert report == {t.key: 1.0 for t in target_tensors(model)}
    assert fallbacks == {}  # 8 × 16 tokens reach every expert of these models
    for t in experts:
        w = t.weight.detach()
        assert is_nm(w, N, M, dim=t.dim), t.key
        if t.dim == 1:  # transposed (experts, in, out): grouping along the last dim would be wrong
            assert not is_nm(w, N, M, dim=2), t.key
        if method == "sparsegpt":
            assert not torch.equal(w[w != 0], w0[t.key][w != 0]), t.key  # kept weights updated
        else:
            assert torch.equal(w, torch.where(w != 0, w0[t.key], 0)), t.key  # kept values are W0's, bit for bit
            assert (w != 0).sum() == w.numel() // 2
    cov = coverage_report(model, N, M)
    assert cov["dense"] and set(cov["dense"].values()) == {ROUTER}, cov["dense"]


# ------------------------------------------------------------------------------------------- slow reference


def first_experts(model):
    """The experts module of the first block with fused experts (its inputs are the dense model's when only its
    tensors are pruned)."""
    return expert_targets(model)[0].module


def experts_call(model, module, calib):
    """(hidden (T, H), top_k_index (T, k), top_k_weights (T, k)) of ``module``'s call in a dense forward."""
    box = {}

    def hook(mod, args, out):
        box.setdefault("args", args)

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(calib, use_cache=False)
    finally:
        handle.remove()
    hidden, index, weights = box["args"][:3]
    return hidden.reshape(-1, hidden.shape[-1]), index, weights


@torch.no_grad()
def reference_rows(module, hidden, index, weights):
    """{param: [expert e's rows (r_t x_t) as a (rows, in) tensor]}: a loop over tokens and their top-k slots,
    each row the input of expert e's projection scaled by the routing weight r_t."""
    first = "gate_up_proj" if module.has_gate else "up_proj"
    experts = getattr(module, first).shape[0]
    rows = {first: [[] for _ in range(experts)], "down_proj": [[] for _ in range(experts)]}
    for t in range(hidden.shape[0]):
        for slot in range(index.shape[1]):
            e, r, x = int(index[t, slot]), weights[t, slot], hidden[t]
            w = getattr(module, first)[e]
            y = x @ w if module.is_transposed else w @ x
            if module.__dict__.get("has_bias"):
                y = y + getattr(module, first + "_bias")[e]
            h = module._apply_gate(y[None])[0] if module.has_gate else module.act_fn(y)
            rows[first][e].append(r * x)
            rows["down_proj"][e].append(r * h)
    return {p: [torch.stack(r) if r else hidden.new_zeros(0, 1) for r in per] for p, per in rows.items()}


@pytest.mark.parametrize("arch", FLAGGED)
def test_wanda_expert_masks_equal_a_token_by_token_reference(arch, calib):
    """‖X_j‖ of expert e comes only from the tokens routed to e (and, for down_proj, from e's own activations),
    each row scaled by its routing weight."""
    model = tiny_moe(arch)
    module = first_experts(model)
    rows = reference_rows(module, *experts_call(model, module, calib))
    block = [t for t in expert_targets(model) if t.module is module]
    w0 = {t.key: t.weight.detach().clone() for t in block}
    wanda_prune(model, calib, N, M, targets=[t.key for t in block])
    for t in block:
        norms = torch.stack([x.square().sum(0).sqrt() for x in rows[t.param]])  # (experts, in)
        scores = w0[t.key].abs() * (norms[:, None, :] if t.dim == 2 else norms[:, :, None])
        assert torch.equal(t.weight != 0, nm_mask(scores, N, M, dim=t.dim)), t.key


def sparsegpt_first_experts(arch, calib):
    """SparseGPT on the first experts module of a tiny ``arch`` only: (its targets, reference_rows, their W0)."""
    model = tiny_moe(arch)
    module = first_experts(model)
    rows = reference_rows(module, *experts_call(model, module, calib))
    block = [t for t in expert_targets(model) if t.module is module]
    w0 = {t.key: t.weight.detach().clone() for t in block}
    sparsegpt_prune(model, calib, N, M, targets=[t.key for t in block], blocksize=16)
    return block, rows, w0


@pytest.mark.parametrize("arch", FLAGGED)
def test_sparsegpt_experts_equal_the_solver_on_a_token_by_token_hessian(arch, calib):
    """Expert e is solved with H_e = 2 Σ_t (r_t x_t)(r_t x_t)ᵀ / rows_e built only from the rows routed to e
    (for down_proj, e's own activations), oriented (out, in): the result equals sparsegpt_solve on that
    reference Hessian."""
    block, rows, w0 = sparsegpt_first_experts(arch, calib)
    for t in block:
        for e, x in enumerate(rows[t.param]):
            x = x.double()
            hessian = 2 * x.t() @ x / x.shape[0]
            w = w0[t.key][e] if t.dim == 2 else w0[t.key][e].t()  # (out, in)
            expected, _ = baselines.sparsegpt_solve(w, hessian.float(), N, M, blocksize=16)
            got = t.weight.detach()[e] if t.dim == 2 else t.weight.detach()[e].t()
            assert torch.equal(got != 0, expected != 0), (t.key, e)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3, msg=f"{t.key}[{e}]")


@pytest.mark.parametrize("arch", FLAGGED)
def test_sparsegpt_per_expert_output_error_beats_magnitude_on_routed_rows(arch, calib):
    block, rows, w0 = sparsegpt_first_experts(arch, calib)
    for t in block:
        for e, x in enumerate(rows[t.param]):
            assert x.shape[0] > 0
            pruned = (w0[t.key], t.weight.detach(), w0[t.key] * magnitude(w0[t.key], t.dim))
            w, q, mag = (v[e] if t.dim == 2 else v[e].t() for v in pruned)  # (out, in)
            err_q, err_mag = ((w - q) @ x.t()).norm(), ((w - mag) @ x.t()).norm()
            assert err_q < err_mag, (t.key, e, float(err_q), float(err_mag))


# ------------------------------------------------------------------------------------------- fallbacks


def never_route_to(model, expert):
    """Forward hooks on Mixtral's routers that renormalise the top-k over every expert but ``expert``."""
    def hook(router, args, out):
        logits = out[0].clone()
        logits[:, expert] = float("-inf")
        top, index = torch.topk(F.softmax(logits.float(), dim=-1), router.top_k, dim=-1)
        return out[0], top / top.sum(-1, keepdim=True), index

    return [layer.mlp.gate.register_forward_hook(hook) for layer in model.model.layers]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_an_unrouted_expert_gets_the_magnitude_mask_and_is_reported(method, calib, caplog):
    model = tiny_moe("mixtral")
    experts = expert_targets(model)
    w0 = {t.key: t.weight.detach().clone() for t in experts}
    handles = never_route_to(model, 3)
    fallbacks = {}
    with caplog.at_level(logging.WARNING, logger=baselines.__name__):
        report = run(method, model, calib, fallbacks=fallbacks)
    for h in handles:
        h.remove()
    assert set(report.values()) == {1.0}
    assert fallbacks == {t.key: [3] for t in experts}
    assert "4 expert(s)" in caplog.text and "fell back to the magnitude mask" in caplog.text
    for t in experts:
        w = t.weight.detach()
        assert torch.equal(w[3], w0[t.key][3] * magnitude(w0[t.key][3], t.dim - 1)), t.key  # no update either
        assert not torch.equal(w[:3] != 0, magnitude(w0[t.key][:3], t.dim))  # the routed ones use their data


def test_without_fallbacks_nothing_is_logged(calib, caplog):
    with caplog.at_level(logging.WARNING, logger=baselines.__name__):
        wanda_prune(tiny_moe("mixtral"), calib, N, M)
    assert "fell back" not in caplog.text


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_an_experts_class_torchprox_cannot_capture_falls_back_to_magnitude_for_every_expert(method, calib,
                                                                                           monkeypatch):
    monkeypatch.setattr(baselines, "supports_capture", lambda module: False)
    model = tiny_moe("gpt_oss")
    experts = expert_targets(model)
    w0 = {t.key: t.weight.detach().clone() for t in experts}
    fallbacks = {}
    run(method, model, calib, fallbacks=fallbacks)
    assert fallbacks == {t.key: [0, 1, 2, 3] for t in experts}
    for t in experts:
        assert torch.equal(t.weight, w0[t.key] * magnitude(w0[t.key], t.dim)), t.key


# ------------------------------------------------------------------------------------------- reconstruct


def magnitude_masks(model):
    return {t.key: magnitude(t.weight.detach(), t.dim) for t in target_tensors(model)}


@pytest.mark.parametrize("arch", ["mixtral", "gpt_oss"])
def test_obs_update_keeps_expert_masks_and_updates_the_kept_weights(arch, calib):
    model = tiny_moe(arch)
    masks = magnitude_masks(model)
    w0 = {t.key: t.weight.detach().clone() for t in expert_targets(model)}
    report = obs_update(model, calib, masks, N, M, blocksize=16)
    assert set(report) == set(masks) and set(report.values()) == {1.0}
    for t in expert_targets(model):
        w = t.weight.detach()
        assert (w[~masks[t.key]] == 0).all() and is_nm(w, N, M, dim=t.dim)
        assert not torch.equal(w, w0[t.key] * masks[t.key]), t.key


@pytest.mark.parametrize("arch", ["mixtral", "gpt_oss"])
def test_finetune_masked_trains_kept_expert_weights_and_keeps_pruned_ones_zero(arch, calib):
    model = tiny_moe(arch)
    masks = {k: v for k, v in magnitude_masks(model).items() if ".experts." in k}
    experts = expert_targets(model)
    others = {k: v.clone() for k, v in model.state_dict().items()
              if not any(k == t.tensor_name for t in experts)}
    with torch.no_grad():
        for t in experts:
            t.weight.mul_(masks[t.key])
    before = {t.key: t.weight.detach().clone() for t in experts}
    finetune_masked(model, calib, masks, steps=3, lr=1e-2, batch_size=4)
    for t in experts:
        w = t.weight.detach()
        assert torch.equal(w != 0, before[t.key] != 0) and not torch.equal(w, before[t.key]), t.key
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in others.items())


def test_bad_expert_masks_are_refused_before_any_change(calib):
    model = tiny_moe("mixtral")
    before = copy.deepcopy(model.state_dict())
    key = "model.layers.0.mlp.experts.gate_up_proj"
    bad = {**magnitude_masks(model), key: torch.ones(128, 32, dtype=torch.bool)}
    for fn in (obs_update, finetune_masked):
        with pytest.raises(ValueError, match=rf"mask for '{key}' must be bool of shape \(4, 128, 32\)"):
            fn(model, calib, bad)
    with pytest.raises(ValueError, match="not a module with a weight"):
        finetune_masked(model, calib, {"model.layers.0.mlp.experts.nowhere": torch.ones(1, dtype=torch.bool)})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
