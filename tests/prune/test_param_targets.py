"""(module, "param_name") tensor targets of learnable_nm_model and register_layout: fused 3-D expert tensors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from torchprox import ProxAdam
from torchprox.prox import nm_mask
from torchprox.prune import (
    _layers,
    apply_learned_masks,
    is_nm,
    learnable_nm,
    learnable_nm_model,
    prox_param_groups,
    register_layout,
    remove_all,
)

from ..tasks import teacher_regression

E, D_IN, D_HID, D_OUT = 3, 8, 16, 8


class Experts(nn.Module):
    """w: (experts, out, in), applied per expert as F.linear(x, w[e]) (Mixtral's layout); dense routing."""

    def __init__(self, d_in=D_IN, d_out=D_HID):
        super().__init__()
        self.w = nn.Parameter(torch.randn(E, d_out, d_in) / d_in ** 0.5)

    def forward(self, x):
        return sum(F.linear(x, self.w[e]) for e in range(E))


class TransposedExperts(nn.Module):
    """w: (experts, in, out), applied per expert as x @ w[e] (GPT-OSS / Llama 4's layout); dense routing."""

    def __init__(self, d_in=D_HID, d_out=D_OUT):
        super().__init__()
        self.w = nn.Parameter(torch.randn(E, d_in, d_out) / d_in ** 0.5)

    def forward(self, x):
        return sum(x @ self.w[e] for e in range(E))


class MoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = Experts()
        self.down = TransposedExperts()
        self.head = nn.Linear(D_OUT, 4)

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.up(x)))))


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    monkeypatch.setattr(_layers, "_LAYOUTS", {})


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    return (not any(parametrize.is_parametrized(mod) for mod in model.modules())
            and after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before))


def _learn(model, steps=5):
    torch.manual_seed(1)
    x = torch.randn(64, D_IN)
    target = torch.randn(64, 4)
    opt = ProxAdam(prox_param_groups(model, lam=0.05, lr=1e-2), lr=1e-2)
    for _ in range(steps):
        F.mse_loss(model(x), target).backward()
        opt.step()
        opt.zero_grad()
    return opt


@pytest.mark.parametrize("how", ["tuple_dim", "dim_kwarg", "registered"])
def test_both_expert_layouts_learn_an_nm_mask_along_their_input_dim_with_w0_values(how):
    torch.manual_seed(0)
    model = MoE()
    w0 = {"up": model.up.w.detach().clone(), "down": model.down.w.detach().clone()}
    if how == "tuple_dim":
        names = learnable_nm_model(model, targets=[(model.up, "w", -1), (model.down, "w", 1)])
    elif how == "dim_kwarg":
        names = learnable_nm_model(model, targets=(model.up, "w"), dim=-1)
        names += learnable_nm_model(model, targets=[(model.down, "w")], dim=-2)
    else:
        register_layout(Experts, "w", -1)
        register_layout(TransposedExperts, "w", 1)
        names = learnable_nm_model(model, targets=[(model.up, "w"), (model.down, "w")])
    assert names == ["up.w", "down.w"]
    assert model.up.parametrizations.w[0].dim == 2 and model.down.parametrizations.w[0].dim == 1
    groups = prox_param_groups(model, lam=0.05)
    assert sorted(g["prox_kwargs"]["dim"] for g in groups if g["prox"] == "nm") == [1, 2]

    opt = _learn(model)
    learned = {"up": model.up.parametrizations.w.original.detach().clone(),
               "down": model.down.parametrizations.w.original.detach().clone()}
    assert not torch.equal(learned["up"], w0["up"]) and not torch.equal(learned["down"], w0["down"])
    apply_learned_masks(model, optimizer=opt)
    remove_all(model)
    for key, dim in (("up", 2), ("down", 1)):
        w = getattr(model, key).w.detach()
        mask = nm_mask(learned[key].abs(), 2, 4, dim=dim)
        assert is_nm(w, 2, 4, dim=dim)
        assert torch.equal(w, w0[key] * mask)  # kept values are W0's, bit for bit; the rest 0
    assert model(torch.randn(2, D_IN)).shape == (2, 4)


def test_transposed_layout_is_grouped_along_dim_1_not_the_last_dim():
    """Fails if the (experts, in, out) tensor were grouped along its last (output) dim."""
    torch.manual_seed(0)
    model = MoE()
    register_layout(TransposedExperts, "w", -2)
    learnable_nm_model(model, targets=[(model.down, "w")])
    _learn(model, steps=2)
    apply_learned_masks(model)
    w = model.down.w.detach()
    assert is_nm(w, 2, 4, dim=1)
    assert not is_nm(w, 2, 4, dim=2)
    # each output of x @ w[e] sums at most 2 of every 4 consecutive inputs
    per_group = (w != 0).reshape(E, D_HID // 4, 4, D_OUT).sum(2)
    assert per_group.max() <= 2


def test_unknown_layout_is_a_value_error_naming_class_param_shape_and_fix_and_changes_nothing():
    model = MoE()
    before = _snapshot(model)
    with pytest.raises(ValueError) as err:
        learnable_nm_model(model, targets=[(model.up, "w", -1), (model.down, "w")])
    msg = str(err.value)
    assert "TransposedExperts" in msg and "'w'" in msg and f"({E}, {D_HID}, {D_OUT})" in msg
    assert "dim=" in msg and "register_layout(TransposedExperts, 'w', dim)" in msg
    assert _unchanged(model, before)
    with pytest.raises(ValueError, match="register_layout"):
        learnable_nm(model.up, "w")
    assert _unchanged(model, before)


def test_registered_layout_is_used_when_dim_is_omitted_and_inherited_and_overridden_by_dim():
    class MyExperts(Experts):
        pass

    register_layout(Experts, "w", -1)
    assert learnable_nm(MyExperts(), "w").parametrizations.w[0].dim == 2
    assert learnable_nm(Experts(), "w", dim=1).parametrizations.w[0].dim == 1
    register_layout(MyExperts, "w", 1)  # most derived class wins
    assert learnable_nm(MyExperts(), "w").parametrizations.w[0].dim == 1
    assert learnable_nm(Experts(), "w").parametrizations.w[0].dim == 2


def test_mixed_name_and_tensor_targets():
    model = MoE()
    head = nn.Linear(D_OUT, 8)
    model.head = head
    names = learnable_nm_model(model, targets=["head", (model.up, "w", -1), (model.head, "weight")])
    assert names == ["head", "up.w"]  # the duplicate (head, "weight") is left out
    assert head.parametrizations.weight[0].dim == 1


@pytest.mark.parametrize("target, exc, pattern", [
    (lambda mdl: (mdl.up, "nope", -1), ValueError, r"Experts 'up': has no Parameter named 'nope'.*\['w'\]"),
    (lambda mdl: (mdl.up, "buf", -1), ValueError, r"'buf' is a Tensor, not an nn.Parameter"),
    (lambda mdl: (mdl.up, "w", 0), ValueError, rf"w of shape \({E}, {D_HID}, {D_IN}\).*size 3 along dim 0.*not a multiple of 4"),
    (lambda mdl: (mdl.up, "w", 5), ValueError, r"dim=5 is out of range for 'w' of shape"),
    (lambda mdl: (Experts(), "w", -1), ValueError, r"not a submodule of MoE"),
    (lambda mdl: (mdl.up, 3), TypeError, r"tensor target is \(module, 'param_name'\)"),
    (lambda mdl: (mdl.up, "w", 1.0), TypeError, r"tensor target is"),
])
def test_bad_tensor_targets_are_clear_errors_before_anything_changes(target, exc, pattern):
    torch.manual_seed(0)
    model = MoE()
    model.up.register_buffer("buf", torch.zeros(E, 4, 4))
    before = _snapshot(model)
    with pytest.raises(exc, match=pattern):
        learnable_nm_model(model, targets=[(model.down, "w", 1), "head", target(model)])
    assert _unchanged(model, before)


def test_shared_parameter_tensor_target_is_an_error():
    model = MoE()
    other = Experts()
    other.w = model.up.w
    model.other = other
    with pytest.raises(ValueError, match="shared with another module"):
        learnable_nm_model(model, targets=[(model.up, "w", -1)])
    assert not parametrize.is_parametrized(model.up)


def test_register_layout_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_layout(int, "w", 1)
    with pytest.raises(TypeError, match="param_name must be a str"):
        register_layout(Experts, 1, 1)
    with pytest.raises(TypeError, match="dim must be an int"):
        register_layout(Experts, "w", True)
    assert _layers._LAYOUTS == {}


class RoutedMoE(nn.Module):
    """Top-1 routed experts in both fused layouts: up (experts, hidden, in) used as F.linear(x, up[e]) and down
    (experts, hidden, out) used as h @ down[e], each token scaled by its router probability (Mixtral-style)."""

    def __init__(self, experts=4, d_in=16, d_hid=32, d_out=1):
        super().__init__()
        self.router = nn.Linear(d_in, experts)
        self.up = Experts(d_in, d_hid)
        self.up.w = nn.Parameter(torch.randn(experts, d_hid, d_in) / d_in ** 0.5)
        self.down = TransposedExperts(d_hid, d_out)
        self.down.w = nn.Parameter(torch.randn(experts, d_hid, d_out) / d_hid ** 0.5)

    def forward(self, x):
        probs = self.router(x).softmax(-1)
        weight, chosen = probs.max(-1)
        out = x.new_zeros(x.shape[0], self.down.w.shape[-1])
        for e in range(self.up.w.shape[0]):
            rows = chosen == e
            h = torch.tanh(F.linear(x[rows], self.up.w[e]))
            out[rows] = (h @ self.down.w[e]) * weight[rows, None]
        return out


def test_learned_expert_masks_beat_magnitude_on_a_small_routed_moe():
    """A small routed MoE (fused expert tensors in both layouts) fitted to a teacher, then its experts pruned 2:4
    along their input dims two ways: the ProxSparse-learned mask (λ=1, 200 steps) has a held-out error clearly
    below magnitude pruning's; without learning (0 steps, or λ=0: fine-tuning then top-2 of |W|) it does not."""
    (x_train, y_train), (x_test, y_test) = teacher_regression()

    def net():
        torch.manual_seed(1)
        return RoutedMoE()

    def error(model):
        with torch.no_grad():
            return float(F.mse_loss(model(x_test), y_test))

    def fit(model, opt, steps):
        for _ in range(steps):
            F.mse_loss(model(x_train), y_train).backward()
            opt.step()
            opt.zero_grad()

    dense = net()
    fit(dense, torch.optim.Adam(dense.parameters(), lr=1e-2), 300)
    state = dense.state_dict()

    magnitude = net()
    magnitude.load_state_dict(state)
    with torch.no_grad():
        magnitude.up.w.mul_(nm_mask(magnitude.up.w.abs(), 2, 4, dim=2))
        magnitude.down.w.mul_(nm_mask(magnitude.down.w.abs(), 2, 4, dim=1))

    def learned(lam, steps):
        model = net()
        model.load_state_dict(state)
        learnable_nm_model(model, targets=[(model.up, "w", -1), (model.down, "w", 1)])
        opt = ProxAdam(prox_param_groups(model, lam=lam), lr=1e-2)
        fit(model, opt, steps)
        apply_learned_masks(model, optimizer=opt)
        remove_all(model)
        assert is_nm(model.up.w, 2, 4, dim=2) and is_nm(model.down.w, 2, 4, dim=1)
        return error(model)

    assert error(dense) < 0.5 * error(magnitude)  # the pruning problem is real (measured: 0.034 vs 0.114)
    assert learned(1.0, 200) < 0.8 * error(magnitude)
    assert not learned(0.0, 200) < 0.8 * error(magnitude)
    assert not learned(1.0, 0) < 0.8 * error(magnitude)
