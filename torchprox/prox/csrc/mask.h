// The top-n mask of every group (ties: lower index first; NaN ranks last), and for m = 4 also the hard N:M
// projection, four groups per vector.
#pragma once
#include "lanes.h"

namespace {

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
