// The m = 4 paths of the prox (scalar step and diagonal metric): the convex case solved in place with
// explicit vectors (convex_m4), and the per-thread split of a block's groups between it and a general solver
// (convex_then_packed).
#pragma once
#include "lanes.h"

namespace {

// The convex case for m = 4 on groups in place, with explicit vectors (GCC/Clang vector extensions) of 16
// values = 4 whole groups: the other three values of each group are its in-group rotations r1, r2, r3 (one
// lane shuffle each), so e_n(x minus i) is formed with no transpose. The Jacobi iteration
// x <- T(x) = max(0, b - lam e_n(x minus i)) from x = b has the same fixed point as the coordinate descent
// above, keeps x in the box [0, b], and is a contraction in the max norm with factor
// q = lam max_i sum_{j != i} e_{n-1}(b minus i, j) = lam (m - n) max_i e_{n-1}(b minus i) when q <= 1/2 (which
// also makes the objective strongly convex on the box, as in prox_block). So |x_k - x*| <= q / (1 - q)
// |x_k - x_{k-1}|: each group stops on its own as soon as that bound
// is at most tol * max_i b_i (the scaled path's tolerance), and never depends on its neighbours.
// With a per-entry step s (a diagonal metric: argmin 1/2 sum (x - b)^2 / s + lam e_{n+1}(x)) the same holds with
// lam s_i in row i: T(x)_i = max(0, b_i - lam s_i e_n(x minus i)), q = max_i lam s_i (m - n) e_{n-1}(b minus i).
// A contraction of the box into itself has one fixed point there, and every KKT point of the problem is a
// fixed point in the box (the global minimizer among them), so T's limit is the global minimizer.
template <typename T, int N>
__attribute__((noinline)) int convex_m4(const T* y, const T* step, T* out, T lam, uint8_t* qualify, int min_count) {
  using V = typename Vec16<T>::V;
  using I = typename Vec16<T>::I;
  constexpr int kVecs = kLanes<T> * 4 / 16;  // a block of kLanes groups
  const I sign = (I)(-V{});                // -0.0: the sign bit
  const int L = Range<T>::bits / (N + 1);
  const V lo = V{} + pow2<T>(-L), hi = V{} + pow2<T>(L), zero = V{};
  V yv[kVecs], b[kVecs], x[kVecs], tol[kVecs], q[kVecs], lam_s[kVecs];
  I active[kVecs], ok_v[kVecs];
  for (int v = 0; v < kVecs; ++v) {
    I ok = I{} - 1, still = I{};
    std::memcpy(&yv[v], y + 16 * v, sizeof(V));
    b[v] = (V)((I)yv[v] & ~sign);
    lam_s[v] = zero + lam;
    if (step != nullptr) {
      V sv;
      std::memcpy(&sv, step + 16 * v, sizeof(V));
      ok &= (sv > zero) & (sv <= std::numeric_limits<T>::max());  // a positive, finite step (NaN fails)
      still = sv == zero;
      lam_s[v] = lam * sv;
    }
    // q = lam (m - n) max_i e_{n-1}(b minus i): the row sums of the Hessian's off-diagonal part, bounded on
    // the box [0, b]. q <= 1/2 makes the objective strongly convex there and T a contraction with factor q.
    const V r1 = TP_ROT(b[v], 1), r2 = TP_ROT(b[v], 2), r3 = TP_ROT(b[v], 3);
    V e = zero + T(1);  // e_{N-1} of the other three
    if (N == 2) e = r1 + r2 + r3;
    if (N == 3) e = r1 * (r2 + r3) + r2 * r3;
    V qi = lam_s[v] * T(4 - N) * e;
    qi = qi > TP_ROT(qi, 2) ? qi : TP_ROT(qi, 2);
    q[v] = qi > TP_ROT(qi, 1) ? qi : TP_ROT(qi, 1);
    V amax = b[v] > TP_ROT(b[v], 2) ? b[v] : TP_ROT(b[v], 2);
    amax = amax > TP_ROT(amax, 1) ? amax : TP_ROT(amax, 1);
    tol[v] = Iters<T>::tol * amax * (T(1) - q[v]);  // stop when q |x_k - x_{k-1}| <= tol (1 - q)
    ok &= (b[v] == zero) | ((b[v] >= lo) & (b[v] <= hi));  // NaN and inf fail
    ok &= q[v] <= T(0.5);
    x[v] = b[v];
    ok_v[v] = ok & TP_ROT(ok, 1) & TP_ROT(ok, 2) & TP_ROT(ok, 3);  // per group, in all its lanes
    active[v] = ok_v[v];
    // A group with a zero step is not moved (x stays b: written back as y, bit for bit): it qualifies here,
    // inactive, instead of going to the general solver.
    ok_v[v] |= still | TP_ROT(still, 1) | TP_ROT(still, 2) | TP_ROT(still, 3);
  }
  // Returns how many groups qualify. Unless all do, which ones is written to qualify, and unless at least
  // min_count do, nothing else: the caller's path serves the block. Otherwise the qualifying groups are solved
  // and every group written (the others unchanged: x = b there).
  I bad = I{};
  for (int v = 0; v < kVecs; ++v) bad |= ~ok_v[v];
  int qualifying = kLanes<T>;
  if (any_lane(bad)) {
    qualifying = 0;
    for (int v = 0; v < kVecs; ++v)
      for (int g = 0; g < 4; ++g) qualifying += qualify[4 * v + g] = ok_v[v][4 * g] != 0;
    if (qualifying < min_count || qualifying == 0) return qualifying;
  }
  for (int sweep = 0; sweep < Iters<T>::sweeps; ++sweep) {
    I any = I{};
    for (int v = 0; v < kVecs; ++v) {
      const V r1 = TP_ROT(x[v], 1), r2 = TP_ROT(x[v], 2), r3 = TP_ROT(x[v], 3);
      const V c = N == 1 ? r1 + r2 + r3 : N == 2 ? r1 * (r2 + r3) + r2 * r3 : r1 * r2 * r3;
      V nv = b[v] - lam_s[v] * c;
      nv = nv > zero ? nv : zero;
      V d = nv - x[v];
      d = (V)((I)d & ~sign);
      d = d > TP_ROT(d, 2) ? d : TP_ROT(d, 2);
      d = d > TP_ROT(d, 1) ? d : TP_ROT(d, 1);  // the group's largest move, in all its lanes
      x[v] = active[v] ? nv : x[v];
      active[v] &= d * q[v] > tol[v];
      any |= active[v];
    }
    if (!any_lane(any)) break;
  }
  for (int v = 0; v < kVecs; ++v) {  // `written` (lanes.h) in vectors: unscaled, every group finite
    const V w = (V)(((I)x[v] & ~sign) | ((I)yv[v] & sign));
    const V o = x[v] == b[v] ? yv[v] : w;
    std::memcpy(out + 16 * v, &o, sizeof(V));
  }
  return qualifying;
}

// For m = 4, the calling OpenMP thread's share of the groups (its contiguous range of blocks). A block whose
// groups all qualify for convex_m4's path is solved in place by it, one where none does by solve(y, s, out,
// lanes, rows, g0) (the general path; lane l's group is row rows[l] of the whole y, or row g0 + l when rows is
// null). In a block with groups on both sides (near the edge of the convex regime, nearly every block; solved
// whole, each such block would run the general solver on all of its lanes) the groups that qualify are solved
// in place by convex_m4 when they are at least half of the block, else packed into blocks for it, and the
// others packed into blocks for solve. Partial blocks are filled with zero groups and unit steps, which need
// not qualify (for n = 1, q = lam s (m - 1) whatever y): only the block's own groups are counted. Which path a
// group takes depends on the group alone, and neither path's lanes depend on each other, so a group's result
// depends neither on the order of the groups nor on the thread count. step may be null (ps is then null too);
// out may be y itself (a group is read before it is written).
template <typename T, int N, typename Solve>
void convex_then_packed(const T* y, const T* step, T* out, int64_t groups, T lam, Solve&& solve) {
  constexpr int K = kLanes<T>;
  struct Packed {
    T y[K * 4], s[K * 4], o[K * 4];
    int64_t where[K];
    int count = 0;
  } convex, general, tail;
  uint8_t qualify[K];
  auto flush = [&](Packed& p) {
    if (&p == &convex) {  // (its own flags: a flush inside the loop below must not touch the block's qualify)
      uint8_t packed_qualify[K];
      std::fill(p.y + p.count * 4, p.y + K * 4, T(0));
      std::fill(p.s + p.count * 4, p.s + K * 4, T(1));
      convex_m4<T, N>(p.y, step != nullptr ? p.s : nullptr, p.o, lam, packed_qualify, 0);
    } else {
      solve(p.y, step != nullptr ? p.s : nullptr, p.o, p.count, p.where, 0);
    }
    for (int l = 0; l < p.count; ++l) std::memcpy(out + p.where[l] * 4, p.o + l * 4, 4 * sizeof(T));
    p.count = 0;
  };
  int64_t lo, hi;
  thread_blocks((groups + K - 1) / K, lo, hi);
  for (int64_t blk = lo; blk < hi; ++blk) {
    const int64_t g0 = blk * K;
    const int lanes = static_cast<int>(groups - g0 < K ? groups - g0 : K);
    const T *yb = y + g0 * 4, *sb = step != nullptr ? step + g0 * 4 : nullptr;
    T* ob = out + g0 * 4;
    if (lanes < K) {  // the last block, filled with zero groups and unit steps
      std::fill(tail.y, tail.y + K * 4, T(0));
      std::fill(tail.s, tail.s + K * 4, T(1));
      std::memcpy(tail.y, yb, lanes * 4 * sizeof(T));
      if (step != nullptr) std::memcpy(tail.s, sb, lanes * 4 * sizeof(T));
      yb = tail.y;
      sb = step != nullptr ? tail.s : nullptr;
      ob = tail.o;
    }
    const int total = convex_m4<T, N>(yb, sb, ob, lam, qualify, K / 2);
    const bool solved_convex = total >= K / 2;  // convex_m4 has solved the qualifying lanes and written the block
    int qualifying = lanes;  // of the block's groups (not its padding)
    if (total < K) {
      qualifying = 0;
      for (int l = 0; l < lanes; ++l) qualifying += qualify[l];
    }
    if (qualifying == 0) solve(yb, sb, ob, lanes, nullptr, g0);
    if (qualifying == 0 || (qualifying == lanes && solved_convex)) {
      if (lanes < K) std::memcpy(out + g0 * 4, tail.o, lanes * 4 * sizeof(T));
      continue;
    }
    for (int l = 0; l < lanes; ++l) {
      if (qualify[l] && solved_convex) {
        if (lanes < K) std::memcpy(out + (g0 + l) * 4, tail.o + l * 4, 4 * sizeof(T));
        continue;
      }
      Packed& p = qualify[l] ? convex : general;
      std::memcpy(p.y + p.count * 4, yb + l * 4, 4 * sizeof(T));
      if (step != nullptr) std::memcpy(p.s + p.count * 4, sb + l * 4, 4 * sizeof(T));
      p.where[p.count++] = g0 + l;
      if (p.count == K) flush(p);
    }
  }
  if (convex.count > 0) flush(convex);
  if (general.count > 0) flush(general);
}

}  // namespace
