// Dropout kernels for the CPU with a counter-based mask (see zoo/kernels/__init__.py and common.h):
// the mask is a pure function of (seed, element index), so the backward pass regenerates it instead
// of storing it, and every element costs a quarter of a 64-bit hash.

#include <ATen/Parallel.h>

#include "common.h"

namespace {

using namespace zoo_kernels;
constexpr int64_t kGrain = 1 << 14;  // elements per parallel chunk (a multiple of 4)

template <typename T>
void masked_scale_impl(const torch::Tensor& x, torch::Tensor& out, uint64_t seed, uint32_t threshold, float scale) {
  using Raw = typename Codec<T>::Raw;
  const Raw* src = reinterpret_cast<const Raw*>(x.data_ptr());
  Raw* dst = reinterpret_cast<Raw*>(out.data_ptr());
  const int64_t n = x.numel();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      dst[i] = kept(seed, i, threshold) ? Codec<T>::store(Codec<T>::load(src[i]) * scale) : Codec<T>::store(0.0f);
    }
  });
}

// grad [rows, cols] holds (c·dO)·Vᵀ on entry and dS = P ⊙ (dP − rowsum(dP ⊙ P)) on exit, where
// dP = grad ⊙ M; dropped receives P ⊙ M (for dV). probs and grad are row-major and contiguous.
template <typename T>
void softmax_dropout_backward_impl(torch::Tensor& grad, const torch::Tensor& probs, torch::Tensor& dropped,
                                   uint64_t seed, uint32_t threshold) {
  using Raw = typename Codec<T>::Raw;
  Raw* g = reinterpret_cast<Raw*>(grad.data_ptr());
  const Raw* p = reinterpret_cast<const Raw*>(probs.data_ptr());
  Raw* d = reinterpret_cast<Raw*>(dropped.data_ptr());
  const int64_t cols = probs.size(-1);
  const int64_t rows = probs.numel() / cols;
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t base = r * cols;
      float sum = 0.0f;
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t i = base + j;
        const float pj = Codec<T>::load(p[i]);
        const bool keep = kept(seed, i, threshold);
        const float gj = keep ? Codec<T>::load(g[i]) : 0.0f;
        sum += gj * pj;
        d[i] = Codec<T>::store(keep ? pj : 0.0f);
      }
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t i = base + j;
        const float pj = Codec<T>::load(p[i]);
        const float gj = kept(seed, i, threshold) ? Codec<T>::load(g[i]) : 0.0f;
        g[i] = Codec<T>::store(pj * (gj - sum));
      }
    }
  });
}

}  // namespace

// Element i is x's element i in row-major order: x must be contiguous (zoo::masked_scale makes it so).
torch::Tensor masked_scale(const torch::Tensor& x, int64_t seed, int64_t threshold, double scale) {
  constexpr const char* fn = "masked_scale";
  check_float(x, fn, "x");
  check_contiguous(x, fn, "x");
  check_threshold(threshold, fn);
  auto out = torch::empty_like(x);
  if (x.scalar_type() == at::kBFloat16) {
    masked_scale_impl<at::BFloat16>(x, out, static_cast<uint64_t>(seed), static_cast<uint32_t>(threshold), scale);
  } else {
    masked_scale_impl<float>(x, out, static_cast<uint64_t>(seed), static_cast<uint32_t>(threshold), scale);
  }
  return out;
}

// grad and probs [..., Sk]: the softmax runs over the last dimension, and element i of the mask is
// element i of probs in row-major order, as in masked_scale over the same probs.
torch::Tensor softmax_dropout_backward(torch::Tensor grad, const torch::Tensor& probs, int64_t seed, int64_t threshold) {
  constexpr const char* fn = "softmax_dropout_backward";
  check_float(probs, fn, "probs");
  check_like(grad, fn, "grad", probs, "probs");
  TORCH_CHECK(probs.dim() >= 1, fn, ": probs must have a last dimension (the softmax's), got a scalar");
  check_sizes(grad, fn, "grad", probs.sizes(), "the size of probs");
  check_contiguous(grad, fn, "grad");
  check_contiguous(probs, fn, "probs");
  check_threshold(threshold, fn);
  auto dropped = torch::empty_like(probs);
  if (probs.numel() == 0) return dropped;  // rows = numel / Sk below: no rows, or rows of no keys
  if (probs.scalar_type() == at::kBFloat16) {
    softmax_dropout_backward_impl<at::BFloat16>(grad, probs, dropped, static_cast<uint64_t>(seed), static_cast<uint32_t>(threshold));
  } else {
    softmax_dropout_backward_impl<float>(grad, probs, dropped, static_cast<uint64_t>(seed), static_cast<uint32_t>(threshold));
  }
  return dropped;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("masked_scale", &masked_scale, "out = keep ? x * scale : 0 with the counter-based mask");
  m.def("softmax_dropout_backward", &softmax_dropout_backward,
        "in place: grad -> dS of softmax followed by dropout; returns P ⊙ M");
}
