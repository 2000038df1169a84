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

// Argument checks of the entry points. Each message names the entry point and the argument, so a
// caller's mistake reads as one instead of as a failure deep inside a loop or a matmul. The kernels
// index raw pointers row-major, so they take contiguous tensors; the Python wrappers make them so
// (`.contiguous()` is free on a tensor that already is).

inline void check_cpu(const at::Tensor& t, const char* fn, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be on the CPU, got ", t.device());
}

inline void check_float(const at::Tensor& t, const char* fn, const char* name) {
  check_cpu(t, fn, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, fn, ": ", name,
              " must be float32 or bfloat16, got ", t.scalar_type());
}

inline void check_like(const at::Tensor& t, const char* fn, const char* name, const at::Tensor& like,
                       const char* like_name) {
  check_cpu(t, fn, name);
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), fn, ": ", name, " must have the dtype of ", like_name, " (",
              like.scalar_type(), "), got ", t.scalar_type());
}

inline void check_contiguous(const at::Tensor& t, const char* fn, const char* name) {
  TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous, got sizes ", t.sizes(), " with strides ",
              t.strides(), " (call .contiguous() on it)");
}

inline void check_sizes(const at::Tensor& t, const char* fn, const char* name, at::IntArrayRef expected,
                        const char* layout) {
  TORCH_CHECK(t.sizes() == expected, fn, ": ", name, " must be ", layout, " = ", expected, ", got ", t.sizes());
}

// t must broadcast to `target` (at most as many dims, each of size 1 or the target's).
inline void check_broadcastable(const at::Tensor& t, const char* fn, const char* name, at::IntArrayRef target,
                                const char* layout) {
  bool ok = t.dim() <= static_cast<int64_t>(target.size());
  for (int64_t i = 1; ok && i <= t.dim(); ++i) {
    const int64_t size = t.size(-i), want = target[target.size() - i];
    ok = size == 1 || size == want;
  }
  TORCH_CHECK(ok, fn, ": ", name, " must broadcast to ", layout, " = ", target, ", got ", t.sizes());
}

// The lanes are 16-bit: threshold 2^16 or more would drop everything (p = 1, an infinite rescaling).
inline void check_threshold(int64_t threshold, const char* fn) {
  TORCH_CHECK(threshold >= 0 && threshold < 65536, fn, ": threshold must be in [0, 65536) (dropout p < 1), got ",
              threshold);
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
