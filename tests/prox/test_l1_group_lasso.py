"""L1 and group-lasso prox: closed forms, optimality (KKT), firm non-expansiveness, semigroup law, metric."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torchprox.prox import group_lasso_penalty, prox_group_lasso, prox_l1, prox_l1_

DTYPES = [torch.float32, torch.float64]


@st.composite
def tensors(draw, rows=4, cols=8, positive=False):
    """(r, c) float64: small integer grids (exact ties, zeros) or continuous values, scaled by 10^k."""
    r, c = draw(st.integers(1, rows)), draw(st.integers(1, cols))
    if draw(st.booleans()):
        vals = draw(st.lists(st.integers(0 if positive else -4, 4), min_size=r * c, max_size=r * c))
        t = torch.tensor(vals, dtype=torch.float64) / 4
    else:
        lo = 0.0 if positive else -1.0
        vals = draw(st.lists(st.floats(lo, 1, allow_nan=False, width=64), min_size=r * c, max_size=r * c))
        t = torch.tensor(vals, dtype=torch.float64)
    t = t.reshape(r, c) * 10.0 ** draw(st.sampled_from([0, 0, -3, 3]))
    return t + 0.05 if positive else t


lams = st.sampled_from([0.0, 0.01, 0.3, 1.0, 7.0])


def l1_objective(w, y, lam, s=1.0):
    return (0.5 * (w - y).square() / s).sum() + lam * w.abs().sum()


def gl_objective(w, y, lam, s=1.0, group_size=None, dim=-1):
    return (0.5 * (w - y).square() / s).sum() + lam * group_lasso_penalty(w, group_size, dim)


# ---------------------------------------------------------------- L1


@pytest.mark.parametrize("dtype", DTYPES)
@given(y=tensors(), lam=lams)
def test_l1_closed_form_and_invariants(dtype, y, lam):
    y = y.to(dtype)
    w = prox_l1(y, lam)
    expected = torch.sign(y) * torch.clamp(y.abs() - lam, min=0)
    assert torch.equal(w, expected)
    assert (w.abs() <= y.abs()).all() and (w * y >= 0).all()
    if lam == 0:
        assert torch.equal(w, y)
    assert torch.equal(prox_l1(torch.zeros_like(y), lam), torch.zeros_like(y))


@given(y=tensors(), lam=lams, t=st.floats(-1, 1))
def test_l1_optimal_against_perturbations(y, lam, t):
    w = prox_l1(y, lam)
    f = l1_objective(w, y, lam)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        d = torch.randn(y.shape, generator=g, dtype=y.dtype) * (1e-3 + abs(t)) * (1 + y.abs().max())
        assert f <= l1_objective(w + d, y, lam) + 1e-12 * (1 + f.abs())


@given(y=tensors(), lam=lams, s=tensors(positive=True))
def test_l1_metric_optimality_conditions(y, lam, s):
    s = s.expand_as(y) if s.shape == y.shape else torch.full_like(y, float(s.flatten()[0]))
    w = prox_l1(y, lam, step=s)
    # subgradient: (w - y)/s + lam * sign(w) = 0 where w != 0; |y|/s <= lam where w == 0
    nz = w != 0
    assert torch.allclose(((w - y) / s + lam * torch.sign(w))[nz], torch.zeros_like(y)[nz], atol=1e-9, rtol=0)
    assert (y.abs()[~nz] <= lam * s[~nz] * (1 + 1e-12)).all()


@given(a=tensors(rows=1), b=tensors(rows=1), lam=lams)
def test_l1_firmly_nonexpansive(a, b, lam):
    c = min(a.shape[1], b.shape[1])
    a, b = a[:, :c], b[:, :c]
    pa, pb = prox_l1(a, lam), prox_l1(b, lam)
    assert (pa - pb).square().sum() <= ((pa - pb) * (a - b)).sum() * (1 + 1e-12) + 1e-300


@given(y=tensors(), l1=lams, l2=lams)
def test_l1_semigroup(y, l1, l2):
    assert torch.allclose(prox_l1(prox_l1(y, l1), l2), prox_l1(y, l1 + l2), rtol=1e-12, atol=1e-12)


def test_l1_inplace_and_bf16():
    y = torch.tensor([-2.0, 0.3, 1.5], dtype=torch.bfloat16)
    out = prox_l1_(y, 0.5)
    assert out is y and y.dtype == torch.bfloat16
    assert torch.equal(y.float(), torch.tensor([-1.5, 0.0, 1.0]))


@pytest.mark.parametrize("lam", [-1.0, float("nan"), float("inf")])
def test_l1_bad_lambda(lam):
    with pytest.raises(ValueError, match="lam"):
        prox_l1(torch.ones(3), lam)


def test_l1_needs_float_tensor():
    with pytest.raises(TypeError, match="floating-point"):
        prox_l1(torch.ones(3, dtype=torch.int64), 0.1)


# ---------------------------------------------------------------- group lasso


@pytest.mark.parametrize("dtype", DTYPES)
@given(y=tensors(), lam=lams)
def test_group_lasso_closed_form_rows(dtype, y, lam):
    y = y.to(dtype)
    w = prox_group_lasso(y, lam)  # one group per row
    kappa = lam * math.sqrt(y.shape[1])
    norm = y.double().norm(dim=1, keepdim=True)
    expected = (y.double() * (1 - kappa / norm.clamp_min(1e-300)).clamp_min(0)).to(dtype)
    # 1 − κ/‖y‖ cancels near the threshold: the error is a few ulps of ‖y‖, not of w
    eps = torch.finfo(dtype).eps
    assert torch.allclose(w, expected, rtol=4 * eps, atol=4 * eps * float(y.abs().max()))
    if lam == 0:
        assert torch.equal(w, y)


@given(y=tensors(cols=8), lam=lams, size=st.sampled_from([1, 2, 4]))
def test_group_lasso_groups_along_dim_are_independent(y, lam, size):
    y = torch.cat([y, y], dim=1)  # 2c columns, c >= 1
    if y.shape[1] % size:
        return
    w = prox_group_lasso(y, lam, group_size=size, dim=1)
    for j in range(0, y.shape[1], size):
        block = y[:, j:j + size]
        assert torch.allclose(w[:, j:j + size], prox_group_lasso(block, lam, dim=1), rtol=1e-12, atol=0)
    wt = prox_group_lasso(y.t().contiguous(), lam, group_size=size, dim=0)
    assert torch.allclose(wt.t(), w, rtol=1e-12, atol=0)


@given(y=tensors(), lam=lams)
def test_group_lasso_optimal_against_perturbations(y, lam):
    w = prox_group_lasso(y, lam)
    f = gl_objective(w, y, lam)
    g = torch.Generator().manual_seed(1)
    for scale in (1e-6, 1e-3, 1e-1):
        d = torch.randn(y.shape, generator=g, dtype=y.dtype) * scale * (1 + y.abs().max())
        assert f <= gl_objective(w + d, y, lam) + 1e-12 * (1 + f.abs())


@given(a=tensors(rows=1), b=tensors(rows=1), lam=lams)
def test_group_lasso_firmly_nonexpansive(a, b, lam):
    c = min(a.shape[1], b.shape[1])
    a, b = a[:, :c], b[:, :c]
    pa, pb = prox_group_lasso(a, lam), prox_group_lasso(b, lam)
    assert (pa - pb).square().sum() <= ((pa - pb) * (a - b)).sum() * (1 + 1e-12) + 1e-300


@given(y=tensors(), l1=lams, l2=lams)
def test_group_lasso_semigroup(y, l1, l2):
    once = prox_group_lasso(y, l1 + l2)
    twice = prox_group_lasso(prox_group_lasso(y, l1), l2)
    assert torch.allclose(twice, once, rtol=1e-10, atol=1e-12 * (1 + y.abs().max().item()))


@pytest.mark.parametrize("dtype", DTYPES)
@given(y=tensors(cols=6), lam=lams, s=tensors(cols=6, positive=True))
def test_group_lasso_metric_kkt(dtype, y, lam, s):
    s = torch.rand(y.shape, generator=torch.Generator().manual_seed(y.numel()), dtype=torch.float64) * s.max() + 1e-3
    y, s = y.to(dtype), s.to(dtype)
    w = prox_group_lasso(y, lam, step=s)
    kappa = lam * math.sqrt(y.shape[1])
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for wg, yg, sg in zip(w.double(), y.double(), s.double()):
        if wg.norm() > 0:  # (w − y)/s + κ w/‖w‖ = 0
            r = (wg - yg) / sg + kappa * wg / wg.norm()
            assert r.abs().max() <= tol * (1 + (yg / sg).abs().max())
        else:  # 0 ∈ −y/s + κ·ball
            assert (yg / sg).norm() <= kappa * (1 + tol)


def test_group_lasso_metric_with_constant_step_equals_scalar():
    y = torch.randn(5, 8, dtype=torch.float64)
    assert torch.allclose(prox_group_lasso(y, 0.2, step=torch.full_like(y, 0.5)), prox_group_lasso(y, 0.2, step=0.5))


def test_group_lasso_metric_extreme_scales_converge():
    y = torch.tensor([[1e3, 1e-3, 5.0, -2.0]], dtype=torch.float64)
    s = torch.tensor([[1e-5, 1e2, 1.0, 1e-3]], dtype=torch.float64)
    w = prox_group_lasso(y, 0.3, step=s)
    r = (w - y) / s + 0.3 * 2 * w / w.norm()
    assert r.abs().max() < 1e-8 * (y / s).abs().max()


def test_group_lasso_bad_shapes_and_sizes():
    with pytest.raises(ValueError, match=r"\(3, 30\).*not a multiple of m=4"):
        prox_group_lasso(torch.ones(3, 30), 0.1, group_size=4, dim=1)
    with pytest.raises(ValueError, match="group_size"):
        prox_group_lasso(torch.ones(3, 4), 0.1, group_size=0)
    with pytest.raises(ValueError, match="step of shape"):
        prox_group_lasso(torch.ones(3, 4), 0.1, step=torch.ones(5))


@pytest.mark.parametrize("step", [1.0, "tensor"])
def test_group_lasso_lambda_zero_and_subnormal_is_identity(step):
    # Found by the randomized Hypothesis run: the metric path zeroed a subnormal group at lam = 0.
    y = torch.tensor([[5e-324, -1e-320], [1.0, 2.0]], dtype=torch.float64)
    s = torch.full_like(y, 0.05) if step == "tensor" else step
    assert torch.equal(prox_group_lasso(y, 0.0, step=s), y)
    assert torch.equal(prox_group_lasso(y, 1e-300, step=s)[0], torch.zeros(2, dtype=torch.float64))  # κ s ≫ ‖y‖
