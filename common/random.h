// Portable counter-based randomness: the same (seed, counters) give the same numbers on every
// platform and standard library (std::*_distribution output is implementation-defined).
#pragma once

#include <cmath>
#include <cstdint>

namespace raptr {

// SplitMix64 finaliser: a bijective 64-bit mixer with good avalanche.
inline uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Hash of a seed and up to three counters, e.g. (seed, step, layer).
inline uint64_t HashCounters(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  uint64_t h = Mix64(seed ^ 0x5851f42d4c957f2dULL);
  h = Mix64(h ^ a);
  h = Mix64(h ^ (b + 0x632be59bd9b4e019ULL));
  return Mix64(h ^ (c + 0x2545f4914f6cdd1dULL));
}

// Uniform in [0, 1) with 53 random bits.
inline double ToUnitDouble(uint64_t bits) {
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

// Sequential generator over a counter: Next() = HashCounters(seed, stream, i++).
class CounterRng {
 public:
  CounterRng(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}
  uint64_t Next() { return HashCounters(seed_, stream_, counter_++); }
  double Uniform() { return ToUnitDouble(Next()); }
  // Uniform integer in [0, n), n > 0 (rejection sampling, no modulo bias).
  uint64_t Below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
      x = Next();
    } while (x >= limit);
    return x % n;
  }
  // Standard normal (Box-Muller; one draw per call, the partner is discarded for simplicity).
  double Normal() {
    double u1 = Uniform();
    const double u2 = Uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  uint64_t counter() const { return counter_; }

 private:
  uint64_t seed_;
  uint64_t stream_;
  uint64_t counter_ = 0;
};

}  // namespace raptr
