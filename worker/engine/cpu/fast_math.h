// Branch-free exp/tanh for float that the compiler can vectorise (glibc's libm calls do not
// vectorise without -ffast-math). Double keeps libm: it exists for gradient checks, not speed.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace raptr::cpu {

// exp(x) for float, relative error about 2 ulp on [-87, 88]; clamps outside (exp(-87) ~ 1e-38,
// so tiny results flush toward the smallest normal rather than denormals).
inline float Exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // n = round(x / ln 2) by adding 1.5 * 2^23: at that magnitude a float's ulp is 1, so the sum
  // rounds to an integer held in the low mantissa bits. Unlike std::floor plus a float-to-int
  // conversion, GCC vectorises this (measured: the floor version left GELU loops scalar).
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  // Cody-Waite split of ln 2 keeps r exact enough.
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t n_int = std::bit_cast<int32_t>(shifted) - 0x4B400000;  // n as an integer
  return p * std::bit_cast<float>((n_int + 127) << 23);                // p * 2^n
}
inline double Exp(double x) { return std::exp(x); }

inline float Tanh(float x) {
  // tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at +-inf, absolute error ~1e-7 near 0.
  return 1.0f - 2.0f / (Exp(2.0f * x) + 1.0f);
}
inline double Tanh(double x) { return std::tanh(x); }

// tanh(x) and its derivative 1 - tanh(x)^2. For float the derivative is 4e/(e+1)^2 with
// e = exp(2x): computing 1 - t*t with t near +-1 would magnify t's rounding error ~10x.
inline void TanhAndDerivative(float x, float* t, float* dt) {
  const float e = Exp(2.0f * x);
  const float inv = 1.0f / (e + 1.0f);
  *t = 1.0f - 2.0f * inv;
  *dt = 4.0f * (e * inv) * inv;  // e * inv <= 1: no overflow for large x
}
inline void TanhAndDerivative(double x, double* t, double* dt) {
  *t = std::tanh(x);
  *dt = 1.0 - *t * *t;
}

}  // namespace raptr::cpu
