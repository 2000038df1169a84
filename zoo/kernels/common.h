// Pieces shared by the CPU kernels: the counter-based dropout mask and bf16 <-> float conversions.
//
// Element i of a call with seed s is kept when lane (i mod 4) of splitmix64(s + (i / 4 + 1) · φ)
// (16-bit lanes, lowest first) is at least `threshold` (zoo/kernels/__init__.py has the same rule
// in Python for the tests). bf16 values are handled as raw 16-bit words.

#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <cstring>

namespace zoo_kernels {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline bool kept(uint64_t seed, int64_t i, uint32_t threshold) {
  const uint64_t word = splitmix64(seed + (static_cast<uint64_t>(i >> 2) + 1) * kGolden);
  const uint32_t lane = static_cast<uint32_t>((word >> (16 * (i & 3))) & 0xFFFF);
  return lane >= threshold;
}

inline float bf16_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

template <typename T>
struct Codec;

template <>
struct Codec<float> {
  using Raw = float;
  static float load(Raw x) { return x; }
  static Raw store(float x) { return x; }
};

template <>
struct Codec<at::BFloat16> {
  using Raw = uint16_t;
  static float load(Raw x) { return bf16_to_float(x); }
  static Raw store(float x) { return float_to_bf16(x); }
};

}  // namespace zoo_kernels
