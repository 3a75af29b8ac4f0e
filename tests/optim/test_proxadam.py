"""Tests for :class:`torchprox.ProxAdam`, in the style of torch's own optimizer tests (test/test_optim.py).

The prox operators themselves are tested in ``tests/prox``; here they serve as the reference: one ProxAdam
step must equal ``torch.optim.AdamW``'s step followed by the group's prox, with the step size and λ the
design prescribes for each ``metric`` and ``lam_scaling``.
"""
from __future__ import annotations

import copy
import importlib
import io
import math
import shutil
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

import torchprox
from torchprox import ProxAdam
from torchprox.prox import nm_penalty, prox_l1, prox_nm, register_prox
from torchprox.prox import registry as prox_registry

NM = {"n": 2, "m": 4, "dim": 1}
NM_LAST = {"n": 2, "m": 4}  # groups along the last dim: fits a (4, 8) weight and its (4,) bias alike


# --------------------------------------------------------------------------------------------- helpers


def _init(seed=0, shape=(4, 8), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(shape[0], generator=g, dtype=torch.float64).to(dtype)
    return w, b


def _data(seed=1, steps=10, batch=16, fan_in=8, fan_out=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, batch, fan_in, generator=g, dtype=torch.float64).to(dtype)
    w_true = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64).to(dtype)
    return [(x, x @ w_true.t()) for x in xs]


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _loss(w, b, x, y):
    return (x @ w.t() + b - y).square().mean()


def _train(make_opt, steps=10, seed=0, dtype=torch.float32, shape=(4, 8)):
    """Train a tiny linear regression with the optimizer ``make_opt([w, b])`` builds; return (w, b, opt)."""
    w, b = _leaves(*_init(seed, shape, dtype))
    opt = make_opt([w, b])
    for x, y in _data(steps=steps, fan_in=shape[1], fan_out=shape[0], dtype=dtype):
        opt.zero_grad()
        _loss(w, b, x, y).backward()
        opt.step()
    return w.detach(), b.detach(), opt


def _set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)


def _reference_step(opt, params, grads):
    """An AdamW step from (a copy of) ``opt``'s current state, on clones of ``params`` with ``grads``.

    ProxAdam's state_dict is AdamW's plus a few extra group keys that AdamW ignores, so AdamW can take over
    the exact state (step count, moments, lr) that ProxAdam had before its step.
    """
    ref_params = _leaves(*params)
    for r, g in zip(ref_params, grads):
        r.grad = g.clone()
    ref = torch.optim.AdamW(ref_params)
    # deepcopy: load_state_dict may alias tensors that already have the right dtype/device.
    ref.load_state_dict(copy.deepcopy(opt.state_dict()))
    ref.step()
    return [r.detach() for r in ref_params], ref


def _is_nm(w, n=2, m=4, dim=1):
    groups = w.movedim(dim, -1).reshape(-1, m)
    return bool(((groups != 0).sum(-1) <= n).all())


@pytest.fixture
def registered_prox():
    """Register ``my_test_prox`` (a box projection that records its calls); unregister it afterwards."""
    name = "my_test_prox"
    calls = []

    @register_prox(name, overwrite=True)
    def _box(y, lam, *, step=1.0, bound=1.0):
        calls.append({"lam": lam, "step": step, "bound": bound, "shape": tuple(y.shape)})
        return y.clamp(-bound, bound)

    yield name, calls
    prox_registry._REGISTRY.pop(name, None)


# ------------------------------------------------------------------------- parity with torch's AdamW

NO_PROX_CONFIGS = {
    "prox_none": {},
    "prox_none_lam0": {"prox": None, "lam": 0.0},
    "nm_lam0": {"prox": "nm", "lam": 0.0, "prox_kwargs": NM},
    "nm_lam0_adam_metric": {"prox": "nm", "lam": 0, "prox_kwargs": NM, "metric": "adam", "lam_scaling": "lr"},
    "l1_lam0": {"prox": "l1", "lam": 0.0},
    # the hard projection ignores lam, so only the lam == 0 switch keeps it off
    "nm_projection_lam0": {"prox": "nm_projection", "lam": 0.0, "prox_kwargs": NM},
}


@pytest.mark.parametrize("config", list(NO_PROX_CONFIGS), ids=list(NO_PROX_CONFIGS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("maximize", [False, True], ids=["", "maximize"])
def test_without_prox_matches_adamw_bit_for_bit(config, weight_decay, amsgrad, foreach, maximize):
    kw = dict(lr=1e-2, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach, maximize=maximize)
    w_ref, b_ref, ref = _train(lambda p: torch.optim.AdamW(p, **kw))
    w, b, opt = _train(lambda p: ProxAdam(p, **kw, **NO_PROX_CONFIGS[config]))
    assert torch.equal(w, w_ref) and torch.equal(b, b_ref)
    for p, p_ref in zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"]):
        for key, value in ref.state[p_ref].items():
            assert torch.equal(opt.state[p][key], value), key


@pytest.mark.parametrize("config", ["prox_none", "nm_lam0_adam_metric"])
def test_without_prox_matches_fused_adamw(config):
    kw = dict(lr=1e-2, weight_decay=0.01, fused=True)
    try:
        w_ref, b_ref, _ = _train(lambda p: torch.optim.AdamW(p, **kw))
    except RuntimeError as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"fused AdamW unavailable here: {exc}")
    w, b, _ = _train(lambda p: ProxAdam(p, **kw, **NO_PROX_CONFIGS[config]))
    assert torch.equal(w, w_ref) and torch.equal(b, b_ref)


def test_default_weight_decay_is_zero_unlike_adamw():
    w, b, _ = _train(lambda p: ProxAdam(p, lr=1e-2))
    w_ref, b_ref, _ = _train(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0))
    assert torch.equal(w, w_ref) and torch.equal(b, b_ref)


# ------------------------------------------------------------------------- default kernel choice


def _prox_groups(w, b, **extra):
    return [{"params": [w], "prox": "nm", "lam": 0.5, "prox_kwargs": NM, **extra}, {"params": [b]}]


def test_a_prox_picks_the_fused_adam_kernel_by_default():
    w, b = _leaves(*_init())
    assert ProxAdam(_prox_groups(w, b)).defaults["fused"] is True
    assert ProxAdam([w, b], prox="nm", lam=0.5, prox_kwargs=NM_LAST).defaults["fused"] is True
    # the same updates as asking for it
    w_ref, b_ref, _ = _train(lambda p: ProxAdam(_prox_groups(*p), lr=1e-2, fused=True))
    w2, b2, _ = _train(lambda p: ProxAdam(_prox_groups(*p), lr=1e-2))
    assert torch.equal(w2, w_ref) and torch.equal(b2, b_ref)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"prox": "nm", "lam": 0.0, "prox_kwargs": NM},
     {"prox": "nm", "lam": 0.5, "prox_kwargs": NM_LAST, "foreach": False},
     {"prox": "nm", "lam": 0.5, "prox_kwargs": NM_LAST, "foreach": True},
     {"prox": "nm", "lam": 0.5, "prox_kwargs": NM_LAST, "fused": False}],
    ids=["no_prox", "lam0", "loop", "foreach", "fused_false"],
)
def test_no_prox_or_an_explicit_choice_keeps_adamws_kernel(kwargs):
    w, b = _leaves(*_init())
    opt = ProxAdam([w, b], **kwargs)
    assert opt.defaults["fused"] in (None, False) and opt.defaults["foreach"] == kwargs.get("foreach")


def test_fused_default_takes_generators_and_leaves_the_callers_groups_alone():
    w, b = _leaves(*_init())
    groups = [{"params": (t for t in [w]), "prox": "nm", "lam": 0.5, "prox_kwargs": NM}, {"params": iter([b])}]
    originals = [dict(g) for g in groups]
    opt = ProxAdam(iter(groups))
    assert opt.defaults["fused"] is True
    assert [g["params"] for g in opt.param_groups] == [[w], [b]]
    assert all(g["params"] is o["params"] for g, o in zip(groups, originals))  # not replaced in the caller's dicts
    named = ProxAdam([("w", w), ("b", b)], prox="nm", lam=0.5, prox_kwargs=NM_LAST)
    assert named.defaults["fused"] is True


def test_params_torch_rejects_are_still_rejected_by_torch():
    w, b = _leaves(*_init())
    with pytest.raises(TypeError, match="iterable of Tensors"):
        ProxAdam(w, prox="nm", lam=0.5, prox_kwargs=NM)
    with pytest.raises(TypeError, match="ordered collections"):
        ProxAdam([{"params": {w, b}, "prox": "nm", "lam": 0.5, "prox_kwargs": NM}])


def test_tensor_subclass_params_keep_the_default_kernel():
    class Tagged(torch.Tensor):  # stands for a tensor subclass such as DTensor
        pass

    w, b = _leaves(*_init())
    sub = torch.nn.Parameter(w.detach().clone().as_subclass(Tagged))
    assert ProxAdam([sub, b], prox="nm", lam=0.5, prox_kwargs=NM_LAST).defaults["fused"] is None


@pytest.mark.parametrize("metric", ["identity", "adam"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
def test_foreach_matches_loop_with_prox(metric, amsgrad):
    def make(foreach):
        return lambda p: ProxAdam(
            [{"params": [p[0]], "prox": "nm", "lam": 0.5, "prox_kwargs": NM}, {"params": [p[1]]}],
            lr=5e-2, weight_decay=0.01, amsgrad=amsgrad, metric=metric, foreach=foreach,
        )

    w_loop, b_loop, _ = _train(make(False))
    w_fe, b_fe, _ = _train(make(True))
    assert (w_loop == 0).any(), "the prox should have zeroed something, or the test checks nothing"
    torch.testing.assert_close(w_fe, w_loop, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b_fe, b_loop, rtol=1e-6, atol=1e-7)
    assert torch.equal(w_fe == 0, w_loop == 0)


# ------------------------------------------------------------------ one step = AdamW step, then prox

step_cases = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**16),
        "lam": st.floats(0.01, 3.0),
        "lr": st.sampled_from([1e-3, 1e-2, 0.1, 0.5]),
        "weight_decay": st.sampled_from([0.0, 0.01]),
        "amsgrad": st.booleans(),
        "warmup": st.integers(0, 2),
        "rows": st.integers(1, 3),
        "groups": st.integers(1, 2),
    }
)


def _warm(case, dtype, **opt_kw):
    """ProxAdam on one (rows, 4·groups) weight after ``case['warmup']`` steps, with a fresh grad set."""
    g = torch.Generator().manual_seed(case["seed"])
    w = torch.randn(case["rows"], 4 * case["groups"], generator=g, dtype=torch.float64).to(dtype)
    (w,) = _leaves(w)
    opt = ProxAdam(
        [w], lr=case["lr"], weight_decay=case["weight_decay"], amsgrad=case["amsgrad"],
        prox="nm", lam=case["lam"], prox_kwargs=NM, **opt_kw,
    )
    for k in range(case["warmup"]):
        _set_grads([w], case["seed"] + 1000 + k)
        opt.step()
    _set_grads([w], case["seed"] + 7)
    return opt, w


def _hand_step(ref, p, group):
    """Adam's diagonal metric lr / (sqrt(v / (1 - β2^t)) + eps), computed by hand from AdamW's state."""
    state = ref.state[p]
    t = float(state["step"])
    v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
    beta2 = group["betas"][1]
    lr = float(group["lr"])
    return lr / ((v / (1 - beta2**t)).sqrt() + group["eps"])


@settings(max_examples=20)
@given(case=step_cases)
def test_identity_metric_step_is_adamw_then_prox_nm(case):
    opt, w = _warm(case, torch.float32, metric="identity", lam_scaling="constant")
    (y,), _ = _reference_step(opt, [w.detach()], [w.grad])
    opt.step()
    assert torch.equal(w.detach(), prox_nm(y, case["lam"], 2, 4, step=1.0, dim=1))


@settings(max_examples=15)
@given(case=step_cases)
def test_adam_metric_step_is_adamw_then_prox_nm_with_hand_computed_step(case):
    # float64: the hand-computed metric rounds differently from torch's sqrt(v)/sqrt(bc2) in the last bit.
    opt, w = _warm(case, torch.float64, metric="adam")
    (y,), ref = _reference_step(opt, [w.detach()], [w.grad])
    opt.step()
    group = opt.param_groups[0]
    step = _hand_step(ref, ref.param_groups[0]["params"][0], group)
    assert step.shape == y.shape and bool((step > 0).all())
    # the metric ProxAdam forms from its own state is the hand-computed one
    torch.testing.assert_close(opt._metric_step(group, w), step, rtol=1e-12, atol=0)
    expected = prox_nm(y, case["lam"], 2, 4, step=step, dim=1)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-9, atol=1e-12)


def test_adam_metric_with_amsgrad_uses_max_exp_avg_sq():
    w0, _ = _init(9, (2, 8), torch.float64)
    (w,) = _leaves(w0)
    # beta2 = 0.5 so that v forgets fast: a large gradient, then small ones, leave v far below its running max
    opt = ProxAdam([w], lr=0.1, betas=(0.9, 0.5), amsgrad=True, prox="nm", lam=1.0, prox_kwargs=NM, metric="adam")
    for scale in (10.0, 1e-3):
        w.grad = torch.full_like(w, scale)
        opt.step()
    state = opt.state[w]
    assert (state["max_exp_avg_sq"] > 1.5 * state["exp_avg_sq"]).all()
    _set_grads([w], 3)
    w.grad.mul_(1e-3)
    (y,), ref = _reference_step(opt, [w.detach()], [w.grad])
    opt.step()
    step = _hand_step(ref, ref.param_groups[0]["params"][0], opt.param_groups[0])
    torch.testing.assert_close(w.detach(), prox_nm(y, 1.0, 2, 4, step=step, dim=1), rtol=1e-9, atol=1e-12)
    # the plain second moment gives a different (larger) step here
    no_max = 0.1 / ((ref.state[ref.param_groups[0]["params"][0]]["exp_avg_sq"] / (1 - 0.5**3)).sqrt() + 1e-8)
    assert not torch.allclose(w.detach(), prox_nm(y, 1.0, 2, 4, step=no_max, dim=1))


BUILTIN_PROX_KWARGS = {"nm": NM, "nm_projection": NM, "l1": {}, "group_lasso": {"group_size": 4, "dim": 1}}


@pytest.mark.parametrize("metric", ["identity", "adam"])
@pytest.mark.parametrize("name", list(BUILTIN_PROX_KWARGS))
def test_every_builtin_prox_is_called_with_lam_step_and_kwargs(name, metric):
    w0, _ = _init(8, (2, 8), torch.float64)
    (w,) = _leaves(w0)
    kwargs = BUILTIN_PROX_KWARGS[name]
    opt = ProxAdam([w], lr=0.1, prox=name, lam=0.5, prox_kwargs=kwargs, metric=metric)
    for k in range(2):
        _set_grads([w], k)
        (y,), ref = _reference_step(opt, [w.detach()], [w.grad])
        opt.step()
        step = _hand_step(ref, ref.param_groups[0]["params"][0], opt.param_groups[0]) if metric == "adam" else 1.0
        expected = torchprox.prox.get_prox(name)(y, 0.5, step=step, **kwargs)
        torch.testing.assert_close(w.detach(), expected, rtol=1e-9, atol=1e-12)
        assert not torch.equal(w.detach(), y)


def test_tensor_betas_with_adam_metric():
    def make(betas):
        return lambda p: ProxAdam([{"params": [p[0]], "prox": "nm", "lam": 2.0, "prox_kwargs": NM}],
                                  lr=0.05, betas=betas, metric="adam")

    w_t, _, opt = _train(make((torch.tensor(0.9), torch.tensor(0.999))), steps=4)
    w_f, _, _ = _train(make((0.9, 0.999)), steps=4)
    assert isinstance(opt.param_groups[0]["betas"][1], torch.Tensor)
    torch.testing.assert_close(w_t, w_f, rtol=1e-5, atol=1e-6)
    assert (w_t == 0).any()


@pytest.mark.parametrize("metric", ["identity", "adam"])
def test_lam_scaling_lr_multiplies_lam_by_current_lr(metric):
    lam, lr = 2.0, 0.1
    w, b = _init(3, (2, 8), torch.float64)
    (w,) = _leaves(w)
    opt = ProxAdam([w], lr=lr, prox="nm", lam=lam, prox_kwargs=NM, metric=metric, lam_scaling="lr")
    _set_grads([w], 11)
    (y,), ref = _reference_step(opt, [w.detach()], [w.grad])
    opt.step()
    step = _hand_step(ref, ref.param_groups[0]["params"][0], opt.param_groups[0]) if metric == "adam" else 1.0
    torch.testing.assert_close(w.detach(), prox_nm(y, lam * lr, 2, 4, step=step, dim=1), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(w.detach(), prox_nm(y, lam, 2, 4, step=step, dim=1))


@pytest.mark.parametrize("scheduler", ["step", "lambda"])
def test_lr_scheduler_changes_effective_lam(scheduler):
    lam = 1.0
    w, _ = _init(4, (2, 8), torch.float64)
    (w,) = _leaves(w)
    opt = ProxAdam([w], lr=0.2, prox="nm", lam=lam, prox_kwargs=NM, lam_scaling="lr")
    if scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + 3 * epoch))
    seen = []
    for k in range(4):
        _set_grads([w], 20 + k)
        lr_now = opt.param_groups[0]["lr"]
        (y,), _ = _reference_step(opt, [w.detach()], [w.grad])
        opt.step()
        assert torch.equal(w.detach(), prox_nm(y, lam * lr_now, 2, 4, dim=1)), k
        seen.append(lr_now)
        sched.step()
    assert len(set(seen)) == 4, seen


def test_lr_zero_with_lr_scaling_leaves_params_unchanged():
    # lr 0: Adam moves nothing and lam * lr = 0 switches the prox off; with constant scaling it would act.
    w, _ = _init(5, (2, 8))
    outs = {}
    for scaling in ("lr", "constant"):
        (p,) = _leaves(w)
        opt = ProxAdam([p], lr=0.1, prox="nm", lam=1.0, prox_kwargs=NM, lam_scaling=scaling)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.0)
        assert opt.param_groups[0]["lr"] == 0.0
        _set_grads([p], 5)
        opt.step()
        sched.step()
        outs[scaling] = p.detach()
    assert torch.equal(outs["lr"], w)
    assert not torch.equal(outs["constant"], w)


# ---------------------------------------------------------------------------- groups and grad None


def test_prox_only_on_groups_that_have_one_and_grad_none_is_untouched():
    g = torch.Generator().manual_seed(0)
    w0, w2_0, frozen0, b0 = (torch.randn(s, generator=g) for s in [(4, 8), (4, 8), (4, 8), (4,)])
    w, w2, frozen, b = _leaves(w0, w2_0, frozen0, b0)
    opt = ProxAdam(
        [
            {"params": [w, frozen], "prox": "nm", "lam": 5.0, "prox_kwargs": NM},
            {"params": [w2], "weight_decay": 0.01},
            {"params": [b], "lr": 0.05},
        ],
        lr=0.1,
    )
    r_w, r_w2, r_b = _leaves(w0, w2_0, b0)
    ref = torch.optim.AdamW(  # the Adam kernel ProxAdam picked (fused: see test_a_prox_picks_the_fused_...)
        [{"params": [r_w]}, {"params": [r_w2], "weight_decay": 0.01}, {"params": [r_b], "lr": 0.05}],
        lr=0.1, weight_decay=0.0, fused=opt.defaults["fused"],
    )
    for k in range(3):
        _set_grads([w, w2, b], 100 + k)
        _set_grads([r_w, r_w2, r_b], 100 + k)
        assert frozen.grad is None
        opt.step()
        ref.step()
        with torch.no_grad():
            r_w.copy_(prox_nm(r_w, 5.0, dim=1))
        assert torch.equal(w, r_w) and torch.equal(w2, r_w2) and torch.equal(b, r_b), k
    assert torch.equal(frozen.detach(), frozen0) and frozen not in opt.state
    assert nm_penalty(w.detach(), dim=1) == 0 and nm_penalty(w2.detach(), dim=1) > 0


def test_zero_grad_then_step_changes_nothing():
    (w,) = _leaves(_init(1)[0])
    opt = ProxAdam([w], lr=0.1, prox="nm", lam=1.0, prox_kwargs=NM)
    _set_grads([w], 0)
    opt.step()
    opt.zero_grad()
    assert w.grad is None
    snapshot = w.detach().clone()
    opt.step()
    assert torch.equal(w.detach(), snapshot)
    # set_to_none=False keeps zero grads, so the param is stepped: Adam's momentum moves it, the prox runs
    _set_grads([w], 1)
    opt.zero_grad(set_to_none=False)
    assert w.grad is not None and not w.grad.any()
    (y,), _ = _reference_step(opt, [w.detach()], [w.grad])
    opt.step()
    assert not torch.equal(y, snapshot)
    assert torch.equal(w.detach(), prox_nm(y, 1.0, dim=1))


# --------------------------------------------------------------------------------- learning problems


def _regression(seed=0, fan_out=4, fan_in=8, n=128):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, fan_in, generator=g)
    w_true = torch.randn(fan_out, fan_in, generator=g)
    return x, x @ w_true.t()


@pytest.mark.parametrize("metric,lam", [("identity", 2.0), ("adam", 2.0)])
def test_learns_and_ends_exactly_2_4(metric, lam):
    x, y = _regression()
    w = torch.zeros(4, 8).requires_grad_()
    opt = ProxAdam([w], lr=0.1, prox="nm", lam=lam, prox_kwargs=NM, metric=metric)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = (x @ w.t() - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert nm_penalty(w.detach(), 2, 4, dim=1) == 0
    assert _is_nm(w.detach()) and (w.detach() != 0).sum() > 0


def _fit(w, opt, x, y, steps):
    """``steps`` of least squares ``‖x wᵀ − y‖²``; returns (first loss, last loss tensor)."""
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss = (x @ w.t() - y).square().mean()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    return first, loss


def test_plain_adam_regression_loss_decreases_and_stays_dense():
    x, y = _regression(1)
    w = torch.zeros(4, 8).requires_grad_()
    opt = ProxAdam([w], lr=0.1)
    first, loss = _fit(w, opt, x, y, steps=100)
    assert loss.item() < 1e-2 * first
    assert not _is_nm(w.detach())


def test_l1_prox_gives_exact_zeros():
    # a target with zeros in it; each step L1 shrinks by lam = 0.02 < lr, so the nonzero weights still grow
    g = torch.Generator().manual_seed(2)
    x = torch.randn(128, 8, generator=g)
    w_true = torch.randn(4, 8, generator=g) * (torch.rand(4, 8, generator=g) < 0.5)
    y = x @ w_true.t()
    w = torch.zeros(4, 8).requires_grad_()
    opt = ProxAdam([w], lr=0.05, prox="l1", lam=0.02)
    first, loss = _fit(w, opt, x, y, steps=100)
    assert loss.item() < 0.2 * first
    zeros = w.detach() == 0
    assert 0 < int(zeros.sum()) < w.numel()
    assert not (zeros & (w_true != 0).logical_and(w_true.abs() > 0.5)).any()


# ------------------------------------------------------------------------------------ state dicts


def _make_for_resume(params, metric="identity", lr=0.05):
    lam = 0.5 if metric == "identity" else 40.0  # lam_scaling="lr": the Adam metric takes a larger lam
    return ProxAdam(
        [{"params": [params[0]], "prox": "nm", "lam": lam, "prox_kwargs": NM}, {"params": [params[1]]}],
        lr=lr, weight_decay=0.01, amsgrad=True, metric=metric, lam_scaling="lr",
    )


@pytest.mark.parametrize("metric", ["identity", "adam"])
@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float_lr", "tensor_lr"])
def test_state_dict_round_trip_resumes_identically(metric, tensor_lr):
    data = _data(steps=8)

    def lr():
        return torch.tensor(0.05) if tensor_lr else 0.05

    def run(params, opt, sched, batches):
        for x, y in batches:
            opt.zero_grad()
            _loss(*params, x, y).backward()
            opt.step()
            sched.step()

    def sched_for(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    full = _leaves(*_init())
    opt_full = _make_for_resume(full, metric, lr())
    sched_full = sched_for(opt_full)
    run(full, opt_full, sched_full, data)

    first = _leaves(*_init())
    opt1 = _make_for_resume(first, metric, lr())
    sched1 = sched_for(opt1)
    run(first, opt1, sched1, data[:4])
    buf = io.BytesIO()
    torch.save({"opt": opt1.state_dict(), "sched": sched1.state_dict(), "params": [p.detach() for p in first]}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    resumed = _leaves(*ckpt["params"])
    # a fresh optimizer built with *other* prox settings: the checkpoint's groups win
    opt2 = ProxAdam([{"params": [resumed[0]]}, {"params": [resumed[1]]}], lr=lr())
    sched2 = sched_for(opt2)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert opt2.param_groups[0]["prox"] == "nm" and opt2.param_groups[0]["prox_kwargs"] == NM
    assert opt2.param_groups[0]["metric"] == metric and opt2.param_groups[1]["prox"] is None
    run(resumed, opt2, sched2, data[4:])

    for a, b in zip(resumed, full):
        assert torch.equal(a.detach(), b.detach())
    assert (full[0].detach() == 0).any()


def test_state_dict_holds_only_plain_group_values():
    (w,) = _leaves(_init()[0])
    opt = ProxAdam([w], prox="nm", lam=0.1, prox_kwargs=NM, metric="adam", lam_scaling="lr")
    group = opt.state_dict()["param_groups"][0]
    assert group["prox"] == "nm" and group["lam"] == 0.1 and group["prox_kwargs"] == NM
    assert group["metric"] == "adam" and group["lam_scaling"] == "lr"
    assert type(group["prox_kwargs"]) is dict


def test_loads_a_plain_adamw_state_dict():
    w, b, ref = _train(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0), steps=3)
    params = _leaves(w, b)
    opt = ProxAdam(params, lr=1e-2)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))  # no deepcopy: both would share (alias) moments
    for key in ("prox", "lam", "prox_kwargs", "metric", "lam_scaling"):
        assert key in opt.param_groups[0], key
    ref_params = ref.param_groups[0]["params"]
    for p, r in zip(params, ref_params):
        p.grad = torch.ones_like(p)
        r.grad = torch.ones_like(r)
    opt.step()
    ref.step()
    assert all(torch.equal(p, r) for p, r in zip(params, ref_params))


# ----------------------------------------------------------- closures, hooks, param groups, deepcopy


def test_step_with_closure_returns_loss_and_matches_plain_step():
    (x, y), = _data(steps=1)
    kw = dict(lr=0.05, prox="nm", lam=0.5, prox_kwargs=NM)

    w, b = _leaves(*_init())
    opt = ProxAdam([w], **kw)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = _loss(w, b, x, y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [1] and isinstance(loss, torch.Tensor)
    assert torch.equal(loss, _loss(*_leaves(*_init()), x, y))

    w2, b2 = _leaves(*_init())
    opt2 = ProxAdam([w2], **kw)
    _loss(w2, b2, x, y).backward()
    assert opt2.step() is None
    assert torch.equal(w.detach(), w2.detach())


def test_step_hooks_run_once_per_step_around_the_prox():
    # Adam and AdamW instances hook their own classes' step; ProxAdam must not run its hooks twice.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    (w,) = _leaves(_init()[0])
    opt = ProxAdam([w], lr=0.1, prox="nm", lam=5.0, prox_kwargs=NM)
    events = []
    opt.register_step_pre_hook(lambda o, args, kwargs: events.append(("pre", _is_nm(w.detach()))))
    opt.register_step_post_hook(lambda o, args, kwargs: events.append(("post", _is_nm(w.detach()))))
    glob_pre = register_optimizer_step_pre_hook(lambda o, a, k: events.append("gpre"))
    glob_post = register_optimizer_step_post_hook(lambda o, a, k: events.append("gpost"))
    try:
        for k in range(3):
            _set_grads([w], k)
            opt.step()
    finally:
        glob_pre.remove()
        glob_post.remove()
    one = ["gpre", ("pre", False), ("post", True), "gpost"]
    assert events[:4] == one
    assert len(events) == 12
    assert [e for e in events if e in ("gpre", "gpost")] == ["gpre", "gpost"] * 3
    assert sum(1 for e in events if isinstance(e, tuple) and e[0] == "pre") == 3
    assert sum(1 for e in events if isinstance(e, tuple) and e[0] == "post") == 3


def test_pre_hook_can_replace_the_closure():
    (w,) = _leaves(_init()[0])
    opt = ProxAdam([w], lr=0.1)
    seen = []

    def closure():
        seen.append("closure")
        opt.zero_grad()
        loss = w.square().sum()
        loss.backward()
        return loss

    # args holds the optimizer itself first, as for every torch optimizer
    opt.register_step_pre_hook(lambda o, args, kwargs: ((o, closure), kwargs))
    loss = opt.step()
    assert seen == ["closure"] and loss is not None


def test_add_param_group_inherits_defaults_and_validates():
    w, b = _leaves(*_init())
    extra, extra2 = _leaves(torch.randn(2, 4), torch.randn(2, 4))
    opt = ProxAdam([w], lr=0.02, weight_decay=0.01, prox="nm", lam=0.3, prox_kwargs=NM, metric="adam",
                   lam_scaling="lr")
    opt.add_param_group({"params": [b], "prox": None, "lam": 0.0})
    opt.add_param_group({"params": [extra], "lr": 0.5})
    g_b, g_extra = opt.param_groups[1], opt.param_groups[2]
    assert g_b["prox"] is None and g_b["lam"] == 0.0 and g_b["lr"] == 0.02
    assert g_extra["prox"] == "nm" and g_extra["lam"] == 0.3 and g_extra["prox_kwargs"] == NM
    assert g_extra["metric"] == "adam" and g_extra["lam_scaling"] == "lr" and g_extra["weight_decay"] == 0.01
    assert g_extra["lr"] == 0.5
    assert g_b["prox_kwargs"] is not opt.param_groups[0]["prox_kwargs"]
    # no group shares a prox_kwargs dict with another or with the defaults
    g_extra["prox_kwargs"]["n"] = 1
    assert opt.param_groups[0]["prox_kwargs"] == NM and opt.defaults["prox_kwargs"] == NM

    for bad, match in [
        ({"lam": -1.0}, "lam"),
        ({"metric": "newton"}, "metric"),
        ({"lam_scaling": "sqrt"}, "lam_scaling"),
        ({"prox": "not_a_prox"}, "not_a_prox"),
        ({"prox": prox_l1}, "prox"),
        ({"prox": None, "lam": 0.1}, "prox"),
        ({"prox_kwargs": {"step": 2.0}}, "step"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.add_param_group({"params": [extra2], **bad})
    assert len(opt.param_groups) == 3
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group({"params": [extra]})
    # the new groups are stepped (and proxed) like the others
    _set_grads([w, b, extra], 3)
    opt.step()
    assert all(len(opt.state[p]) > 0 for p in (w, b, extra))


def test_named_parameters_and_param_names_in_state_dict():
    model = torch.nn.Linear(8, 4)
    opt = ProxAdam(model.named_parameters(), lr=0.1, prox="nm_projection", lam=1.0, prox_kwargs={"n": 2, "m": 4})
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    model(torch.randn(3, 8)).square().sum().backward()
    opt.step()
    assert _is_nm(model.weight.detach(), dim=1)


def test_deepcopy_continues_identically():
    data = _data(steps=6)
    w, b = _leaves(*_init())
    opt = _make_for_resume([w, b], metric="adam")
    for x, y in data[:3]:
        opt.zero_grad()
        _loss(w, b, x, y).backward()
        opt.step()
    (w2, b2), opt2 = copy.deepcopy(((w, b), opt))
    assert opt2.param_groups[0]["params"][0] is w2 and opt2.param_groups[0]["prox"] == "nm"
    assert opt2.param_groups[0]["prox_kwargs"] is not opt.param_groups[0]["prox_kwargs"]
    for x, y in data[3:]:
        for (pw, pb), o in (((w, b), opt), ((w2, b2), opt2)):
            o.zero_grad()
            _loss(pw, pb, x, y).backward()
            o.step()
    assert torch.equal(w, w2) and torch.equal(b, b2)
    for p, p2 in ((w, w2), (b, b2)):
        for key, value in opt.state[p].items():
            assert torch.equal(value, opt2.state[p2][key]) and value is not opt2.state[p2][key]


def test_deepcopy_of_optimizer_alone_has_independent_state():
    (w,) = _leaves(_init()[0])
    opt = ProxAdam([w], lr=0.1, prox="nm", lam=0.5, prox_kwargs=NM)
    _set_grads([w], 0)
    opt.step()
    snapshot = {k: v.clone() for k, v in opt.state[w].items()}
    twin = copy.deepcopy(opt)
    (p_twin,) = twin.param_groups[0]["params"]
    assert p_twin is not w and torch.equal(p_twin, w)
    _set_grads([p_twin], 1)
    twin.step()
    assert all(torch.equal(opt.state[w][k], v) for k, v in snapshot.items())
    assert not torch.equal(twin.state[p_twin]["exp_avg"], snapshot["exp_avg"])


# --------------------------------------------------------------------------------------- compile


def _compile_or_skip(backend):
    if not hasattr(torch, "compile"):  # pragma: no cover
        pytest.skip("torch.compile is unavailable in this torch build")
    try:
        importlib.import_module("torch._dynamo")
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"torch._dynamo unavailable: {exc}")
    if backend == "inductor" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        pytest.skip("inductor needs a C++ compiler on CPU and none is installed")


def _compiled_vs_eager(prox, lam, steps=3, backend="inductor", metric="identity"):
    _compile_or_skip(backend)
    torch._dynamo.reset()
    data = _data(steps=steps)

    def setup():
        w, b = _leaves(*_init())
        opt = ProxAdam(
            [{"params": [w], "prox": prox, "lam": lam, "prox_kwargs": NM if prox == "nm" else {}},
             {"params": [b]}],
            lr=0.05, metric=metric,
        )
        return w, b, opt

    w_e, b_e, opt_e = setup()
    for x, y in data:
        opt_e.zero_grad()
        _loss(w_e, b_e, x, y).backward()
        opt_e.step()

    w_c, b_c, opt_c = setup()

    @torch.compile(backend=backend)
    def train_step(x, y):
        opt_c.zero_grad()
        loss = _loss(w_c, b_c, x, y)
        loss.backward()
        opt_c.step()
        return loss

    try:
        for x, y in data:
            train_step(x, y)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(w_c.detach(), w_e.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b_c.detach(), b_e.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(w_c.detach() == 0, w_e.detach() == 0)
    return w_e


@pytest.mark.parametrize("metric", ["identity", "adam"])
def test_torch_compile_traces_training_step_aot_eager(metric):
    # Dynamo + AOTAutograd through ProxAdam.step (hooks wrapper, AdamW's step, the prox) without inductor's
    # C++ build. The default-backend runs below are marked slow: with a cold inductor cache on a small CPU
    # machine they take 10-40 s.
    w = _compiled_vs_eager("l1", 0.2 if metric == "identity" else 20.0, backend="aot_eager", metric=metric)
    assert (w == 0).any()


@pytest.mark.slow
def test_torch_compile_training_step_matches_eager_l1():
    w = _compiled_vs_eager("l1", 0.2)
    assert (w == 0).any()


@pytest.mark.slow  # ~2 s with a warm inductor cache, ~30 s cold (inductor's C++ build)
def test_torch_compile_training_step_matches_eager_nm():
    # With the fused CPU kernel the N:M prox is one opaque custom op in the graph (seconds to compile);
    # the plain-torch N:M prox unrolls into thousands of ops (minutes), so that case is not run here.
    native = getattr(torchprox.prox, "_native", None)
    if native is None or native.library() is None:
        pytest.skip("without the fused CPU N:M kernel, compiling the N:M prox takes minutes")
    w = _compiled_vs_eager("nm", 2.0)
    assert (w == 0).any()


# ----------------------------------------------------------------------------------- tensor lr


@pytest.mark.parametrize("metric", ["identity", "adam"])
@pytest.mark.parametrize("lam_scaling", ["constant", "lr"])
def test_tensor_lr_works_and_matches_float_lr(metric, lam_scaling):
    lam = 2.0 if lam_scaling == "constant" else 2.0 / 0.05  # the same effective lam either way

    def make(lr):
        return lambda p: ProxAdam(
            [{"params": [p[0]], "prox": "nm", "lam": lam, "prox_kwargs": NM}, {"params": [p[1]]}],
            lr=lr, metric=metric, lam_scaling=lam_scaling,
        )

    w_t, b_t, opt_t = _train(make(torch.tensor(0.05)), steps=5)
    w_f, b_f, _ = _train(make(0.05), steps=5)
    assert isinstance(opt_t.param_groups[0]["lr"], torch.Tensor)
    assert torch.isfinite(w_t).all() and torch.isfinite(b_t).all()
    torch.testing.assert_close(w_t, w_f, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b_t, b_f, rtol=1e-5, atol=1e-6)
    assert torch.equal(w_t == 0, w_f == 0) and (w_t == 0).any()


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prox": "no_such_prox", "lam": 0.1}, "no_such_prox"),
        ({"prox": "nm", "lam": -0.1}, "lam"),
        ({"prox": "nm", "lam": float("nan")}, "lam"),
        ({"prox": "nm", "lam": float("inf")}, "lam"),
        ({"prox": "nm", "lam": "0.1"}, "lam"),
        ({"prox": "nm", "lam": 0.1, "metric": "euclid"}, "metric"),
        ({"prox": "nm", "lam": 0.1, "lam_scaling": "cosine"}, "lam_scaling"),
        ({"prox": None, "lam": 0.1}, "prox"),
        ({"lam": 0.1}, "prox"),
        ({"prox": prox_nm, "lam": 0.1}, "register_prox"),
        ({"prox": lambda y, lam, step=1.0: y, "lam": 0.1}, "prox"),
        ({"prox": 3, "lam": 0.1}, "prox"),
        ({"prox": "nm", "lam": 0.1, "prox_kwargs": [("n", 2)]}, "prox_kwargs"),
        ({"prox": "nm", "lam": 0.1, "prox_kwargs": {"lam": 1.0}}, "'lam'"),
        ({"prox": "nm", "lam": 0.1, "prox_kwargs": {"step": 1.0}}, "'step'"),
        ({"prox": "nm", "lam": 0.1, "prox_kwargs": {"y": 1.0}}, "'y'"),
        ({"prox": "nm", "lam": 0.1, "prox_kwargs": {"n": torch.tensor(2)}}, "'n'"),
        ({"prox": "nm", "lam": 0.1, "prox_kwargs": {"dim": [1]}}, "'dim'"),
        ({"prox": "nm", "lam": 0.1, "prox_kwargs": {"m": {"a": 4}}}, "'m'"),
        ({"prox": "nm", "lam": 0.1, "prox_kwargs": {1: 2}}, "prox_kwargs"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, match):
    (w,) = _leaves(_init()[0])
    with pytest.raises(ValueError, match=match):
        ProxAdam([w], **kwargs)


def test_invalid_group_values_raise_value_error_in_constructor():
    w, b = _leaves(*_init())
    with pytest.raises(ValueError, match="lam"):
        ProxAdam([{"params": [w], "prox": "nm", "lam": -1.0}, {"params": [b]}])
    with pytest.raises(ValueError, match="'dim'"):
        ProxAdam([{"params": [w], "prox": "nm", "lam": 1.0, "prox_kwargs": {"dim": (1,)}}])


def test_unknown_prox_error_lists_registered_names():
    (w,) = _leaves(_init()[0])
    with pytest.raises(ValueError, match="nm") as info:
        ProxAdam([w], prox="nope", lam=1.0)
    assert "'nope'" in str(info.value)


def test_adam_argument_validation_is_torchs():
    (w,) = _leaves(_init()[0])
    with pytest.raises(ValueError, match="learning rate"):
        ProxAdam([w], lr=-1.0)
    with pytest.raises(ValueError, match="beta"):
        ProxAdam([w], betas=(1.5, 0.999))


# ---------------------------------------------------------------------------------- registry


def test_user_registered_prox_by_name(registered_prox):
    name, calls = registered_prox
    assert name in torchprox.prox.available_prox()
    w, b = _leaves(*_init())
    opt = ProxAdam(
        [{"params": [w], "prox": name, "lam": 0.5, "prox_kwargs": {"bound": 0.1}, "metric": "adam"},
         {"params": [b]}],
        lr=0.01,
    )
    _set_grads([w, b], 0)
    opt.step()
    assert len(calls) == 1
    call = calls[0]
    assert call["lam"] == 0.5 and call["bound"] == 0.1 and call["shape"] == (4, 8)
    assert isinstance(call["step"], torch.Tensor) and call["step"].shape == w.shape
    assert w.detach().abs().max() <= 0.1 and b.detach().abs().max() > 0.1
    # the state dict holds the name, and loads (weights_only) into a fresh optimizer
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt2 = ProxAdam([{"params": [w]}, {"params": [b]}])
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.param_groups[0]["prox"] == name


def test_identity_metric_passes_scalar_step_and_lr_scaled_lam(registered_prox):
    name, calls = registered_prox
    (w,) = _leaves(_init()[0])
    opt = ProxAdam([w], lr=0.25, prox=name, lam=2.0, lam_scaling="lr")
    _set_grads([w], 0)
    opt.step()
    assert calls[0]["step"] == 1.0 and calls[0]["lam"] == 0.5 and calls[0]["bound"] == 1.0


# ------------------------------------------------------------------------------------ dtypes


def test_float64_step_matches_reference():
    w0, _ = _init(7, (2, 8), torch.float64)
    (w,) = _leaves(w0)
    opt = ProxAdam([w], lr=0.1, prox="nm", lam=1.0, prox_kwargs=NM)
    for k in range(3):
        _set_grads([w], k)
        (y,), _ = _reference_step(opt, [w.detach()], [w.grad])
        opt.step()
        assert w.dtype == torch.float64
        assert torch.equal(w.detach(), prox_nm(y, 1.0, dim=1)), k


@pytest.mark.parametrize("metric", ["identity", "adam"])
def test_bfloat16_runs_and_ends_nm(metric):
    x, y = _regression(3)
    x, y = x.bfloat16(), y.bfloat16()
    w = torch.zeros(4, 8, dtype=torch.bfloat16).requires_grad_()
    opt = ProxAdam([w], lr=0.1, prox="nm", lam=5.0, prox_kwargs=NM, metric=metric)
    for _ in range(15):
        opt.zero_grad()
        (x @ w.t() - y).float().square().mean().backward()
        opt.step()
    assert w.dtype == torch.bfloat16
    assert torch.isfinite(w).all() and (w != 0).any()
    assert _is_nm(w.detach())


# ----------------------------------------------------------------------------------- differentiable


@pytest.mark.parametrize(
    "prox,lam,metric",
    [(None, 0.0, "identity"), ("l1", 0.05, "identity"), ("l1", 0.05, "adam"), ("nm", 0.3, "identity")],
)
def test_differentiable_step_gradcheck(prox, lam, metric):
    # As torch's TestDifferentiableOptimizer: one step is a differentiable function of the param and grad.
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(1, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def one_step(p0, grad, prox=prox, lam=lam):
        p = p0.clone()  # a non-leaf, so the in-place step is recorded
        p.grad = grad
        opt = ProxAdam([p], lr=0.1, prox=prox, lam=lam, prox_kwargs=NM if prox == "nm" else {}, metric=metric,
                       differentiable=True)
        opt.step()
        return p

    assert torch.autograd.gradcheck(one_step, (p0, grad))
    if prox is not None:  # the prox is active
        assert not torch.allclose(one_step(p0, grad), one_step(p0, grad, None, 0.0))


# -------------------------------------------------------------------------------------- fused kernel


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_params_that_require_grad_get_the_fused_nm_kernel():
    # A view of a leaf that requires grad says requires_grad=True even under no_grad; ProxAdam must hand the
    # prox a detached tensor, or prox_nm silently falls back from its fused CPU kernel to the slow path.
    native = getattr(torchprox.prox, "_native", None)
    if native is None or native.library() is None:
        pytest.skip("the fused CPU N:M kernel is not available here")
    (w,) = _leaves(_init()[0])
    opt = ProxAdam([w], lr=0.1, prox="nm", lam=1.0, prox_kwargs=NM)
    _set_grads([w], 0)
    with _OpRecorder() as rec:
        opt.step()
    assert any("torchprox.prox_nm_cpu" in op for op in rec.ops), sorted(set(rec.ops))
    assert w.requires_grad and w.grad is not None and w.grad_fn is None


# -------------------------------------------------------------------------------------- GradScaler


@pytest.mark.parametrize("fused", [False, True], ids=["loop", "fused"])
def test_grad_scaler_skips_the_prox_with_the_step_on_inf(fused):
    # Non-fused: GradScaler skips opt.step() itself. Fused: ProxAdam's step runs, the fused kernel skips the
    # update through found_inf, and the prox must be skipped too (or it would still shrink the weights).
    if not hasattr(torch.amp, "GradScaler"):  # pragma: no cover
        pytest.skip("torch.amp.GradScaler unavailable")
    (w,) = _leaves(_init()[0])
    w0 = w.detach().clone()
    opt = ProxAdam([w], lr=0.1, prox="nm", lam=1.0, prox_kwargs=NM, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale((w * torch.tensor(float("inf"))).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0
    assert torch.equal(w.detach(), w0)
    opt.zero_grad()
    scaler.scale(w.square().sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert _is_nm(w.detach()) and not torch.equal(w.detach(), w0)


# ---------------------------------------------------------------------------------- no host sync


class _NoLocalScalar(TorchDispatchMode):
    """Fails on ``aten._local_scalar_dense``: what ``.item()``, ``float(t)``, ``bool(t)`` dispatch to."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("host sync (_local_scalar_dense) inside ProxAdam's prox step")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "metric,prox",
    [
        ("adam", "nm"),
        ("adam", "l1"),
        ("identity", "l1"),
        ("identity", "nm"),
    ],
)
def test_prox_step_performs_no_host_sync(metric, prox):
    w, b = _leaves(*_init())
    opt = ProxAdam(
        [{"params": [w], "prox": prox, "lam": 0.5, "prox_kwargs": NM if prox == "nm" else {}}, {"params": [b]}],
        lr=torch.tensor(0.05), metric=metric, lam_scaling="lr", amsgrad=True,
    )
    original = opt._apply_prox
    ran = []

    def guarded():
        with mock.patch.object(torch.Tensor, "item", side_effect=AssertionError("Tensor.item in _apply_prox")):
            with _NoLocalScalar():
                original()
        ran.append(True)

    opt._apply_prox = guarded
    for k in range(2):
        _set_grads([w, b], k)
        opt.step()
    assert ran == [True, True]
    assert (w.detach() != _init()[0]).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("metric", ["identity", "adam"])
@pytest.mark.parametrize("lr_on_device", [False, True])
def test_cuda_step_performs_no_host_sync(metric, lr_on_device):
    # The whole step on CUDA (torch's fused Adam, then the Triton prox kernel, its λ a device tensor when lr is
    # one): CUDA's own sync checker raises on any device-to-host synchronisation.
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.nn.Parameter(0.2 * torch.randn(256, 512, device="cuda", generator=gen))
    lr = torch.tensor(1e-3, device="cuda") if lr_on_device else 1e-3
    opt = ProxAdam([w], lr=lr, prox="nm", lam=0.1 / (1e-3 if lr_on_device else 1.0), prox_kwargs=NM,
                   metric=metric, lam_scaling="lr" if lr_on_device else "constant")
    for k in range(3):
        w.grad = 1e-3 * torch.randn(w.shape, device="cuda", generator=gen)
        if k == 0:  # state initialisation and the kernels' compilation
            opt.step()
            torch.cuda.synchronize()
            continue
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(w).all()


def test_no_host_sync_guard_detects_a_sync():
    # the guard itself must fire, or the test above checks nothing
    t = torch.tensor(1.0)
    with pytest.raises(AssertionError):
        with _NoLocalScalar():
            float(t)
    with pytest.raises(AssertionError):
        with mock.patch.object(torch.Tensor, "item", side_effect=AssertionError("item")):
            t.item()


def test_metric_step_reads_step_count_as_tensor():
    (w,) = _leaves(_init()[0])
    opt = ProxAdam([w], lr=0.1, prox="nm", lam=0.5, prox_kwargs=NM, metric="adam")
    _set_grads([w], 0)
    opt.step()
    group = opt.param_groups[0]
    state = opt.state[w]
    with _NoLocalScalar():
        s = opt._metric_step(group, w)
    expected = 0.1 / ((state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))).sqrt() + 1e-8)
    torch.testing.assert_close(s, expected, rtol=1e-6, atol=0)
    assert math.isclose(float(state["step"]), 1.0)


# ------------------------------------------------------------- several prox groups, in every order (issue 21)

# Each group: its param's shape, the group's settings, and the prox a reference applies to its param by hand.
MULTI_GROUPS = {
    "nm": ((4, 8), {"prox": "nm", "lam": 0.8, "prox_kwargs": NM}),
    "nm_1_4_adam": ((2, 8), {"prox": "nm", "lam": 200.0, "prox_kwargs": {"n": 1, "m": 4, "dim": 1}, "metric": "adam",
                             "lam_scaling": "lr", "lr": 0.05}),
    "l1": ((3, 5), {"prox": "l1", "lam": 0.2}),
    "group_lasso": ((2, 8), {"prox": "group_lasso", "lam": 0.3, "prox_kwargs": {"group_size": 4, "dim": 1}}),
    "plain": ((4,), {}),
}
KERNELS = {"fused_default": {}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


def _reference_prox(p, group, ref_group, ref_state):
    """``p`` after its group's prox, computed here from the reference AdamW's state (not ProxAdam's)."""
    if group.get("prox") is None:
        return p
    lam = group["lam"] * (ref_group["lr"] if group.get("lam_scaling") == "lr" else 1.0)
    if group.get("metric") == "adam":
        t = float(ref_state["step"])
        v = ref_state["exp_avg_sq"] / (1 - ref_group["betas"][1] ** t)
        step = ref_group["lr"] / (v.sqrt() + ref_group["eps"])
    else:
        step = 1.0
    return torchprox.prox.get_prox(group["prox"])(p, lam, step=step, **group.get("prox_kwargs", {}))


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("order", list(__import__("itertools").permutations(["nm", "nm_1_4_adam", "l1", "plain"])),
                         ids=lambda o: "-".join(o))
def test_every_group_gets_its_own_prox_in_any_order(order, kernel):
    names = list(order) + ["group_lasso"] if order[0] == "plain" else list(order)
    g = torch.Generator().manual_seed(len(names) * 7 + sum(ord(c) for c in "".join(order)))
    init = {n: torch.randn(MULTI_GROUPS[n][0], generator=g, dtype=torch.float64) for n in names}
    params, ref_params = _leaves(*init.values()), _leaves(*init.values())
    groups = [{"params": [p], **MULTI_GROUPS[n][1]} for n, p in zip(names, params)]
    opt = ProxAdam(groups, lr=0.1, **KERNELS[kernel])
    adam_keys = ("lr",)
    ref = torch.optim.AdamW(
        [{"params": [r], **{k: v for k, v in MULTI_GROUPS[n][1].items() if k in adam_keys}}
         for n, r in zip(names, ref_params)],
        lr=0.1, weight_decay=0.0, fused=opt.defaults["fused"], foreach=KERNELS[kernel].get("foreach"),
    )
    for k in range(3):
        _set_grads(params, 40 + k)
        _set_grads(ref_params, 40 + k)
        opt.step()
        ref.step()
        with torch.no_grad():
            for n, r, rg in zip(names, ref_params, ref.param_groups):
                r.copy_(_reference_prox(r.detach(), MULTI_GROUPS[n][1], rg, ref.state[r]))
        for n, p, r in zip(names, params, ref_params):
            torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-9, atol=1e-12, msg=f"{n}, step {k}")
    for n, p in zip(names, params):  # every prox group was regularised (the test would catch a skipped one)
        if MULTI_GROUPS[n][1]:
            assert (p.detach() == 0).any(), n


# ----------------------------------------------------------------- load_state_dict checks shapes (issue 21)


def _saved_for(shape, **kw):
    (a,) = _leaves(torch.randn(shape))
    opt = ProxAdam([a], prox="nm", lam=0.1, **kw)
    a.grad = torch.randn_like(a)
    opt.step()
    return opt.state_dict()


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
def test_load_state_dict_for_other_shapes_raises_before_changing_anything(kernel, amsgrad):
    saved = _saved_for((8, 16), amsgrad=amsgrad, **KERNELS[kernel])
    (b,) = _leaves(torch.randn(8, 32))
    opt = ProxAdam([b], prox="nm", lam=0.1, lr=0.01, amsgrad=amsgrad, **KERNELS[kernel])
    groups_before = copy.deepcopy(opt.param_groups)
    with pytest.raises(ValueError, match=r"param group 0, parameter 0 of shape \(8, 32\): 'exp_avg' is of shape "
                                         r"\(8, 16\).*other parameters"):
        opt.load_state_dict(saved)
    assert len(opt.state) == 0 and opt.param_groups[0]["lr"] == 0.01
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in groups_before]
    b.grad = torch.randn_like(b)
    opt.step()  # still usable
    assert opt.state[b]["exp_avg"].shape == (8, 32)


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda st: st.pop("exp_avg_sq"), "has no 'exp_avg_sq'"),
        (lambda st: st.update(step=torch.ones(2)), "'step' is of shape \\(2,\\)"),
        (lambda st: st.update(exp_avg_sq=[1.0]), "'exp_avg_sq' is a list"),
    ],
    ids=["missing", "step_shape", "not_a_tensor"],
)
def test_load_state_dict_rejects_a_malformed_state(corrupt, match):
    saved = _saved_for((4, 8))
    corrupt(saved["state"][0])
    (b,) = _leaves(torch.randn(4, 8))
    opt = ProxAdam([b], prox="nm", lam=0.1)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(saved)
    assert len(opt.state) == 0


def test_load_state_dict_missing_max_exp_avg_sq_with_amsgrad_is_an_error():
    saved = _saved_for((4, 8))
    saved["param_groups"][0]["amsgrad"] = True  # the loaded groups' settings win
    (b,) = _leaves(torch.randn(4, 8))
    with pytest.raises(ValueError, match="has no 'max_exp_avg_sq'"):
        ProxAdam([b], prox="nm", lam=0.1).load_state_dict(saved)


def test_load_state_dict_validates_the_loaded_groups_against_the_params():
    saved = _saved_for((4, 8))
    (b,) = _leaves(torch.randn(4, 8))
    opt = ProxAdam([b], prox="nm", lam=0.1)
    for bad, match in [({"prox_kwargs": {"n": 2, "m": 3}}, "not a multiple of m=3"),
                       ({"prox_kwargs": {"n": 2, "m": 4, "groups": 2}}, "no keyword argument 'groups'"),
                       ({"lam": -1.0}, "lam"), ({"prox": "nope"}, "nope")]:
        changed = copy.deepcopy(saved)
        changed["param_groups"][0].update(bad)
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(changed)
        assert len(opt.state) == 0 and opt.param_groups[0]["prox_kwargs"] == {}


def test_issue_repro_other_shapes_with_the_fused_kernel_does_not_crash_the_process():
    # Before the check, torch's fused Adam read the (8, 16) moments as (8, 32) ones: abort or segfault.
    code = (
        "import torch\nfrom torch.nn import Parameter\nfrom torchprox import ProxAdam\n"
        "a=Parameter(torch.randn(8,16)); oa=ProxAdam([a],prox='nm',lam=.1); a.grad=torch.randn_like(a); oa.step()\n"
        "b=Parameter(torch.randn(8,32)); ob=ProxAdam([b],prox='nm',lam=.1)\n"
        "try:\n    ob.load_state_dict(oa.state_dict())\nexcept ValueError as e:\n    print('ValueError', e)\n"
        "b.grad=torch.randn_like(b); ob.step(); print('stepped')\n"
    )
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(__import__("pathlib").Path(torchprox.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert "ValueError" in out.stdout and "(8, 16)" in out.stdout and "stepped" in out.stdout


# ------------------------------------------------------------ bad groups fail at construction (issue 21)

BAD_GROUPS = [
    ((4, 8), {"prox": "nm", "prox_kwargs": {"n": 2, "m": 4, "groups": 3}}, "takes no keyword argument 'groups'"),
    ((4, 8), {"prox": "nm", "prox_kwargs": {"n": 5, "m": 4, "dim": 1}}, "0 < n < m"),
    ((4, 8), {"prox": "nm", "prox_kwargs": {"n": 4, "m": 4, "dim": 1}}, "0 < n < m"),
    ((4, 30), {"prox": "nm", "prox_kwargs": NM}, "size 30 along dim 1 is not a multiple of m=4"),
    ((4, 8), {"prox": "nm", "prox_kwargs": {"dim": 2}}, "dim=2 is out of range"),
    ((4, 8), {"prox": "nm", "prox_kwargs": {"dim": "1"}}, "dim must be an integer"),
    ((), {"prox": "nm"}, "0-d"),
    ((4, 8), {"prox": "nm_projection", "prox_kwargs": {"n": 2, "m": 3}}, "not a multiple of m=3"),
    ((2, 8), {"prox": "group_lasso", "prox_kwargs": {"group_size": 3, "dim": 1}}, "not a multiple of m=3"),
    ((2, 8), {"prox": "group_lasso", "prox_kwargs": {"group_size": 0}}, "group_size"),
    ((2, 8), {"prox": "l1", "prox_kwargs": {"n": 2}}, "'l1' takes no keyword argument 'n'"),
]


@pytest.mark.parametrize("shape,group,match", BAD_GROUPS, ids=[m for _, _, m in BAD_GROUPS])
def test_a_group_the_prox_cannot_serve_fails_at_construction_and_in_add_param_group(shape, group, match):
    w, b = _leaves(torch.randn(4, 8), torch.randn(4))
    (bad,) = _leaves(torch.randn(shape))
    with pytest.raises(ValueError, match=match) as info:
        ProxAdam([{"params": [w], "prox": "nm", "lam": 0.5, "prox_kwargs": NM}, {"params": [b]},
                  {"params": [bad], "lam": 0.5, **group}])
    if "keyword" not in match:
        assert f"param group 2, parameter 0 of shape {tuple(shape)}" in str(info.value)
    opt = ProxAdam([w], prox="nm", lam=0.5, prox_kwargs=NM)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": [bad], "lam": 0.5, **group})
    assert len(opt.param_groups) == 1


def test_complex_params_are_refused_in_a_prox_group_and_allowed_in_a_plain_one():
    (w,) = _leaves(torch.randn(4, 8))
    (z,) = _leaves(torch.randn(4, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"parameter 0 \('z'\) of shape \(4, 8\) has dtype torch.complex64"):
        ProxAdam([("z", z)], prox="l1", lam=0.1)
    opt = ProxAdam([{"params": [w], "prox": "l1", "lam": 0.1}, {"params": [z]}])
    z.grad, w.grad = torch.ones_like(z), torch.ones_like(w)
    opt.step()


def test_a_bad_group_never_leaves_a_half_done_step():
    # before: n > m on the second group was found by prox_nm in step(), after Adam had moved both params
    # and the first group's prox had run
    w, v = _leaves(torch.randn(4, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="0 < n < m"):
        ProxAdam([{"params": [w], "prox": "nm", "lam": 0.5, "prox_kwargs": NM},
                  {"params": [v], "prox": "nm", "lam": 0.5, "prox_kwargs": {"n": 5, "m": 4}}])


def test_a_user_prox_gets_the_signature_check_and_its_own_check(registered_prox):
    name, _ = registered_prox
    (w,) = _leaves(torch.randn(4, 8))
    with pytest.raises(ValueError, match=f"prox '{name}' takes no keyword argument 'radius'"):
        ProxAdam([w], prox=name, lam=0.1, prox_kwargs={"radius": 2.0})
    ProxAdam([w], prox=name, lam=0.1, prox_kwargs={"bound": 2.0})

    def needs_positive_bound(y, bound=1.0):
        if bound <= 0:
            raise ValueError(f"bound must be > 0, got {bound}")

    fn = prox_registry.get_prox(name)
    register_prox(name, overwrite=True, check=needs_positive_bound)(fn)
    with pytest.raises(ValueError, match=r"parameter 0 of shape \(4, 8\): prox .*bound must be > 0, got -1"):
        ProxAdam([w], prox=name, lam=0.1, prox_kwargs={"bound": -1.0})

    @register_prox(name + "_req", overwrite=True)
    def _needs_radius(y, lam, *, step=1.0, radius):
        return y

    try:
        with pytest.raises(ValueError, match="radius"):
            ProxAdam([w], prox=name + "_req", lam=0.1)
        ProxAdam([w], prox=name + "_req", lam=0.1, prox_kwargs={"radius": 1.0})
    finally:
        prox_registry._REGISTRY.pop(name + "_req", None)
    prox_registry._CHECKS.pop(name, None)


# --------------------------------------------------------------- torch's AdamW errors and lr (issue 21)

ADAMW_BAD_ARGS = [
    {"lr": -1.0}, {"lr": torch.tensor([0.1, 0.2])}, {"lr": torch.tensor(0.1), "foreach": True},
    {"eps": -1.0}, {"betas": (1.0, 0.0)}, {"betas": (-0.1, 0.9)}, {"betas": (0.9, 1.0)}, {"betas": (0.9, -1e-3)},
    {"weight_decay": -1.0}, {"betas": (0.9, torch.tensor(0.99))},
    {"betas": (torch.tensor(0.9), torch.tensor(0.99)), "foreach": True},
    {"betas": (torch.tensor([0.9, 0.9]), torch.tensor(0.99))},
    {"fused": True, "differentiable": True}, {"fused": True, "foreach": True},
]


@pytest.mark.parametrize("kwargs", ADAMW_BAD_ARGS, ids=[str(i) for i in range(len(ADAMW_BAD_ARGS))])
@pytest.mark.parametrize("params", ["none", "tensors"])
@pytest.mark.parametrize("prox", [{}, {"prox": "nm", "lam": 0.1}], ids=["", "nm"])
def test_adamws_argument_errors_are_raised_as_adamw_raises_them(kwargs, params, prox):
    def make(cls):
        ps = None if params == "none" else [torch.nn.Parameter(torch.randn(4, 8))]
        try:
            cls(ps, **kwargs, **({} if cls is torch.optim.AdamW else prox))
        except Exception as e:  # noqa: BLE001 - comparing what each raises
            return type(e), str(e)
        return None

    expected = make(torch.optim.AdamW)
    assert expected is not None
    assert make(ProxAdam) == expected


@pytest.mark.parametrize("metric", ["identity", "adam"])
@pytest.mark.parametrize("lam_scaling", ["constant", "lr"])
@pytest.mark.parametrize("lr_shape", [(1,), (1, 1)])
def test_any_one_element_tensor_lr_adamw_accepts(metric, lam_scaling, lr_shape):
    w0, _ = _init(6, (4, 8), torch.float64)
    z0 = torch.tensor(1.5, dtype=torch.float64)  # a 0-d parameter, with an elementwise prox
    outs = []
    for lr in (torch.full(lr_shape, 0.05, dtype=torch.float64), 0.05):
        w, z = _leaves(w0, z0)
        lam = 0.5 if lam_scaling == "constant" else 10.0
        opt = ProxAdam([{"params": [w], "prox": "nm", "lam": lam, "prox_kwargs": NM},
                        {"params": [z], "prox": "l1", "lam": lam}], lr=lr, metric=metric, lam_scaling=lam_scaling)
        for k in range(3):
            _set_grads([w, z], 60 + k)
            opt.step()
        outs.append((w.detach(), z.detach()))
    (w_t, z_t), (w_f, z_f) = outs
    assert w_t.shape == w0.shape and z_t.shape == ()
    torch.testing.assert_close(w_t, w_f, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(z_t, z_f, rtol=1e-12, atol=1e-14)
    assert (w_t == 0).any()


# ------------------------------------------------- metric="adam" where v̂ = 0, and lr = 0 (issue 21, item 14)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("prox,kwargs", [("nm", NM), ("l1", {})], ids=["nm", "l1"])
def test_adam_metric_leaves_weights_that_never_had_a_gradient_as_adam_left_them(kernel, prox, kwargs):
    """Where v = 0 the step is 0 and the prox leaves the weight as Adam left it: for N:M (groups of 4 along
    dim 1, coupled) its whole group, for L1 the weight alone; every other weight is the prox of the AdamW step
    with the hand-computed metric."""
    w0, _ = _init(7, (6, 8), torch.float64)
    dead0 = torch.randn(4, 8, dtype=torch.float64)
    w, dead = _leaves(w0, dead0)
    opt = ProxAdam([w, dead], lr=0.1, weight_decay=0.01, prox=prox, lam=2.0, prox_kwargs=kwargs, metric="adam",
                   **KERNELS[kernel])
    r_w, r_dead = _leaves(w0, dead0)
    ref = torch.optim.AdamW([r_w, r_dead], lr=0.1, weight_decay=0.01, fused=opt.defaults["fused"],
                            foreach=KERNELS[kernel].get("foreach"))
    no_grad = torch.zeros(6, 8, dtype=torch.bool)
    no_grad[1::2] = True  # rows 1, 3, 5 never get a gradient
    no_grad[0, 2] = no_grad[2, 7] = True  # nor one weight of group 0 of row 0 and of group 1 of row 2
    still = no_grad.view(6, 2, 4).any(-1, keepdim=True).expand(6, 2, 4).reshape(6, 8) if prox == "nm" else no_grad
    for k in range(3):
        _set_grads([w], 70 + k)
        w.grad[no_grad] = 0
        dead.grad = torch.zeros_like(dead)  # a whole tensor without one (an expert that got no tokens)
        r_w.grad, r_dead.grad = w.grad.clone(), dead.grad.clone()
        opt.step()
        ref.step()
        assert torch.equal(dead.detach(), r_dead.detach()), k  # Adam's update only (weight decay), no prox
        assert torch.equal(w.detach()[still], r_w.detach()[still]), k  # (a group with one such weight too)
        step = _hand_step(ref, r_w, ref.param_groups[0])
        with torch.no_grad():
            moved = torchprox.prox.get_prox(prox)(r_w.detach(), 2.0, step=step, **kwargs)  # (s = lr/eps there)
            r_w[~still] = moved[~still]
        torch.testing.assert_close(w.detach(), r_w.detach(), rtol=1e-9, atol=1e-12)
    assert (w.detach()[~still] == 0).any() and not (w.detach()[still] == 0).any()
    assert (moved[still] == 0).any()  # (the formula's step would have zeroed some of them)


def test_adam_metric_discards_a_user_operators_result_where_the_step_is_zero(registered_prox):
    """A registered operator without ``zero_step_still`` (this box projection ignores its step) gets the zero
    steps too, and ProxAdam puts back what Adam left where s = 0; elsewhere the operator's result."""
    name, calls = registered_prox
    w0 = 0.5 * torch.ones(4, 8)
    (w,) = _leaves(w0)
    opt = ProxAdam([w], lr=0.01, prox=name, lam=1.0, prox_kwargs={"bound": 0.1}, metric="adam")
    (r_w,) = _leaves(w0)
    ref = torch.optim.AdamW([r_w], lr=0.01, weight_decay=0.0)
    _set_grads([w], 3)
    w.grad[1] = 0
    r_w.grad = w.grad.clone()
    opt.step()
    ref.step()
    assert bool((calls[-1]["step"][1] == 0).all()) and bool((calls[-1]["step"][0] > 0).all())
    assert torch.equal(w.detach()[1], r_w.detach()[1]) and w.detach()[1].abs().min() > 0.1
    assert torch.equal(w.detach()[0], r_w.detach()[0].clamp(-0.1, 0.1))


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float_lr", "tensor_lr"])
def test_lr_zero_the_prox_follows_the_formula(tensor_lr):
    # lam_scaling="constant": lr = 0 does not stop the prox (metric="identity": s = 1, lam unchanged);
    # metric="adam": s = lr / (sqrt(v̂) + eps) = 0, and the prox with a zero step is the identity.
    w0, _ = _init(5, (2, 8))
    for metric in ("identity", "adam"):
        (p,) = _leaves(w0)
        lr = torch.tensor(0.0) if tensor_lr else 0.0
        opt = ProxAdam([p], lr=lr, prox="nm", lam=1.0, prox_kwargs=NM, metric=metric)
        for k in range(2):
            _set_grads([p], 5 + k)
            opt.step()
        expected = prox_nm(prox_nm(w0, 1.0, dim=1), 1.0, dim=1) if metric == "identity" else w0
        assert torch.equal(p.detach(), expected), metric


def test_a_metric_pattern_too_slow_to_train_is_refused_at_construction():
    """metric="adam" with 4:8 would take the plain-torch support enumeration (about 0.2 ms a group, hours a step
    for an LLM): refused when the group is added, naming metric="identity"; the identity metric serves it."""
    w = torch.nn.Parameter(torch.randn(8, 16))
    with pytest.raises(ValueError, match=r"cannot serve 4:8 .*metric='identity'"):
        ProxAdam([w], prox="nm", lam=0.1, metric="adam", prox_kwargs={"n": 4, "m": 8})
    opt = ProxAdam([w], prox="nm", lam=0.1, metric="identity", prox_kwargs={"n": 4, "m": 8})
    with pytest.raises(ValueError, match=r"cannot serve 2:16"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(4, 32))], "prox": "nm", "lam": 0.1,
                             "metric": "adam", "prox_kwargs": {"n": 2, "m": 16}})
    ProxAdam([torch.nn.Parameter(torch.randn(8, 18))], prox="nm", lam=0.1, metric="adam",
             prox_kwargs={"n": 3, "m": 6})  # m <= 6: served
