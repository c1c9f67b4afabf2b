// OCP 8-bit float E4M3 ("e4m3fn", as torch.float8_e4m3fn and the OCP OFP8 spec define
// it): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, 0x7f/0xff are NaN,
// largest finite 448, smallest subnormal 2^-9.
//
// The fp8 KV cache stores each (token, KV head) row of head_dim values as fp8 codes of
// x / scale with one f32 scale per row. The scale is a power of two, the smallest with
// max|x| / scale <= 448, so that (a) nothing saturates, (b) code · scale is exact in
// f32, and (c) multiplying by the scale commutes with f32 rounding: attention over fp8
// K/V gives the bits of f32 attention over the dequantized K/V (the kernel test checks).
// A power of two wastes at most one binade of the top of the range; the relative
// precision of a float format (3 mantissa bits, ≤ 2^-4 relative error) does not depend
// on the scale.
#ifndef SLUICE_KERNELS_FP8_H_
#define SLUICE_KERNELS_FP8_H_

#include <array>
#include <cmath>
#include <cstdint>

namespace sluice::kernels {

inline constexpr float kFp8E4M3Max = 448.f;

// Round to nearest even; |f| beyond 448 saturates to ±448; NaN stays NaN.
inline uint8_t F32ToFp8E4M3(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return sign | 0x7f;  // NaN
  float a;
  __builtin_memcpy(&a, &abs_bits, 4);
  if (a < 0.015625f) {  // below 2^-6: subnormal codes, units of 2^-9 (rint rounds to even)
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.f));  // 8 -> 0x08 = 2^-6
  }
  if (a >= kFp8E4M3Max) return sign | 0x7e;
  // Round the f32 mantissa to 3 bits, to nearest even (a carry moves into the exponent).
  const uint32_t rounded = abs_bits + 0x7ffffu + ((abs_bits >> 20) & 1u);
  uint32_t code = (rounded >> 20) - ((127u - 7u) << 3);
  if (code > 0x7e) code = 0x7e;
  return sign | static_cast<uint8_t>(code);
}

namespace internal {
inline std::array<float, 256> MakeFp8E4M3Table() {
  std::array<float, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const int e = (c >> 3) & 0xf;
    const int m = c & 7;
    float v;
    if (e == 0xf && m == 7) {
      v = NAN;
    } else if (e == 0) {
      v = std::ldexp(static_cast<float>(m), -9);
    } else {
      v = std::ldexp(1.f + m / 8.f, e - 7);
    }
    t[c] = (c & 0x80) ? -v : v;
  }
  return t;
}
}  // namespace internal

// Exact widening through a 256-entry table (1 KiB, stays in L1 inside attention loops).
inline const float* Fp8E4M3Table() {
  static const std::array<float, 256> table = internal::MakeFp8E4M3Table();
  return table.data();
}
inline float Fp8E4M3ToF32(uint8_t v) { return Fp8E4M3Table()[v]; }

// The same widening without a table, in integer and float operations a compiler turns into
// vector code (attention loops): a normal code's exponent and mantissa move into f32's
// fields with the bias changed (7 -> 127); a subnormal code (exponent 0) is m · 2^-9.
// Exact for every finite code; the NaN codes (0x7f, 0xff, which the saturating encoder
// never writes) read as ±480.
inline float Fp8E4M3Widen(uint8_t v) {
  const uint32_t magnitude = v & 0x7fu;
  const uint32_t normal_bits = (magnitude << 20) + (120u << 23);
  float normal;
  __builtin_memcpy(&normal, &normal_bits, 4);  // (a NaN-free bit pattern)
  const float subnormal = static_cast<float>(magnitude) * 0x1p-9f;
  uint32_t normal_word, subnormal_word;
  __builtin_memcpy(&normal_word, &normal, 4);
  __builtin_memcpy(&subnormal_word, &subnormal, 4);
  // A select by mask, not a branch: the loops that call this stay vectorised.
  const uint32_t is_normal = 0u - static_cast<uint32_t>(magnitude >= 8);
  uint32_t bits = (normal_word & is_normal) | (subnormal_word & ~is_normal);
  bits |= (static_cast<uint32_t>(v) & 0x80u) << 24;
  float out;
  __builtin_memcpy(&out, &bits, 4);
  return out;
}

// The power-of-two scale of a row whose largest magnitude is amax (see the top): 1 for
// an all-zero or non-finite row; never below 2^-100, so scale and x / scale stay normal.
inline float Fp8E4M3RowScale(float amax) {
  if (!(amax > 0.f) || !std::isfinite(amax)) return 1.f;
  int e;
  const float m = std::frexp(amax / kFp8E4M3Max, &e);  // amax / 448 = m · 2^e, m in [0.5, 1)
  if (m == 0.5f) --e;                                   // exactly a power of two
  if (e < -100) e = -100;
  float scale = std::ldexp(1.f, e);
  if (amax / scale > kFp8E4M3Max) scale *= 2.f;  // amax / 448 rounded down onto a power of two
  return scale;
}

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_FP8_H_
