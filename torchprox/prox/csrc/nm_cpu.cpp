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
// Files (one translation unit: this file includes the headers, each of which includes what it uses):
//   lanes.h    blocks, lane loops, e_k, the objective, powers of two and scaling, the write-back, vectors of 16
//   newton.h   monotone Newton on a support of n + 1 (both the scalar-step and the diagonal-metric path)
//   descent.h  coordinate descent (both paths) and the per-thread stores that run the scalar-step descents
//   m4.h       the m = 4 convex case in explicit vectors, and the split of a block between it and a solver
//   general.h  the scalar-step prox of one block, any m, and its loop
//   metric.h   the diagonal-metric prox (m = 4)
//   mask.h     the top-n mask and, for m = 4, the hard projection
//   nm_cpu.cpp the exported C entry points
// Built once by torchprox/prox/_native.py with the system C++ compiler and loaded with ctypes.
#include "general.h"
#include "mask.h"
#include "metric.h"

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
