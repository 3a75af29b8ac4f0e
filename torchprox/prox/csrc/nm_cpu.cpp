// Fused CPU kernels for N:M sparsity: the exact prox of lam * e_{n+1}(|w|) (scalar step) and the top-n mask.
//
// One pass over memory, one group of m at a time, OpenMP across groups. The algorithm is the one documented
// in torchprox/prox/nm.py (prox_nm): per-group power-of-two scaling, a stable descending sort, the n-sparse
// candidate, the (n+1)-support solved by monotone Newton on a convex scalar function, larger top-k supports by
// exact coordinate descent from two starts, and the best objective kept (strict <, so sparser wins ties).
// Loops stop as soon as an iterate no longer changes (capped), so small groups of work stay small.
//
// Built once by torchprox/prox/_native.py with the system C++ compiler and loaded with ctypes.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace {

constexpr int kMaxM = 32;

template <typename T> struct Iters;
template <> struct Iters<float> { static constexpr int newton = 40, sweeps = 60; };
template <> struct Iters<double> { static constexpr int newton = 80, sweeps = 200; };

// e_k of x[0..len) skipping index `skip` (skip = -1: none); O(len * k).
template <typename T>
inline T esym(const T* x, int len, int k, int skip) {
  T e[kMaxM + 1];
  e[0] = 1;
  for (int r = 1; r <= k; ++r) e[r] = 0;
  for (int j = 0; j < len; ++j) {
    if (j == skip) continue;
    for (int r = k; r >= 1; --r) e[r] += x[j] * e[r - 1];
  }
  return e[k];
}

template <typename T>
inline T objective(const T* x, const T* b, int m, int n, T lam) {
  T q = 0;
  for (int i = 0; i < m; ++i) { T d = x[i] - b[i]; q += d * d; }
  return T(0.5) * q + lam * esym(x, m, n + 1, -1);
}

// Interior minimizer of 1/2 sum (u_i - b_i)^2 + lam prod u_i on k = n+1 sorted coordinates (see
// nm.py::_solve_product): Newton from z = b_{k-1} on the convex psi(z) = lam prod u_i(z) + z - b_{k-1}.
template <typename T>
inline void solve_product(const T* b, int k, T lam, T* u) {
  const T bk = b[k - 1];
  T gaps[kMaxM];
  for (int i = 0; i < k - 1; ++i) { T g = b[i] * b[i] - bk * bk; gaps[i] = g > 0 ? g : 0; }
  T z = bk;
  const T tiny = std::numeric_limits<T>::min();
  for (int it = 0; it < Iters<T>::newton; ++it) {
    T d = 2 * z - bk, d2 = d * d, prod = 1, dlog = 0;
    for (int i = 0; i < k - 1; ++i) {
      T ri = std::sqrt(d2 + gaps[i]);
      T ui = (b[i] + ri) * T(0.5);
      prod *= ui;
      T den = ri * ui;
      dlog += d / (den > tiny ? den : tiny);
    }
    T psi = lam * prod + z - bk;
    T dpsi = 1 + lam * prod * dlog;
    T znew = dpsi > 0 ? z - psi / (dpsi > tiny ? dpsi : tiny) : T(0);
    if (znew < 0) znew = 0;
    if (znew > bk) znew = bk;
    if (znew == z) break;
    z = znew;
  }
  T d = 2 * z - bk, d2 = d * d;
  for (int i = 0; i < k - 1; ++i) u[i] = (b[i] + std::sqrt(d2 + gaps[i])) * T(0.5);
  u[k - 1] = z;
}

// Exact coordinate descent on the first k coordinates, last to first, until a sweep changes nothing.
template <typename T>
inline void coordinate_descent(const T* b, int k, int n, T lam, T* x) {
  for (int sweep = 0; sweep < Iters<T>::sweeps; ++sweep) {
    bool changed = false;
    for (int i = k - 1; i >= 0; --i) {
      T v = b[i] - lam * esym(x, k, n, i);
      if (v < 0) v = 0;
      if (v != x[i]) { x[i] = v; changed = true; }
    }
    if (!changed) break;
  }
}

// Stable descending argsort of a[0..m) (insertion sort: ties keep the lower index first).
template <typename T>
inline void argsort_desc(const T* a, int m, int* idx) {
  for (int i = 0; i < m; ++i) {
    int j = i;
    while (j > 0 && a[idx[j - 1]] < a[i]) { idx[j] = idx[j - 1]; --j; }
    idx[j] = i;
  }
}

template <typename T>
void prox_group(const T* y, T* out, int n, int m, T lam) {
  T a[kMaxM], b[kMaxM], best[kMaxM], cand[kMaxM], grown[kMaxM];
  int idx[kMaxM];
  T amax = 0;
  for (int i = 0; i < m; ++i) { a[i] = std::fabs(y[i]); if (!(a[i] <= amax)) amax = a[i]; }
  if (!std::isfinite(amax)) { for (int i = 0; i < m; ++i) out[i] = std::numeric_limits<T>::quiet_NaN(); return; }
  if (amax == 0) { for (int i = 0; i < m; ++i) out[i] = y[i]; return; }
  int e;
  std::frexp(amax, &e);
  const T scale = std::ldexp(T(1), e);
  const T lam_g = n == 1 ? lam : lam * std::pow(scale, T(n - 1));
  for (int i = 0; i < m; ++i) a[i] /= scale;
  argsort_desc(a, m, idx);
  for (int i = 0; i < m; ++i) b[i] = a[idx[i]];
  // top-n: R = 0
  T best_f = 0;
  for (int i = 0; i < m; ++i) { best[i] = i < n ? b[i] : 0; if (i >= n) best_f += b[i] * b[i]; }
  best_f *= T(0.5);
  // top-(n+1): exact
  for (int i = 0; i < m; ++i) cand[i] = 0;
  solve_product(b, n + 1, lam_g, cand);
  T f = objective(cand, b, m, n, lam_g);
  if (f < best_f) { best_f = f; std::memcpy(best, cand, sizeof(T) * m); }
  std::memcpy(grown, cand, sizeof(T) * m);
  // larger top-k: coordinate descent from b and from the previous solution
  for (int k = n + 2; k <= m; ++k) {
    for (int start = 0; start < 2; ++start) {
      for (int i = 0; i < m; ++i) cand[i] = i < k ? (start == 0 ? b[i] : grown[i]) : 0;
      coordinate_descent(b, k, n, lam_g, cand);
      f = objective(cand, b, m, n, lam_g);
      if (f < best_f) { best_f = f; std::memcpy(best, cand, sizeof(T) * m); }
    }
    std::memcpy(grown, cand, sizeof(T) * m);
  }
  for (int i = 0; i < m; ++i) out[idx[i]] = std::copysign(best[i] * scale, y[idx[i]]);
}

template <typename T>
void prox_nm(const T* y, T* out, int64_t groups, int n, int m, double lam, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t g = 0; g < groups; ++g) prox_group<T>(y + g * m, out + g * m, n, m, T(lam));
}

template <typename T>
void nm_mask(const T* scores, uint8_t* mask, int64_t groups, int n, int m, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t g = 0; g < groups; ++g) {
    int idx[kMaxM];
    const T* s = scores + g * m;
    argsort_desc(s, m, idx);
    uint8_t* k = mask + g * m;
    for (int i = 0; i < m; ++i) k[idx[i]] = i < n;
  }
}

}  // namespace

extern "C" {
int torchprox_max_m() { return kMaxM; }
// lam is read through a pointer (a 0-d float64 tensor's storage), so callers never turn it into a number.
void torchprox_prox_nm_f32(const float* y, float* out, int64_t g, int n, int m, const double* lam, int t) {
  prox_nm<float>(y, out, g, n, m, *lam, t);
}
void torchprox_prox_nm_f64(const double* y, double* out, int64_t g, int n, int m, const double* lam, int t) {
  prox_nm<double>(y, out, g, n, m, *lam, t);
}
void torchprox_nm_mask_f32(const float* s, uint8_t* mask, int64_t g, int n, int m, int t) {
  nm_mask<float>(s, mask, g, n, m, t);
}
void torchprox_nm_mask_f64(const double* s, uint8_t* mask, int64_t g, int n, int m, int t) {
  nm_mask<double>(s, mask, g, n, m, t);
}
}
