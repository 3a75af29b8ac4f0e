"""The fused CPU kernel against the plain-torch path: same minimizer (objective), same masks, bit for bit."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torchprox.prox import _native, nm_mask, project_nm, prox_nm

from .reference import brute_prox_nm, nm_objective
from .test_nm import PATTERNS, _global_gap_cases, grouped, lams

pytestmark = pytest.mark.skipif(_native.library() is None, reason="no C++ compiler: fused kernel unavailable")


def eager(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the fused kernel disabled (the plain-torch path)."""
    saved, _native._LIB = _native._LIB, None
    try:
        return fn(*args, **kwargs)
    finally:
        _native._LIB = saved


@pytest.mark.parametrize("n,m", PATTERNS + [(4, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(data=st.data(), lam=lams)
def test_prox_same_objective_as_eager(n, m, dtype, data, lam):
    y = data.draw(grouped(m, max_groups=40)).to(dtype)  # full kernel blocks (16 or 32 groups) and partial ones
    fused, plain = prox_nm(y, lam, n, m), eager(prox_nm, y, lam, n, m)
    f_fused = nm_objective(fused.double(), y.double(), lam, n)
    f_plain = nm_objective(plain.double(), y.double(), lam, n)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (f_fused <= f_plain + tol * (1 + f_plain.abs())).all()
    assert ((fused == 0) | (torch.sign(fused) == torch.sign(y))).all() and (fused.abs() <= y.abs()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", [(4, 8), (2, 8), (8, 16)])
def test_many_random_groups_no_worse_than_eager(n, m, dtype):
    # At lam 0.25 random groups need descents on several supports larger than n+1, and the engine skips the
    # descents from b that repeat an earlier one (on 4:8 about two thirds of those on supports 7 and 8): no group
    # may end worse than under the plain-torch solver, which runs them all.
    rows = 4096 if m <= 8 else 512  # (the plain-torch solver takes seconds on 4096 groups of 16)
    y = torch.randn(rows, m, generator=torch.Generator().manual_seed(5), dtype=dtype)
    for lam in (0.25, 1.0):
        fused, plain = prox_nm(y, lam, n, m), eager(prox_nm, y, lam, n, m)
        f_fused = nm_objective(fused.double(), y.double(), lam, n)
        f_plain = nm_objective(plain.double(), y.double(), lam, n)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert (f_fused <= f_plain + tol * (1 + f_plain.abs())).all()
        # and the other way: the plain-torch fallback (no compiler) is no worse than the kernel either, up to
        # its fixed sweep count (the kernel's descents run to convergence: float64 gaps of ~6e-12 remain)
        back = 1e-9 if dtype == torch.float64 else 1e-5
        assert (f_plain <= f_fused + back * (1 + f_fused.abs())).all(), (f_plain - f_fused).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_case_and_dims(dtype):
    y = torch.tensor([1.0, 0.98, 0.96, 0.94], dtype=dtype)
    assert abs(nm_objective(prox_nm(y, 1.1).double(), y.double(), 1.1, 2).item() - 0.89507) < 1e-4
    big = torch.randn(6, 8, 5, dtype=dtype)
    assert torch.equal(prox_nm(big, 0.3, dim=1), prox_nm(big.transpose(1, 2), 0.3, dim=2).transpose(1, 2))


@pytest.mark.parametrize("n,m", PATTERNS + [(4, 8), (8, 16)])
@given(data=st.data())
def test_mask_bit_identical_to_eager(n, m, data):
    scores = data.draw(grouped(m, ties=data.draw(st.booleans())))
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        s = scores.to(dtype)
        assert torch.equal(nm_mask(s, n, m), eager(nm_mask, s, n, m))
        assert torch.equal(project_nm(s, n, m), eager(project_nm, s, n, m))


def test_bf16_and_threads_agree():
    y = torch.randn(64, 64)
    out = prox_nm(y.bfloat16(), 0.5)
    assert out.dtype == torch.bfloat16 and torch.equal(out, prox_nm(y.bfloat16().float(), 0.5).bfloat16())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = prox_nm(y, 0.5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, prox_nm(y, 0.5))


def test_non_finite_group_is_returned_unchanged_and_others_untouched():
    y = torch.tensor([[1.0, float("inf"), 0.5, 0.2], [1.0, 0.9, 0.1, 0.0]])
    out = prox_nm(y, 0.3)
    assert torch.equal(out[0], y[0])
    assert torch.equal(out[1], prox_nm(y[1:], 0.3)[0])


def test_torch_compile_sees_an_opaque_op():
    fn = torch.compile(lambda t: prox_nm(t, 0.4) * 2, backend="eager", fullgraph=False)
    y = torch.randn(8, 16)
    assert torch.equal(fn(y), prox_nm(y, 0.4) * 2)


def test_build_cache_is_reused_and_can_be_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHPROX_CACHE", str(tmp_path))
    monkeypatch.setattr(_native, "_LIB", False)
    assert _native.library() is not None
    built = list((tmp_path / "kernels").glob("nm_cpu-*.so"))
    assert len(built) == 1 and not [p for p in (tmp_path / "kernels").iterdir() if p.is_dir()]
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(_native, "_LIB", False)
    assert _native.library() is not None and built[0].stat().st_mtime_ns == mtime
    monkeypatch.setenv("TORCHPROX_NATIVE", "0")
    monkeypatch.setattr(_native, "_LIB", False)
    assert _native.library() is None
    y = torch.randn(4, 8)  # the plain-torch path still serves every call
    assert torch.equal(prox_nm(y, 25.0), project_nm(y))


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("lam", [1e-3, 0.05, 0.3, 1.0, 4.0, 30.0, 1e3])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_full_blocks_every_regime_same_objective_as_eager(n, m, lam, dtype, rtol):
    # Many groups, so whole blocks (32 float32 or 16 float64 groups) take the convex paths (small lam: the
    # in-place vectors for m = 4, the unscaled lanes otherwise), the pruned enumeration of supports (large lam;
    # for m = 8 in the descent engine, its lanes refilled) or a mix; values of mixed scale put different lanes in
    # different regimes, and one row of tiny values sends its blocks to the scaled path.
    gen = torch.Generator().manual_seed(int(lam * 1000) + m)
    scale = torch.rand(96, 1, generator=gen, dtype=torch.float64) * 3
    scale[7] = 1e-30 if dtype == torch.float32 else 1e-300
    y = (torch.randn(96, 8 * m, generator=gen, dtype=torch.float64) * scale).to(dtype)
    fused, plain = prox_nm(y, lam, n, m), eager(prox_nm, y, lam, n, m)
    f_fused = nm_objective(fused.double().reshape(-1, m), y.double().reshape(-1, m), lam, n)
    f_plain = nm_objective(plain.double().reshape(-1, m), y.double().reshape(-1, m), lam, n)
    size = y.double().reshape(-1, m).square().sum(-1)  # the objective's scale, group by group
    assert (f_fused <= f_plain + rtol * (f_plain.abs() + size)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_twin_writes_into_its_input(dtype):
    y = torch.randn(64, 32, dtype=dtype)
    expected = prox_nm(y, 0.4)
    z = y.clone()
    ptr = z.data_ptr()
    out = prox_nm.inplace(z, 0.4)
    assert out is z and z.data_ptr() == ptr and torch.equal(z, expected)
    # Not a contiguous view of its groups (dim 0, a transposed tensor): the out-of-place result, copied in.
    for t, kw in ((y.clone(), {"dim": 0}), (y.t().clone().t(), {})):
        expected = prox_nm(t, 0.4, **kw)
        assert torch.equal(prox_nm.inplace(t, 0.4, **kw), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_in_place_twin_with_a_step_tensor_writes_into_its_input(dtype, n, monkeypatch):
    gen = torch.Generator().manual_seed(n)
    y = torch.randn(64, 32, generator=gen, dtype=dtype)
    s = 10 ** (torch.rand(64, 32, generator=gen, dtype=dtype) * 2 - 1)  # steps in [0.1, 10]: both kernel paths
    expected = prox_nm(y, 0.3, n, 4, step=s)
    z = y.clone()
    ptr = z.data_ptr()
    with monkeypatch.context() as patch:  # served by the in-place kernel: no output tensor, no copy
        patch.setattr(_native, "prox_nm_metric_cpu", None)
        out = prox_nm.inplace(z, 0.3, n, 4, step=s)
    assert out is z and z.data_ptr() == ptr and torch.equal(z, expected)
    # A step laid out or typed unlike y, or broadcast: the out-of-place result, copied in.
    for step in (s.t().contiguous().t(), s.float() if dtype == torch.float64 else s.double(), s[:1]):
        expected = prox_nm(y, 0.3, n, 4, step=step)
        assert torch.equal(prox_nm.inplace(y.clone(), 0.3, n, 4, step=step), expected)


def test_nan_anywhere_leaves_its_group_unchanged():
    y = torch.tensor([[0.1, float("nan"), 0.5, 0.2], [1.0, 0.9, 0.1, 0.0]] * 8)
    out = prox_nm(y, 0.01)
    # The finite groups get exactly what they get without their NaN neighbours (and the plain-torch values,
    # up to rounding: the fused convex path is a different iteration with the same fixed point).
    assert torch.equal(out[0::2].nan_to_num(), y[0::2].nan_to_num()) and out[0::2, 1].isnan().all()
    assert torch.equal(out[1::2], prox_nm(y[1::2], 0.01))
    torch.testing.assert_close(out[1::2], eager(prox_nm, y[1::2], 0.01))


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("lam", [1e-3, 0.05, 0.3, 3.0])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_metric_prox_same_objective_as_eager(n, lam, dtype, rtol):
    # A per-entry step (ProxAdam's metric="adam"): the kernel's convex vector path for the groups of full blocks
    # it serves, its scalar solver for the rest (large lam, a short last block, a group with a tiny value).
    gen = torch.Generator().manual_seed(int(lam * 1000) + n)
    y = torch.randn(50, 20, generator=gen, dtype=torch.float64) * torch.rand(50, 1, generator=gen, dtype=torch.float64) * 2
    y[3, 5] = 1e-30
    s = torch.rand(50, 20, generator=gen, dtype=torch.float64) * 2 + 0.05
    y, s = y.to(dtype), s.to(dtype)
    fused, plain = prox_nm(y, lam, n, 4, step=s), eager(prox_nm, y, lam, n, 4, step=s)
    y64, s64 = y.double().reshape(-1, 4), s.double().reshape(-1, 4)
    f_fused = nm_objective(fused.double().reshape(-1, 4), y64, lam, n, step=s64)
    f_plain = nm_objective(plain.double().reshape(-1, 4), y64, lam, n, step=s64)
    size = (y64.square() / s64).sum(-1)
    assert (f_fused <= f_plain + rtol * (f_plain.abs() + size)).all()
    assert ((fused * y) >= 0).all()


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_metric_prox_reaches_the_global_minimum(n, dtype, rtol):
    # Every regime at once (lam from 1e-3 to 1e3, steps spread over three decades, ties, zeros): the kernel's
    # value of ½ Σ (w − y)²/s + lam e_{n+1}(|w|) is the brute-force global minimum (every support, many starts).
    gen = torch.Generator().manual_seed(n)
    y = torch.randn(64, 4, generator=gen, dtype=torch.float64)
    y[::7, 1] = y[::7, 0]  # ties
    y[::5, 2] = 0.0
    s = 10 ** (torch.rand(64, 4, generator=gen, dtype=torch.float64) * 3 - 1.5)
    lam = 10 ** (torch.rand(64, 1, generator=gen, dtype=torch.float64) * 6 - 3)
    lam = lam[::16].repeat_interleave(16, 0)  # one λ per call: a block of 16 groups shares it
    y, s = y.to(dtype), s.to(dtype)
    w = torch.cat([prox_nm(y[i:i + 16], float(lam[i]), n, 4, step=s[i:i + 16]) for i in range(0, 64, 16)])
    f = nm_objective(w.double(), y.double(), lam[:, 0], n, step=s.double())
    best = brute_prox_nm(y.double(), lam[:, 0], n, step=s.double(), starts=4, sweeps=200)
    assert (f <= best + rtol * (1 + best.abs())).all(), (f - best).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_metric_prox_of_a_group_does_not_depend_on_its_neighbours(dtype):
    # The groups outside the convex regime are packed a block at a time per thread, so which groups share a packed
    # block depends on the order of the groups and on the thread count: the results must not.
    gen = torch.Generator().manual_seed(11)
    y = torch.randn(64 * 16, 4, generator=gen, dtype=torch.float64)
    s = 10 ** (torch.rand(64 * 16, 4, generator=gen, dtype=torch.float64) * 3 - 2)  # some groups convex, most not
    y, s = y.to(dtype), s.to(dtype)
    ref = prox_nm(y, 0.05, 2, 4, step=s)
    perm = torch.randperm(y.shape[0], generator=gen)
    assert torch.equal(prox_nm(y[perm], 0.05, 2, 4, step=s[perm]), ref[perm])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(prox_nm(y, 0.05, 2, 4, step=s), ref)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("metric", [False, True])
def test_m4_prox_of_a_group_is_its_prox_alone(dtype, n, metric):
    # For m = 4 a group takes the convex path or the general one by itself, whatever shares its block, and a
    # partial block is filled with zero groups that need not qualify (with n = 1, q = 3 lam s whatever y):
    # every group's result is the one it gets alone, with none, one, some or all of a block's groups in the
    # convex regime, and group counts that fill whole blocks or not (32 float32 groups a block, 16 float64).
    gen = torch.Generator().manual_seed(13)
    for count in (1, 15, 17, 31, 33, 47, 64):
        for convex in ("none", "last", "half", "all"):
            y = torch.randn(count, 4, generator=gen, dtype=torch.float64)
            pick = {"none": torch.zeros(count, dtype=torch.bool), "all": torch.ones(count, dtype=torch.bool),
                    "last": torch.arange(count) == count - 1, "half": torch.rand(count, generator=gen) < 0.5}[convex]
            if metric:  # the regime set by the step: q = lam s (4 - n) max_i e_{n-1}(|y| minus i)
                s = torch.where(pick[:, None], 1e-3, 10.0) * torch.ones(count, 4, dtype=torch.float64)
                lam = 0.2
            else:  # by the scale (n > 1), or for n = 1 by lam alone (q = 3 lam)
                s, lam = None, (0.05 if convex == "all" else 0.2) if n == 1 else 0.2
                y = torch.where(pick[:, None], y * 1e-3, y * 10)
            y = y.to(dtype)
            s = None if s is None else s.to(dtype)

            def prox(rows):
                return prox_nm(y[rows], lam, n, 4) if s is None else prox_nm(y[rows], lam, n, 4, step=s[rows])

            alone = torch.cat([prox(slice(i, i + 1)) for i in range(count)])
            assert torch.equal(prox(slice(None)), alone), (count, convex)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", [(4, 8), (3, 6), (2, 5), (2, 4), (1, 4), (3, 4)])
def test_prox_of_a_group_does_not_depend_on_its_neighbours(dtype, n, m):
    # For m > 4 the groups that need coordinate descent on supports larger than n+1 share the descent engine's
    # lanes, refilled as they finish; for m = 4 the groups outside the convex regime are packed into blocks for
    # the general path, and those of them that need a descent packed again. Either way which groups run side by
    # side depends on the order of the groups and on the thread count: the results must not. (For m > 4 the
    # convex path serves whole blocks, so there a group's result depends on whether its block-mates are convex
    # too, but never on the thread count.)
    gen = torch.Generator().manual_seed(12)
    y = (torch.randn(64 * 16 + 7, m, generator=gen, dtype=torch.float64) * 3).to(dtype)  # and a partial block
    y[::5] *= 1e-2  # some groups convex, some with no larger support, most with several
    if m == 4:
        y[:256] *= 1e-2  # and whole blocks convex, until permuted
    ref = prox_nm(y, 0.25, n, m)
    perm = torch.randperm(y.shape[0], generator=gen)
    assert torch.equal(prox_nm(y[perm], 0.25, n, m), ref[perm])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(prox_nm(y, 0.25, n, m), ref)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("n,m,metric", [(2, 4, False), (1, 4, False), (3, 4, False), (4, 8, False), (2, 6, False),
                                        (2, 4, True), (1, 4, True), (3, 4, True), (4, 8, True)])
def test_kernel_and_plain_torch_agree_both_ways_and_reach_brute_force(n, m, metric):
    # The plain-torch path is the fallback without a compiler (and the only metric solver for m != 4): it is
    # held to the same standard as the kernel, not only "the kernel is no worse": each matches the other's
    # objective in both directions and the brute-force global minimum (every support, random starts). For
    # metric 4:8 both calls take the plain-torch path: this is the brute-force test of the 4:8 metric prox.
    y, lam = _global_gap_cases(m)
    per = 15 if m <= 6 else 6  # (the brute force over 2^8 supports is slow)
    y = y[:: 180 // (4 * per)][: 4 * per]  # near ties, exact ties, uniform: in 4 calls (one λ each)
    s = (10 ** (torch.rand(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1)
         if metric else torch.ones_like(y))
    f_fused, f_plain, lams_ = [], [], []
    for i in range(0, 4 * per, per):
        rows, l = slice(i, i + per), float(lam[i])
        step = s[rows] if metric else 1.0
        for out, fn in ((f_fused, prox_nm), (f_plain, lambda *a, **k: eager(prox_nm, *a, **k))):
            w = fn(y[rows], l, n, m, step=step)
            out.append(nm_objective(w, y[rows], l, n, s[rows]))
        lams_.append(torch.full((per,), l, dtype=torch.float64))
    f_fused, f_plain, lam_rows = torch.cat(f_fused), torch.cat(f_plain), torch.cat(lams_)
    best = brute_prox_nm(y, lam_rows, n, step=s, starts=2 if m > 4 else 6, sweeps=60 if m > 4 else 150)
    tol = (1e-5 if n == 1 else 1e-9) * (1 + best.abs())  # 1:4 by descent on its 3 larger supports: near, not exact
    assert (f_fused <= f_plain + tol).all() and (f_plain <= f_fused + tol).all(), (f_fused - f_plain).abs().max()
    # KNOWN GAP (reported, not fixed): with a scalar step and m = 8 both solvers descend from two starts on each
    # top-k support, which misses the global minimum of a few near-tie groups by up to ~0.3% (0.0069 of 1.51).
    gap = 5e-3 * best.abs() if (m, metric) == (8, False) else 0
    assert (f_fused <= best + tol + gap).all(), (f_fused - best).max()
    assert (f_plain <= best + tol + gap).all(), (f_plain - best).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_underflowing_its_group_scale_is_pruned_like_plain_torch(dtype):
    # Found by the widened Hypothesis scales: a tiny fifth nonzero next to four huge values underflows when the
    # group is scaled to max |y| ~ 1; the kernel wrote it back unchanged (not 4:8, objective 4.9e12 instead of
    # 1e-71). It is solved as 0 and returned as 0, as on the plain-torch path.
    tiny = 4.9123e-36 if dtype == torch.float32 else 1e-310
    y = torch.tensor([[0.0, 0.0, 0.0, 1e12, 1e12, 1e12, 1e12, tiny]] * 40, dtype=dtype)  # full and partial blocks
    fused, plain = prox_nm(y, 1.0, 4, 8), eager(prox_nm, y, 1.0, 4, 8)
    assert ((fused != 0).sum(-1) <= 4).all() and torch.equal(fused, plain)
