// Fused CPU kernels for N:M sparsity: the exact prox of lam * e_{n+1}(|w|) (scalar step) and the top-n mask.
//
// The algorithm is the one documented in torchprox/prox/nm.py (prox_nm): per-group power-of-two scaling, a
// descending sort (ties: lower index first), the n-sparse candidate, the (n+1)-support solved by monotone
// Newton on a convex scalar function, larger top-k supports by exact coordinate descent from two starts, and
// the candidate with the smallest objective (strict <, so the sparser one wins ties).
//
// When lam is small enough that the objective is strongly convex on the box 0 <= x <= b (a per-group bound),
// projected coordinate descent from b alone gives the global minimizer: for m = 4 decided group by group
// (convex_m4, the other groups packed into blocks for the general path), for other m block by block.
//
// Layout: groups are processed in blocks of kLanes (128 bytes of each row: 32 float or 16 double groups),
// structure-of-arrays (value[i][lane]), so every step is a short loop over lanes that the compiler vectorizes:
// the iterations of many groups are interleaved instead of one group's dependent chain of divisions and square
// roots running alone. Iterations stop when every lane of the block has converged (or at a cap), so the work
// adapts to lambda without per-group branches. The coordinate descents on the larger supports, most of the
// work at moderate lambda, run instead on the groups that need them: for m > 4 in a per-thread engine whose
// lanes are refilled as their groups finish (DescentEngine), for m = 4 packed into whole blocks
// (PackedDescents).
// OpenMP splits the blocks over threads.
//
// Built once by torchprox/prox/_native.py with the system C++ compiler and loaded with ctypes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int kMaxM = 32;
// Groups per block: 128 bytes of each row, four 256-bit vectors: enough independent work to hide the latency
// of the dependent chains of coordinate descent and Newton (one thread, lam 0.25: 16 float32 lanes instead of 32
// took 1.2x as long for 2:4, 1.4x for 1:4; 32 float64 lanes instead of 16 took 1.3x as long).
template <typename T>
constexpr int kLanes = 128 / sizeof(T);

template <typename T> struct Iters;
// Caps, and the step below which an iterate counts as converged (values are scaled into [0, 1)).
template <> struct Iters<float> { static constexpr int newton = 40, sweeps = 60; static constexpr float tol = 1e-6f; };
template <> struct Iters<double> { static constexpr int newton = 80, sweeps = 200; static constexpr double tol = 1e-12; };

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

// One sweep of projected coordinate descent on x[0..k) (the rest of the group stays 0) for
// 1/2 sum (x - b)^2 + lam e_{n+1}(x), x >= 0: x_i <- max(0, b_i - lam e_n(x minus i)), last coordinate first, in
// the lanes where active is nonzero; change[l] is the lane's largest move, en[l] (if given) e_n(x[0..k)) at the start
// of the sweep. e_n(x minus i) = sum_r P_i[r] S_i[n - r]
// with P_i the elementary symmetric polynomials of x[0..i) (computed at the start of the sweep: those
// coordinates are not updated yet) and S_i those of x(i..k) (grown one updated coordinate at a time): O(k n) a
// sweep, sums of non-negative terms only. A lane whose b and x are 0 on [j, k) gets the same bits as a sweep on
// x[0..j): those coordinates stay +0 and add exact zeros. The terms with P_i[0] = S_i[0] = 1 are added without
// their product, the same bits (1 * s and fma(p, 1, c) are exact) for fewer loads.
template <typename T>
INLINE void cd_sweep(T (*x)[kLanes<T>], const T (*b)[kLanes<T>], int k, int n, const T* lam, const T* active,
                     T* change, T* en = nullptr) {
  T P[kMaxM][kMaxM][kLanes<T>];  // P[i][r]: e_r(x[0..i)), r = 0..n
  LANES P[0][0][l] = 1;
  for (int r = 1; r <= n; ++r) LANES P[0][r][l] = 0;
  for (int i = 1; i < k; ++i) {
    LANES P[i][0][l] = 1;
    LANES P[i][1][l] = P[i - 1][1][l] + x[i - 1][l];
    for (int r = 2; r <= n; ++r) LANES P[i][r][l] = P[i - 1][r][l] + x[i - 1][l] * P[i - 1][r - 1][l];
  }
  if (en != nullptr) LANES en[l] = P[k - 1][n][l] + x[k - 1][l] * P[k - 1][n - 1][l];
  T S[kMaxM][kLanes<T>];  // e_r(x(i..k)), r = 0..n
  LANES S[0][l] = 1;
  for (int r = 1; r <= n; ++r) LANES S[r][l] = 0;
  LANES change[l] = 0;
  for (int i = k - 1; i >= 0; --i) {
    T c[kLanes<T>];
    LANES c[l] = S[n][l];
    for (int r = 1; r < n; ++r) LANES c[l] += P[i][r][l] * S[n - r][l];
    LANES c[l] += P[i][n][l];
    LANES {
      T v = b[i][l] - lam[l] * c[l];
      v = v < 0 ? T(0) : v;
      const T dv = std::fabs(v - x[i][l]);
      change[l] = dv > change[l] ? dv : change[l];
      x[i][l] = active[l] != 0 ? v : x[i][l];
    }
    for (int r = n; r >= 2; --r) LANES S[r][l] += x[i][l] * S[r - 1][l];
    LANES S[1][l] += x[i][l];
  }
}

// Coordinate descent (sweeps of cd_sweep) until no lane moves by more than tol[l] (each lane stops on its own)
// or the sweep cap. lanes: which lanes to iterate at all (the others keep x), or all of them.
template <typename T>
INLINE void coordinate_descent(T (*x)[kLanes<T>], const T (*b)[kLanes<T>], int k, int n, const T* lam, const T* tol,
                               const T* lanes = nullptr) {
  T active[kLanes<T>];
  LANES active[l] = lanes == nullptr ? T(1) : lanes[l];
  if (lanes != nullptr && count(active) == 0) return;
  for (int sweep = 0; sweep < Iters<T>::sweeps; ++sweep) {
    T change[kLanes<T>];
    cd_sweep(x, b, k, n, lam, active, change);
    LANES active[l] *= change[l] > tol[l] ? T(1) : T(0);
    if (count(active) == 0) break;
  }
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
  LANES for (int i = 0; i < m; ++i) {  // lanes outer: m interleaved stores the compiler vectorizes as a group
    const T yi = y[l * m + i];
    out[l * m + i] = x[i][l] == b[i][l] ? yi : std::copysign(x[i][l], yi);
  }
  return true;
}

// Lane l's group back to its row (y, out: the group's m values): the candidate best, sorted as b (idx[i] is the
// position of b[i] in the group), rescaled by scale * half_up, with the signs of y. A value the prox leaves
// unchanged is written back from y itself, bit for bit (scaling a subnormal down and up again would round it),
// unless its scaled value underflowed to 0 (a tiny value in a group of huge ones): the solver saw a 0 there and
// its 0 is written, never the tiny y (which the solver did not weigh: e.g. a fifth nonzero in a 4:8 group);
// a non-finite group (a NaN or an infinity anywhere) is written back unchanged.
template <typename T>
INLINE void write_group(const T* y, T* out, int m, int l, const T (*best)[kLanes<T>], const T (*b)[kLanes<T>],
                        const int (*idx)[kLanes<T>], T scale, T half_up, bool finite) {
  for (int i = 0; i < m; ++i) {
    const int j = idx[i][l];
    const T w = best[i][l] == b[i][l] && b[i][l] != 0 ? y[j] : std::copysign(best[i][l] * scale * half_up, y[j]);
    out[j] = finite ? w : y[j];
  }
}

// The candidates on the top-k supports, k > n+1, of the groups that need them (see prox_block): coordinate descent
// from two starts per support, x = b and the previous support's solution ("grown"), supports in increasing
// order, the best objective kept with a strict < (the earlier candidate wins ties). Run kLanes groups at a time
// with lane refill: a lane whose descent has stopped takes its group's next descent, or a waiting group, at
// once, so a descent's sweeps are its own and not those of the slowest group of a block: on random 4:8 groups
// at lam 0.25, blocks of 16 ran 87 sweeps of up to 8 coordinates (the slowest lane, each support and start
// in turn), the engine 19 sweeps of 8 per 16 groups (4:8 at lam 0.25 on 4096 x 4096, one thread: 1.6 s ->
// 0.86 s). Used for m > 4 only: for m = 4 its bookkeeping costs more than it saves (1:4 took 1.9x as long).
// Every lane runs its group's descents in order and stops on its own (cd_sweep on a lane whose support is
// smaller than the engine's widest adds exact zeros), so a group's result does not depend on the groups that
// share the engine, nor on the thread count.
// Descents from b that would repeat an earlier one are skipped. The descent from b on support k+1 updates x_k
// first, to max(0, b_k - lam e_n(x_0..x_{k-1})): if at the start of every sweep of the descent from b on support
// k that is 0 (with a margin, so that no rounding can make it positive), the descent on k+1 repeats the one on k
// bit for bit (x_k = +0 adds exact zeros; from its second sweep on its moves, and so its stop, are the same; the
// descent on k must have taken two sweeps, as the first sweep on k+1 also moves x_k from b_k to 0), and so do the
// descents from b on every larger support (b_{k+1} <= b_k). Their candidates equal one already compared, so they
// cannot win (strict <) and are skipped: a group's result is unchanged. On random 4:8 groups at lam 0.25 that
// is a fifth of the sweeps.
template <typename T, int NT, int MT>
struct DescentEngine {
  static constexpr int M = MT ? MT : kMaxM;
  struct Group {  // a group waiting for a lane: sorted scaled |y|, the candidates so far, what its output needs
    T b[M], best[M], grown[M], best_f, lam, scale, half_up, kmax;
    int idx[M];
    int64_t row;
  };
  const T* y;
  T* out;
  int n_rt, m_rt;  // n and m read through N() and Mm(): compile-time constants where NT and MT are
  Group wait[kLanes<T>];  // at most kLanes wait: run() returns with none waiting, and a block adds at most kLanes
  int waiting = 0, used = 0;  // groups waiting; lanes busy
  // Lanes, structure of arrays (small integers as T, so that every lane loop vectorizes). bk: b on the current
  // support k, 0 beyond; start: 0 from b, 1 from grown; busy: the lane holds a group.
  T b[M][kLanes<T>] = {}, bk[M][kLanes<T>] = {}, x[M][kLanes<T>] = {};
  T best[M][kLanes<T>] = {}, grown[M][kLanes<T>] = {};
  T best_f[kLanes<T>] = {}, lam[kLanes<T>] = {}, scale[kLanes<T>] = {}, half_up[kLanes<T>] = {}, busy[kLanes<T>] = {};
  T k[kLanes<T>] = {}, kmax[kLanes<T>] = {}, start[kLanes<T>] = {}, sweeps[kLanes<T>] = {}, parked[kLanes<T>] = {};
  // Skipping the descents from b (see above): b_k, the first value off the support; clear: x_k stayed 0 at every
  // sweep of the current descent from b so far; skip_b: the later descents from b repeat an earlier one.
  T bnext[kLanes<T>] = {}, clear[kLanes<T>] = {}, skip_b[kLanes<T>] = {};
  int idx[M][kLanes<T>] = {};
  int64_t row[kLanes<T>] = {};

  DescentEngine(const T* y_, T* out_, int n_, int m_) : y(y_), out(out_), n_rt(n_), m_rt(m_) {}
  int N() const { return NT ? NT : n_rt; }
  int Mm() const { return MT ? MT : m_rt; }

  // Queue lane l of a block (SoA arrays as in prox_block) for the supports n+2..kmax_l; its output row is row.
  void push(int l, const T (*b_)[kLanes<T>], const T (*best_)[kLanes<T>], const T* best_f_,
            const T (*grown_)[kLanes<T>], const T* lam_, const T* scale_, const T* half_up_,
            const int (*idx_)[kLanes<T>], int kmax_l, int64_t row_) {
    const int m = Mm();
    Group& g = wait[waiting++];
    for (int i = 0; i < m; ++i) {
      g.b[i] = b_[i][l]; g.best[i] = best_[i][l]; g.grown[i] = grown_[i][l]; g.idx[i] = idx_[i][l];
    }
    g.best_f = best_f_[l]; g.lam = lam_[l]; g.scale = scale_[l]; g.half_up = half_up_[l];
    g.kmax = T(kmax_l); g.row = row_;
  }

  // Free lanes take waiting groups and start their first descent: support n+2, from b.
  void fill() {
    const int n = N(), m = Mm();
    for (int l = 0; l < kLanes<T> && waiting > 0 && used < kLanes<T>; ++l) {
      if (busy[l] != 0) continue;
      ++used;
      const Group& g = wait[--waiting];
      for (int i = 0; i < m; ++i) {
        b[i][l] = g.b[i]; best[i][l] = g.best[i]; grown[i][l] = g.grown[i]; idx[i][l] = g.idx[i];
        bk[i][l] = x[i][l] = i < n + 2 ? g.b[i] : T(0);
      }
      best_f[l] = g.best_f; lam[l] = g.lam; scale[l] = g.scale; half_up[l] = g.half_up;
      kmax[l] = g.kmax; row[l] = g.row;
      k[l] = T(n + 2); start[l] = 0; sweeps[l] = 0; busy[l] = 1;
      bnext[l] = n + 2 < m ? g.b[n + 2] : T(0); clear[l] = 1; skip_b[l] = 0;
    }
  }

  // A lane's group is done: write its best candidate (the engine serves finite groups only).
  void write(int l) {
    const int m = Mm();
    write_group(y + row[l] * m, out + row[l] * m, m, l, best, b, idx, scale[l], half_up[l], true);
    busy[l] = 0;
    --used;
  }

  // Sweep until a lane is free and no group waits (drain: until every lane is free). After a sweep, the lanes
  // whose descent stopped keep its result if better and move on, all in vector selects: to the second start
  // on the same support, to the next support (from b, or from grown when its descents from b are skipped), or,
  // the group done, to its output.
  void run(bool drain) {
    const int n = N(), m = Mm();
    for (;;) {
      fill();
      if (used == 0 || (used < kLanes<T> && !drain)) return;
      int K = M;  // the widest support among the lanes (all of them for a compile-time m)
      if (!MT) {
        K = 0;
        for (int l = 0; l < kLanes<T>; ++l) K = busy[l] != 0 && int(k[l]) > K ? int(k[l]) : K;
      }
      // The lane flags are 0/1 values combined by arithmetic (compound conditions compile to mask shuffling).
      T change[kLanes<T>], moving[kLanes<T>], stop[kLanes<T>], en[kLanes<T>];
      LANES moving[l] = busy[l] * (T(1) - parked[l]);
      cd_sweep(x, bk, K, n, lam, moving, change, en);
      LANES {
        const T clamps = lam[l] * en[l] >= bnext[l] * (T(1) + T(1e-5)) ? T(1) : T(0);
        clear[l] -= moving[l] * clear[l] * (T(1) - clamps);
        sweeps[l] += moving[l];
        const T converged = change[l] > Iters<T>::tol ? T(0) : T(1);  // (NaN: converged)
        const T capped = sweeps[l] >= T(Iters<T>::sweeps) ? T(1) : T(0);
        const T stops = converged > capped ? converged : capped;
        parked[l] += moving[l] * stops;
        moving[l] -= moving[l] * stops;
      }
      // Parked lanes (their descent stopped, x frozen) move on together, once a quarter of the lanes waits or
      // none still moves: the moves below cost about a sweep, whatever the number of lanes they serve.
      if (count(parked) < kLanes<T> / 4 && count(moving) != 0) continue;
      LANES { stop[l] = parked[l]; parked[l] = 0; }
      T f[kLanes<T>], better[kLanes<T>], second[kLanes<T>], grows[kLanes<T>], next[kLanes<T>], done[kLanes<T>];
      T next_b[kLanes<T>], regrow[kLanes<T>];
      objective(x, b, m, n, lam, f);
      LANES {
        better[l] = stop[l] * (f[l] < best_f[l] ? T(1) : T(0));
        best_f[l] = better[l] != 0 ? f[l] : best_f[l];
        second[l] = stop[l] * (T(1) - start[l]);  // the first start done: the second next
        grows[l] = stop[l] * start[l];            // the second done: its result seeds support k + 1
        next[l] = grows[l] * (k[l] < kmax[l] ? T(1) : T(0));
        done[l] = grows[l] - next[l];
        const T skips = second[l] * clear[l] * (sweeps[l] >= T(2) ? T(1) : T(0));
        skip_b[l] = skips > skip_b[l] ? skips : skip_b[l];
        next_b[l] = next[l] * (T(1) - skip_b[l]);  // the next support from b; else straight from grown
        regrow[l] = second[l] + next[l] - next_b[l];
      }
      for (int i = 0; i < m; ++i) {
        LANES best[i][l] = better[l] != 0 ? x[i][l] : best[i][l];
        LANES grown[i][l] = grows[l] != 0 ? x[i][l] : grown[i][l];
      }
      LANES {
        k[l] += next[l];
        start[l] += second[l] - next_b[l];
        sweeps[l] -= stop[l] * sweeps[l];
        clear[l] = next_b[l] != 0 ? T(1) : clear[l];
      }
      for (int i = 0; i < m; ++i) {  // (one select per statement: nested ones compile to mask shuffling)
        T fresh[kLanes<T>];
        LANES fresh[l] = T(i) < k[l] ? b[i][l] : T(0);
        LANES bk[i][l] = next[l] != 0 ? fresh[l] : bk[i][l];
        LANES x[i][l] = next_b[l] != 0 ? fresh[l] : x[i][l];
        LANES fresh[l] = T(i) < k[l] ? grown[i][l] : T(0);
        LANES x[i][l] = regrow[l] != 0 ? fresh[l] : x[i][l];
        LANES bnext[l] = T(i) == k[l] ? b[i][l] : bnext[l];
      }
      if (count(done) != 0)
        for (int l = 0; l < kLanes<T>; ++l)
          if (done[l] != 0) write(l);
    }
  }
};

// The candidates on the top-k supports k = n+2..k_last of a block (see prox_block): coordinate descent from x = b
// and from grown (the previous support's solution; then this support's second result), iterating only the lanes
// where possible[k] is nonzero and keeping a candidate only from those, so that a lane's result does not depend on
// the other lanes; supports past the last one any lane can use are skipped.
template <typename T>
INLINE void descend_supports(T (*best)[kLanes<T>], T* best_f, T (*grown)[kLanes<T>], const T (*b)[kLanes<T>],
                             const T* lam, int n, int m, int k_last, const T (*possible)[kLanes<T>]) {
  T tol[kLanes<T>], cand[kMaxM][kLanes<T>], f[kLanes<T>];
  LANES tol[l] = Iters<T>::tol;
  for (int k = n + 2; k <= k_last && count(possible[k]) != 0; ++k) {
    for (int start = 0; start < 2; ++start) {
      for (int i = 0; i < m; ++i) LANES cand[i][l] = i < k ? (start == 0 ? b[i][l] : grown[i][l]) : T(0);
      coordinate_descent(cand, b, k, n, lam, tol, possible[k]);
      objective(cand, b, m, n, lam, f);
      LANES f[l] = possible[k][l] != 0 ? f[l] : std::numeric_limits<T>::infinity();
      keep_best(best, best_f, cand, f, m);
    }
    std::memcpy(grown, cand, sizeof(T) * kLanes<T> * m);
  }
}

// The m = 4 counterpart of DescentEngine: the groups whose top-4 (and, for n = 1, top-3) support can hold a
// local minimizer (see prox_block) packed into whole blocks for their coordinate descents. In a block of the
// general path, at lam 0.25 on random 2:4 groups, 41% of the lanes need a descent and nearly every block has
// some, so the descents ran on every block until its slowest possible lane converged; packed, they run on the
// lanes that need them. (Lane refill, as DescentEngine does, costs more than it saves for m = 4: see there.)
// Each lane runs its group's descents, starts and supports in order, stops on its own, and keeps a candidate
// only from a support its group can use, so a group's result depends neither on the groups packed with it nor
// on the thread count. A group's output row is written when its block runs, from y and out as the engine's
// (the caller's own buffers may be gone by then); the caller leaves y's values in that row meanwhile.
template <typename T, int NT>
struct PackedDescents {
  static constexpr int K = kLanes<T>;
  struct Block {  // K groups, structure of arrays as in prox_block
    T b[4][K], best[4][K], grown[4][K], best_f[K], lam[K], scale[K], half_up[K], kmax[K];
    int idx[4][K];
    int64_t row[K];
  };
  const T* y;
  T* out;
  Block full = {}, next = {};  // the block that runs next, and the overflow of the caller's current block
  int filled = 0;              // groups in full, then next

  PackedDescents(const T* y_, T* out_, int, int) : y(y_), out(out_) {}

  // Before the caller's next block hands on groups: runs the full block, if any. Not from push, as the caller
  // copies its block's output (y's values in the rows of the groups handed on) once the block is solved.
  void make_room() {
    if (filled >= K) run();
  }

  // Lane l of a block for the supports n+2..kmax_l; its output row is row_.
  void push(int l, const T (*b_)[K], const T (*best_)[K], const T* best_f_, const T (*grown_)[K], const T* lam_,
            const T* scale_, const T* half_up_, const int (*idx_)[K], int kmax_l, int64_t row_) {
    Block& d = filled < K ? full : next;
    const int c = filled++ % K;
    for (int i = 0; i < 4; ++i) {
      d.b[i][c] = b_[i][l]; d.best[i][c] = best_[i][l]; d.grown[i][c] = grown_[i][l]; d.idx[i][c] = idx_[i][l];
    }
    d.best_f[c] = best_f_[l]; d.lam[c] = lam_[l]; d.scale[c] = scale_[l]; d.half_up[c] = half_up_[l];
    d.kmax[c] = T(kmax_l); d.row[c] = row_;
  }

  // The descents of the full block's groups (lanes past its groups: kmax 0, never iterated), then their rows;
  // the overflow becomes the next full block.
  void run() {
    Block& g = full;
    const int used = filled < K ? filled : K;
    for (int l = used; l < K; ++l) g.kmax[l] = 0;
    T possible[5][K];
    for (int k = NT + 2; k <= 4; ++k) LANES possible[k][l] = T(k) <= g.kmax[l] ? T(1) : T(0);
    descend_supports(g.best, g.best_f, g.grown, g.b, g.lam, NT, 4, 4, possible);
    for (int l = 0; l < used; ++l)
      write_group(y + g.row[l] * 4, out + g.row[l] * 4, 4, l, g.best, g.b, g.idx, g.scale[l], g.half_up[l], true);
    filled -= used;
    if (filled > 0) full = next;
  }
};

// The per-thread store of the descents that prox_block hands on (m = 4: packed blocks; m > 4: lane refill).
template <typename T, int NT, int MT>
using Descents = std::conditional_t<MT == 4, PackedDescents<T, NT>, DescentEngine<T, NT, MT>>;

// One block of kLanes groups (the last one padded with zeros by the caller).
template <typename T, int NT, int MT>
void prox_block(const T* y, T* out, int lanes, int n_rt, int m_rt, T lam, Descents<T, NT, MT>& engine,
                const int64_t* rows, int64_t g0) {
  const int n = NT ? NT : n_rt, m = MT ? MT : m_rt;
  const T tiny = std::numeric_limits<T>::min();
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
      // Unchanged values, and non-finite groups, are written back from y itself, bit for bit.
      if (lanes == kLanes<T>) {  // a full block: strided loads and stores the compiler vectorizes
        for (int i = 0; i < m; ++i) LANES {
          const T yi = y[l * m + i];
          const T w = best[i][l] == cand[i][l] && cand[i][l] != 0 ? yi : std::copysign(best[i][l] * scale[l] * half_up[l], yi);
          out[l * m + i] = finite[l] != 0 ? w : yi;
        }
        return;
      }
      for (int l = 0; l < lanes; ++l)
        for (int i = 0; i < m; ++i) {
          const T yi = y[l * m + i];
          const T w = best[i][l] == cand[i][l] && cand[i][l] != 0 ? yi : std::copysign(best[i][l] * scale[l] * half_up[l], yi);
          out[l * m + i] = finite[l] != 0 ? w : yi;
        }
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
  // Candidate 2: the top n+1, exactly: Newton from z = b_n on psi(z) = lam prod u_i(z) + z - b_n.
  const int k1 = n + 1;
  T z[kLanes<T>], gaps[kMaxM][kLanes<T>];
  for (int i = 0; i < k1 - 1; ++i) LANES {
    const T g = b[i][l] * b[i][l] - b[k1 - 1][l] * b[k1 - 1][l];
    gaps[i][l] = g > 0 ? g : T(0);
  }
  T active[kLanes<T>];  // 1 until the lane converges: each group stops on its own, never influenced by others
  LANES { z[l] = b[k1 - 1][l]; active[l] = 1; }
  for (int it = 0; it < Iters<T>::newton; ++it) {
    T prod[kLanes<T>], dlog[kLanes<T>], d[kLanes<T>];
    LANES { d[l] = 2 * z[l] - b[k1 - 1][l]; prod[l] = 1; dlog[l] = 0; }
    for (int i = 0; i < k1 - 1; ++i) LANES {
      const T ri = std::sqrt(d[l] * d[l] + gaps[i][l]);
      const T ui = (b[i][l] + ri) * T(0.5);
      prod[l] *= ui;
      const T den = ri * ui;
      dlog[l] += d[l] / (den > tiny ? den : tiny);
    }
    LANES {
      const T psi = lam_g[l] * prod[l] + z[l] - b[k1 - 1][l];
      const T dpsi = 1 + lam_g[l] * prod[l] * dlog[l];
      T zn = dpsi > 0 ? z[l] - psi / (dpsi > tiny ? dpsi : tiny) : T(0);
      zn = zn < 0 ? T(0) : (zn > b[k1 - 1][l] ? b[k1 - 1][l] : zn);
      const T moving = std::fabs(zn - z[l]) > Iters<T>::tol ? T(1) : T(0);
      z[l] = active[l] != 0 ? zn : z[l];
      active[l] *= moving;
    }
    T running = 0;
    LANES running += active[l];
    if (running == 0) break;
  }
  for (int i = 0; i < m; ++i) LANES cand[i][l] = 0;
  for (int i = 0; i < k1 - 1; ++i) LANES {
    const T d = 2 * z[l] - b[k1 - 1][l];
    cand[i][l] = (b[i][l] + std::sqrt(d * d + gaps[i][l])) * T(0.5);
  }
  LANES cand[k1 - 1][l] = z[l];
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

template <typename T>
inline void argsort_desc(const T* a, int m, int* idx);

// The convex case for m = 4 on groups in place, with explicit vectors (GCC/Clang vector extensions) of 16
// values = 4 whole groups: the other three values of each group are its in-group rotations r1, r2, r3 (one
// lane shuffle each), so e_n(x minus i) is formed with no transpose. The Jacobi iteration
// x <- T(x) = max(0, b - lam e_n(x minus i)) from x = b has the same fixed point as the coordinate descent
// above, keeps x in the box [0, b], and is a contraction in the max norm with factor
// q = lam max_i sum_{j != i} e_{n-1}(b minus i, j) = lam (m - n) max_i e_{n-1}(b minus i) when q <= 1/2 (which
// also makes the objective strongly convex on the box, as in prox_block). So |x_k - x*| <= q / (1 - q)
// |x_k - x_{k-1}|: each group stops on its own as soon as that bound
// is at most tol * max_i b_i (the scaled path's tolerance), and never depends on its neighbours.
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
  for (int v = 0; v < kVecs; ++v) {
    const V w = (V)(((I)x[v] & ~sign) | ((I)yv[v] & sign));
    const V o = x[v] == b[v] ? yv[v] : w;
    std::memcpy(out + 16 * v, &o, sizeof(V));
  }
  return qualifying;
}

// The top-n mask for m = 4, four groups per vector: the rank of each value is the number of the group's
// other values (its in-group rotations) that are larger, or equal with a lower index; keep rank < n. The
// same mask as the stable descending sort of nm_mask below, with no sort. With Project, scores is y itself,
// ranked by |y|, and out = y where kept, 0 elsewhere (the hard N:M projection) is written instead of mask.
template <typename T, bool Project = false>
void nm_mask_m4(const T* scores, uint8_t* mask, T* out, int64_t groups, int n, int threads) {
  using V = typename Vec16<T>::V;
  using I = typename Vec16<T>::I;
  // lower[R]: in lane 4g + i, whether the value rotated in, index (i + R) % 4, comes before i.
  const I lower1 = {0, 0, 0, -1, 0, 0, 0, -1, 0, 0, 0, -1, 0, 0, 0, -1};
  const I lower2 = {0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1};
  const I lower3 = {0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1};
  const int64_t chunks = groups / 4;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t c = 0; c < chunks; ++c) {
    V a, y;
    std::memcpy(&y, scores + 16 * c, sizeof(V));
    a = Project ? (V)((I)y & ~(I)(-V{})) : y;
    const V r1 = TP_ROT(a, 1), r2 = TP_ROT(a, 2), r3 = TP_ROT(a, 3);
    // r ranks above a: larger, equal (or both NaN) with a lower index, or a number against a NaN a.
    const I an = a != a;
    const I n1 = r1 != r1, n2 = r2 != r2, n3 = r3 != r3;
    const I rank = -((r1 > a) | (((r1 == a) | (an & n1)) & lower1) | (an & ~n1)) -
                   ((r2 > a) | (((r2 == a) | (an & n2)) & lower2) | (an & ~n2)) -
                   ((r3 > a) | (((r3 == a) | (an & n3)) & lower3) | (an & ~n3));
    const I keep = rank < n;
    if (Project) {
      const V o = keep ? y : V{};
      std::memcpy(out + 16 * c, &o, sizeof(V));
    } else {
      for (int l = 0; l < 16; ++l) mask[16 * c + l] = keep[l] != 0;
    }
  }
  for (int64_t g = chunks * 4; g < groups; ++g) {  // the last groups, fewer than four
    int idx[4];
    T a[4];
    for (int i = 0; i < 4; ++i) a[i] = Project ? std::fabs(scores[4 * g + i]) : scores[4 * g + i];
    argsort_desc(a, 4, idx);
    for (int i = 0; i < 4; ++i) {
      if (Project) out[4 * g + idx[i]] = i < n ? scores[4 * g + idx[i]] : T(0);
      else mask[4 * g + idx[i]] = i < n;
    }
  }
}
#undef TP_ROT

// The calling OpenMP thread's contiguous share [lo, hi) of blocks 0..blocks (the split of schedule(static)).
inline void thread_blocks(int64_t blocks, int64_t& lo, int64_t& hi) {
  const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
  lo = blocks * t / nt;
  hi = blocks * (t + 1) / nt;
}

// For m = 4, the calling OpenMP thread's share of the groups (its contiguous range of blocks). A block whose
// groups all qualify for convex_m4's path is solved in place by it, one where none does by solve(y, s, out,
// lanes, rows, g0) (the general path; lane l's group is row rows[l] of the whole y, or row g0 + l when rows is
// null). In a block with groups on both sides (near the edge of the convex regime, nearly every block: solved
// in place, every block would run the general solver, 2:4 at lam 0.05 on random data twice the time) the
// groups that qualify are solved in place by convex_m4 when they are at least half of the block, else packed
// into blocks for it, and the others packed into blocks for solve. Partial blocks are filled with zero groups
// and unit steps, which need not qualify (for n = 1, q = lam s (m - 1) whatever y): only the block's own groups
// are counted. Which path a group takes depends on the group alone, and neither path's lanes depend on each
// other, so a group's result depends neither on the order of the groups nor on the thread count. step may be null (ps is then null too); out may be y itself (a group is
// read before it is written).
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

// The diagonal-metric prox of the groups of 4 that convex_m4 leaves (any lam), following nm.py's _prox_metric,
// for the kLanes groups of a block at once (structure of arrays, one lane per group; each lane's iterations
// stop on their own). Scaled by a power of two to max |y| in [0.5, 1) (lam by 2^(e (n-1)); the step is
// unchanged), then the candidates: the top n of a^2/s (ties: lower index) as they are; every support of size
// n+1, where x_i = c_i u_i with c_i = sqrt(s_i) turns the problem into the unweighted one with b_i = a_i / c_i
// and lam prod c_i, solved by monotone Newton on psi (see prox_block; it needs only the support's smallest b,
// ties: the higher index, and the gaps of the others, in any order); every larger support by coordinate descent
// from a. The smallest objective wins (strict <: the earlier candidate on ties). Solves the lanes l < lanes
// (the others are padding). (A scalar version of the same solver, one group at a time, was 3.7x slower: the
// divisions and square roots of one group form a dependent chain.)
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
  for (int l = 0; l < lanes; ++l) {  // a non-finite group, or one with a zero step, is written back unchanged
    for (int i = 0; i < m; ++i) {
      const T yi = y[l * m + i];
      const T w = best[i][l] == a[i][l] && a[i][l] != 0 ? yi : std::copysign(best[i][l] * up1[l] * up2[l], yi);
      out[l * m + i] = finite[l] != 0 ? w : yi;
    }
  }
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

// Whether score x ranks strictly above score y: larger, or a number against a NaN (NaN ranks below every
// number, -inf included; two NaNs tie).
template <typename T>
INLINE bool ranks_above(T x, T y) {
  return x > y || (x == x && y != y);
}

// Stable descending argsort of a[0..m) (insertion sort: ties keep the lower index first; NaN last).
template <typename T>
inline void argsort_desc(const T* a, int m, int* idx) {
  for (int i = 0; i < m; ++i) {
    int j = i;
    while (j > 0 && ranks_above(a[i], a[idx[j - 1]])) { idx[j] = idx[j - 1]; --j; }
    idx[j] = i;
  }
}

template <typename T>
void nm_mask(const T* scores, uint8_t* mask, int64_t groups, int n, int m, int threads) {
  if (m == 4) return nm_mask_m4<T>(scores, mask, nullptr, groups, n, threads);
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
// m = 4, n in 1..3: the diagonal-metric prox of every group.
void torchprox_prox_nm_metric_f32(const float* y, const float* s, float* out, int64_t g, int n, const double* lam,
                                  int t) {
  prox_nm_metric<float>(y, s, out, g, n, *lam, t);
}
void torchprox_prox_nm_metric_f64(const double* y, const double* s, double* out, int64_t g, int n,
                                  const double* lam, int t) {
  prox_nm_metric<double>(y, s, out, g, n, *lam, t);
}
// m = 4: out = y on the top n of |y| in each group (ties: lower index), 0 elsewhere.
void torchprox_project_nm4_f32(const float* y, float* out, int64_t g, int n, int t) {
  nm_mask_m4<float, true>(y, nullptr, out, g, n, t);
}
void torchprox_project_nm4_f64(const double* y, double* out, int64_t g, int n, int t) {
  nm_mask_m4<double, true>(y, nullptr, out, g, n, t);
}
void torchprox_nm_mask_f32(const float* s, uint8_t* mask, int64_t g, int n, int m, int t) {
  nm_mask<float>(s, mask, g, n, m, t);
}
void torchprox_nm_mask_f64(const double* s, uint8_t* mask, int64_t g, int n, int m, int t) {
  nm_mask<double>(s, mask, g, n, m, t);
}
}
