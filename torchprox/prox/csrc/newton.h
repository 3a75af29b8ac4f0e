// Monotone Newton for the candidate on a support of n + 1 values, shared by the scalar-step path (general.h: the
// top n + 1 of the sorted group) and the diagonal-metric path (metric.h: every support of n + 1, made unweighted).
// Part of the single translation unit nm_cpu.cpp.
#pragma once
#include "lanes.h"

namespace {

// How a lane's Newton iteration decides it has converged: a step that moves z by at most Iters<T>::tol (Absolute:
// the group is scaled so that its largest value is in [0.5, 1)) or by at most Iters<T>::tol times the lane's
// largest beta (Relative: the metric path, whose beta = a / sqrt(s) are not scaled so).
enum class NewtonStop { Absolute, Relative };

// The interior minimizer u of 1/2 sum_i (u_i - beta_i)^2 + lam prod_i u_i over the k1 = n + 1 values
// beta_0..beta_{k1-1} of a support, for every lane (nm.py's _solve_product). With z = u_low, the coordinate of the
// smallest value bk = beta_low, every other coordinate is u_i(z) = (beta_i + sqrt((2z - bk)^2 + beta_i^2 - bk^2)) / 2
// and z is the largest root of the convex psi(z) = lam prod_{i != low} u_i(z) + z - bk, reached by Newton from
// z = bk (monotone: no overshoot; no root drives z to 0, the boundary, which the n-sparse candidate covers).
//
// Shapes: beta[k1][kLanes], bk/lam/bmax [kLanes], u[k1][kLanes] (written; u[low] = z). low: the index of the
// smallest value in each lane, as a T; nullptr when it is k1 - 1 in every lane (the sorted scalar path), which
// then leaves beta[k1 - 1] out of the loops instead of masking it. K1: k1 at compile time (0: k1_rt). bmax: each
// lane's largest beta (read with NewtonStop::Relative only). Each lane stops on its own (a lane's result never
// depends on its neighbours) once a step moves z by at most its tolerance, or at the cap.
template <typename T, int K1, NewtonStop Stop>
INLINE void newton_support(const T (*beta)[kLanes<T>], int k1_rt, const T* bk, const T* low, const T* lam,
                           const T* bmax, T (*u)[kLanes<T>]) {
  const T tiny = std::numeric_limits<T>::min();
  const int k1 = K1 ? K1 : k1_rt;
  const bool low_last = low == nullptr;
  const int others = low_last ? k1 - 1 : k1;  // the values the product runs over (low masked out when given)
  T tol[kLanes<T>];  // each lane's stopping step
  LANES tol[l] = Stop == NewtonStop::Relative ? Iters<T>::tol * bmax[l] : Iters<T>::tol;
  T gap[kMaxM][kLanes<T>], z[kLanes<T>], active[kLanes<T>];  // gap[low]: unused
  for (int j = 0; j < others; ++j) LANES {
    const T g = beta[j][l] * beta[j][l] - bk[l] * bk[l];
    gap[j][l] = g > 0 ? g : T(0);
  }
  LANES { z[l] = bk[l]; active[l] = 1; }  // active: 1 until the lane converges
  for (int it = 0; it < Iters<T>::newton; ++it) {
    T d[kLanes<T>], prod[kLanes<T>], dlog[kLanes<T>];
    LANES { d[l] = 2 * z[l] - bk[l]; prod[l] = 1; dlog[l] = 0; }
    if (low_last) {
      for (int j = 0; j < others; ++j) LANES {
        const T rj = std::sqrt(d[l] * d[l] + gap[j][l]);
        const T uj = (beta[j][l] + rj) * T(0.5);
        prod[l] *= uj;
        const T den = rj * uj;
        dlog[l] += d[l] / (den > tiny ? den : tiny);
      }
    } else {
      for (int j = 0; j < others; ++j) LANES {
        const T rj = std::sqrt(d[l] * d[l] + gap[j][l]);
        const T uj = (beta[j][l] + rj) * T(0.5);
        const T den = rj * uj;
        const T inc = d[l] / (den > tiny ? den : tiny);  // (unconditional: divisions are not if-converted)
        const bool other = low[l] != T(j);
        prod[l] = other ? prod[l] * uj : prod[l];
        dlog[l] = other ? dlog[l] + inc : dlog[l];
      }
    }
    // The update in explicit 64-byte vectors: GCC does not if-convert it as a loop over lanes here, and vectors
    // wider than the machine's (Vec16's 128 bytes of float64) cost a fifth more (docs/benchmarks.md).
    constexpr int W = 64 / sizeof(T);
    typedef T V __attribute__((vector_size(64)));
    for (int h = 0; h < kLanes<T>; h += W) {
      V zv, bkv, lv, pv, dlv, av, tv;
      std::memcpy(&zv, z + h, sizeof(V));
      std::memcpy(&bkv, bk + h, sizeof(V));
      std::memcpy(&lv, lam + h, sizeof(V));
      std::memcpy(&pv, prod + h, sizeof(V));
      std::memcpy(&dlv, dlog + h, sizeof(V));
      std::memcpy(&av, active + h, sizeof(V));
      std::memcpy(&tv, tol + h, sizeof(V));
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
    const bool is_low = low_last ? j == k1 - 1 : low[l] == T(j);
    u[j][l] = is_low ? z[l] : (beta[j][l] + std::sqrt(d * d + gap[j][l])) * T(0.5);
  }
}

}  // namespace
