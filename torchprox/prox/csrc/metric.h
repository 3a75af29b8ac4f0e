// The diagonal-metric prox for m = 4 (argmin 1/2 sum (x - b)^2 / s + lam e_{n+1}(x)): the general solver of
// a block (metric_block) for the groups that convex_m4 leaves, and the OpenMP loop.
#pragma once
#include "lanes.h"
#include "m4.h"

namespace {

// The diagonal-metric prox of the groups of 4 that convex_m4 leaves (any lam), following nm.py's _prox_metric,
// for the kLanes groups of a block at once (structure of arrays, one lane per group; each lane's iterations
// stop on their own). Scaled by a power of two to max |y| in [0.5, 1) (lam by 2^(e (n-1)); the step is
// unchanged), then the candidates: the top n of a^2/s (ties: lower index) as they are; every support of size
// n+1, where x_i = c_i u_i with c_i = sqrt(s_i) turns the problem into the unweighted one with b_i = a_i / c_i
// and lam prod c_i, solved by monotone Newton on psi (see prox_block; it needs only the support's smallest b,
// ties: the higher index, and the gaps of the others, in any order); every larger support by coordinate descent
// from a. The smallest objective wins (strict <: the earlier candidate on ties). Solves the lanes l < lanes
// (the others are padding). (Lanes rather than one group at a time: the divisions and square roots of one
// group form a dependent chain.)
template <typename T, int N>
void metric_block(const T* y, const T* step, T* out, int lanes, T lam) {
  constexpr int m = 4, K1 = N + 1;
  const T tiny = std::numeric_limits<T>::min();
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
      T gap[K1][kLanes<T>], z[kLanes<T>], active[kLanes<T>];  // gap of the smallest itself: unused (masked below)
      for (int j = 0; j < K1; ++j) LANES {
        const T g = beta[j][l] * beta[j][l] - bk[l] * bk[l];
        gap[j][l] = g > 0 ? g : T(0);
      }
      LANES { z[l] = bk[l]; active[l] = 1; }
      for (int it = 0; it < Iters<T>::newton; ++it) {
        T d[kLanes<T>], prod[kLanes<T>], dlog[kLanes<T>];
        LANES { d[l] = 2 * z[l] - bk[l]; prod[l] = 1; dlog[l] = 0; }
        for (int j = 0; j < K1; ++j) LANES {
          const T rj = std::sqrt(d[l] * d[l] + gap[j][l]);
          const T uj = (beta[j][l] + rj) * T(0.5);
          const T den = rj * uj;
          const T inc = d[l] / (den > tiny ? den : tiny);  // (unconditional: divisions are not if-converted)
          const bool other = low[l] != T(j);
          prod[l] = other ? prod[l] * uj : prod[l];
          dlog[l] = other ? dlog[l] + inc : dlog[l];
        }
        for (int h = 0; h < kLanes<T>; h += 16) {  // the Newton update, in explicit vectors of 16 lanes: GCC does not
          using V = typename Vec16<T>::V;       // if-convert this loop over lanes by itself
          V zv, bkv, lpv, pv, dlv, bmv, av;
          std::memcpy(&zv, z + h, sizeof(V));
          std::memcpy(&bkv, bk + h, sizeof(V));
          std::memcpy(&lpv, lam_p + h, sizeof(V));
          std::memcpy(&pv, prod + h, sizeof(V));
          std::memcpy(&dlv, dlog + h, sizeof(V));
          std::memcpy(&bmv, bmax + h, sizeof(V));
          std::memcpy(&av, active + h, sizeof(V));
          const V zero = V{}, tinyv = V{} + tiny;
          const V psi = lpv * pv + zv - bkv;
          const V dpsi = 1 + lpv * pv * dlv;
          V zn = dpsi > zero ? zv - psi / (dpsi > tinyv ? dpsi : tinyv) : zero;
          zn = zn < zero ? zero : (zn > bkv ? bkv : zn);
          const V dz = zn - zv;
          const V step = dz < zero ? -dz : dz;
          zv = av != zero ? zn : zv;
          av = step > Iters<T>::tol * bmv ? av : zero;
          std::memcpy(z + h, &zv, sizeof(V));
          std::memcpy(active + h, &av, sizeof(V));
        }
        if (count(active) == 0) break;
      }
      for (int j = 0; j < K1; ++j) LANES {
        const T d = 2 * z[l] - bk[l];
        const T u = low[l] == T(j) ? z[l] : (beta[j][l] + std::sqrt(d * d + gap[j][l])) * T(0.5);
        const T xi = u * c[j][l];
        x[on[j]][l] = xi < a[on[j]][l] ? xi : a[on[j]][l];
      }
    } else {  // coordinate descent from a on the support
      T active[kLanes<T>];
      LANES active[l] = 1;
      for (int j = 0; j < k; ++j) LANES x[on[j]][l] = a[on[j]][l];
      for (int sweep = 0; sweep < Iters<T>::sweeps; ++sweep) {
        T change[kLanes<T>];
        LANES change[l] = 0;
        for (int j = k - 1; j >= 0; --j) {
          const int i = on[j];
          T el[N + 1][kLanes<T>];  // e_r(x minus i), r <= n
          LANES el[0][l] = 1;
          for (int r = 1; r <= N; ++r) LANES el[r][l] = 0;
          for (int t = 0; t < m; ++t)
            if (t != i)
              for (int r = N; r >= 1; --r) LANES el[r][l] += x[t][l] * el[r - 1][l];
          LANES {
            T v = a[i][l] - s[i][l] * lam_g[l] * el[N][l];
            v = v > 0 ? v : T(0);
            const T dv = std::fabs(v - x[i][l]);
            change[l] = dv > change[l] ? dv : change[l];  // (an inactive lane stays inactive whatever it says)
            x[i][l] = active[l] != 0 ? v : x[i][l];
          }
        }
        LANES active[l] *= change[l] > Iters<T>::tol ? T(1) : T(0);
        if (count(active) == 0) break;
      }
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
