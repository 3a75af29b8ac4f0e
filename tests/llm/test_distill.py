"""torchprox.llm.distill: loss specs, the W0 teacher without a second copy, KD / hidden-state terms, and
learn_masks with them."""
import copy

import pytest
import torch

from torchprox.llm import ProxSparseConfig, learn_masks
from torchprox.llm.distill import distillation_loss, parse_loss
from torchprox.prune import is_nm, learnable_nm_model, original_weights

from .tiny import tiny_llama


@pytest.mark.parametrize("spec, terms", [
    ("lm", {"lm": 1.0}), ("kd", {"kd": 1.0}), ("lm+kd", {"lm": 1.0, "kd": 1.0}),
    ("0.5*lm + 0.5*kd", {"lm": 0.5, "kd": 0.5}), ("2e-1*hidden+lm", {"hidden": 0.2, "lm": 1.0}),
    (".25*kd", {"kd": 0.25}),
])
def test_parse_loss(spec, terms):
    assert parse_loss(spec) == terms


@pytest.mark.parametrize("spec, match", [
    ("", "a loss is"), ("ce", "unknown term 'ce'"), ("lm+lm", "appears twice"), ("0*lm", "must be a finite"),
    ("lm+", "cannot read ''"), ("-1*kd", "cannot read"), ("inf*kd", "cannot read"), (3, "a loss is"),
])
def test_bad_loss_specs_are_one_clear_error(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_loss(spec)
    with pytest.raises(ValueError, match=match):
        ProxSparseConfig(loss=spec, metric="identity")


def _perturbed_learnable(seed=0):
    model = tiny_llama(seed)
    dense = copy.deepcopy(model)
    learnable_nm_model(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original"):
                p.mul_(0.5)
    return model, dense


def test_original_weights_computes_the_dense_model_bit_for_bit():
    model, dense = _perturbed_learnable()
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        want = dense(ids).logits
        with original_weights(model):
            inside = model(ids).logits
        outside = model(ids).logits
    assert torch.equal(inside, want)
    assert not torch.allclose(outside, want)
    with pytest.raises(RuntimeError), original_weights(model):   # restored on an exception too
        raise RuntimeError
    with torch.no_grad():
        assert torch.equal(model(ids).logits, outside)


def test_kd_and_hidden_are_their_definitions():
    model, dense = _perturbed_learnable()
    ids = torch.randint(0, 64, (2, 16))
    kd, lm = distillation_loss("kd", temperature=2.0)(model, ids)
    with torch.no_grad():
        t = dense(ids, output_hidden_states=True)
        s = model(ids, labels=ids, output_hidden_states=True)
        p_t = torch.softmax(t.logits.double() / 2, -1)
        want = 4 * (p_t * (p_t.log() - torch.log_softmax(s.logits.double() / 2, -1))).sum(-1).mean()
        hid = torch.stack([(a - b).double().square().sum() / b.double().square().sum()
                           for a, b in zip(s.hidden_states[1:], t.hidden_states[1:])]).mean()
    torch.testing.assert_close(kd.double(), want, rtol=1e-4, atol=1e-6)   # float32 log-probs of size ~4
    torch.testing.assert_close(lm, s.loss)
    h, _ = distillation_loss("hidden")(model, ids)
    torch.testing.assert_close(h.double(), hid, rtol=1e-4, atol=1e-6)
    both, _ = distillation_loss("0.5*lm+2*kd+hidden", temperature=2.0)(model, ids)
    torch.testing.assert_close(both, 0.5 * s.loss + 2 * kd + h, rtol=1e-5, atol=1e-6)


def test_at_w0_the_student_is_the_teacher_zero_loss_zero_gradient():
    model = tiny_llama()
    learnable_nm_model(model)
    loss, _ = distillation_loss("kd+hidden")(model, torch.randint(0, 64, (2, 16)))
    loss.backward()
    assert float(loss) == 0.0
    grads = [p.grad for name, p in model.named_parameters() if name.endswith("original")]
    assert grads and all(g is None or not g.any() for g in grads)              # exactly 0, not ~1e-12


def test_the_kd_gradient_is_the_kl_gradient():
    student = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, 10, dtype=torch.float64)
    from torchprox.llm.distill import _kd
    _kd(student, teacher, 3.0).backward()
    want = torch.autograd.grad(
        9 * torch.nn.functional.kl_div(torch.log_softmax(student / 3, -1), torch.log_softmax(teacher / 3, -1),
                                       log_target=True, reduction="batchmean"), student)[0]
    torch.testing.assert_close(student.grad.double(), want, rtol=1e-5, atol=1e-7)


def test_without_lm_the_adam_metric_is_refused():
    with pytest.raises(ValueError, match="would never move W"):
        ProxSparseConfig(loss="kd")
    assert ProxSparseConfig(loss="kd", metric="identity").loss == "kd"


@pytest.mark.parametrize("loss, metric", [("kd", "identity"), ("lm+kd", "adam"), ("lm+hidden", "adam")])
def test_learn_masks_with_distillation(loss, metric):
    model = tiny_llama()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = ProxSparseConfig(steps=3, loss=loss, metric=metric)
    report = learn_masks(model, torch.randint(0, 64, (4, 16)), 2, 4, cfg, progress=False)
    assert report["config"]["loss"] == loss and len(report["loss"]) == 3
    assert all(l > 0 for l in report["loss"])                  # the logged value is the next-token loss
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            assert is_nm(p, 2, 4, dim=1)
            kept = p != 0
            assert torch.equal(p[kept], w0[name][kept])


def test_dense_weights_swaps_in_and_back_without_copying():
    from torchprox.llm.distill import dense_weights

    model = tiny_llama()
    w = model.model.layers[0].mlp.down_proj.weight
    own, dense = w.detach().clone(), torch.randn_like(w)
    keep = dense.clone()
    with dense_weights([(w, dense)]):
        assert torch.equal(w, keep)
    assert torch.equal(w, own) and torch.equal(dense, keep)
    with pytest.raises(ValueError, match="cannot stand in"):
        with dense_weights([(w, dense.t())]):
            pass
    assert torch.equal(w, own)


def test_finetune_with_distillation_needs_the_dense_weights_and_keeps_the_mask():
    from torchprox.llm import finetune_masked, magnitude_prune

    model = tiny_llama()
    dense = {f"{name}.weight": mod.weight.detach().clone() for name, mod in model.named_modules()
             if name.endswith("proj")}
    magnitude_prune(model, 2, 4)
    masks = {key: model.get_submodule(key.removesuffix(".weight")).weight != 0 for key in dense}
    before = {key: model.get_submodule(key.removesuffix(".weight")).weight.detach().clone() for key in dense}
    calib = torch.randint(0, 64, (4, 16))
    with pytest.raises(ValueError, match="pass dense="):
        finetune_masked(model, calib, masks, steps=2, loss="lm+kd")
    for key in dense:  # refused before any change
        assert torch.equal(model.get_submodule(key.removesuffix(".weight")).weight, before[key])
    report = finetune_masked(model, calib, masks, steps=3, loss="kd", dense=dense, lr=1e-2)
    assert len(report["loss"]) == 3
    changed = False
    for key, mask in masks.items():
        w = model.get_submodule(key.removesuffix(".weight")).weight
        assert not w[~mask].any()                                   # pruned weights stay 0
        changed |= not torch.equal(w, before[key])
    assert changed


def test_learn_masks_then_a_distilling_finetune():
    model = tiny_llama()
    cfg = ProxSparseConfig(steps=2, reconstruct="finetune", reconstruct_steps=2, reconstruct_loss="lm+kd")
    learn_masks(model, torch.randint(0, 64, (4, 16)), 2, 4, cfg, progress=False)
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            assert is_nm(p, 2, 4, dim=1)
    with pytest.raises(ValueError, match="unknown term"):
        ProxSparseConfig(reconstruct_loss="mse")


@pytest.mark.parametrize("kwargs, match", [
    (dict(loss="kd", kd_temperature=float("nan")), "temperature"), (dict(loss="kd", kd_temperature=0), "temperature"),
    (dict(lr=float("nan")), "lr must be"), (dict(lr=-1e-3), "lr must be"),
])
def test_finetune_refuses_bad_settings_before_touching_the_model(kwargs, match):
    from torchprox.llm import finetune_masked, magnitude_prune

    model = tiny_llama()
    dense = {f"{name}.weight": mod.weight.detach().clone() for name, mod in model.named_modules()
             if name.endswith("proj")}
    magnitude_prune(model, 2, 4)
    masks = {key: model.get_submodule(key.removesuffix(".weight")).weight != 0 for key in dense}
    before = {name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=match):
        finetune_masked(model, torch.randint(0, 64, (4, 16)), masks, steps=2, dense=dense, **kwargs)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name][0]) and p.requires_grad == before[name][1]


def test_distillation_on_a_fused_moe_model():
    from .tiny import tiny_moe

    model = tiny_moe("mixtral")
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    learn_masks(model, torch.randint(0, 64, (4, 16)), 2, 4, ProxSparseConfig(steps=2, loss="lm+kd+hidden"),
                progress=False)
    for name in ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"):
        w = model.get_parameter(name)
        assert is_nm(w, 2, 4, dim=2) and torch.equal(w[w != 0], w0[name][w != 0])
