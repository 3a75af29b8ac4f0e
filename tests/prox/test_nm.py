import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchprox.prox import get_prox, nm_mask, nm_penalty, project_nm, project_nm_, prox_nm, prox_nm_

from .reference import brute_prox_nm, esym, nm_objective

PATTERNS = [(2, 4), (1, 4), (3, 4), (1, 2), (2, 3)]
DTYPES = [torch.float32, torch.float64]


@st.composite
def grouped(draw, m, max_groups=6, ties=None, scale=None):
    """(G, m) float64 tensors: small integer grids (exact ties, zeros) or continuous values, scaled by 10^k."""
    g = draw(st.integers(1, max_groups))
    ties = draw(st.booleans()) if ties is None else ties
    if ties:
        vals = draw(st.lists(st.integers(-4, 4), min_size=g * m, max_size=g * m))
        y = torch.tensor(vals, dtype=torch.float64) / 4
    else:
        vals = draw(st.lists(st.floats(-1, 1, allow_nan=False, width=64), min_size=g * m, max_size=g * m))
        y = torch.tensor(vals, dtype=torch.float64)
    exp = draw(st.sampled_from([0, 0, 0, -3, 3, -12, 12, -30, 30])) if scale is None else scale  # tiny and huge
    return y.reshape(g, m) * 10.0**exp


# λ: 0, or log-uniform over 1e-4 .. 1e4 (continuous: not a few fixed values).
lams = st.one_of(st.just(0.0), st.floats(-4, 4).map(lambda e: 10.0**e))


# ---------------------------------------------------------------- nm_penalty


def test_penalty_is_elementary_symmetric_polynomial():
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5], [1.0, 0.0, 0.0, 4.0]], dtype=torch.float64)
    expected = esym(w.abs(), 3).sum()
    assert torch.allclose(nm_penalty(w), expected)
    assert nm_penalty(w[1:]) == 0  # 2 nonzeros: 2:4
    assert torch.allclose(nm_penalty(w, 1, 4), esym(w.abs(), 2).sum())


@given(grouped(4))
def test_penalty_zero_iff_nm(y):
    for n, m in [(2, 4), (1, 4), (3, 4)]:
        # (unless a product of n+1 nonzero magnitudes underflows float64: then R's exact value is not representable)
        logs = torch.where(y != 0, y.abs().log10(), torch.inf).sort(-1).values[:, : n + 1].sum(-1)
        if (logs.isfinite() & (logs < -300)).any():
            continue
        is_nm = ((y != 0).sum(-1) <= n).all()
        assert bool(nm_penalty(y, n, m) == 0) == bool(is_nm)


# ---------------------------------------------------------------- prox_nm: invariants


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_near_tie_case_global_optimum(dtype):
    y = torch.tensor([1.0, 0.98, 0.96, 0.94], dtype=dtype)
    w = prox_nm(y, 1.1)
    f = nm_objective(w.double(), y.double(), 1.1, 2)
    assert abs(f.item() - 0.89507) < 1e-4  # the reference coordinate descent stops at 0.9026
    assert f < nm_objective(project_nm(y).double(), y.double(), 1.1, 2) - 5e-3


@pytest.mark.parametrize("dtype", DTYPES)
@given(y=grouped(4), lam=lams)
def test_signs_kept_and_shrinks(dtype, y, lam):
    y = y.to(dtype)
    w = prox_nm(y, lam)
    assert w.dtype == dtype and w.shape == y.shape
    assert torch.all(w * y >= 0)
    assert torch.all(w.abs() <= y.abs())


def test_lam_zero_is_identity_and_zero_maps_to_zero():
    y = torch.randn(8, 16)
    assert torch.equal(prox_nm(y, 0.0), y)
    assert torch.equal(prox_nm(torch.zeros(4, 8), 3.0), torch.zeros(4, 8))
    assert torch.equal(prox_nm(torch.zeros(4, 8), 3.0, step=torch.rand(4, 8) + 0.1), torch.zeros(4, 8))


@pytest.mark.parametrize("n,m", PATTERNS)
@given(data=st.data())
def test_nm_feasible_inputs_are_fixed_points(n, m, data):
    y = data.draw(grouped(m))
    y = y * nm_mask(y.abs() + torch.rand_like(y), n, m)  # at most n nonzeros per group
    lam = data.draw(lams)
    assert torch.equal(prox_nm(y, lam, n, m), y)
    assert torch.equal(project_nm(y, n, m), y)


@given(y=grouped(4, max_groups=4), lam=lams)
def test_groups_are_independent(y, lam):
    whole = prox_nm(y, lam)
    parts = torch.cat([prox_nm(row[None], lam) for row in y])
    assert torch.equal(whole, parts)


@given(y=grouped(4), c=st.sampled_from([0.5, 2.0, 3.0, 1e-2, 1e2]), lam=st.sampled_from([0.1, 1.0, 5.0]))
def test_homogeneity_2_4(y, c, lam):
    # ½Σ(w − c y)² + λ e3(w) with w = c v is c²·(½Σ(v − y)² + cλ e3(v)): prox_λ(c y) = c prox_{cλ}(y).
    lhs = prox_nm(c * y, lam)
    rhs = c * prox_nm(y, c * lam)
    f_l = nm_objective(lhs / c, y, c * lam, 2)
    f_r = nm_objective(rhs / c, y, c * lam, 2)
    assert torch.allclose(f_l, f_r, rtol=1e-9, atol=1e-12 * (1 + y.abs().max().item() ** 2))


@pytest.mark.parametrize("n,m", PATTERNS)
@given(data=st.data())
def test_large_lambda_gives_topn_projection(n, m, data):
    y = data.draw(grouped(m, ties=data.draw(st.booleans()), scale=0))
    y = torch.where(y.abs() < 1e-3, torch.zeros_like(y), y)
    a_min = y.abs()[y != 0].min().item() if (y != 0).any() else 1.0
    lam = 1e3 / a_min ** (n + 1)
    assert torch.equal(prox_nm(y, lam, n, m), project_nm(y, n, m))


# ---------------------------------------------------------------- prox_nm: optimality


@pytest.mark.parametrize("n,m", PATTERNS)
@given(data=st.data())
def test_optimal_against_random_perturbations(n, m, data):
    y = data.draw(grouped(m))
    lam = data.draw(lams.filter(lambda v: v > 0))
    w = prox_nm(y, lam, n, m)
    f = nm_objective(w, y, lam, n)
    gen = torch.Generator().manual_seed(0)
    scale = y.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    for eps in (1e-1, 1e-3, 1e-6):
        for _ in range(16):
            d = torch.randn(w.shape, generator=gen, dtype=torch.float64) * eps * scale
            assert torch.all(f <= nm_objective(w + d, y, lam, n) + 1e-12 * (1 + f.abs()))


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=20)  # (a brute-force reference per example)
@given(data=st.data())
def test_metric_prox_optimal_hypothesis(n, dtype, data):
    # A diagonal metric (ProxAdam's metric="adam"): ties, zeros, values scaled by 10^±3, steps over three decades,
    # tiled past 16 groups so that the CPU kernel's convex vector path and its packed general solver both serve.
    y = data.draw(grouped(4)).repeat(4, 1)[:20]
    logs = data.draw(st.lists(st.floats(-1.5, 1.5), min_size=y.numel(), max_size=y.numel()))
    s = 10 ** torch.tensor(logs, dtype=torch.float64).reshape(y.shape)
    lam = data.draw(st.sampled_from([1e-3, 0.05, 0.5, 5.0]))
    y, s = y.to(dtype).double(), s.to(dtype).double()  # the problem the kernel solves, in float64
    w = prox_nm(y.to(dtype), lam, n, 4, step=s.to(dtype)).double()
    f = nm_objective(w, y, lam, n, s)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert torch.all(f <= brute_prox_nm(y, lam, n, step=s, starts=3, sweeps=60) + tol * (1 + f.abs()))
    gen = torch.Generator().manual_seed(0)
    scale = y.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    for eps in (1e-2, 1e-5):
        d = torch.randn(16, *w.shape, generator=gen, dtype=torch.float64) * eps * scale
        assert torch.all(f <= nm_objective(w + d, y, lam, n, s) + tol * (1 + f.abs()))


def _global_gap_cases(m):
    """Hard cases: near ties, exact ties, and λ·|y|² ≈ 1."""
    gen = torch.Generator().manual_seed(m)
    near = 1 - torch.rand(60, m, generator=gen, dtype=torch.float64).mul(0.06)
    ties = torch.randint(0, 5, (60, m), generator=gen).double() / 4
    uni = torch.rand(60, m, generator=gen, dtype=torch.float64)
    y = torch.cat([near, ties, uni]) * torch.where(torch.rand(180, m, generator=gen) < 0.5, -1.0, 1.0).double()
    lam = 10 ** (torch.rand(180, 1, generator=gen, dtype=torch.float64) * 2.4 - 1.2)
    return y, lam


@pytest.mark.parametrize("n,m", [(2, 4), (3, 4), (1, 2), (2, 3)])
def test_global_optimum_float64_against_every_support(n, m):
    y, lam = _global_gap_cases(m)
    w = torch.cat([prox_nm(y[i : i + 1], lam[i].item(), n, m) for i in range(len(y))])
    f = nm_objective(w, y, lam[:, 0], n)
    ref = brute_prox_nm(y, lam[:, 0], n)
    rel = (f - ref) / ref.abs().clamp_min(1e-300)
    assert rel.max() <= 1e-9, f"worst relative gap {rel.max():.3g}"


def test_global_optimum_1_4_close():
    # 1:4 (three candidate supports beyond n+1) is solved by coordinate descent there: near, not exact.
    y, lam = _global_gap_cases(4)
    w = torch.cat([prox_nm(y[i : i + 1], lam[i].item(), 1, 4) for i in range(len(y))])
    f = nm_objective(w, y, lam[:, 0], 1)
    ref = brute_prox_nm(y, lam[:, 0], 1)
    assert ((f - ref) / ref.abs().clamp_min(1e-300)).max() <= 1e-5


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4)])
def test_metric_step_global_optimum(n, m):
    y, lam = _global_gap_cases(m)
    s = 0.2 + torch.rand(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    w = torch.cat([prox_nm(y[i : i + 1], lam[i].item(), n, m, step=s[i : i + 1]) for i in range(len(y))])
    f = nm_objective(w, y, lam[:, 0], n, s)
    ref = brute_prox_nm(y, lam[:, 0], n, step=s)
    tol = 1e-9 if n == 2 else 1e-5
    assert ((f - ref) / ref.abs().clamp_min(1e-300)).max() <= tol


def test_scalar_step_equals_scaled_lambda():
    y = torch.randn(16, 8, dtype=torch.float64)
    assert torch.allclose(prox_nm(y, 0.7, step=0.5), prox_nm(y, 0.35), rtol=0, atol=1e-15)
    assert torch.allclose(prox_nm(y, 0.7, step=torch.full_like(y, 0.5)), prox_nm(y, 0.35), atol=1e-12)


def test_float32_close_to_float64():
    y, lam = _global_gap_cases(4)
    for i in range(0, len(y), 7):
        w64 = prox_nm(y[i : i + 1], lam[i].item())
        w32 = prox_nm(y[i : i + 1].float(), lam[i].item())
        f64 = nm_objective(w64, y[i : i + 1], lam[i].item(), 2)
        f32 = nm_objective(w32.double(), y[i : i + 1], lam[i].item(), 2)
        assert f32 <= f64 * (1 + 1e-5) + 1e-7


def test_bfloat16_computed_in_float32():
    y = torch.randn(64, 32)
    w = prox_nm(y.bfloat16(), 0.5)
    assert w.dtype == torch.bfloat16
    assert torch.equal(w, prox_nm(y.bfloat16().float(), 0.5).bfloat16())


def test_dim_argument_and_inplace():
    y = torch.randn(8, 12, dtype=torch.float64)
    assert torch.equal(prox_nm(y, 0.3, dim=0), prox_nm(y.t().contiguous(), 0.3).t())
    z = y.clone()
    assert prox_nm_(z, 0.3) is z and torch.equal(z, prox_nm(y, 0.3))
    conv = torch.randn(6, 8, 3, 3)
    out = prox_nm(conv, 1.0, dim=1)
    assert torch.equal(out, prox_nm(conv.movedim(1, -1), 1.0).movedim(-1, 1))


def test_huge_and_tiny_values_finite():
    # homogeneity for 2:4: prox_{λ/c}(c·y) = c·prox_λ(y); exact for powers of two. Other scales round y and λ,
    # which may switch between near-equal candidates, so there the objectives are compared.
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        y = torch.randn(32, 8, dtype=dtype, generator=gen)
        ref = prox_nm(y, 0.7)
        f_ref = nm_objective(ref.double().reshape(-1, 4), y.double().reshape(-1, 4), 0.7, 2)
        for scale in (2.0**-60, 2.0**-100, 2.0**60, 2.0**100, 1e-30, 1e30):
            w = prox_nm(y * scale, 0.7 / scale)
            assert torch.isfinite(w).all()
            if scale in (2.0**-60, 2.0**-100, 2.0**60, 2.0**100):
                assert torch.equal(w / scale, ref)
            else:
                f = nm_objective((w / scale).double().reshape(-1, 4), y.double().reshape(-1, 4), 0.7, 2)
                assert torch.allclose(f, f_ref, rtol=1e-5, atol=1e-6)
    big = torch.tensor([[3e38, -2e38, 1e38, 5e37]])  # max |y| ≥ 2^127: the scale must not overflow
    assert torch.equal(prox_nm(big, 1e-30), prox_nm(big.double(), 1e-30).float())


# ---------------------------------------------------------------- project_nm / nm_mask


@pytest.mark.parametrize("n,m", PATTERNS)
@given(data=st.data())
def test_projection_idempotent_bit_identical(n, m, data):
    y = data.draw(grouped(m)).float()
    p = project_nm(y, n, m)
    assert torch.equal(project_nm(p, n, m), p)
    kept = p != 0
    assert torch.equal(p[kept], y[kept])
    assert ((p != 0).sum(-1) <= n).all()
    assert (nm_mask(y.abs(), n, m).sum(-1) == n).all()


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 3)])
@given(data=st.data())
def test_projection_optimal_over_all_supports(n, m, data):
    y = data.draw(grouped(m))
    metric = data.draw(st.booleans())
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))  # reproducible by Hypothesis
    s = (0.25 + torch.randint(0, 4, y.shape, generator=gen).double() / 4) if metric else None
    p = project_nm(y, n, m, step=s)
    ss = s if metric else torch.ones_like(y)
    f = 0.5 * ((p - y).square() / ss).sum(-1)
    # The objectives are sums of m - n terms in index order, so two supports that tie mathematically may
    # round apart by a few ulps: compare up to that rounding.
    ulps = 4 * (m - n) * torch.finfo(f.dtype).eps
    for support in itertools.combinations(range(m), n):
        q = torch.zeros_like(y)
        q[:, list(support)] = y[:, list(support)]
        alt = 0.5 * ((q - y).square() / ss).sum(-1)
        assert torch.all(f <= alt * (1 + ulps))


def test_mask_ties_lower_index_wins():
    s = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 2.0, 2.0], [5.0, 1.0, 5.0, 5.0]])
    assert nm_mask(s).tolist() == [[True, True, False, False], [False, True, True, False], [True, False, True, False]]
    y = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    assert torch.equal(project_nm(y), torch.tensor([[1.0, -1.0, 0.0, 0.0]]))
    assert torch.equal(prox_nm(y, 1e6), project_nm(y))
    z = y.clone()
    assert torch.equal(project_nm_(z), project_nm(y))


# ---------------------------------------------------------------- errors and registry


@pytest.mark.parametrize("fn", [lambda y: prox_nm(y, 0.1), lambda y: project_nm(y), lambda y: nm_penalty(y),
                                lambda y: nm_mask(y)])
def test_bad_shape_is_clear_value_error(fn):
    with pytest.raises(ValueError, match=r"\(3, 30\).*30 along dim 1 is not a multiple of m=4"):
        fn(torch.randn(3, 30))


@pytest.mark.parametrize("n,m", [(0, 4), (4, 4), (3, 2), (2.0, 4), (-1, 4)])
def test_bad_pattern(n, m):
    with pytest.raises(ValueError, match="n"):
        prox_nm(torch.randn(4, 4), 0.1, n, m)


def test_bad_lambda_step_dtype():
    y = torch.randn(4, 8)
    with pytest.raises(ValueError, match="lam"):
        prox_nm(y, -1.0)
    with pytest.raises(ValueError, match="lam"):
        prox_nm(y, float("nan"))
    with pytest.raises(ValueError, match="step"):
        prox_nm(y, 0.1, step=-1e-3)  # (0 is allowed: "not moved", tests/prox/test_hostile_input.py)
    with pytest.raises(ValueError, match="step"):
        prox_nm(y, 0.1, step=torch.ones(3, 8))
    with pytest.raises(TypeError, match="floating"):
        prox_nm(torch.ones(4, 8, dtype=torch.int64), 0.1)


def test_registered_names():
    assert get_prox("nm") is prox_nm
    y = torch.randn(4, 8)
    assert torch.equal(get_prox("nm_projection")(y, 0.0, n=2, m=4), project_nm(y))
