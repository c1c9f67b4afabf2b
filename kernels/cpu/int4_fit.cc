#include "kernels/cpu/int4_fit.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/tensor.h"

namespace sluice::kernels::cpu {

namespace {

// The neighbouring bf16 values toward −∞ and +∞ (finite inputs).
uint16_t Bf16NextDown(uint16_t b) {
  if (b == 0x0000) return 0x8001;       // +0 → the smallest negative subnormal
  return (b & 0x8000) ? b + 1 : b - 1;  // away from zero if negative, toward it if positive
}
uint16_t Bf16NextUp(uint16_t b) {
  if (b == 0x8000) b = 0x0000;  // −0 → +0, then up
  if ((b & 0x8000) == 0) return b + 1;
  return b - 1;
}
uint16_t Bf16AtMost(float v) {
  uint16_t b = F32ToBf16(v);
  while (Bf16ToF32(b) > v) b = Bf16NextDown(b);
  return b;
}
uint16_t Bf16AtLeast(float v) {
  uint16_t b = F32ToBf16(v);
  while (Bf16ToF32(b) < v) b = Bf16NextUp(b);
  return b;
}

constexpr int kMaxGroup = 1024;
constexpr int kFits = 2;

// The search runs on cheap f32 arithmetic (a reciprocal, floor(x + ½)); only its winner
// is scored exactly (Int4GroupSquaredError) against min-max, which keeps the guarantee.
void Codes(const float* w, int64_t n, float inv, float m, float* q) {
  for (int64_t i = 0; i < n; ++i) q[i] = std::clamp(std::floor((w[i] - m) * inv + 0.5f), 0.0f, 15.0f);
}

// Least-squares (s, m) for fixed codes; false when the codes do not determine s > 0.
bool LeastSquares(const float* w, const float* q, int64_t n, float* s, float* m) {
  float sq = 0, sw = 0, sqq = 0, sqw = 0;
  for (int64_t i = 0; i < n; ++i) {
    sq += q[i];
    sw += w[i];
    sqq += q[i] * q[i];
    sqw += q[i] * w[i];
  }
  const double det = static_cast<double>(n) * sqq - static_cast<double>(sq) * sq;
  if (!(det > 0)) return false;
  const double scale = (static_cast<double>(n) * sqw - static_cast<double>(sq) * sw) / det;
  if (!(scale > 0)) return false;
  *s = static_cast<float>(scale);
  *m = static_cast<float>((sw - scale * sq) / n);
  return std::isfinite(*s) && std::isfinite(*m);
}

float ApproxError(const float* w, const float* q, int64_t n, float s, float m) {
  float err = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float d = w[i] - std::fma(s, q[i], m);
    err += d * d;
  }
  return err;
}

}  // namespace

int Int4Code(float w, float s, float m) {
  if (!(s > 0)) return 0;
  return static_cast<int>(std::clamp(std::round((w - m) / s), 0.0f, 15.0f));
}

double Int4GroupSquaredError(const float* w, int64_t n, Int4GroupParams p) {
  const float s = Bf16ToF32(p.scale), m = Bf16ToF32(p.minimum);
  double err = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(w[i]) - std::fma(s, static_cast<float>(Int4Code(w[i], s, m)), m);
    err += d * d;
  }
  return err;
}

Int4GroupParams Int4MinMaxParams(const float* w, int64_t n) {
  float lo = w[0], hi = w[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
  }
  Int4GroupParams p;
  p.minimum = std::isfinite(lo) ? Bf16AtMost(lo) : 0;
  const float range = hi - Bf16ToF32(p.minimum);
  p.scale = (std::isfinite(range) && range > 0) ? Bf16AtLeast(range / 15.0f) : 0;
  return p;
}

Int4GroupParams FitInt4Group(const float* w, int64_t n) {
  const Int4GroupParams minmax = Int4MinMaxParams(w, n);
  if (minmax.scale == 0 || n > kMaxGroup) return minmax;  // constant (or non-finite) group
  float lo = w[0], hi = w[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
  }
  // Start from min-max's codes; fit, round, recode, twice.
  float q[kMaxGroup];
  Codes(w, n, 15.0f / (hi - lo), lo, q);
  Int4GroupParams best = minmax;
  float best_err = std::numeric_limits<float>::infinity();
  for (int fit = 0; fit < kFits; ++fit) {
    float s, m;
    if (!LeastSquares(w, q, n, &s, &m)) break;
    const Int4GroupParams p{F32ToBf16(s), F32ToBf16(m)};
    const float sr = Bf16ToF32(p.scale), mr = Bf16ToF32(p.minimum);
    if (!(sr > 0)) break;
    Codes(w, n, 1.0f / sr, mr, q);
    const float err = ApproxError(w, q, n, sr, mr);
    if (err < best_err) {
      best_err = err;
      best = p;
    }
  }
  if (best.scale == minmax.scale && best.minimum == minmax.minimum) return minmax;
  return Int4GroupSquaredError(w, n, best) < Int4GroupSquaredError(w, n, minmax) ? best : minmax;
}

}  // namespace sluice::kernels::cpu
