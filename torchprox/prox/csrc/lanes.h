// Blocks of kLanes groups in structure-of-arrays layout and the lane-wise helpers every path shares: lane
// loops, flag counts, elementary symmetric polynomials, the objective, exact powers of two and per-group
// scaling, the write-back of a solved group, vectors of 16 values and their in-group rotations, the
// iteration caps and tolerance. Part of the single translation unit nm_cpu.cpp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <omp.h>

namespace {

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

constexpr int kMaxM = 32;
// Groups per block: 128 bytes of each row, four 256-bit vectors: enough independent work to hide the latency
// of the dependent chains of coordinate descent and Newton (docs/benchmarks.md, Kernel design notes).
template <typename T>
constexpr int kLanes = 128 / sizeof(T);

// Caps on Newton iterations and coordinate-descent sweeps, and the step below which an iterate counts as
// converged (values are scaled into [0, 1)): nm.py's _KERNEL_ITERATIONS, passed by _native.py as -D defines.
#if !defined(TP_NEWTON_F32) || !defined(TP_SWEEPS_F32) || !defined(TP_TOL_F32) || !defined(TP_NEWTON_F64) || \
    !defined(TP_SWEEPS_F64) || !defined(TP_TOL_F64)
#error "build with torchprox/prox/_native.py: it defines the iteration caps and tolerances (nm._KERNEL_ITERATIONS)"
#endif
template <typename T> struct Iters;
template <> struct Iters<float> {
  static constexpr int newton = TP_NEWTON_F32, sweeps = TP_SWEEPS_F32;
  static constexpr float tol = TP_TOL_F32;
};
template <> struct Iters<double> {
  static constexpr int newton = TP_NEWTON_F64, sweeps = TP_SWEEPS_F64;
  static constexpr double tol = TP_TOL_F64;
};

#define LANES _Pragma("omp simd") for (int l = 0; l < kLanes<T>; ++l)
// The lane helpers are always inlined, so that their loops see the caller's compile-time n and m.
#define INLINE inline __attribute__((always_inline))

// How many lanes of flag are nonzero. An integer sum (reassociable, so it vectorizes into a short tree);
// a float sum of the lanes would be 16 dependent additions, in order, on every iteration.
template <typename T>
INLINE int count(const T* flag) {
  int c = 0;
  for (int l = 0; l < kLanes<T>; ++l) c += flag[l] != 0;
  return c;
}

// e_k(x[0..len) minus index skip) for every lane, into out[l].  x is [len][kLanes].
template <typename T>
INLINE void esym(const T (*x)[kLanes<T>], int len, int k, int skip, T* out) {
  T e[kMaxM + 1][kLanes<T>];
  LANES e[0][l] = 1;
  for (int r = 1; r <= k; ++r) LANES e[r][l] = 0;
  for (int j = 0; j < len; ++j) {
    if (j == skip) continue;
    for (int r = k; r >= 1; --r) LANES e[r][l] += x[j][l] * e[r - 1][l];
  }
  LANES out[l] = e[k][l];
}

// f = 1/2 sum (x - b)^2 + lam e_{n+1}(x), per lane.
template <typename T>
INLINE void objective(const T (*x)[kLanes<T>], const T (*b)[kLanes<T>], int m, int n, const T* lam, T* f) {
  T r[kLanes<T>];
  esym(x, m, n + 1, -1, r);
  LANES f[l] = lam[l] * r[l];
  for (int i = 0; i < m; ++i) LANES { T d = x[i][l] - b[i][l]; f[l] += T(0.5) * d * d; }
}

template <typename T>
INLINE void keep_best(T (*best)[kLanes<T>], T* best_f, const T (*cand)[kLanes<T>], const T* f, int m) {
  for (int i = 0; i < m; ++i) LANES best[i][l] = f[l] < best_f[l] ? cand[i][l] : best[i][l];
  LANES best_f[l] = f[l] < best_f[l] ? f[l] : best_f[l];
}

// Powers of two and binary exponents from the bit patterns (libm's ldexp/frexp cost ~10 ns a call).
template <typename T> struct Bits;
template <> struct Bits<float> { using U = uint32_t; static constexpr int mant = 23, bias = 127, emask = 0xff; };
template <> struct Bits<double> { using U = uint64_t; static constexpr int mant = 52, bias = 1023, emask = 0x7ff; };

// 2^e for e in the normal range of T.
template <typename T>
inline T pow2(int e) {
  const typename Bits<T>::U u = static_cast<typename Bits<T>::U>(e + Bits<T>::bias) << Bits<T>::mant;
  T out;
  std::memcpy(&out, &u, sizeof(T));
  return out;
}

// e with x = f 2^e, f in [0.5, 1) (as frexp), for finite x > 0.
template <typename T>
inline int exponent(T x) {
  typename Bits<T>::U u;
  std::memcpy(&u, &x, sizeof(T));
  const int field = static_cast<int>((u >> Bits<T>::mant) & Bits<T>::emask);
  if (field != 0) return field - (Bits<T>::bias - 1);
  int e;  // subnormal
  std::frexp(x, &e);
  return e;
}

// Power-of-two scaling of each group to max in [0.5, 1) (exact; R is homogeneous of degree n+1): per lane, the
// scale 2^e as two factors up1 = 2^(e/2), up2 = 2^(e - e/2) so that it never overflows (max |y| near the
// largest float), their inverses dn1, dn2, and lam * 2^(e (n-1)), saturated: a lambda beyond the largest float
// acts like an infinite one (top n). A zero or non-finite group keeps e = 0.
template <typename T>
INLINE void lane_scales(const T* amax, const T* finite, int n, T lam, T* up1, T* up2, T* dn1, T* dn2, T* lam_g) {
  for (int l = 0; l < kLanes<T>; ++l) {
    const int e = finite[l] != 0 && amax[l] > 0 ? exponent(amax[l]) : 0;
    up1[l] = pow2<T>(e / 2);
    up2[l] = pow2<T>(e - e / 2);
    dn1[l] = pow2<T>(-(e / 2));
    dn2[l] = pow2<T>(-(e - e / 2));
    const int el = e * (n - 1);
    const double lg = el > -1000 && el < 1000 ? double(lam) * pow2<double>(el) : std::ldexp(double(lam), el);
    lam_g[l] = lg < double(std::numeric_limits<T>::max()) ? T(lg) : std::numeric_limits<T>::max();
  }
}

// Values within [2^-L, 2^L], L (n + 1) <= Range<T>::bits, can be used unscaled: no product of up to n+1 of them
// over- or underflows, so scaling by powers of two would change no rounding.
template <typename T> struct Range;
template <> struct Range<float> { static constexpr int bits = 100; };
template <> struct Range<double> { static constexpr int bits = 900; };

// The write-back of a solved group, one rule for every path. The value written for an entry whose input is yi
// (b = its |yi| as the solver saw it, scaled; x = the solver's result there): x rescaled by up1 * up2 (two
// factors, so that the product never overflows) with the sign of yi. A value the prox leaves unchanged is
// written back from yi itself, bit for bit (scaling a subnormal down and up again would round it), unless its
// scaled value underflowed to 0 (a tiny value in a group of huge ones): the solver saw a 0 there and its 0 is
// written, never the tiny yi (which the solver did not weigh: e.g. a fifth nonzero in a 4:8 group). A group
// that is not `finite` (a NaN or an infinity anywhere) is written back unchanged.
template <typename T>
INLINE T written(T yi, T x, T b, T up1, T up2, bool finite) {
  const T w = x == b && b != 0 ? yi : std::copysign(x * up1 * up2, yi);
  return finite ? w : yi;
}

// Lane l's group back to its row (y, out: the group's m values), by `written`: the candidate best, sorted as b
// (idx[i] is the position of b[i] in the group).
template <typename T>
INLINE void write_group(const T* y, T* out, int m, int l, const T (*best)[kLanes<T>], const T (*b)[kLanes<T>],
                        const int (*idx)[kLanes<T>], T scale, T half_up, bool finite) {
  for (int i = 0; i < m; ++i) {
    const int j = idx[i][l];
    out[j] = written(y[j], best[i][l], b[i][l], scale, half_up, finite);
  }
}

// The groups of lanes 0..lanes back to their rows y[l * m..], out[l * m..], by `written`: x and b in group
// order (unsorted). up1, up2 null: unscaled; finite null: every group finite.
template <typename T>
INLINE void write_block(const T* y, T* out, int m, int lanes, const T (*x)[kLanes<T>], const T (*b)[kLanes<T>],
                        const T* up1, const T* up2, const T* finite) {
  if (lanes == kLanes<T>) {
    LANES for (int i = 0; i < m; ++i) {  // lanes outer: m interleaved stores the compiler vectorizes as a group
      out[l * m + i] = written(y[l * m + i], x[i][l], b[i][l], up1 ? up1[l] : T(1), up2 ? up2[l] : T(1),
                               finite ? finite[l] != 0 : true);
    }
    return;
  }
  for (int l = 0; l < lanes; ++l)
    for (int i = 0; i < m; ++i)
      out[l * m + i] = written(y[l * m + i], x[i][l], b[i][l], up1 ? up1[l] : T(1), up2 ? up2[l] : T(1),
                               finite ? finite[l] != 0 : true);
}

template <typename T> struct Vec16;
template <> struct Vec16<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
};
template <> struct Vec16<double> {
  typedef double V __attribute__((vector_size(128)));
  typedef int64_t I __attribute__((vector_size(128)));
};

// Whether any lane of the integer vector v is nonzero. A per-lane scalar loop compiles to some forty
// extract-and-or instructions, as many as a whole Jacobi sweep of the block; this is one test (AVX-512) or a
// few 64-bit ors.
template <typename I>
INLINE bool any_lane(const I& v) {
#if defined(__AVX512F__)
  if constexpr (sizeof(I) == 64) {
    __m512i w;
    std::memcpy(&w, &v, 64);
    return _mm512_test_epi64_mask(w, w) != 0;
  }
#endif
  uint64_t u[sizeof(I) / 8], r = 0;
  std::memcpy(u, &v, sizeof(I));
  for (unsigned i = 0; i < sizeof(I) / 8; ++i) r |= u[i];
  return r != 0;
}

// x with every group of 4 rotated by R: lane 4g + i takes lane 4g + (i + R) % 4.
#if defined(__clang__)
#define TP_ROT(x, R)                                                                                       \
  __builtin_shufflevector(x, x, (0 + R) % 4, (1 + R) % 4, (2 + R) % 4, (3 + R) % 4, 4 + (0 + R) % 4,       \
                          4 + (1 + R) % 4, 4 + (2 + R) % 4, 4 + (3 + R) % 4, 8 + (0 + R) % 4, 8 + (1 + R) % 4, \
                          8 + (2 + R) % 4, 8 + (3 + R) % 4, 12 + (0 + R) % 4, 12 + (1 + R) % 4,             \
                          12 + (2 + R) % 4, 12 + (3 + R) % 4)
#else
#define TP_ROT(x, R)                                                                                      \
  __builtin_shuffle(x, I{(0 + R) % 4, (1 + R) % 4, (2 + R) % 4, (3 + R) % 4, 4 + (0 + R) % 4,             \
                         4 + (1 + R) % 4, 4 + (2 + R) % 4, 4 + (3 + R) % 4, 8 + (0 + R) % 4, 8 + (1 + R) % 4, \
                         8 + (2 + R) % 4, 8 + (3 + R) % 4, 12 + (0 + R) % 4, 12 + (1 + R) % 4,            \
                         12 + (2 + R) % 4, 12 + (3 + R) % 4})
#endif

// The calling OpenMP thread's contiguous share [lo, hi) of blocks 0..blocks (the split of schedule(static)).
inline void thread_blocks(int64_t blocks, int64_t& lo, int64_t& hi) {
  const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
  lo = blocks * t / nt;
  hi = blocks * (t + 1) / nt;
}

}  // namespace
