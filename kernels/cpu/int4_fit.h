// How `--quantization int4` picks the bf16 scale s and minimum m of one group of
// weights (kernels/cpu/gemm_int4_cpu.h has the format: dequant(w) = s·q + m, q in 0..15).
//
// Min-max (Int4MinMaxParams): m = lo rounded toward −∞, s = (hi − m)/15 rounded toward
// +∞, so no weight is clamped and every weight is within s/2 of its value. That bound is
// the worst case; the mean squared error, which is what moves the logits, is not the
// smallest it can be: the extremes get a code each while most weights sit in the middle.
//
// Fitted (FitInt4Group), the rule the packer uses: start from the codes of the exact
// range (q = round((w − lo)·15/(hi − lo))), take the
// least-squares (s, m) for those codes, round both to bf16 and recompute the codes with
// the rounded pair; do that twice and keep the better pair. The winner is then scored by
// Σ (w − fma(s, q, m))² exactly as the kernel dequantizes, against min-max's, and the
// lower wins: a fitted group never errs more in the squared sum than min-max, and its
// extreme weights may be clamped to code 0 or 15. (A search over the step as well, with
// 3 or 5 starting steps, left 3–8 % less squared error on bell-shaped weights but did
// not lower the trained demo model's KL measurably, and took 2–3.5x the load time.)
// Deterministic: the same weights give the same packed bits on every load.
#ifndef SLUICE_KERNELS_CPU_INT4_FIT_H_
#define SLUICE_KERNELS_CPU_INT4_FIT_H_

#include <cstdint>

namespace sluice::kernels::cpu {

struct Int4GroupParams {
  uint16_t scale = 0;    // bf16 bits; 0 for a constant group
  uint16_t minimum = 0;  // bf16 bits
};

Int4GroupParams Int4MinMaxParams(const float* w, int64_t n);
Int4GroupParams FitInt4Group(const float* w, int64_t n);

// clamp(round((w − m)/s), 0, 15), round half away from zero; 0 when s = 0.
int Int4Code(float w, float s, float m);
// Σ (w − fma(s, q, m))² over the group with its codes, in double.
double Int4GroupSquaredError(const float* w, int64_t n, Int4GroupParams p);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_INT4_FIT_H_
