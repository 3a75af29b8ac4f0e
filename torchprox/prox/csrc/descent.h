// Exact coordinate descent, the one routine of every path: one sweep (cd_sweep, with an optional diagonal
// metric) and descent to convergence (coordinate_descent), used on the top-k supports (k > n + 1) of the
// scalar-step prox and on the supports of the diagonal-metric prox (metric.h); and the two per-thread stores that
// run the scalar-step descents of the groups that need them: DescentEngine (m > 4, lane refill) and
// PackedDescents (m = 4, packed blocks).
#pragma once
#include "lanes.h"

namespace {

// One sweep of projected coordinate descent on x[0..k) (the rest of the group stays 0) for
// 1/2 sum (x - b)^2 / s + lam e_{n+1}(x), x >= 0: x_i <- max(0, b_i - s_i lam e_n(x minus i)), last coordinate first, in
// the lanes where active is nonzero; change[l] is the lane's largest move, en[l] (if given) e_n(x[0..k)) at the start
// of the sweep. e_n(x minus i) = sum_r P_i[r] S_i[n - r]
// with P_i the elementary symmetric polynomials of x[0..i) (computed at the start of the sweep: those
// coordinates are not updated yet) and S_i those of x(i..k) (grown one updated coordinate at a time): O(k n) a
// sweep, sums of non-negative terms only. A lane whose b and x are 0 on [j, k) gets the same bits as a sweep on
// x[0..j): those coordinates stay +0 and add exact zeros. The terms with P_i[0] = S_i[0] = 1 are added without
// their product, the same bits (1 * s and fma(p, 1, c) are exact) for fewer loads. step: the per-coordinate
// steps s [k][kLanes] of the diagonal-metric prox (metric.h, on a support gathered into x[0..k)), or nullptr for
// s = 1 (the scalar-step prox).
template <typename T>
INLINE void cd_sweep(T (*x)[kLanes<T>], const T (*b)[kLanes<T>], int k, int n, const T* lam, const T* active,
                     T* change, T* en = nullptr, const T (*step)[kLanes<T>] = nullptr) {
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
      T v = b[i][l] - (step == nullptr ? lam[l] : step[i][l] * lam[l]) * c[l];
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
// or the sweep cap. lanes: which lanes to iterate at all (the others keep x), or all of them; step: as cd_sweep's.
template <typename T>
INLINE void coordinate_descent(T (*x)[kLanes<T>], const T (*b)[kLanes<T>], int k, int n, const T* lam, const T* tol,
                               const T* lanes = nullptr, const T (*step)[kLanes<T>] = nullptr) {
  T active[kLanes<T>];
  LANES active[l] = lanes == nullptr ? T(1) : lanes[l];
  if (lanes != nullptr && count(active) == 0) return;
  for (int sweep = 0; sweep < Iters<T>::sweeps; ++sweep) {
    T change[kLanes<T>];
    cd_sweep<T>(x, b, k, n, lam, active, change, nullptr, step);
    LANES active[l] *= change[l] > tol[l] ? T(1) : T(0);
    if (count(active) == 0) break;
  }
}

// The candidates on the top-k supports, k > n+1, of the groups that need them (see prox_block): coordinate descent
// from two starts per support, x = b and the previous support's solution ("grown"), supports in increasing
// order, the best objective kept with a strict < (the earlier candidate wins ties). Run kLanes groups at a time
// with lane refill: a lane whose descent has stopped takes its group's next descent, or a waiting group, at
// once, so a descent's sweeps are its own and not those of the slowest group of a block (whose sweeps would
// run over every support and start in turn). Used for m > 4 only: for m = 4 its bookkeeping costs more than it
// saves, and PackedDescents serves m = 4 (docs/benchmarks.md, Kernel design notes).
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
// local minimizer (see prox_block) packed into whole blocks for their coordinate descents. Nearly every block
// of the general path has some lanes that need a descent, but far from all: descents run per block would run
// every block until its slowest such lane converged; packed, they run only on the lanes that need them. (Lane
// refill, as DescentEngine does, costs more than it saves for m = 4: see there.)
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

}  // namespace
