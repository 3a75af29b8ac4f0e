"""The Triton kernel of prox_nm against the CPU path: same minimizer (objective), signs, bounds, edge cases.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (``TORCHPROX_TRITON_INTERPRET=1``, set
per test), which is slow: the inputs stay small. With CUDA the same tests run the compiled kernel.
"""
import itertools

import pytest
import torch

pytest.importorskip("triton")

from torchprox.prox import _native, _triton, prox_nm  # noqa: E402
from torchprox.prox._triton import _sorting_network, prox_nm_triton  # noqa: E402

from .reference import nm_objective  # noqa: E402

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow in the interpreter: discarded lanes


@pytest.fixture
def device(monkeypatch):
    """'cuda' when there is a GPU, else 'cpu' with the kernel interpreted."""
    if CUDA:
        monkeypatch.delenv("TORCHPROX_TRITON_INTERPRET", raising=False)
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        return "cuda"
    monkeypatch.setenv("TORCHPROX_TRITON_INTERPRET", "1")
    return "cpu"


def sample(groups, m, dtype, seed):
    """Rows with mixed scales, exact ties and zeros."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(groups, m, generator=gen, dtype=torch.float64)
    y = y * torch.exp2(torch.randint(-3, 4, (groups, 1), generator=gen)).double()
    y[::7, 1] = y[::7, 0]  # ties
    y[::5, -1] = 0.0  # zeros
    y[::11, 2:] = -y[::11, 2:3]
    return y.to(dtype)


def cpu_prox(y, lam, n, m):
    return prox_nm(y.cpu(), lam, n, m)


def check_against_cpu(y, w, lam, n, m, tol):
    y, w = y.cpu().double(), w.cpu().double()
    ref = cpu_prox(y, lam, n, m)
    f = nm_objective(w, y, lam, n)
    f_ref = nm_objective(ref, y, lam, n)
    assert ((f - f_ref).abs() <= tol * (1 + f_ref.abs())).all(), (f - f_ref).abs().max()
    assert ((w == 0) | (torch.sign(w) == torch.sign(y))).all()
    assert (w.abs() <= y.abs()).all()


CASES = [
    # (n, m, dtype, lams): the interpreter's cost grows with m and the loops' length (float64, small λ).
    (2, 4, torch.float32, (0.02, 0.3, 1.1, 4.0)),
    (2, 4, torch.float64, (0.05, 0.5, 2.0)),
    (1, 4, torch.float32, (0.2, 1.5)),
    (3, 4, torch.float32, (0.1, 1.0)),
    (4, 8, torch.float32, (0.1, 0.6)),
    (2, 8, torch.float32, (0.4,)),
    (3, 6, torch.float32, (0.3,)),
]


@pytest.mark.parametrize("n,m,dtype,lams", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_same_objective_as_cpu(device, n, m, dtype, lams):
    y = sample(256, m, dtype, seed=n * 100 + m)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for lam in lams:
        w = prox_nm_triton(y.to(device), lam, n, m)
        assert w.dtype == dtype and w.device.type == device and w.shape == y.shape
        check_against_cpu(y, w, lam, n, m, tol)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_blocks_in_different_regimes(device, monkeypatch, n, m):
    """Blocks whose groups are all in the convex regime (coordinate descent from |y|, no sort), blocks with a
    few non-convex groups, and blocks where larger supports are ruled out: each block takes its own branch."""
    block = 64 if device == "cuda" else 16
    if device == "cpu":  # the interpreter otherwise runs one program over all the groups
        monkeypatch.setattr(_triton, "_config", lambda *args: (block, 1))
    gen = torch.Generator().manual_seed(7)
    dominant = torch.full((block, m), 1e-3)  # one large entry: convex up to λ ≈ 0.25 (random rows: ≈ 0.05)
    dominant[:, 0] = 1.0
    dominant *= 1 + torch.rand(block, m, generator=gen)
    mixed = dominant.clone()
    mixed[::5] = torch.randn(mixed[::5].shape, generator=gen)
    y = torch.cat([dominant, torch.randn(block, m, generator=gen), mixed, 1e-2 * dominant])
    y *= torch.where(torch.rand(y.shape, generator=gen) < 0.5, -1.0, 1.0)
    for lam in (0.01, 0.2, 1.0, 30.0):
        w = prox_nm_triton(y.to(device), lam, n, m).cpu()
        check_against_cpu(y, w, lam, n, m, 1e-5)


@pytest.mark.parametrize("n,m,metric", [(2, 4, False), (1, 4, False), (4, 8, False), (2, 4, True), (1, 4, True)])
def test_result_of_a_group_does_not_depend_on_its_block(device, monkeypatch, n, m, metric):
    """Each group stops on its own and takes the convex path or the general one by itself, and the groups
    outside the convex regime of a block where they are at most half are listed and solved by a second launch:
    the results must not depend on the order of the groups, nor on whether that list is used."""
    block = 64 if device == "cuda" else 16
    if device == "cpu":
        monkeypatch.setattr(_triton, "_config", lambda *args: (block, 1))
    gen = torch.Generator().manual_seed(8)
    y = torch.randn(16 * block, m, generator=gen)
    y[: 13 * block] *= 0.05  # convex at lam 0.3
    y[: 13 * block : 3] *= 20  # a third of each block not: listed, several BLOCKs of them
    s = 10 ** (torch.rand(y.shape, generator=gen) - 0.5) if metric else None

    def run(y, s):
        y = y.to(device)
        if metric:
            return _triton.prox_nm_metric_triton(y, s.to(device), 0.3, n).cpu()
        return prox_nm_triton(y, 0.3, n, m).cpu()

    ref = run(y, s)
    step = 1.0 if s is None else s.double()
    f = nm_objective(ref.double(), y.double(), 0.3, n, step=step)
    cpu = prox_nm(y, 0.3, n, m) if s is None else prox_nm(y, 0.3, n, m, step=s)
    f_cpu = nm_objective(cpu.double(), y.double(), 0.3, n, step=step)
    assert ((f - f_cpu) <= 1e-5 * (1 + f_cpu.abs())).all()
    perm = torch.randperm(y.shape[0], generator=gen)
    assert torch.equal(run(y[perm], None if s is None else s[perm]), ref[perm])
    monkeypatch.setattr(_triton, "_COMPACT", False)
    assert torch.equal(run(y, s), ref)


@pytest.mark.parametrize("metric", [False, True])
def test_fast_newton_variant_same_objective_as_cpu(device, monkeypatch, metric):
    """Newton's iterations with approximate division and square root (off by default; on a GPU they are the
    hardware's approximate instructions, in the interpreter exact ones): the same minimizer."""
    if not _triton._approx_division():
        pytest.skip("this Triton's tl.fdiv has no approx=")
    monkeypatch.setattr(_triton, "_FAST_NEWTON", True)
    y = sample(256, 4, torch.float32, seed=21)
    s = (10 ** (torch.rand(256, 4, generator=torch.Generator().manual_seed(22)) * 2 - 1)) if metric else None
    for lam in (0.05, 0.3, 1.1, 4.0):
        if metric:
            w = _triton.prox_nm_metric_triton(y.to(device), s.to(device), lam, 2).cpu()
            ref = prox_nm(y, lam, 2, 4, step=s)
        else:
            w = prox_nm_triton(y.to(device), lam, 2, 4).cpu()
            ref = cpu_prox(y, lam, 2, 4)
        step = 1.0 if s is None else s.double()
        f = nm_objective(w.double(), y.double(), lam, 2, step=step)
        f_ref = nm_objective(ref.double(), y.double(), lam, 2, step=step)
        assert ((f - f_ref) <= 1e-5 * (1 + f_ref.abs())).all(), (f - f_ref).max()
        assert ((w == 0) | (torch.sign(w) == torch.sign(y))).all() and (w.abs() <= y.abs()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_case(device, dtype):
    y = torch.tensor([[1.0, 0.98, 0.96, 0.94]], dtype=dtype)
    w = prox_nm_triton(y.to(device), 1.1, 2, 4).cpu()
    assert abs(nm_objective(w.double(), y.double(), 1.1, 2).item() - 0.89507) < 1e-4
    assert w[0, 3] == 0 and (w[0, :3] > 0).all()


def test_ties_zeros_and_signs(device):
    rows = [
        [1.0, 1.0, 1.0, 1.0],
        [-1.0, 1.0, -1.0, 1.0],
        [0.0, 0.0, 0.0, 0.0],
        [-0.0, 0.0, 0.5, 0.5],
        [0.5, 0.0, 0.5, 0.0],
        [2.0, -2.0, 0.25, 2.0],
        [0.0, 0.0, 0.0, 3.0],
    ]
    y = torch.tensor(rows)
    for lam in (0.05, 0.5, 3.0):
        w = prox_nm_triton(y.to(device), lam, 2, 4).cpu()
        ref = cpu_prox(y, lam, 2, 4)
        check_against_cpu(y, w, lam, 2, 4, 1e-5)
        assert torch.equal(w == 0, ref == 0)  # ties: the lower index is kept, like the CPU kernel
        assert torch.equal(torch.signbit(w), torch.signbit(y))  # copysign: zeroed entries keep y's sign
    zero = prox_nm_triton(torch.zeros(3, 4, device=device), 0.7, 2, 4)
    assert torch.equal(zero.cpu(), torch.zeros(3, 4))


def test_lambda_zero_returns_y(device):
    y = sample(64, 4, torch.float32, seed=3)
    assert torch.equal(prox_nm_triton(y.to(device), 0.0, 2, 4).cpu(), y)


def ldexp(t, k):
    """t · 2^k in two exact steps (2^k itself may not be representable); for results in the normal range."""
    return t * 2.0 ** (k // 2) * 2.0 ** (k - k // 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scale_invariance_huge_and_tiny(device, dtype):
    """prox_λ(2^k y) = 2^k prox_{2^{k(n-1)} λ}(y) holds bit for bit: the kernel scales by exact powers of two.
    n = 1 (λ unscaled) reaches the ends of the exponent range: max |y| ≥ 2^(emax−1) and subnormal inputs."""
    base = sample(64, 4, dtype, seed=5).clamp(-0.999, 0.999)
    base = torch.where(base.abs() < 0.05, torch.full_like(base, 0.05), base).to(device)
    top = 128 if dtype == torch.float32 else 1024  # 2^top overflows; max |y| ∈ [2^(top−1), 2^top)
    for k in (top, 60, -60):
        y = ldexp(base, k)
        assert torch.isfinite(y).all()
        got = prox_nm_triton(y, 0.4, 1, 4)
        assert torch.isfinite(got).all()
        assert torch.equal(got, ldexp(prox_nm_triton(base, 0.4, 1, 4), k))
    tiny = -140 if dtype == torch.float32 else -1060  # subnormal inputs and results
    y = base * 2.0**tiny
    got = prox_nm_triton(y, 0.4, 1, 4)
    assert torch.equal(got, prox_nm_triton(ldexp(y, -tiny), 0.4, 1, 4) * 2.0**tiny)
    for k in (100, -100):  # n = 2: λ scales with 2^-k
        y = ldexp(base, k)
        got = prox_nm_triton(y, 0.4 * 2.0**-k, 2, 4)
        assert torch.equal(got, ldexp(prox_nm_triton(base, 0.4, 2, 4), k))
        check_against_cpu(y, got, 0.4 * 2.0**-k, 2, 4, 1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(device, dtype):
    y = sample(128, 4, torch.float32, seed=7).to(dtype)
    w = prox_nm_triton(y.to(device), 0.3, 2, 4).cpu()
    assert w.dtype == dtype
    assert torch.equal(w, prox_nm_triton(y.float().to(device), 0.3, 2, 4).cpu().to(dtype))
    check_against_cpu(y.float(), w.float(), 0.3, 2, 4, 1e-2)


def test_tensor_lambda_matches_float(device):
    y = sample(128, 4, torch.float32, seed=9).to(device)
    w = prox_nm_triton(y, 0.3, 2, 4)
    assert torch.equal(prox_nm_triton(y, torch.tensor(0.3, device=device), 2, 4), w)
    assert torch.equal(prox_nm_triton(y, torch.tensor([0.3], dtype=torch.float64, device=device), 2, 4), w)
    assert torch.equal(prox_nm_triton(y, torch.tensor(0.3), 2, 4), w)  # a CPU λ for any device
    y64 = y.double()
    lam64 = torch.tensor(0.1 + 2**-40, dtype=torch.float64)  # float64 λ is passed without rounding to float32
    assert torch.equal(prox_nm_triton(y64, lam64.to(device), 2, 4), prox_nm_triton(y64, lam64.item(), 2, 4))
    check_against_cpu(y64, prox_nm_triton(y64, lam64.item(), 2, 4), lam64.item(), 2, 4, 1e-12)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_non_finite_group_is_returned_unchanged_and_others_untouched(device, n, m):
    # The documented semantics (prox_nm): a group holding a NaN or an infinity is returned as it is, in the
    # Triton kernel as in the CPU kernel and the plain-torch path; the finite groups are unaffected.
    y = torch.randn(3, m, generator=torch.Generator().manual_seed(m))
    y[0, 1], y[2, 0] = float("inf"), float("nan")
    w = prox_nm_triton(y.to(device), 0.3, n, m).cpu()
    assert torch.equal(w[[0, 2]].nan_to_num(), y[[0, 2]].nan_to_num()) and w[2, 0].isnan()
    assert torch.equal(w[1], prox_nm_triton(y[1:2].to(device), 0.3, n, m).cpu()[0])
    assert torch.equal(cpu_prox(y, 0.3, n, m)[[0, 2]].nan_to_num(), w[[0, 2]].nan_to_num())


def test_empty_and_validation(device):
    assert prox_nm_triton(torch.empty(0, 4, device=device), 0.3, 2, 4).shape == (0, 4)
    with pytest.raises(ValueError):
        prox_nm_triton(torch.zeros(2, 4, device=device), 0.3, 2, 8)
    with pytest.raises(ValueError):
        prox_nm_triton(torch.zeros(2, 32, device=device), 0.3, 2, 32)


def spy_on_kernel(monkeypatch, name):
    """Record the calls of ``_triton.<name>`` (still running it) and route CPU tensors past the CPU kernel
    (interpreting); return the list of calls and the real function."""
    calls, real = [], getattr(_triton, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(_triton, name, spy)
    monkeypatch.setattr(_native, "_LIB", None)
    return calls, real


def test_prox_nm_dispatches_to_triton(device, monkeypatch):
    """prox_nm (scalar step) reaches the kernel for the groups that the CPU kernel does not serve."""
    calls, real = spy_on_kernel(monkeypatch, "prox_nm_triton")
    y = sample(32, 8, torch.float32, seed=11).reshape(16, 16).to(device)
    w = prox_nm(y, 0.3, 2, 4, step=0.5, dim=1)
    assert len(calls) == 1
    assert torch.equal(w, real(y.reshape(-1, 4), 0.3 * 0.5, 2, 4).reshape(16, 16))
    wt = prox_nm(y.t(), torch.tensor(0.3, device=device), 2, 4, dim=0)  # a 0-d λ on the device; another dim
    assert len(calls) == 2 and torch.equal(wt, real(y.reshape(-1, 4), 0.3, 2, 4).reshape(16, 16).t())
    prox_nm(y, 0.3, 2, 4, step=torch.full_like(y, 0.5))  # a tensor step (metric): not this kernel
    assert len(calls) == 2


def test_prox_nm_with_a_tensor_step_dispatches_to_the_metric_kernel(device, monkeypatch):
    calls, real = spy_on_kernel(monkeypatch, "prox_nm_metric_triton")
    y = sample(32, 8, torch.float32, seed=12).reshape(16, 16).to(device)
    s = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)).to(device) + 0.1
    w = prox_nm(y.t(), 0.3, 2, 4, step=s.t(), dim=0)  # another dim: the groups are gathered first
    assert len(calls) == 1
    assert torch.equal(w, real(y.reshape(-1, 4), s.reshape(-1, 4), 0.3, 2).reshape(16, 16).t())
    prox_nm(y, 0.3, 2, 8, step=s)  # m = 8: the plain-torch path
    assert len(calls) == 1


def metric_sample(groups, dtype, seed):
    """Rows as in ``sample`` with steps spread over three decades (every regime of the metric prox)."""
    gen = torch.Generator().manual_seed(seed)
    return sample(groups, 4, dtype, seed), (10 ** (torch.rand(groups, 4, generator=gen, dtype=torch.float64) * 3 - 1.5)).to(dtype)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_metric_kernel_same_objective_as_cpu(device, n, dtype):
    y, s = metric_sample(256, dtype, seed=n)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for lam in (1e-3, 0.05, 0.5, 5.0):
        w = _triton.prox_nm_metric_triton(y.to(device), s.to(device), lam, n).cpu()
        ref = prox_nm(y, lam, n, 4, step=s)  # the CPU kernel
        y64, s64 = y.double(), s.double()
        f, f_ref = nm_objective(w.double(), y64, lam, n, step=s64), nm_objective(ref.double(), y64, lam, n, step=s64)
        assert ((f - f_ref) <= tol * (1 + f_ref.abs())).all(), (f - f_ref).max()
        assert ((w == 0) | (torch.sign(w) == torch.sign(y))).all() and (w.abs() <= y.abs()).all()


def test_metric_kernel_blocks_in_both_regimes(device, monkeypatch):
    """Blocks all in the convex regime and blocks with a group outside it, in one call."""
    block = 64 if device == "cuda" else 16
    if device == "cpu":
        monkeypatch.setattr(_triton, "_config", lambda *args: (block, 1))
    y, s = metric_sample(4 * block, torch.float32, seed=5)
    s[: 2 * block] = 1e-3  # small steps: convex
    s[block + 3] = 50.0  # one group of the second block outside the convex regime
    w = _triton.prox_nm_metric_triton(y.to(device), s.to(device), 0.3, 2).cpu()
    ref = prox_nm(y, 0.3, 2, 4, step=s)
    f, f_ref = nm_objective(w.double(), y.double(), 0.3, 2, step=s.double()), nm_objective(ref.double(), y.double(), 0.3, 2, step=s.double())
    assert ((f - f_ref) <= 1e-5 * (1 + f_ref.abs())).all()


def test_metric_kernel_non_finite_group_and_validation(device):
    y = torch.tensor([[1.0, float("nan"), 0.5, 0.2], [1.0, 0.9, 0.1, 0.0]]).to(device)
    s = torch.ones(2, 4).to(device)
    w = _triton.prox_nm_metric_triton(y, s, 0.1, 2).cpu()
    assert torch.equal(w[0].nan_to_num(), y[0].cpu().nan_to_num()) and w[0, 1].isnan()  # returned unchanged
    assert torch.allclose(w[1], prox_nm(y[1:].cpu(), 0.1, 2, 4, step=s[1:].cpu())[0])
    with pytest.raises(ValueError, match="step must be a tensor shaped like groups"):
        _triton.prox_nm_metric_triton(y, s[:1], 0.1, 2)
    with pytest.raises(ValueError, match="0 < n < 4"):
        _triton.prox_nm_metric_triton(y, s, 0.1, 4)


def test_usable(monkeypatch):
    monkeypatch.setenv("TORCHPROX_TRITON_INTERPRET", "1")
    t = torch.zeros(4, 4)
    assert _triton.usable(t, 4) and _triton.usable(t.bfloat16(), 4)
    assert not _triton.usable(t, 16) and not _triton.usable(t.int(), 4)  # m > 8: the plain-torch path
    assert not _triton.usable(t.requires_grad_(), 4)
    with torch.no_grad():
        assert _triton.usable(t, 4)
    monkeypatch.delenv("TORCHPROX_TRITON_INTERPRET")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not _triton.usable(torch.zeros(4, 4), 4)  # CPU tensors only when interpreting


@pytest.mark.parametrize("m", range(2, 17))
def test_sorting_network_sorts(m):
    net = _sorting_network(m)
    assert all(p < q < m for p, q in net)
    inputs = itertools.product((0, 1), repeat=m) if m <= 10 else torch.randint(0, 3, (2000, m)).tolist()
    for v in inputs:  # the 0-1 principle (exhaustive up to m = 10)
        v = list(v)
        for p, q in net:
            if v[q] > v[p]:
                v[p], v[q] = v[q], v[p]
        assert v == sorted(v, reverse=True)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_step_leaves_its_group_unchanged(device, monkeypatch, n, dtype):
    """A group holding a zero step (one s_i = 0, or lam·s = 0 for the scalar kernel) is stored as loaded, bit
    for bit, and every other group is bit for bit what it is without the zeros (issue 21, item 14)."""
    block = 64 if device == "cuda" else 16
    if device == "cpu":
        monkeypatch.setattr(_triton, "_config", lambda *args: (block, 1))
    y, s = metric_sample(4 * block, dtype, seed=30 + n)
    y[: 2 * block : 2] *= 20  # outside the convex regime at lam 0.5: the general solver, listed or not
    still = torch.zeros(4 * block, dtype=torch.bool)
    still[: block : 3] = True  # a minority of a block
    still[2 * block : 3 * block] = True  # a whole block (an expert that got no tokens)
    s0 = s.clone()
    s0[still, torch.arange(4 * block)[still] % 4] = 0.0
    y[2 * block + 1, 1] = float("nan")
    for lam in (0.05, 0.5, 5.0):
        without = _triton.prox_nm_metric_triton(y.to(device), s.to(device), lam, n).cpu()
        out = _triton.prox_nm_metric_triton(y.to(device), s0.to(device), lam, n).cpu()
        assert torch.equal(out[still].nan_to_num(), y[still].nan_to_num()) and torch.equal(out.isnan(), y.isnan())
        assert torch.equal(out[~still], without[~still])
        assert not torch.equal(without[still].nan_to_num(), y[still].nan_to_num())
        assert torch.equal(prox_nm(y.to(device), lam, n, 4, step=s0.to(device)).cpu()[still].nan_to_num(),
                           y[still].nan_to_num())  # (prox_nm: whichever kernel serves the device)
    for lam in (0.0, torch.tensor(0.0, dtype=dtype, device=device)):  # lam·s = 0: every group as loaded
        for w in (_triton.prox_nm_metric_triton(y.to(device), s.to(device), lam, n),
                  prox_nm_triton(y.to(device), lam, n, 4)):
            assert torch.equal(w.cpu().nan_to_num(), y.nan_to_num()) and torch.equal(w.cpu().isnan(), y.isnan())


def _run_module(*args: str):
    """``python -m torchprox.prox._triton *args`` with this checkout's torchprox first on the path."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(_triton.__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "torchprox.prox._triton", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_dump_prints_the_generated_kernel():
    done = _run_module("--dump", "2", "4")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("def _prox_nm_2_4_f32(y_ptr, out_ptr, lam_ptr")
    assert done.stdout == _triton._generate(2, 4, False)[0]


def test_dump_a_bad_pattern_exits_2_with_one_line():
    done = _run_module("--dump", "4", "4")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == "error: --dump 4 4: the pattern needs 0 < N < M <= 8, e.g. --dump 2 4"


@pytest.mark.parametrize("argv", [["--dump", "0", "4"], ["--dump", "3", "2"], ["--dump", "2", "16"],
                                  ["--dump", "2", "8", "--metric"]])
def test_dump_rejects_bad_patterns(argv, capsys):
    assert _triton._main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: --")


@pytest.mark.parametrize("argv, name", [(["--dump", "1", "3"], "_prox_nm_1_3_f32"),
                                        (["--dump", "2", "4", "--metric", "--float64"], "_prox_nm_metric_2_4_f64")])
def test_dump_variants(argv, name, capsys):
    assert _triton._main(argv) == 0
    assert capsys.readouterr().out.startswith(f"def {name}(")
