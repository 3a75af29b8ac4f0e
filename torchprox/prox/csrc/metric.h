// The diagonal-metric prox for m = 4 (argmin 1/2 sum (x - b)^2 / s + lam e_{n+1}(x)): the general solver of
// a block (metric_block) for the groups that convex_m4 leaves, and the OpenMP loop.
#pragma once
#include "descent.h"
#include "lanes.h"
#include "m4.h"
#include "newton.h"

namespace {

// The diagonal-metric prox of the groups of 4 that convex_m4 leaves (any lam), following nm.py's _prox_metric,
// for the kLanes groups of a block at once (structure of arrays, one lane per group; each lane's iterations
// stop on their own). Scaled by a power of two to max |y| in [0.5, 1) (lam by 2^(e (n-1)); the step is
// unchanged), then the candidates: the top n of a^2/s (ties: lower index) as they are; every support of size
// n+1, where x_i = c_i u_i with c_i = sqrt(s_i) turns the problem into the unweighted one with b_i = a_i / c_i
// and lam prod c_i, solved by newton.h's monotone Newton (it needs only the support's smallest b, ties: the
// higher index, and the gaps of the others, in any order); every larger support by descent.h's coordinate descent
// from a, with the steps s, on the support gathered into its first k coordinates. The smallest objective wins (strict <: the earlier candidate on ties). Solves the lanes l < lanes
// (the others are padding). (Lanes rather than one group at a time: the divisions and square roots of one
// group form a dependent chain.)
template <typename T, int N>
void metric_block(const T* y, const T* step, T* out, int lanes, T lam) {
  constexpr int m = 4, K1 = N + 1;
  T a[m][kLanes<T>], s[m][kLanes<T>], amax[kLanes<T>], finite[kLanes<T>], lam_g[kLanes<T>];
  T up1[kLanes<T>], up2[kLanes<T>];
  T dn1[kLanes<T>], dn2[kLanes<T>];
  for (int i = 0; i < m; ++i) LANES {
    a[i][l] = l < lanes ? std::fabs(y[l * m + i]) : T(0);
    s[i][l] = l < lanes ? step[l * m + i] : T(1);
  }
  LANES { amax[l] = 0; finite[l] = 1; }
  for (int i = 0; i < m; ++i) LANES {
    amax[l] = a[i][l] > amax[l] ? a[i][l] : amax[l];
    finite[l] = a[i][l] <= std::numeric_limits<T>::max() ? finite[l] : T(0);
    finite[l] = s[i][l] != 0 ? finite[l] : T(0);  // a group with a zero step is not moved either
  }
  for (int i = 0; i < m; ++i) LANES s[i][l] = finite[l] != 0 ? s[i][l] : T(1);  // (no 0/0 in unused lanes)
  lane_scales(amax, finite, N, lam, up1, up2, dn1, dn2, lam_g);
  for (int i = 0; i < m; ++i) LANES a[i][l] = finite[l] != 0 ? a[i][l] * dn1[l] * dn2[l] : T(0);
  T best[m][kLanes<T>], best_f[kLanes<T>], x[m][kLanes<T>], f[kLanes<T>];
  {  // the top n of a^2 / s (ties: lower index), as they are
    T score[m][kLanes<T>], rank[m][kLanes<T>];
    for (int i = 0; i < m; ++i) LANES { score[i][l] = a[i][l] * a[i][l] / s[i][l]; rank[i][l] = 0; }
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < m; ++j)
        if (j != i)
          LANES rank[i][l] += score[j][l] > score[i][l] || (score[j][l] == score[i][l] && j < i) ? T(1) : T(0);
    for (int i = 0; i < m; ++i) LANES best[i][l] = rank[i][l] < N ? a[i][l] : T(0);
    LANES best_f[l] = 0;
    for (int r = N; r < m; ++r)  // (summed by rank, as the scalar solver does)
      for (int i = 0; i < m; ++i) LANES best_f[l] += rank[i][l] == r ? T(0.5) * score[i][l] : T(0);
  }
  auto objective = [&]() {
    T el[m + 1][kLanes<T>], quad[kLanes<T>];
    LANES { quad[l] = 0; el[0][l] = 1; }
    for (int r = 1; r <= N + 1; ++r) LANES el[r][l] = 0;
    for (int i = 0; i < m; ++i) {
      LANES quad[l] += (x[i][l] - a[i][l]) * (x[i][l] - a[i][l]) / s[i][l];
      for (int r = N + 1; r >= 1; --r) LANES el[r][l] += x[i][l] * el[r - 1][l];
    }
    LANES f[l] = T(0.5) * quad[l] + lam_g[l] * el[N + 1][l];
    for (int i = 0; i < m; ++i) LANES best[i][l] = f[l] < best_f[l] ? x[i][l] : best[i][l];
    LANES best_f[l] = f[l] < best_f[l] ? f[l] : best_f[l];
  };
  for (int k = K1; k <= m; ++k)  // sparser supports first: they win ties
  for (int support = 1; support < (1 << m); ++support) {
    if (__builtin_popcount(support) != k) continue;
    int on[m], len = 0;
    for (int i = 0; i < m; ++i)
      if (support >> i & 1) on[len++] = i;
    for (int i = 0; i < m; ++i) LANES x[i][l] = 0;
    if (k == K1) {
      T c[K1][kLanes<T>], beta[K1][kLanes<T>], lam_p[kLanes<T>], bk[kLanes<T>], bmax[kLanes<T>], low[kLanes<T>];
      LANES { lam_p[l] = lam_g[l]; low[l] = 0; }
      for (int j = 0; j < K1; ++j) LANES {
        c[j][l] = std::sqrt(s[on[j]][l]);
        beta[j][l] = a[on[j]][l] / c[j][l];
        lam_p[l] *= c[j][l];
      }
      LANES { bk[l] = beta[0][l]; bmax[l] = beta[0][l]; }
      for (int j = 1; j < K1; ++j) {
        LANES low[l] += (T(j) - low[l]) * T(beta[j][l] <= bk[l]);  // (exact: small integers)
        LANES bk[l] = beta[j][l] <= bk[l] ? beta[j][l] : bk[l];
        LANES bmax[l] = beta[j][l] > bmax[l] ? beta[j][l] : bmax[l];
      }
      T u[K1][kLanes<T>];
      newton_support<T, K1, NewtonStop::Relative>(beta, K1, bk, low, lam_p, bmax, u);
      for (int j = 0; j < K1; ++j) LANES {
        const T xi = u[j][l] * c[j][l];
        x[on[j]][l] = xi < a[on[j]][l] ? xi : a[on[j]][l];
      }
    } else {  // coordinate descent from a on the support, gathered into its first k coordinates (descent.h)
      T xs[m][kLanes<T>], as[m][kLanes<T>], ss[m][kLanes<T>], tol[kLanes<T>];
      for (int j = 0; j < k; ++j) LANES { xs[j][l] = as[j][l] = a[on[j]][l]; ss[j][l] = s[on[j]][l]; }
      LANES tol[l] = Iters<T>::tol;
      coordinate_descent<T>(xs, as, k, N, lam_g, tol, nullptr, ss);
      for (int j = 0; j < k; ++j) LANES x[on[j]][l] = xs[j][l];
    }
    objective();
  }
  write_block<T>(y, out, m, lanes, best, a, up1, up2, finite);  // (a non-finite group, or a zero step: unchanged)
}

// The diagonal-metric prox for m = 4: convex_m4 where a group qualifies, the general solver above for the others.
template <typename T, int N>
void prox_nm_metric_loop(const T* y, const T* step, T* out, int64_t groups, T lam, int threads) {
#pragma omp parallel num_threads(threads)
  convex_then_packed<T, N>(y, step, out, groups, lam,
                          [&](const T* py, const T* ps, T* po, int count, const int64_t*, int64_t) {
                            metric_block<T, N>(py, ps, po, count, lam);
                          });
}

template <typename T>
void prox_nm_metric(const T* y, const T* step, T* out, int64_t groups, int n, double lam_d, int threads) {
  const T lam = lam_d < double(std::numeric_limits<T>::max()) ? T(lam_d) : std::numeric_limits<T>::max();
  if (lam_d == 0) return copy_groups(y, out, groups * 4);  // lam = 0: the identity, bit for bit
  if (n == 1) return prox_nm_metric_loop<T, 1>(y, step, out, groups, lam, threads);
  if (n == 2) return prox_nm_metric_loop<T, 2>(y, step, out, groups, lam, threads);
  prox_nm_metric_loop<T, 3>(y, step, out, groups, lam, threads);
}

}  // namespace
