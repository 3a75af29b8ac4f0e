r"""The fused GPU kernel for [`torchprox.prox.prox_nm`][torchprox.prox.nm.prox_nm] with a scalar step, written in Triton.

It computes, group by group, the same exact minimizer as the fused CPU kernel (``csrc/nm_cpu.cpp``) and the
plain-torch path (``nm.py``): ``argmin_w ½ Σ (w − y)² + lam · e_{n+1}(|w|)`` for every row of a ``(G, m)``
tensor. One program handles ``BLOCK`` groups, vectorized across groups (every per-group quantity is a
``(BLOCK,)`` vector; the m coordinates of a group are separate vectors), in one pass over memory:

1. load the m entries (any float dtype), compute in float32 (float64 for float64 input);
2. per group, scale by an exact power of two so max |y| ∈ [0.5, 1) (the frexp exponent read from the float's
   bits; the scale applied as two normal powers of two, so the extreme exponents neither overflow nor
   underflow) and fold it into λ (homogeneity);
3. the convex case, for the groups with q = λ (m − n) max_i e_{n−1}(|y| minus i) ≤ ½ (the regime of mask
   learning): the objective is strongly convex on the box [0, |y|], so coordinate descent from |y| on the
   unsorted values is the whole solve, as in the CPU kernel. The other groups take the general case (4–5),
   in the same program, or, when they are at most half of their block, in a second launch that solves them
   ``BLOCK`` at a time from a list the first one writes (an atomic counter on the device; no host sync; as many
   programs as the GPU keeps resident, each going round the list), so that a block with a few such groups
   does not run the general case for all of its lanes:
4. a stable descending sort of |y| by a sorting network (Batcher's odd-even merge sort) on
   ``(value, index)`` keys: ties keep the lower index first, like the CPU kernel;
5. the n-sparse candidate, the (n+1)-support by monotone Newton on the convex scalar function of
   ``nm.py::_solve_product``, larger top-k supports by exact coordinate descent from two starts (only for the
   groups whose top k can hold a local minimizer: the CPU kernel's test), the best objective kept with a
   strict ``<`` (sparser wins ties);
6. write the result, rounded once to the input dtype, with the signs of ``y``; a group with a non-finite entry,
   or with a zero step (λ·s = 0, or a zero s_i of the diagonal metric), is stored unchanged, as loaded.

The diagonal-metric prox (``prox_nm_metric_triton``, m = 4: argmin_w ½ Σ (w − y)²/s + λ e_{n+1}(|w|), ProxAdam's
``metric="adam"``) is generated from the same pieces: the convex case with λ s_i in row i, else the CPU
kernel's general metric solver (the top n of |y|²/s; every support of size n+1 made unweighted by
x_i = √s_i u_i and solved by monotone Newton; larger supports by coordinate descent from |y|).

Iterations: each group stops on its own once its last step moved nothing by more than a tolerance, or at the
caps; both are the CPU kernel's table ``torchprox.prox.nm._KERNEL_ITERATIONS`` (Newton 40 / 80 iterations,
60 / 200 coordinate-descent sweeps in float32 / float64; tolerance ``triton_tol``, 1e-5 / 1e-10 on values
scaled into [0, 1), where the CPU's is 1e-6 / 1e-12: see that table for why); a loop ends when no group of the
block is still moving, checked by a reduction every few steps inside a fixed-count loop whose remaining steps
are skipped (a uniform branch): no host sync anywhere, and λ may be a 0-d CUDA tensor read by the kernel. So a
group's result depends neither on the groups that share its program nor on whether it went through the list.

The kernel source is generated per ``(n, m, dtype)`` (every group coordinate unrolled into its own variable)
and compiled by Triton on first use (cached by Triton on disk; seconds for m = 4, longer for m = 8). Patterns:
any ``0 < n < m ≤ 8``; larger m is left to the plain-torch path, since a fully unrolled 8:16 kernel takes
minutes to compile and spills registers. ``python -m torchprox.prox._triton --dump 2 4`` prints a kernel's
generated source (``--metric``, ``--float64``, ``--fast-newton`` for the variants).

CPU testing: with ``TRITON_INTERPRET=1`` or ``TORCHPROX_TRITON_INTERPRET=1`` the kernel runs in Triton's
interpreter and [`usable`][torchprox.prox._triton.usable] accepts CPU tensors too (slow: tests only). The interpreter accepts more than the
compiler does, so ``tests/prox/test_triton_compile.py`` also compiles every launched variant ahead of time to
cubins for sm_80 and sm_90 (Triton's pipeline and its bundled ``ptxas``; no GPU needed) and checks that none
spills registers.

The kernel is compute-bound (Newton's divisions and square roots, the coordinate-descent sweeps).
``benchmarks/bench_prox.py --device cuda`` measures it; docs/benchmarks.md (Kernel design notes) has the
figures.

Measuring on a GPU (compare with a device-to-device copy of the same tensor, the memory-bound floor)::

    import torch, triton
    from torchprox.prox import prox_nm
    y = torch.randn(4096, 4096, device="cuda")
    lam = torch.tensor(0.3, device="cuda")               # a 0-d CUDA λ: no host sync
    prox_nm(y, lam)                                       # compile once
    t_prox = triton.testing.do_bench(lambda: prox_nm(y, lam, n=2, m=4))
    t_copy = triton.testing.do_bench(lambda: y.clone())
    print(f"prox_nm {t_prox * 1e3:.0f} us, clone {t_copy * 1e3:.0f} us, ratio {t_prox / t_copy:.1f}")
"""
from __future__ import annotations

import functools
import linecache
import os
import threading

import torch
from torch import Tensor

__all__ = ["MAX_M", "available", "usable", "serves", "prox_nm_triton", "prox_nm_metric_triton"]

MAX_M = 8  # m = 16 compiles for minutes and spills registers: larger groups use the plain-torch path
# Steps unrolled between two convergence checks (each check is a reduction over the block); None: by m.
_CHUNK = None
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# Fused multiply-add contraction (Triton's default): faster than separate roundings (docs/benchmarks.md).
_FP_FUSION = True
# Groups outside the convex regime listed and solved by a second launch when they are at most half of their
# block (see _generate); False: solved in their own block (one launch).
_COMPACT = os.environ.get("TORCHPROX_TRITON_COMPACT", "1") != "0"
# Newton's iterations (float32) with the GPU's approximate division and square root (div.approx.f32, 2 ulp;
# sqrt.approx.f32) instead of IEEE-rounded ones: the iteration converges to the same root up to a few ulp, and
# the candidate is then computed from its limit with IEEE operations. Off by default
# (benchmarks/bench_triton_configs.py times both); needs a Triton whose tl.fdiv takes approx=.
_FAST_NEWTON = os.environ.get("TORCHPROX_TRITON_FAST_NEWTON") == "1"
_LOCK = threading.Lock()
_KERNELS: dict = {}


def interpreting() -> bool:
    """Whether kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1`` or ``TORCHPROX_TRITON_INTERPRET=1``)."""
    return os.environ.get("TORCHPROX_TRITON_INTERPRET") == "1" or os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _import_triton():
    try:
        import triton
        import triton.language as tl
    except Exception:  # not installed, or broken for this torch: the plain-torch path serves
        return None
    return triton, tl


@functools.lru_cache(maxsize=None)
def _approx_division() -> bool:
    """Whether this Triton's ``tl.fdiv`` takes ``approx=`` (newer versions do)."""
    import inspect

    return "approx" in inspect.signature(_import_triton()[1].fdiv).parameters


def available() -> bool:
    """Whether Triton can be imported."""
    return _import_triton() is not None


def usable(t: Tensor, m: int) -> bool:
    """Whether the Triton kernel can serve the ``(G, m)`` groups ``t``.

    A CUDA tensor (a CPU one too when interpreting), a float dtype, no autograd recording, ``m ≤ 8``, Triton
    importable.
    """
    return (
        isinstance(t, Tensor)
        and (t.device.type == "cuda" or interpreting())
        and t.dtype in _FLOATS
        and not (t.requires_grad and torch.is_grad_enabled())
        and 1 < m <= MAX_M
        and available()
    )


def serves(g: Tensor, lam, s, m: int) -> bool:
    """Whether ``prox_nm`` hands these groups, λ and scalar step ``s`` to the Triton kernel."""
    scalars_ok = all(
        not isinstance(v, Tensor) or (v.numel() == 1 and not (v.requires_grad and torch.is_grad_enabled()))
        for v in (lam, s)
    )
    return scalars_ok and usable(g, m)


# ----------------------------------------------------------------------------------------------------------
# Source generation


def _sorting_network(m: int) -> list[tuple[int, int]]:
    """Comparators (p, q), p < q, of Batcher's odd-even merge sort for m inputs (padded to a power of two;
    comparators touching padding are dropped, the padding being smaller than every real key)."""
    size = 1
    while size < m:
        size *= 2
    pairs: list[tuple[int, int]] = []

    def merge(lo: int, hi: int, r: int) -> None:
        step = r * 2
        if step < hi - lo:
            merge(lo, hi, step)
            merge(lo + r, hi, step)
            pairs.extend((i, i + r) for i in range(lo + r, hi - r, step))
        else:
            pairs.append((lo, lo + r))

    def sort(lo: int, hi: int) -> None:
        if hi - lo >= 1:
            mid = lo + (hi - lo) // 2
            sort(lo, mid)
            sort(mid + 1, hi)
            merge(lo, hi, 1)

    if size > 1:
        sort(0, size - 1)
    return [(p, q) for p, q in pairs if q < m]


class _Src:
    """Lines of generated code, each indented by the current ``depth`` (in units of four spaces)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1

    def __call__(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)


def _types(fp64: bool) -> tuple[str, str, str]:
    """The generated code's float type, its same-width integer type, and the smallest normal float."""
    if fp64:
        return "tl.float64", "tl.int64", "2.2250738585072014e-308"
    return "tl.float32", "tl.int32", "1.1754943508222875e-38"


class _KernelSource:
    """The source of the kernel for pattern n:m computing in float64 (else float32).

    With ``metric``, the diagonal-metric prox (a per-entry step read from ``s_ptr``; m = 4). With
    ``fast_newton`` (float32 only), Newton's iterations divide and take square roots with the GPU's approximate
    instructions (see _FAST_NEWTON); the candidate built from their limit is computed exactly, as everything
    else. ``source`` emits the body in the order of the module docstring's steps, one method per step, into
    ``self.e``; the expression helpers (``div``, ``sqrt``, ``pow2``, ``esym``) return code strings, the
    statement helpers (``converge``, ``sweep``, ``store``) emit lines.
    """

    def __init__(self, n: int, m: int, fp64: bool, metric: bool = False, fast_newton: bool = False) -> None:
        self.n, self.m, self.fp64, self.metric = n, m, fp64, metric
        self.fast = fast_newton and not fp64
        self.name = (
            f"_prox_nm_{'metric_' if metric else ''}{n}_{m}_{'f64' if fp64 else 'f32'}{'_fast' if self.fast else ''}"
        )
        self.T, self.IT, self.tiny = _types(fp64)
        self.fmax = "1.7976931348623157e308" if fp64 else "3.4028234663852886e38"
        cdt = torch.float64 if fp64 else torch.float32
        from .nm import _KERNEL_ITERATIONS  # the caps and tolerances both kernels read (nm imports this module)

        it = _KERNEL_ITERATIONS[cdt]
        self.newton_cap, self.sweep_cap, self.tol = it["newton"], it["sweeps"], it["triton_tol"]
        self.chunk = _CHUNK or (4 if m <= 4 else 2)  # the caps are multiples of 4
        self.e = _Src()

    # -- expressions (code strings) ------------------------------------------------------------------------

    def div(self, a: str, b: str) -> str:
        """a / b rounded to nearest."""
        return f"({a}) / ({b})" if self.fp64 else f"tl.div_rn({a}, {b})"

    def sqrt(self, a: str) -> str:
        """√a rounded to nearest."""
        return f"tl.sqrt({a})" if self.fp64 else f"tl.sqrt_rn({a})"

    def div_it(self, a: str, b: str) -> str:
        """a / b inside Newton's iterations (approximate with fast_newton)."""
        return f"tl.fdiv({a}, {b}, approx=True)" if self.fast else self.div(a, b)

    def sqrt_it(self, a: str) -> str:
        """√a inside Newton's iterations (approximate with fast_newton)."""
        return f"tl.sqrt({a})" if self.fast else self.sqrt(a)

    def pow2(self, k: str) -> str:
        """2^k for an int32 vector k in the normal exponent range, built from its bits."""
        if self.fp64:
            return f"((({k}) + 1023).to(tl.int64) << 52).to(tl.float64, bitcast=True)"
        return f"((({k}) + 127) << 23).to(tl.float32, bitcast=True)"

    def lam_of(self, i: int) -> str:
        """λ of row i: ``ls{i}`` = λ s_i with the diagonal metric, else ``lam``."""
        return f"ls{i}" if self.metric else "lam"

    def esym(self, names: list[str], d: int, tag: str) -> str:
        """Emit e_d(names) by the CPU kernel's recurrence (e_r += x_j e_{r−1}) into variables ``{tag}{r}``;
        return the expression."""
        if d > len(names):
            return "0.0"
        if d == 0:
            return "1.0"
        have: set[int] = set()
        last = len(names) - 1
        for j, x in enumerate(names):
            # Only e_r that can still reach degree d with the values left: r ≥ d − (last − j).
            for r in range(min(j + 1, d), max(1, d - (last - j)) - 1, -1):
                if r == 1:
                    rhs = f"{tag}1 + {x}" if 1 in have else x
                else:
                    rhs = f"{tag}{r} + {x} * {tag}{r - 1}" if r in have else f"{tag}{r - 1} * {x}"
                self.e(f"{tag}{r} = {rhs}")
                have.add(r)
        return f"{tag}{d}"

    # -- statements ----------------------------------------------------------------------------------------

    def converge(self, cap: int, body, active: str) -> None:
        """Up to cap steps of body on the groups ``active`` (a mask expression), each group until its own step
        changes nothing by more than tol (``act``, updated by body, freezes the others), chunk steps between
        checks of whether any group of the block is still active (a reduction: the rest is then skipped)."""
        e = self.e
        e(f"act = {active}")
        e("go = tl.reduce(act.to(tl.int32), 0, _any)")
        e(f"for _ in range({-(-cap // self.chunk)}):")
        e("    if go > 0:")
        e.depth += 2
        for _ in range(self.chunk):
            body()
        e("go = tl.reduce(act.to(tl.int32), 0, _any)")
        e.depth -= 2

    def sweep(self, xs: list[str], on: list[int]) -> None:
        """One coordinate-descent sweep x_i <- max(0, b_i − lam_i e_n(x minus i)) over the coordinates ``on``
        (the others are 0), last first (as the CPU kernel), on the groups ``act``; a group where no x_i would
        move by more than tol leaves ``act``."""
        e = self.e
        for pos, i in enumerate(reversed(on)):
            coupling = self.esym([xs[j] for j in on if j != i], self.n, "ec")
            e(f"v = b{i} - {self.lam_of(i)} * {coupling}")
            e("v = tl.where(v < 0.0, 0.0, v)")
            change = f"tl.abs(v - {xs[i]}) > tol"
            e(f"ch = {change}" if pos == 0 else f"ch = ch | ({change})")
            e(f"{xs[i]} = tl.where(act, v, {xs[i]})")
        e("act = act & ch")

    def descend(self, xs: list[str], on: list[int], active: str) -> None:
        """Coordinate descent on the coordinates ``on`` of ``xs`` until converged (or the sweep cap)."""
        self.converge(self.sweep_cap, lambda: self.sweep(xs, on), active)

    def store(self, xs: list[str], mask: str) -> None:
        """Emit the store of the groups ``mask`` with values ``xs`` (position j of the group at i_j >> 1, sign
        i_j & 1); a non-finite group (a NaN or an infinity anywhere), or one with a zero step, is stored
        unchanged, as loaded."""
        e, T, IT = self.e, self.T, self.IT
        for j in range(self.m):
            e(f"w = {xs[j]} * up1 * up2")
            e(f"w = (w.to({IT}, bitcast=True) | ((i{j} & 1).to({IT}) << {63 if self.fp64 else 31})).to({T}, bitcast=True)")
            e(f"tl.store(out_ptr + base + (i{j} >> 1), w.to(out_ptr.dtype.element_ty), mask=({mask}) & fin)")
        for j in range(self.m):
            e(f"tl.store(out_ptr + base + {j}, y{j}.to(out_ptr.dtype.element_ty), mask=({mask}) & ~fin)")

    def keep(self, xs: list[str]) -> None:
        """Keep ``f`` and the candidate ``xs`` (zero after its last name) where f < best_f (strict: on ties the
        earlier, sparser candidate stays)."""
        e = self.e
        e("better = f < best_f")
        e("best_f = tl.where(better, f, best_f)")
        for j in range(self.m):
            e(f"best{j} = tl.where(better, {xs[j] if j < len(xs) else '0.0'}, best{j})")

    # -- the steps -----------------------------------------------------------------------------------------

    def header(self) -> list[str]:
        """The kernel's signature."""
        step_arg = "s_ptr, " if self.metric else ""
        return [
            f"def {self.name}(y_ptr, {step_arg}out_ptr, lam_ptr, lam_bits, G, list_ptr, count_ptr, LAM_PTR: tl.constexpr,",
            "        BLOCK: tl.constexpr, COMPACT: tl.constexpr, FROM_LIST: tl.constexpr):",
        ]

    def load(self) -> None:
        """Step 1: λ, the m entries (and steps) of the groups ``offs`` (``valid``), |y| as b_j, the sign bits
        folded into the sort index i_j = 2 j + signbit(y_j); ``fin``: the group is finite with a nonzero step."""
        e, m, T, IT = self.e, self.m, self.T, self.IT
        e(f"tol = tl.full([], {self.tol!r}, {T})")
        e(f"base = offs * {m}")
        e("if LAM_PTR:")
        e(f"    lam = tl.load(lam_ptr).to({T})")
        e("else:")
        e(f"    lam = lam_bits.to({IT}).to({T}, bitcast=True)")
        for j in range(m):
            e(f"y{j} = tl.load(y_ptr + base + {j}, mask=valid, other=0.0).to({T})")
            e(f"b{j} = tl.abs(y{j})")
            e(f"i{j} = {2 * j} + (y{j}.to({IT}, bitcast=True) < 0).to(tl.int32)")
            if self.metric:
                e(f"s{j} = tl.load(s_ptr + base + {j}, mask=valid, other=1.0).to({T})")
        e("fin = " + " & ".join(f"(b{j} <= {self.fmax})" for j in range(m)))
        # A zero step (lam s = 0, or a zero s_i in the group) leaves the group unchanged, as a non-finite one:
        # solved as zeros with unit steps (in the convex case, at once) and stored as loaded.
        e(f"fin = fin & ((tl.full([BLOCK], 0.0, {T}) + lam) != 0.0)")
        if self.metric:
            e("fin = fin & " + " & ".join(f"(s{j} != 0.0)" for j in range(m)))
        for j in range(m):
            e(f"b{j} = tl.where(fin, b{j}, 0.0)")
            if self.metric:
                e(f"s{j} = tl.where(fin, s{j}, 1.0)")

    def scale(self) -> None:
        """Step 2: b scaled by 2^−ex so max b ∈ [0.5, 1) (ex the frexp exponent of max b, subnormals first
        lifted exactly; applied as two powers of two, dn1 dn2, undone by up1 up2), λ by 2^(ex (n−1))."""
        e, m, tiny = self.e, self.m, self.tiny
        e("amax = b0")
        for j in range(1, m):
            e(f"amax = tl.maximum(amax, b{j})")
        e(f"sub = amax < {tiny}")
        if self.fp64:
            e("am = tl.where(sub, amax * 3.402823669209385e38, amax)")  # 2^128
            e("ex = (((am.to(tl.int64, bitcast=True) >> 52) & 2047) - 1022).to(tl.int32) - tl.where(sub, 128, 0)")
        else:
            e("am = tl.where(sub, amax * 18446744073709551616.0, amax)")  # 2^64
            e("ex = ((am.to(tl.int32, bitcast=True) >> 23) & 255) - 126 - tl.where(sub, 64, 0)")
        e("eh = ex >> 1")
        e("er = ex - eh")
        e(f"up1 = {self.pow2('eh')}")
        e(f"up2 = {self.pow2('er')}")
        e(f"dn1 = {self.pow2('-eh')}")
        e(f"dn2 = {self.pow2('-er')}")
        for j in range(m):
            e(f"b{j} = b{j} * dn1 * dn2")
        for _ in range(self.n - 1):  # lam · scale^(n−1), monotone: no spurious overflow or underflow
            e("lam = lam * up1 * up2")
        if self.metric:  # row i of the diagonal metric: lam s_i (the step is not scaled)
            for j in range(m):
                e(f"ls{j} = lam * s{j}")

    def convex_case(self) -> None:
        """Step 3, leaving ``need``: the groups for the general case.

        With q = lam (m − n) max_i e_{n−1}(b minus i) ≤ ½ the objective is strongly convex on the box [0, b], so
        coordinate descent from b, on the unsorted values, converges to the global minimizer: no sort, no
        candidates. Decided group by group: the groups that qualify (the regime of mask learning, small lam)
        are solved and stored here, the others (``need``) by the general case, in this program or, with COMPACT
        when they are at most half of the block, appended to the list that the second launch (FROM_LIST)
        solves BLOCK at a time, so that a block with a few such groups does not run the general case for all
        of its lanes. Each group stops on its own, so its result does not depend on which groups share its
        program. A NaN q (lam = inf on a zero group) does not qualify.
        """
        e, n, m = self.e, self.n, self.m
        for i in range(m):
            es = self.esym([f"b{j}" for j in range(m) if j != i], n - 1, f"cv{i}_")
            e(f"qc = {self.lam_of(i)} * {es}" if i == 0 else f"qc = tl.maximum(qc, {self.lam_of(i)} * {es})")
        e(f"qc = {float(m - n)} * qc + b0 * 0.0")  # (a vector per group also when n = 1: e_0 = 1)
        e("qc = tl.where(fin, qc, 0.0)")  # (a group stored as loaded: the convex case, x = b = 0 at once)
        e("if FROM_LIST:")
        e("    need = valid")
        e("else:")
        e.depth += 1
        e("convex = valid & (qc <= 0.5)")
        e("need = valid & ~(qc <= 0.5)")
        e("if tl.reduce(convex.to(tl.int32), 0, _any) > 0:")
        e.depth += 1
        xs = [f"x{j}" for j in range(m)]
        for j in range(m):
            e(f"x{j} = b{j}")
        self.descend(xs, list(range(m)), "convex")
        self.store(xs, "convex")
        e.depth -= 1
        e("if COMPACT:")
        e("    count = tl.reduce(need.to(tl.int32), 0, _add)")
        e("    if (count > 0) & (2 * count <= BLOCK):")
        e("        first = tl.atomic_add(count_ptr, count)")
        e("        tl.store(list_ptr + first + tl.associative_scan(need.to(tl.int32), 0, _add) - 1, offs.to(tl.int32), mask=need)")
        e("        need = need & (count == 0)")
        e.depth -= 1

    def sort(self) -> None:
        """Step 4: stable descending sort of (b, i) by the sorting network."""
        e = self.e
        for p, q in _sorting_network(self.m):
            e(f"sw = (b{q} > b{p}) | ((b{q} == b{p}) & (i{q} < i{p}))")
            e(f"t = tl.where(sw, b{q}, b{p})")
            e(f"b{q} = tl.where(sw, b{p}, b{q})")
            e(f"b{p} = t")
            e(f"ti = tl.where(sw, i{q}, i{p})")
            e(f"i{q} = tl.where(sw, i{p}, i{q})")
            e(f"i{p} = ti")

    def objective(self, xs: list[str], tag: str) -> None:
        """f = ½ Σ (x − b)² + lam e_{n+1}(x) for sorted b and x = xs on the first len(xs) coordinates, zero after."""
        k = len(xs)
        terms = [f"({xs[j]} - b{j}) * ({xs[j]} - b{j})" for j in range(k)] + [f"b{j} * b{j}" for j in range(k, self.m)]
        self.e("q = " + " + ".join(terms))
        es = self.esym(xs, self.n + 1, tag)
        self.e(f"f = 0.5 * q + lam * {es}")

    def sparse_candidate(self) -> None:
        """The n-sparse candidate (R = 0): the top n of the sorted b, the first best."""
        e, n, m = self.e, self.n, self.m
        for j in range(m):
            e(f"best{j} = b{j}" if j < n else f"best{j} = b{j} * 0.0")
        e("q = " + " + ".join(f"b{j} * b{j}" for j in range(n, m)))
        e("best_f = 0.5 * q")

    def newton_step(self) -> None:
        """One step of monotone Newton on psi(z) = lam ∏ u_i(z) + z − b_n (the top n+1 of the sorted b)."""
        e, n, tiny = self.e, self.n, self.tiny
        bk = f"b{n}"
        e(f"d = 2.0 * z - {bk}")
        e("d2 = d * d")
        for i in range(n):
            e(f"r = {self.sqrt_it(f'd2 + gap{i}')}")
            e(f"u = (b{i} + r) * 0.5")
            e("prod = u" if i == 0 else "prod = prod * u")
            e("den = r * u")
            term = self.div_it("d", f"tl.where(den > {tiny}, den, {tiny})")
            e(f"dl = {term}" if i == 0 else f"dl = dl + {term}")
        e(f"psi = lam * prod + z - {bk}")
        e("dpsi = 1.0 + lam * prod * dl")
        e(f"zn = tl.where(dpsi > 0.0, z - {self.div_it('psi', f'tl.where(dpsi > {tiny}, dpsi, {tiny})')}, 0.0)")
        e("zn = tl.where(zn < 0.0, 0.0, zn)")
        e(f"zn = tl.where(zn > {bk}, {bk}, zn)")
        e("ch = tl.abs(zn - z) > tol")
        e("z = tl.where(act, zn, z)")
        e("act = act & ch")

    def support_candidate(self) -> list[str]:
        """The (n+1)-support candidate by Newton from z = b_n; return its names u_0..u_n."""
        e, n = self.e, self.n
        bk = f"b{n}"
        for i in range(n):
            e(f"gap{i} = b{i} * b{i} - {bk} * {bk}")
            e(f"gap{i} = tl.where(gap{i} > 0.0, gap{i}, 0.0)")
        e(f"z = {bk}")
        self.converge(self.newton_cap, self.newton_step, "need")
        e(f"d = 2.0 * z - {bk}")
        e("d2 = d * d")
        for i in range(n):
            e(f"u{i} = (b{i} + {self.sqrt(f'd2 + gap{i}')}) * 0.5")
        e(f"u{n} = z")
        cand = [f"u{i}" for i in range(n + 1)]
        self.objective(cand, "eo")
        self.keep(cand)
        return cand

    def larger_supports(self, grown: list[str]) -> None:
        """Larger top-k supports, from the (n+1)-support's solution ``grown``.

        Exact coordinate descent from b and from the grown solution, on the groups whose top k can hold a local
        minimizer (the CPU kernel's test; the others keep their start, a genuine point that cannot displace the
        right candidate): at a local minimizer on the top k, x_i > d_i = b_i − b_{k−1}, so (a) lam
        e_n(d_0..d_{k−2}) < b_{k−1} − x_{k−1} < b_{k−1} and (b) lam e_{n−1}(d_0..d_{k−3}) ≤ 1 (a 2×2 principal
        minor of the Hessian). Both only get harder as k grows, so each k is nested in the previous one's
        uniform branch.
        """
        e, n, m = self.e, self.n, self.m
        opened = 0
        for k in range(n + 2, m + 1):
            for j in range(k - 1):
                e(f"gd{j} = b{j} - b{k - 1}")
                e(f"gd{j} = tl.where(gd{j} > 0.0, gd{j}, 0.0)")
            e1 = self.esym([f"gd{j}" for j in range(k - 2)], n - 1, "ep")
            en = self.esym([f"gd{j}" for j in range(k - 1)], n, "eq")
            margin = 1.0 + 1e-4  # rounding in the bounds never rules out a candidate
            e(f"possible = need & (lam * {e1} + b0 * 0.0 <= {margin}) & (lam * {en} <= b{k - 1} * {margin})")
            e("if tl.reduce(possible.to(tl.int32), 0, _any) > 0:")
            e.depth += 1
            opened += 1
            xs = [f"x{j}" for j in range(k)]
            for start in range(2):
                for j in range(k):
                    src = f"b{j}" if start == 0 else (grown[j] if j < k - 1 else f"b{j} * 0.0")
                    e(f"x{j} = {src}")
                self.descend(xs, list(range(k)), "possible")
                self.objective(xs, "eo")
                self.keep(xs)
            if k < m:
                grown = [f"g{j}" for j in range(k)]
                for j in range(k):
                    e(f"g{j} = x{j}")
        e.depth -= opened  # the candidate branches

    def metric_newton_step(self, on: list[int]) -> None:
        """One step of monotone Newton for the metric's (n+1)-support ``on`` (unweighted by c_i = √s_i)."""
        e, tiny = self.e, self.tiny
        e("d = 2.0 * z - bk")
        e("d2 = d * d")
        e("prod = d * 0.0 + 1.0")
        e("dl = d * 0.0")
        for j in on:
            e(f"r = {self.sqrt_it(f'd2 + gp{j}')}")
            e(f"u = (be{j} + r) * 0.5")
            e(f"oth = low != {j}")
            e("den = r * u")
            e(f"dl = tl.where(oth, dl + {self.div_it('d', f'tl.where(den > {tiny}, den, {tiny})')}, dl)")
            e("prod = tl.where(oth, prod * u, prod)")
        e("psi = lp * prod + z - bk")
        e("dpsi = 1.0 + lp * prod * dl")
        e(f"zn = tl.where(dpsi > 0.0, z - {self.div_it('psi', f'tl.where(dpsi > {tiny}, dpsi, {tiny})')}, 0.0)")
        e("zn = tl.where(zn < 0.0, 0.0, zn)")
        e("zn = tl.where(zn > bk, bk, zn)")
        e("ch = tl.abs(zn - z) > tol * bmax")
        e("z = tl.where(act, zn, z)")
        e("act = act & ch")

    def metric_support(self, on: list[int]) -> None:
        """The metric's (n+1)-support ``on`` into x_0..x_{m−1}: x_i = c_i u_i with c_i = √s_i makes it
        unweighted with β_i = b_i / c_i and lam ∏ c_i; monotone Newton needs only the support's smallest β
        (ties: the higher index) and the gaps β_j² − β_min² of the others."""
        e, m = self.e, self.m
        for j in on:
            e(f"c{j} = {self.sqrt(f's{j}')}")
            e(f"be{j} = {self.div(f'b{j}', f'c{j}')}")
        e("lp = lam * " + " * ".join(f"c{j}" for j in on))
        e(f"bk = be{on[0]}")
        e(f"bmax = be{on[0]}")
        e(f"low = i0 * 0 + {on[0]}")
        for j in on[1:]:
            e(f"le = be{j} <= bk")
            e(f"low = tl.where(le, {j}, low)")
            e(f"bk = tl.where(le, be{j}, bk)")
            e(f"bmax = tl.maximum(bmax, be{j})")
        for j in on:
            e(f"gp{j} = be{j} * be{j} - bk * bk")
            e(f"gp{j} = tl.where(gp{j} > 0.0, gp{j}, 0.0)")
        e("z = bk")
        self.converge(self.newton_cap, lambda: self.metric_newton_step(on), "need")
        e("d = 2.0 * z - bk")
        e("d2 = d * d")
        for j in range(m):
            if j in on:
                e(f"u = tl.where(low == {j}, z, (be{j} + {self.sqrt(f'd2 + gp{j}')}) * 0.5)")
                e(f"x{j} = tl.minimum(u * c{j}, b{j})")
            else:
                e(f"x{j} = b{j} * 0.0")

    def metric_candidates(self) -> None:
        """The diagonal-metric general case (the CPU kernel's metric_block): best{j}, best_f over the candidates.

        The top n of b²/s (ties: lower index) as they are; every support of size n+1 (in bitmask order) by
        ``metric_support``; every larger support by coordinate descent from b. The smallest objective wins
        (strict <: the earlier candidate on ties).
        """
        e, n, m = self.e, self.n, self.m
        for j in range(m):
            e(f"sc{j} = {self.div(f'b{j} * b{j}', f's{j}')}")
        for j in range(m):
            terms = [f"(sc{k} {'>=' if k < j else '>'} sc{j}).to(tl.int32)" for k in range(m) if k != j]
            e(f"rk{j} = " + " + ".join(terms))
        for j in range(m):
            e(f"best{j} = tl.where(rk{j} < {n}, b{j}, 0.0)")
        e("best_f = 0.5 * (" + " + ".join(f"tl.where(rk{j} >= {n}, sc{j}, 0.0)" for j in range(m)) + ")")
        xs = [f"x{j}" for j in range(m)]
        for k in range(n + 1, m + 1):
            for support in range(1, 1 << m):
                on = [i for i in range(m) if support >> i & 1]
                if len(on) != k:
                    continue
                if k == n + 1:
                    self.metric_support(on)
                else:
                    for j in range(m):
                        e(f"x{j} = b{j}" if j in on else f"x{j} = b{j} * 0.0")
                    self.descend(xs, on, "need")
                terms = [self.div(f"(x{j} - b{j}) * (x{j} - b{j})", f"s{j}") for j in range(m)]
                e("q = " + " + ".join(terms))
                es = self.esym([xs[j] for j in on], n + 1, "eo")
                e(f"f = 0.5 * q + lam * {es}")
                self.keep(xs)

    def general_case(self) -> None:
        """Steps 4–5 for the groups ``need``: best{j} over the candidates, then their store (step 6)."""
        e, m = self.e, self.m
        e("if tl.reduce(need.to(tl.int32), 0, _any) > 0:")
        e.depth += 1
        if self.metric:
            self.metric_candidates()
        else:
            self.sort()
            self.sparse_candidate()
            self.larger_supports(self.support_candidate())
        self.store([f"best{j}" for j in range(m)], "need")
        e.depth -= 1

    def source(self) -> tuple[str, str]:
        """The kernel's source and name: the body for the groups ``offs`` (``valid``) placed twice, the first
        launch's (BLOCK consecutive groups per program) and the second's (FROM_LIST: each program takes BLOCK
        listed groups at a time, in turn with the other programs, until the list's end), then the combine
        functions of the reductions."""
        self.load()
        self.scale()
        self.convex_case()
        self.general_case()
        body = self.e.lines
        listed = [
            "    pid = tl.program_id(0)",
            "    if FROM_LIST:",
            "        total = tl.load(count_ptr)",
            "        for first in range(pid * BLOCK, total, tl.num_programs(0) * BLOCK):",
            "            slot = first + tl.arange(0, BLOCK)",
            "            valid = slot < total",
            "            offs = tl.load(list_ptr + slot, mask=valid, other=0).to(tl.int64)",
        ]
        listed += ["        " + line for line in body]
        listed += [
            "    else:",
            "        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
            "        valid = offs < G",
        ]
        listed += ["    " + line for line in body]
        combine = ["", "", "def _any_or(a, b):", "    return a | b", "", "", "def _add(a, b):", "    return a + b"]
        return "\n".join(self.header() + listed + combine) + "\n", self.name


def _generate(n: int, m: int, fp64: bool, metric: bool = False, fast_newton: bool = False) -> tuple[str, str]:
    """Source of the kernel for pattern n:m and its function name (see _KernelSource)."""
    return _KernelSource(n, m, fp64, metric, fast_newton).source()


def _kernel(n: int, m: int, dtype: torch.dtype, interpret: bool, metric: bool = False):
    fast_newton = _FAST_NEWTON and _approx_division()
    key = (n, m, dtype, interpret, metric, fast_newton)
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    with _LOCK:
        kernel = _KERNELS.get(key)
        if kernel is None:
            triton, tl = _import_triton()
            src, name = _generate(n, m, dtype == torch.float64, metric, fast_newton)
            filename = f"<torchprox-triton-{name}>"
            # Register the source so that inspect.getsource (Triton's front end) finds it.
            linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
            scope = {"tl": tl, "triton": triton, "__name__": f"torchprox.prox._triton_generated.{name}"}
            exec(compile(src, filename, "exec"), scope)
            fn = scope[name]
            if interpret:
                from triton.runtime.interpreter import InterpretedFunction as wrap
            else:
                wrap = triton.jit
            # "Any group changed" over the block: a max-reduction of 0/1 flags. tl.max's own combine function,
            # where Triton has it, is what the interpreter maps to numpy (and, unlike tl.max, it works in the
            # interpreter even when Triton was imported without TRITON_INTERPRET=1); else our own `or`.
            scope["_any"] = getattr(getattr(tl, "standard", None), "_elementwise_max", None) or wrap(scope["_any_or"])
            scope["_add"] = wrap(scope["_add"])  # the combine function of the list's counts (tl.sum is jit'd)
            kernel = wrap(fn) if interpret else wrap(fn, do_not_specialize=["lam_bits", "G"])
            _KERNELS[key] = kernel
    return kernel


def _config(m: int, dtype: torch.dtype, groups: int, interpret: bool) -> tuple[int, int]:
    """(BLOCK groups per program, num_warps)."""
    if interpret:  # one program for small inputs: the interpreter's cost is per operation, not per element
        block = 16
        while block < min(groups, 4096):
            block *= 2
        return block, 1
    return 64, 2  # the fastest of 64/128/256 groups on 2/4/8 warps (docs/benchmarks.md, Kernel design notes)


def _list_programs(device: torch.device, blocks: int) -> int:
    """Programs of the second launch, each taking BLOCK listed groups at a time until the list's end: as many
    as the GPU keeps resident (16 per multiprocessor, about what the registers allow), not one per possible
    BLOCK of the list (up to half the first launch's programs, most of them with nothing to do)."""
    if device.type != "cuda":
        return 2  # the interpreter: two programs, each going round the list
    return min((blocks + 1) // 2, 16 * torch.cuda.get_device_properties(device).multi_processor_count)


def prox_nm_triton(groups: Tensor, lam, n: int, m: int) -> Tensor:
    r"""argmin_w ½‖w − y‖² + lam e_{n+1}(|w|) for every row y of ``groups`` (G, m), out of place.

    Args:
        groups: a CUDA (or, interpreting, CPU) float tensor shaped (G, m); bfloat16/float16/float32 are
            computed in float32, float64 in float64; the result has the input dtype.
        lam: λ ≥ 0 times the scalar step: a Python float or a one-element tensor. A tensor on the groups'
            device is read by the kernel (no host sync); a CPU tensor is read on the host.
        n, m: the pattern, ``0 < n < m ≤ 8``.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m <= MAX_M):
        raise ValueError(f"prox_nm_triton needs integers 0 < n < m <= {MAX_M}, got n={n!r}, m={m!r}")
    return _launch(groups, None, lam, n, m)


def prox_nm_metric_triton(groups: Tensor, step: Tensor, lam, n: int) -> Tensor:
    r"""argmin_w ½ Σ (w − y)²/s + lam e_{n+1}(|w|) for every row y of ``groups`` (G, 4) with the positive
    steps s of ``step`` (G, 4) (a diagonal metric, e.g. Adam's), out of place; the other arguments as for
    [`prox_nm_triton`][torchprox.prox._triton.prox_nm_triton] (``0 < n < 4``)."""
    if not (isinstance(n, int) and 0 < n < 4):
        raise ValueError(f"prox_nm_metric_triton needs an integer 0 < n < 4, got n={n!r}")
    if not isinstance(step, Tensor) or step.shape != groups.shape or step.device != groups.device:
        raise ValueError(
            f"step must be a tensor shaped like groups {tuple(groups.shape)} on {groups.device}, got "
            f"{type(step).__name__} {tuple(getattr(step, 'shape', ()))}"
        )
    return _launch(groups, step, lam, n, 4)


def _launch(groups: Tensor, step: Tensor | None, lam, n: int, m: int) -> Tensor:
    if groups.dim() != 2 or groups.shape[1] != m or groups.dtype not in _FLOATS:
        raise ValueError(f"groups must be a float (G, {m}) tensor, got {groups.dtype} {tuple(groups.shape)}")
    interpret = interpreting()
    if interpret and groups.dtype in (torch.bfloat16, torch.float16):
        # The interpreter rounds float32 → bfloat16 toward zero; compiled kernels round to nearest even, like this.
        return _launch(groups.float(), step, lam, n, m).to(groups.dtype)
    y = groups.detach().contiguous()
    out = torch.empty_like(y)
    count = y.shape[0]
    if count == 0:
        return out
    cdt = torch.float64 if y.dtype == torch.float64 else torch.float32
    if isinstance(lam, Tensor) and lam.device == y.device:
        lam_arg, lam_bits, lam_ptr = lam.detach().reshape(()).to(cdt), 0, True
    else:
        bits = torch.tensor(float(lam), dtype=cdt).view(torch.int64 if cdt == torch.float64 else torch.int32)
        lam_arg, lam_bits, lam_ptr = out, int(bits.item()), False
    block, warps = _config(m, cdt, count, interpret)
    kernel = _kernel(n, m, cdt, interpret, metric=step is not None)
    blocks = (count + block - 1) // block
    args = (y,) if step is None else (y, step.detach().to(cdt).contiguous())
    # The groups outside the convex regime of the blocks where they are at most half (see _generate): listed
    # by the first launch, solved by the second, whose programs go round the list until its end. The list's
    # length stays on the device: no host sync.
    compact = _COMPACT and blocks > 1 and count < 2**31
    listed = torch.empty(blocks * block // 2 if compact else 1, dtype=torch.int32, device=y.device)
    listed_count = torch.zeros(1, dtype=torch.int32, device=y.device) if compact else listed  # (unread)
    launches = [((blocks,), False)]
    if compact:
        launches.append(((_list_programs(y.device, blocks),), True))
    for grid, from_list in launches:
        launch = dict(LAM_PTR=lam_ptr, BLOCK=block, COMPACT=compact, FROM_LIST=from_list)
        if interpret:
            kernel[grid](*args, out, lam_arg, lam_bits, count, listed, listed_count, **launch)
        else:
            with torch.cuda.device(y.device):
                kernel[grid](
                    *args, out, lam_arg, lam_bits, count, listed, listed_count, **launch, num_warps=warps,
                    enable_fp_fusion=_FP_FUSION,
                )
    return out


def _main(argv: list[str] | None = None) -> int:
    """``python -m torchprox.prox._triton --dump N M [--metric] [--float64] [--fast-newton]``: print the generated
    kernel source (what Triton compiles) for pattern N:M; a bad pattern is a one-line error, exit status 2."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m torchprox.prox._triton", description=_main.__doc__)
    parser.add_argument("--dump", nargs=2, type=int, metavar=("N", "M"), required=True,
                        help=f"print the kernel for pattern N:M (0 < N < M <= {MAX_M})")
    parser.add_argument("--metric", action="store_true", help="the diagonal-metric kernel (M = 4)")
    parser.add_argument("--float64", action="store_true", help="the kernel computing in float64 (else float32)")
    parser.add_argument("--fast-newton", action="store_true",
                        help="float32 Newton iterations with approximate division and square root")
    args = parser.parse_args(argv)
    n, m = args.dump
    if not 0 < n < m <= MAX_M:
        print(f"error: --dump {n} {m}: the pattern needs 0 < N < M <= {MAX_M}, e.g. --dump 2 4", file=sys.stderr)
        return 2
    if args.metric and m != 4:
        print(f"error: --metric needs M = 4, got --dump {n} {m}; e.g. --dump 2 4 --metric", file=sys.stderr)
        return 2
    src, _ = _generate(n, m, args.float64, args.metric, args.fast_newton)
    sys.stdout.write(src)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
