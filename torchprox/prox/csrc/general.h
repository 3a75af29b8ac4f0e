// The scalar-step prox for any m <= kMaxM: one block of kLanes groups (prox_block: the convex case, else the
// sort, the candidates and the descents handed to descent.h's stores) and the OpenMP loop over blocks.
#pragma once
#include "descent.h"
#include "lanes.h"
#include "m4.h"
#include "newton.h"

namespace {

// The convex case (see prox_block) of a full block whose values are all in range, solved unscaled, with the
// scaled path's tolerance taken relative to each group's largest value: the regime of mask learning.
// Returns false, having written nothing, unless every lane of the block is convex. A function of its own so
// that the compiler vectorizes it on its own terms, whatever it makes of the much larger general path.
template <typename T, int NT, int MT>
__attribute__((noinline)) bool convex_unscaled(const T (*b)[kLanes<T>], const T* amax, const T* y, T* out, int n_rt,
                                               int m_rt, T lam) {
  const int n = NT ? NT : n_rt, m = MT ? MT : m_rt;
  T x[kMaxM][kLanes<T>], rho[kLanes<T>], convex[kLanes<T>], lam_l[kLanes<T>], tol[kLanes<T>];
  esym(b, m, n - 1, -1, rho);
  LANES {
    convex[l] = lam * T(m - n) * rho[l] <= T(0.5) ? T(1) : T(0);
    lam_l[l] = lam;
    tol[l] = Iters<T>::tol * amax[l];
  }
  if (count(convex) != kLanes<T>) return false;
  for (int i = 0; i < m; ++i) LANES x[i][l] = b[i][l];
  coordinate_descent(x, b, m, n, lam_l, tol);
  write_block<T>(y, out, m, kLanes<T>, x, b, nullptr, nullptr, nullptr);
  return true;
}

// One block of kLanes groups (the last one padded with zeros by the caller).
template <typename T, int NT, int MT>
void prox_block(const T* y, T* out, int lanes, int n_rt, int m_rt, T lam, Descents<T, NT, MT>& engine,
                const int64_t* rows, int64_t g0) {
  const int n = NT ? NT : n_rt, m = MT ? MT : m_rt;
  T b[kMaxM][kLanes<T>], best[kMaxM][kLanes<T>], cand[kMaxM][kLanes<T>], grown[kMaxM][kLanes<T>];
  int idx[kMaxM][kLanes<T>];
  T scale[kLanes<T>], lam_g[kLanes<T>], best_f[kLanes<T>], f[kLanes<T>], tol_g[kLanes<T>];
  T finite[kLanes<T>];  // 1 or 0 (a T, not a bool, so that lane loops vectorize)
  // |y| in group order, and the per-group max (a NaN or an infinity anywhere makes the group non-finite).
  if (lanes == kLanes<T>) {  // lanes outer: m interleaved loads the compiler vectorizes as a group (no gathers)
    LANES for (int i = 0; i < m; ++i) b[i][l] = std::fabs(y[l * m + i]);
  } else {
    for (int i = 0; i < m; ++i) LANES b[i][l] = l < lanes ? std::fabs(y[l * m + i]) : T(0);
  }
  T amax[kLanes<T>], in_range[kLanes<T>];
  const int L = Range<T>::bits / (n + 1);
  const T lo = pow2<T>(-L), hi = pow2<T>(L);
  LANES { amax[l] = 0; finite[l] = 1; in_range[l] = 1; }
  for (int i = 0; i < m; ++i) LANES {
    const T v = b[i][l];
    amax[l] = v > amax[l] ? v : amax[l];
    finite[l] = v <= std::numeric_limits<T>::max() ? finite[l] : T(0);
    in_range[l] = v == 0 || (v >= lo && v <= hi) ? in_range[l] : T(0);  // NaN and inf fail too
  }
  // For m = 4 (n < 4) convex_m4 has already served every group that qualifies for its convex path, and this
  // block holds the groups it left: the general path solves them, each on its own (the convex cases below
  // would serve a block only when all of its lanes qualify, so a group's path would depend on its neighbours).
  constexpr bool tried_m4 = MT == 4 && NT < 4;
  if (!tried_m4 && lanes == kLanes<T> && count(in_range) == kLanes<T> &&
      convex_unscaled<T, NT, MT>(b, amax, y, out, n, m, lam))
    return;
  LANES tol_g[l] = Iters<T>::tol;
  T half_up[kLanes<T>], half_down[kLanes<T>], inv_scale[kLanes<T>];
  lane_scales(amax, finite, n, lam, half_up, scale, half_down, inv_scale, lam_g);

  // Convex case. The Hessian of the objective is I + lam H(x) with H_ij = e_{n-1}(x minus i, j) >= 0 off the
  // diagonal, and the minimizer lies in the box 0 <= x <= b, where the off-diagonal row sums are at most
  // lam sum_{j != i} e_{n-1}(b minus i, j) = lam (m - n) e_{n-1}(b minus i) <= rho = lam (m - n) e_{n-1}(b).
  // With rho <= 1/2 the objective is strongly convex on the box, so its unique minimizer (over every
  // support at once) is the limit of projected coordinate descent from b: no sort and no candidates. When
  // every lane of the block qualifies (small lam, the regime of mask learning) that is the whole solve.
  if (!tried_m4) {
    T rho[kLanes<T>];
    for (int i = 0; i < m; ++i) LANES cand[i][l] = finite[l] != 0 ? b[i][l] * half_down[l] * inv_scale[l] : T(0);
    esym(cand, m, n - 1, -1, rho);
    T convex[kLanes<T>];
    LANES convex[l] = lam_g[l] * T(m - n) * rho[l] <= T(0.5) ? T(1) : T(0);
    if (count(convex) == kLanes<T>) {
      for (int i = 0; i < m; ++i) LANES best[i][l] = cand[i][l];
      coordinate_descent(best, cand, m, n, lam_g, tol_g);
      write_block<T>(y, out, m, lanes, best, cand, scale, half_up, finite);
      return;
    }
  }
  // General case. Sort descending, ties by lower index (odd-even transposition network: m rounds), on the
  // unscaled values (scaling down could merge distinct subnormals into ties).
  for (int i = 0; i < m; ++i) LANES idx[i][l] = i;
  for (int round = 0; round < m; ++round)
    for (int i = round & 1; i + 1 < m; i += 2) LANES {
      const bool swap = b[i + 1][l] > b[i][l] || (b[i + 1][l] == b[i][l] && idx[i + 1][l] < idx[i][l]);
      const T bi = b[i][l], bj = b[i + 1][l];
      const int ii = idx[i][l], ij = idx[i + 1][l];
      b[i][l] = swap ? bj : bi; b[i + 1][l] = swap ? bi : bj;
      idx[i][l] = swap ? ij : ii; idx[i + 1][l] = swap ? ii : ij;
    }
  for (int i = 0; i < m; ++i) LANES b[i][l] = finite[l] != 0 ? b[i][l] * half_down[l] * inv_scale[l] : T(0);

  // Candidate 1: the top n as they are (R = 0).
  LANES best_f[l] = 0;
  for (int i = 0; i < m; ++i) LANES {
    best[i][l] = i < n ? b[i][l] : T(0);
    best_f[l] += i < n ? T(0) : T(0.5) * b[i][l] * b[i][l];
  }
  // Candidate 2: the top n+1, exactly (newton.h; the smallest of them is b_n, the last).
  const int k1 = n + 1;
  newton_support<T, NT ? NT + 1 : 0, NewtonStop::Absolute>(b, k1, b[k1 - 1], nullptr, lam_g, nullptr, cand);
  for (int i = k1; i < m; ++i) LANES cand[i][l] = 0;
  objective(cand, b, m, n, lam_g, f);
  keep_best(best, best_f, cand, f, m);
  std::memcpy(grown, cand, sizeof(T) * kLanes<T> * m);
  // Candidates 3..: the top k > n+1, by coordinate descent from x = b and from the previous solution, for
  // the k whose support can hold a local minimizer. At a local minimizer x with support the top k, every
  // x_i = b_i - lam e_n(x minus i) with lam e_n(x minus i) <= lam e_n(x minus (k-1)) < b_{k-1}, so
  // x_i > d_i = b_i - b_{k-1}; then (a) lam e_n(d_0..d_{k-2}) < lam e_n(x_0..x_{k-2}) = b_{k-1} - x_{k-1}
  // < b_{k-1}, and (b) the 2x2 principal minor of the Hessian at the two smallest coordinates is >= 0:
  // lam e_{n-1}(d_0..d_{k-3}) <= 1. Both only get harder to meet as k grows (every d_i grows, and b_{k-1}
  // shrinks), so the first k where no lane of the block can meet them ends the enumeration.
  int kmax = m;
  T possible[kMaxM + 1][kLanes<T>];
  for (int k = n + 2; k <= m; ++k) {
    T d[kMaxM][kLanes<T>], e1[kLanes<T>], en[kLanes<T>];
    for (int j = 0; j < k - 1; ++j) LANES { const T dj = b[j][l] - b[k - 1][l]; d[j][l] = dj > 0 ? dj : T(0); }
    esym(d, k - 2, n - 1, -1, e1);
    esym(d, k - 1, n, -1, en);
    const T margin = T(1) + T(1e-4);  // rounding in the bounds never rules out a candidate
    LANES possible[k][l] = lam_g[l] * e1[l] <= margin && lam_g[l] * en[l] <= b[k - 1][l] * margin ? T(1) : T(0);
    if (count(possible[k]) == 0) { kmax = k - 1; break; }
  }
  if (m > 4 || tried_m4) {
    // The descents run in the engine (m > 4, see DescentEngine) or in packed blocks (m = 4, PackedDescents),
    // each group's on the supports n+2..its own last possible k; the groups that need none are written now.
    // For m = 4 a handed-on group's row keeps y's values until its packed block runs.
    if constexpr (tried_m4) engine.make_room();
    for (int l = 0; l < lanes; ++l) {
      int last = n + 1;
      while (last < kmax && possible[last + 1][l] != 0) ++last;
      if (finite[l] != 0 && last > n + 1) {
        const int64_t row = rows != nullptr ? rows[l] : g0 + l;
        engine.push(l, b, best, best_f, grown, lam_g, scale, half_up, idx, last, row);
        if (tried_m4 && out != y) std::memcpy(out + l * m, y + l * m, sizeof(T) * m);
      } else {
        write_group(y + l * m, out + l * m, m, l, best, b, idx, scale[l], half_up[l], finite[l] != 0);
      }
    }
    return;
  }
  // For m < 4 (one such support at most, of at most 3 coordinates) the descents run here, on the block.
  descend_supports(best, best_f, grown, b, lam_g, n, m, kmax, possible);
  for (int l = 0; l < lanes; ++l)
    write_group(y + l * m, out + l * m, m, l, best, b, idx, scale[l], half_up[l], finite[l] != 0);
}

// out = y (nothing to do when out is y itself).
template <typename T>
void copy_groups(const T* y, T* out, int64_t count) {
  if (out != y) std::memcpy(out, y, count * sizeof(T));
}

template <typename T, int NT, int MT>
void prox_nm_loop(const T* y, T* out, int64_t groups, int n, int m, T lam, int threads) {
  const int64_t blocks = (groups + kLanes<T> - 1) / kLanes<T>;
#pragma omp parallel num_threads(threads)
  {
    Descents<T, NT, MT> engine(y, out, n, m);
    if constexpr (MT == 4 && NT < 4) {
      convex_then_packed<T, NT>(y, nullptr, out, groups, lam,
                                [&](const T* py, const T*, T* po, int count, const int64_t* rows, int64_t g0) {
                                  prox_block<T, NT, MT>(py, po, count, n, m, lam, engine, rows, g0);
                                });
      while (engine.filled > 0) engine.run();
    } else {
      int64_t lo, hi;
      thread_blocks(blocks, lo, hi);
      for (int64_t blk = lo; blk < hi; ++blk) {
        const int64_t g0 = blk * kLanes<T>;
        const int lanes = static_cast<int>(groups - g0 < kLanes<T> ? groups - g0 : kLanes<T>);
        prox_block<T, NT, MT>(y + g0 * m, out + g0 * m, lanes, n, m, lam, engine, nullptr, g0);
        engine.run(false);
      }
      engine.run(true);
    }
  }
}

template <typename T>
void prox_nm(const T* y, T* out, int64_t groups, int n, int m, double lam_d, int threads) {
  // A lambda beyond the largest T acts like the largest T (the scaled path saturates the same way).
  const T lam = lam_d < double(std::numeric_limits<T>::max()) ? T(lam_d) : std::numeric_limits<T>::max();
  if (lam_d == 0) return copy_groups(y, out, groups * m);  // lam s = 0: the identity, bit for bit
  if (n == 2 && m == 4) return prox_nm_loop<T, 2, 4>(y, out, groups, n, m, lam, threads);
  if (n == 1 && m == 4) return prox_nm_loop<T, 1, 4>(y, out, groups, n, m, lam, threads);
  if (n == 3 && m == 4) return prox_nm_loop<T, 3, 4>(y, out, groups, n, m, lam, threads);
  if (n == 1 && m == 2) return prox_nm_loop<T, 1, 2>(y, out, groups, n, m, lam, threads);
  if (n == 4 && m == 8) return prox_nm_loop<T, 4, 8>(y, out, groups, n, m, lam, threads);
  prox_nm_loop<T, 0, 0>(y, out, groups, n, m, lam, threads);
}

}  // namespace
