"""The frozen-weight parametrization: W0 stays bit exact through training, casts, moves, saving and copying."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from torchprox import ProxAdam
from torchprox.prox import nm_mask
from torchprox.prune import NMParametrization, apply_learned_masks, learnable_nm, prox_param_groups

from ._util import LAYER_KINDS, bits_equal, make_layer


def _p(layer, name="weight") -> NMParametrization:
    return layer.parametrizations[name][0]


def _orig(layer, name="weight"):
    return layer.parametrizations[name].original


def test_registration_layout():
    lin = nn.Linear(8, 4)
    weight = lin.weight
    before = weight.detach().clone()
    learnable_nm(lin)
    p = _p(lin)
    assert isinstance(p, NMParametrization) and p.state == "learning" and (p.n, p.m, p.dim) == (2, 4, 1)
    # W is the module's own Parameter object (optimizers built before still point at it), W0 a frozen copy.
    assert _orig(lin) is weight and weight.requires_grad
    assert bits_equal(p.w0, before) and not p.w0.requires_grad
    assert p.w0.data_ptr() != weight.data_ptr()
    assert all(t is not p.w0 for t in lin.parameters())
    assert "parametrizations.weight.0.w0" in dict(lin.named_buffers())
    assert lin.weight is weight  # forward(W) = W while learning
    assert sorted(lin.state_dict()) == ["bias", "parametrizations.weight.0.w0", "parametrizations.weight.original"]


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_w0_bit_identical_after_many_proxadam_steps(kind):
    layer, x, dim = make_layer(kind)
    y_dense = layer(x).detach()
    learnable_nm(layer)
    w0 = _p(layer).w0.clone()
    opt = ProxAdam(prox_param_groups(layer, lam=0.5), lr=5e-2, weight_decay=0.1)
    for _ in range(15):
        loss = (layer(x) - 0.5 * y_dense).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    opt.zero_grad(set_to_none=False)
    assert not torch.equal(_orig(layer), w0)  # W moved
    assert bits_equal(_p(layer).w0, w0)  # W0 did not
    assert _p(layer).dim == dim


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtype_casts_leave_w0_bit_exact(dtype):
    lin = learnable_nm(nn.Linear(8, 4))
    w0 = _p(lin).w0.clone()
    lin.to(dtype)
    assert _orig(lin).dtype == dtype and lin.bias.dtype == dtype
    assert bits_equal(_p(lin).w0, w0)
    assert lin(torch.randn(2, 8, dtype=dtype)).dtype == dtype  # forward in the model's dtype
    lin.half().bfloat16().double().float()
    assert bits_equal(_p(lin).w0, w0)


def test_masking_in_cast_dtype_rounds_w0_once():
    lin = learnable_nm(nn.Linear(8, 4))
    w0 = _p(lin).w0.clone()
    lin.bfloat16()
    masks = apply_learned_masks(lin)
    assert lin.weight.dtype == torch.bfloat16
    assert bits_equal(lin.weight, torch.where(masks["weight"], w0.bfloat16(), 0))


def test_cast_back_before_masking_gives_w0_exactly():
    lin = learnable_nm(nn.Linear(8, 4))
    w0 = _p(lin).w0.clone()
    lin.bfloat16().float()
    masks = apply_learned_masks(lin)
    assert bits_equal(lin.weight, torch.where(masks["weight"], w0, 0))


def test_device_moves_apply_unless_offloaded():
    # The meta device stands in for an accelerator: a move applies to w0 unless offload_w0 keeps it on CPU.
    lin = learnable_nm(nn.Linear(8, 4))
    lin.to("meta")
    assert _p(lin).w0.device.type == "meta" and _p(lin).w0.dtype == torch.float32
    off = learnable_nm(nn.Linear(8, 4), offload_w0=True)
    w0 = _p(off).w0.clone()
    off.to("meta", torch.bfloat16)
    assert _orig(off).device.type == "meta" and _orig(off).dtype == torch.bfloat16
    assert _p(off).w0.device.type == "cpu" and bits_equal(_p(off).w0, w0)
    assert _p(off).offload_w0


def test_offloaded_w0_is_used_for_masking():
    off = learnable_nm(nn.Linear(8, 4), offload_w0=True)
    w0 = _p(off).w0.clone()
    masks = apply_learned_masks(off)
    assert bits_equal(off.weight, torch.where(masks["weight"], w0, 0))
    assert _p(off).w0 is None


def test_share_memory_and_other_conversions_pass_through():
    lin = learnable_nm(nn.Linear(8, 4))
    lin.share_memory()
    assert _p(lin).w0.is_shared()


def test_assigning_the_weight_sets_w_not_w0():
    lin = learnable_nm(nn.Linear(8, 4))
    w0 = _p(lin).w0.clone()
    lin.weight = torch.ones(4, 8)
    assert torch.equal(_orig(lin), torch.ones(4, 8)) and bits_equal(_p(lin).w0, w0)


def _trained(seed=0, steps=3):
    torch.manual_seed(seed)
    lin = learnable_nm(nn.Linear(8, 4))
    opt = ProxAdam(prox_param_groups(lin, lam=0.2), lr=0.1)
    for _ in range(steps):
        lin(torch.randn(6, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return lin, opt


def _fresh():
    return learnable_nm(nn.Linear(8, 4))


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_mid_learning():
    lin, opt = _trained()
    sd = _roundtrip(lin.state_dict())
    other = _fresh()
    other.load_state_dict(sd)
    assert bits_equal(_orig(other), _orig(lin)) and bits_equal(_p(other).w0, _p(lin).w0)
    assert _p(other).state == "learning" and _orig(other).requires_grad
    x = torch.randn(3, 8)
    assert torch.equal(other(x), lin(x))
    # the optimizer's state_dict is plain data too
    opt2 = ProxAdam(prox_param_groups(other, lam=0.2), lr=0.1)
    opt2.load_state_dict(_roundtrip(opt.state_dict()))


def test_state_dict_round_trip_after_masking_switches_a_learning_layer():
    lin, _ = _trained()
    apply_learned_masks(lin)
    sd = _roundtrip(lin.state_dict())
    assert sorted(sd) == ["bias", "parametrizations.weight.0.mask", "parametrizations.weight.original"]
    other = _fresh()  # still learning: loading a masked checkpoint switches it to the masked state
    other.load_state_dict(sd)
    p = _p(other)
    assert p.state == "masked" and p.w0 is None and not _orig(other).requires_grad
    assert torch.equal(p.mask, _p(lin).mask) and bits_equal(other.weight, lin.weight)
    x = torch.randn(3, 8)
    assert torch.equal(other(x), lin(x))


def test_learning_checkpoint_into_masked_layer_switches_back():
    lin, _ = _trained()
    sd = lin.state_dict()
    other, _ = _trained(seed=1)
    apply_learned_masks(other)
    other.load_state_dict(sd)
    assert _p(other).state == "learning" and _orig(other).requires_grad
    assert bits_equal(_p(other).w0, _p(lin).w0) and bits_equal(_orig(other), _orig(lin))


def test_loading_keeps_the_checkpoint_w0_dtype_bit_exact():
    src = learnable_nm(nn.Linear(8, 4).double())
    dst = learnable_nm(nn.Linear(8, 4).double())
    dst.float()  # W is float32 now; W0 stays float64 in both
    sd = {k: v for k, v in src.state_dict().items()}
    sd["parametrizations.weight.original"] = sd["parametrizations.weight.original"].float()
    sd["bias"] = sd["bias"].float()
    dst.load_state_dict(sd)
    assert bits_equal(_p(dst).w0, _p(src).w0)
    # a float32 W0 in the checkpoint is taken as is, not rounded up and back
    sd["parametrizations.weight.0.w0"] = torch.randn(4, 8)
    dst.load_state_dict(sd)
    assert bits_equal(_p(dst).w0, sd["parametrizations.weight.0.w0"])


@pytest.mark.parametrize("masked", [False, True])
def test_deepcopy_is_independent(masked):
    lin, _ = _trained()
    if masked:
        apply_learned_masks(lin)
    dup = copy.deepcopy(lin)
    x = torch.randn(3, 8)
    assert torch.equal(dup(x), lin(x))
    assert _p(dup) is not _p(lin) and _orig(dup) is not _orig(lin)
    with torch.no_grad():
        _orig(dup).add_(1.0)
    assert not torch.equal(dup(x), lin(x))
    if not masked:
        # the load hook of the copy acts on the copy, not on the original
        masked_src, _ = _trained(seed=2)
        apply_learned_masks(masked_src)
        dup.load_state_dict(masked_src.state_dict())
        assert _p(dup).state == "masked" and _p(lin).state == "learning"


def test_pickling_the_module_is_refused_like_any_parametrized_module():
    # torch.nn.utils.parametrize only serializes through state_dict(); after remove() the module pickles.
    from torchprox.prune import remove

    lin, _ = _trained()
    with pytest.raises(RuntimeError, match="state_dict"):
        torch.save(lin, io.BytesIO())
    apply_learned_masks(lin)
    remove(lin)
    torch.save(lin, io.BytesIO())


def test_repr_mentions_the_pattern_and_state():
    lin = learnable_nm(nn.Linear(8, 4), n=1, m=4)
    assert "pattern=1:4" in repr(lin) and "state=learning" in repr(lin)


# -- a failed load_state_dict leaves the layer exactly as it was (issue 21, item 6) ----------------------
def _layer_state(lin):
    p = _p(lin)
    return (p.state, _orig(lin).detach().clone(), _orig(lin).requires_grad,
            None if p.w0 is None else p.w0.clone(), None if p.mask is None else p.mask.clone())


def _assert_unchanged(lin, before):
    state, orig, requires_grad, w0, mask = before
    p = _p(lin)
    assert p.state == state and bits_equal(_orig(lin), orig) and _orig(lin).requires_grad == requires_grad
    assert (p.w0 is None) == (w0 is None) and (w0 is None or bits_equal(p.w0, w0))
    assert (p.mask is None) == (mask is None) and (mask is None or torch.equal(p.mask, mask))


def _masked_sd(in_features):
    lin = learnable_nm(nn.Linear(in_features, 4))
    apply_learned_masks(lin)
    return lin.state_dict()


def _bad_checkpoints():
    """(name, checkpoint, load into a masked layer?, strict): checkpoints that do not fit an (4, 8) layer."""
    learning16 = learnable_nm(nn.Linear(16, 4)).state_dict()
    learning8 = learnable_nm(nn.Linear(8, 4)).state_dict()
    w0_fits = dict(learning16, **{"parametrizations.weight.0.w0": torch.randn(4, 8), "bias": torch.randn(4)})
    no_original = {k: v for k, v in _masked_sd(8).items() if not k.endswith("original")}
    both = dict(learning8, **{"parametrizations.weight.0.mask": torch.ones(4, 8, dtype=torch.bool)})
    return [
        ("masked other shape into learning", _masked_sd(16), False, True),
        ("learning other shape into masked", learning16, True, True),
        ("W0 fits but W does not", w0_fits, False, True),
        ("masked without original, non-strict", no_original, False, False),
        ("learning without original into masked, non-strict",
         {k: v for k, v in learning8.items() if not k.endswith("original")}, True, False),
        ("both w0 and mask", both, False, True),
    ]


@pytest.mark.parametrize("case", range(6))
def test_failed_load_leaves_the_layer_exactly_as_it_was(case):
    name, sd, masked, strict = _bad_checkpoints()[case]
    lin, _ = _trained()
    if masked:
        apply_learned_masks(lin)
    before = _layer_state(lin)
    with pytest.raises(RuntimeError, match="left unchanged"):
        lin.load_state_dict(sd, strict=strict)
    _assert_unchanged(lin, before)
    if not masked:  # and the learned mask is still W0 ⊙ top-2 of |W|
        w, w0 = before[1], before[3]
        expected = torch.where(nm_mask(w.abs(), 2, 4, dim=1), w0, 0)
        apply_learned_masks(lin)
        assert bits_equal(lin.weight, expected), name
