// Monotone Newton for the candidate on a support of n + 1 values, shared by the scalar-step path (general.h, the
// top n + 1) and the diagonal-metric path (metric.h, every support of n + 1, made unweighted there).
// Part of the single translation unit nm_cpu.cpp.
#pragma once
#include "lanes.h"

namespace {

// The interior minimizer u of 1/2 sum (u_i - b_i)^2 + lam prod u_i over the k1 = n + 1 values b_0..b_{k1-1} of a
// support, for every lane (nm.py's _solve_product): parametrised by z = u_low, the smallest value's coordinate
// (bk = b_low), u_i(z) = (b_i + sqrt((2z - bk)^2 + b_i^2 - bk^2)) / 2 for the others, and z the largest root of
// the convex psi(z) = lam prod_{i != low} u_i(z) + z - bk, reached by Newton from z = bk (monotone: no
// overshoot); no root drives z to 0, the boundary, which the n-sparse candidate covers. low[l] is the index of
// the smallest value in lane l, or, with LowLast, k1 - 1 in every lane (low is then unused). Each lane stops on
// its own once a step moves z by at most tol[l], or at the cap. Writes u[0..k1) (u[low] = z).
template <typename T, bool LowLast>
INLINE void newton_support(const T (*beta)[kLanes<T>], int k1, const T* bk, const T* low, const T* lam, const T* tol,
                           T (*u)[kLanes<T>]) {
  const T tiny = std::numeric_limits<T>::min();
  const int others = LowLast ? k1 - 1 : k1;  // the values iterated over (with LowLast, all but the last)
  T gap[kMaxM][kLanes<T>], z[kLanes<T>], active[kLanes<T>];  // (without LowLast, gap[low] is unused)
  for (int j = 0; j < others; ++j) LANES {
    const T g = beta[j][l] * beta[j][l] - bk[l] * bk[l];
    gap[j][l] = g > 0 ? g : T(0);
  }
  LANES { z[l] = bk[l]; active[l] = 1; }  // active: 1 until the lane converges, never influenced by the others
  for (int it = 0; it < Iters<T>::newton; ++it) {
    T d[kLanes<T>], prod[kLanes<T>], dlog[kLanes<T>];
    LANES { d[l] = 2 * z[l] - bk[l]; prod[l] = 1; dlog[l] = 0; }
    for (int j = 0; j < others; ++j) LANES {
      const T rj = std::sqrt(d[l] * d[l] + gap[j][l]);
      const T uj = (beta[j][l] + rj) * T(0.5);
      const T den = rj * uj;
      const T inc = d[l] / (den > tiny ? den : tiny);  // (unconditional: divisions are not if-converted)
      const bool other = LowLast || low[l] != T(j);
      prod[l] = other ? prod[l] * uj : prod[l];
      dlog[l] = other ? dlog[l] + inc : dlog[l];
    }
    for (int h = 0; h < kLanes<T>; h += 16) {  // the Newton update, in explicit vectors of 16 lanes: GCC does not
      using V = typename Vec16<T>::V;          // if-convert this loop over lanes by itself
      V zv, bkv, lv, pv, dlv, tv, av;
      std::memcpy(&zv, z + h, sizeof(V));
      std::memcpy(&bkv, bk + h, sizeof(V));
      std::memcpy(&lv, lam + h, sizeof(V));
      std::memcpy(&pv, prod + h, sizeof(V));
      std::memcpy(&dlv, dlog + h, sizeof(V));
      std::memcpy(&tv, tol + h, sizeof(V));
      std::memcpy(&av, active + h, sizeof(V));
      const V zero = V{}, tinyv = V{} + tiny;
      const V psi = lv * pv + zv - bkv;
      const V dpsi = 1 + lv * pv * dlv;
      V zn = dpsi > zero ? zv - psi / (dpsi > tinyv ? dpsi : tinyv) : zero;
      zn = zn < zero ? zero : (zn > bkv ? bkv : zn);
      const V dz = zn - zv;
      const V step = dz < zero ? -dz : dz;
      zv = av != zero ? zn : zv;
      av = step > tv ? av : zero;
      std::memcpy(z + h, &zv, sizeof(V));
      std::memcpy(active + h, &av, sizeof(V));
    }
    if (count(active) == 0) break;
  }
  for (int j = 0; j < k1; ++j) LANES {
    const T d = 2 * z[l] - bk[l];
    const bool is_low = LowLast ? j == k1 - 1 : low[l] == T(j);
    u[j][l] = is_low ? z[l] : (beta[j][l] + std::sqrt(d * d + gap[j][l])) * T(0.5);
  }
}

}  // namespace
