"""learnable_nm / learnable_nm_model / prox_param_groups / apply_learned_masks / remove / frozen_weight_penalty."""
from __future__ import annotations

import logging
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from torchprox import ProxAdam
from torchprox.prox import nm_mask
from torchprox.prune import (apply_learned_masks, frozen_weight_penalty, is_nm, is_pruned, learnable_nm,
                             learnable_nm_model, nm_structured, prox_param_groups, remove, remove_all)

from ._util import LAYER_KINDS, bits_equal, hf_conv1d, make_layer, nonzeros_per_group, reference_mask


def _p(layer):
    return layer.parametrizations.weight[0]


def _orig(layer):
    return layer.parametrizations.weight.original


# -- learnable_nm: validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("layer, shape", [
    (nn.Linear(6, 4), "(4, 6)"),
    (nn.Conv2d(6, 4, 3), "(4, 6, 3, 3)"),
    (nn.Conv1d(8, 4, 3, groups=4), "(4, 2, 3)"),
])
def test_non_multiple_of_m_is_a_value_error_naming_module_and_shape(layer, shape):
    with pytest.raises(ValueError) as err:
        learnable_nm(layer)
    msg = str(err.value)
    assert type(layer).__name__ in msg and shape in msg and "not a multiple of 4" in msg
    assert not hasattr(layer, "parametrizations")


def test_hf_conv1d_is_grouped_along_dim_0_and_checked_there():
    ok = learnable_nm(hf_conv1d(8, 6))  # weight (8, 6): 6 outputs is fine, 8 inputs divisible by 4
    assert _p(ok).dim == 0
    with pytest.raises(ValueError, match=r"Conv1D.*\(6, 8\).*dim 0"):
        learnable_nm(hf_conv1d(6, 8))


def test_invalid_targets_are_value_errors():
    with pytest.raises(ValueError, match="0 < n < m"):
        learnable_nm(nn.Linear(8, 4), n=4, m=4)
    lin = learnable_nm(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="already has torchprox N:M parametrization"):
        learnable_nm(lin)
    pruned = torch_prune.l1_unstructured(nn.Linear(8, 4), "weight", amount=0.5)
    with pytest.raises(ValueError, match="torch.nn.utils.prune"):
        learnable_nm(pruned)
    with pytest.raises(ValueError, match="Pass dim= explicitly"):
        learnable_nm(nn.Embedding(10, 8))
    emb = learnable_nm(nn.Embedding(10, 8), dim=1)
    assert _p(emb).dim == 1
    with pytest.raises(ValueError, match="no Parameter named 'nope'"):
        learnable_nm(nn.Linear(8, 4), name="nope")
    with pytest.raises(ValueError, match="out of range"):
        learnable_nm(nn.Linear(8, 4), dim=2)


def test_negative_dim_is_normalised():
    assert _p(learnable_nm(nn.Linear(8, 4), dim=-1)).dim == 1


# -- learnable_nm_model: targets ------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.fc1 = nn.Linear(8, 12)
        self.odd = nn.Linear(6, 8)  # 6 inputs: not 2:4-groupable
        self.fc2 = nn.Linear(12, 8)
        self.lm_head = nn.Linear(8, 16, bias=False)

    def forward(self, idx):
        h = self.fc2(torch.relu(self.fc1(self.emb(idx))))
        return self.lm_head(h + self.odd(h[..., :6]))


def test_all_linear_skips_ungroupable_with_a_warning_and_the_head(caplog):
    net = _Net()
    with caplog.at_level(logging.WARNING, logger="torchprox.prune"):
        names = learnable_nm_model(net)
    assert names == ["fc1", "fc2"]
    assert "odd" in caplog.text and "(8, 6)" in caplog.text
    assert not hasattr(net.odd, "parametrizations") and not hasattr(net.lm_head, "parametrizations")
    assert learnable_nm_model(net) == []  # already learnable: left as is


def test_explicit_targets_raise_naming_the_module_and_change_nothing():
    net = _Net()
    with pytest.raises(ValueError, match=r"Linear 'odd'.*\(8, 6\)"):
        learnable_nm_model(net, targets=["fc1", "odd"])
    assert not hasattr(net.fc1, "parametrizations")  # validated before anything was registered
    with pytest.raises(ValueError, match="Embedding 'emb'.*dim="):
        learnable_nm_model(net, targets=["emb"])
    with pytest.raises(ValueError, match="matched no module"):
        learnable_nm_model(net, targets=["nothing_here"])


def test_regex_targets_and_exclude():
    net = _Net()
    assert learnable_nm_model(net, targets=r"fc\d") == ["fc1", "fc2"]
    net = _Net()
    assert learnable_nm_model(net, exclude=["fc2"]) == ["fc1"]
    net = _Net()
    assert learnable_nm_model(net, targets=["lm_head"], n=1, m=8) == ["lm_head"]
    assert (_p(net.lm_head).n, _p(net.lm_head).m) == (1, 8)


def test_tied_weights_are_not_untied():
    tied = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="shared"):
        learnable_nm_model(tied, targets=["0"])
    assert learnable_nm_model(tied) == []  # all-linear: skipped (warned)


# -- prox_param_groups ----------------------------------------------------------------------------------
class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.conv = nn.Conv2d(8, 4, 1)
        self.hf = hf_conv1d(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):  # x: (B, 8)
        h = self.hf(self.lin(x))
        return self.norm(h) + self.conv(h[:, :, None, None]).sum()


def test_one_group_per_group_dim_and_one_plain_group():
    model = _Mixed()
    learnable_nm_model(model, targets=["lin", "conv", "hf"])
    groups = prox_param_groups(model, lam=0.3, metric="adam", lam_scaling="lr", lr=1e-3,
                               rest={"lr": 1e-5, "weight_decay": 0.0})
    assert len(groups) == 3
    by_dim = {g["prox_kwargs"]["dim"]: g for g in groups if g["prox"] == "nm"}
    assert set(by_dim) == {0, 1}
    assert [p is q for p, q in zip(by_dim[1]["params"], [_orig(model.lin), _orig(model.conv)])] == [True, True]
    assert by_dim[0]["params"][0] is _orig(model.hf)
    for g in by_dim.values():
        assert g["lam"] == 0.3 and g["metric"] == "adam" and g["lam_scaling"] == "lr" and g["lr"] == 1e-3
        assert g["prox_kwargs"]["n"] == 2 and g["prox_kwargs"]["m"] == 4
    rest = groups[-1]
    assert rest["prox"] is None and rest["lam"] == 0.0 and rest["lr"] == 1e-5
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in rest["params"]) == ["conv.bias", "hf.bias", "lin.bias", "norm.bias",
                                                            "norm.weight"]
    w0s = {id(_p(layer).w0) for layer in (model.lin, model.conv, model.hf)}
    assert not w0s & {id(p) for g in groups for p in g["params"]}
    # plain data apart from the params
    pickle.dumps([{k: v for k, v in g.items() if k != "params"} for g in groups])
    ProxAdam(groups)  # ProxAdam accepts them
    opt = ProxAdam(prox_param_groups(model, lam=0.3))
    model(torch.randn(3, 8)).sum().backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_prox_param_groups_options_and_errors():
    model = _Mixed()
    with pytest.raises(ValueError, match="no learnable N:M weight"):
        prox_param_groups(model, lam=0.1)
    learnable_nm_model(model, targets=["lin"])
    model.norm.requires_grad_(False)
    groups = prox_param_groups(model, lam=0.1, include_rest=False)
    assert len(groups) == 1
    groups = prox_param_groups(model, lam=0.1)
    assert all(p.requires_grad for p in groups[-1]["params"]) and len(groups[-1]["params"]) == 5
    with pytest.raises(ValueError, match="registered as 2:4"):
        prox_param_groups(model, lam=0.1, n=1, m=4)
    assert prox_param_groups(model, lam=0.1, n=2, m=4)[0]["prox_kwargs"] == {"n": 2, "m": 4, "dim": 1}


# -- learning, masking, removing ------------------------------------------------------------------------
def _learn(layer, x, steps=8, lam=0.3):
    target = (0.7 * layer(x)).detach()
    opt = ProxAdam(prox_param_groups(layer, lam=lam), lr=0.05)
    for _ in range(steps):
        (layer(x) - target).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return opt


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_apply_learned_masks_is_exact_nm_and_keeps_w0(kind):
    layer, x, dim = make_layer(kind)
    learnable_nm(layer)
    opt = _learn(layer, x)
    w = _orig(layer).detach().clone()
    w0 = _p(layer).w0.clone()
    assert bits_equal(w0, w0) and not torch.equal(w, w0)
    masks = apply_learned_masks(layer, optimizer=opt)
    mask = masks["weight"]
    # the mask is the top-2 of 4 |W| along the reduction dim, exactly 2 per group, lower index on ties
    assert torch.equal(mask, reference_mask(w.abs(), 2, 4, dim))
    assert torch.equal(nonzeros_per_group(mask, 4, dim), torch.full_like(nonzeros_per_group(mask, 4, dim), 2))
    # the weight is W0 where kept, +0 elsewhere: no kept weight changed
    assert bits_equal(layer.weight, torch.where(mask, w0, torch.zeros_like(w0)))
    assert is_nm(layer.weight, 2, 4, dim)
    # W and W0 released; the optimizer's state for W deleted, and further steps change nothing
    p = _p(layer)
    assert p.state == "masked" and p.w0 is None and not _orig(layer).requires_grad and _orig(layer).grad is None
    assert _orig(layer) not in opt.state
    before = layer.weight.detach().clone()
    layer(x).sum().backward()
    opt.step()
    assert bits_equal(layer.weight, before)
    assert apply_learned_masks(layer) == {}
    # remove: a plain Parameter with the same forward
    y = layer(x)
    remove(layer)
    assert type(layer.weight) is nn.Parameter and layer.weight.requires_grad
    assert not hasattr(layer, "parametrizations") and type(layer).__name__ in ("Linear", "Conv1d", "Conv2d", "Conv1D")
    assert torch.equal(layer(x), y)
    assert bits_equal(layer.weight, torch.where(mask, w0, torch.zeros_like(w0)))
    assert not is_pruned(layer)


def test_remove_while_learning_bakes_w_with_a_warning(caplog):
    layer, x, _ = make_layer("linear")
    learnable_nm(layer)
    _learn(layer, x, steps=2)
    y = layer(x)
    w = _orig(layer)
    with caplog.at_level(logging.WARNING, logger="torchprox.prune"):
        remove(layer)
    assert "still learning" in caplog.text
    assert layer.weight is w and torch.equal(layer(x), y)


def test_remove_restores_requires_grad_and_delegates_to_torch_prune():
    lin = nn.Linear(8, 4)
    lin.requires_grad_(False)  # a frozen model: only the learnable copy W trains
    learnable_nm(lin)
    assert _orig(lin).requires_grad and [g["prox"] for g in prox_param_groups(lin, lam=0.1)] == ["nm"]
    apply_learned_masks(lin)
    remove(lin)
    assert not lin.weight.requires_grad
    pruned = nm_structured(nn.Linear(8, 4))
    remove(pruned)
    assert not torch_prune.is_pruned(pruned) and is_nm(pruned.weight, 2, 4, 1)
    with pytest.raises(ValueError, match="nothing|no torchprox"):
        remove(nn.Linear(8, 4))


def test_remove_all_and_is_pruned_on_a_model():
    net = _Net()
    assert not is_pruned(net)
    learnable_nm_model(net)
    assert is_pruned(net)
    apply_learned_masks(net)
    idx = torch.randint(0, 16, (2, 5))
    y = net(idx)
    assert remove_all(net) == ["fc1.weight", "fc2.weight"]
    assert torch.equal(net(idx), y) and not is_pruned(net)


def test_masked_weight_stays_nm_under_masked_finetuning():
    lin = learnable_nm(nn.Linear(8, 4))
    masks = apply_learned_masks(lin)
    _orig(lin).requires_grad_(True)  # the user unfreezes the kept weights
    opt = torch.optim.AdamW([_orig(lin)], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        lin(torch.randn(4, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(lin.weight != 0, masks["weight"] & (lin.weight != 0)) and is_nm(lin.weight, 2, 4, 1)


# -- frozen_weight_penalty ------------------------------------------------------------------------------
def test_frozen_weight_penalty_formula_and_zeros():
    lin = learnable_nm(nn.Linear(8, 4))
    w0 = _p(lin).w0
    assert frozen_weight_penalty(lin).item() == 0.0  # W = W0
    with torch.no_grad():
        _orig(lin).copy_(torch.where(nm_mask(w0.abs(), 2, 4, 1), w0, 0))  # each entry W0 or 0
    assert frozen_weight_penalty(lin).item() == 0.0
    with torch.no_grad():
        _orig(lin).copy_(w0 * 1.5)
    expected = (w0 * 1.5 * (0.5 * w0) / (w0 + 1e-8 * torch.sign(w0))).square().sum()
    val = frozen_weight_penalty(lin)
    torch.testing.assert_close(val, expected)
    val.backward()
    assert _orig(lin).grad is not None and torch.count_nonzero(_orig(lin).grad) > 0


def test_frozen_weight_penalty_is_finite_at_zero_w0_and_skips_masked_layers():
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[0, 0] = 0.0
        lin.weight[1, 1] = -0.0
    learnable_nm(lin)
    assert frozen_weight_penalty(lin).item() == 0.0
    with torch.no_grad():
        _orig(lin)[0, 0] = 1e-3
    val = frozen_weight_penalty(lin)
    assert torch.isfinite(val) and val.item() > 0
    apply_learned_masks(lin)
    assert frozen_weight_penalty(lin).item() == 0.0


# -- a Parameter shared between modules is refused (issue 21, item 10) ----------------------------------------
@pytest.mark.parametrize("method", [learnable_nm, nm_structured])
def test_shared_parameter_is_refused_before_anything_changes(method):
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    net = nn.Sequential(a, nn.ReLU(), b)
    before = a.weight.detach().clone()
    with pytest.raises(ValueError, match=r"Linear '2'.*shared with Linear '0'.*Untie"):
        method(b)
    assert not is_pruned(net) and b.weight is a.weight and type(b) is nn.Linear and bits_equal(a.weight, before)
    held = nn.Linear(8, 4)
    keep = held.weight  # a reference that is not another module's is no sharing
    assert is_pruned(method(held))
    del keep


def test_masked_weight_keeps_the_parameters_memory_layout():
    """A mask along a dim other than the last comes back as a permuted view; the Parameter must not take its
    layout (other strides run other kernels: a reloaded checkpoint would compute different bits)."""
    import torch
    from torchprox.prune import apply_learned_masks, learnable_nm, remove_all

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, 8, 4))          # (experts, in, out): groups along dim 1

    mod = learnable_nm(Experts(), "w", dim=1)
    apply_learned_masks(mod)
    remove_all(mod)
    assert mod.w.is_contiguous() and mod.w.stride() == (32, 4, 1)
