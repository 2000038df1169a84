// Fused elementwise chains for the CPU: the parameter-free RMS norm and rotary position embedding.
//
// In PyTorch each is a chain of five to eight whole-tensor passes (casts, powers, means, products,
// stack and flatten), each with its own autograd node; here each direction is one pass over the
// data with fp32 arithmetic and a single rounding to the tensor's dtype.
//
//   rms_norm:  y = x · r,  r = (mean(x²) + ε)^(−1/2) per row;   dx = r · (dy − y · mean(dy · y))
//   rope:      (x_2i, x_2i+1) ↦ (x_2i·c − x_2i+1·s, x_2i+1·c + x_2i·s) with c, s of the pair's angle;
//              its backward is the same rotation with −s.

#include <ATen/Parallel.h>

#include <cmath>

#include "common.h"

namespace {

using namespace zoo_kernels;

template <typename T>
using RawOf = typename Codec<T>::Raw;

constexpr int64_t kRowGrain = 64;

template <typename T>
void rms_norm_forward_impl(const at::Tensor& x, at::Tensor& y, at::Tensor& rstd, double eps) {
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  const RawOf<T>* src = reinterpret_cast<const RawOf<T>*>(x.data_ptr());
  RawOf<T>* dst = reinterpret_cast<RawOf<T>*>(y.data_ptr());
  float* r_out = rstd.data_ptr<float>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const RawOf<T>* xr = src + row * cols;
      RawOf<T>* yr = dst + row * cols;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < cols; ++j) {
        const float v = Codec<T>::load(xr[j]);
        sum += v * v;
      }
      const float r = 1.0f / std::sqrt(sum / static_cast<float>(cols) + static_cast<float>(eps));
      r_out[row] = r;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) yr[j] = Codec<T>::store(Codec<T>::load(xr[j]) * r);
    }
  });
}

template <typename T>
void rms_norm_backward_impl(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& rstd, at::Tensor& dx) {
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  const RawOf<T>* g = reinterpret_cast<const RawOf<T>*>(grad.data_ptr());
  const RawOf<T>* src = reinterpret_cast<const RawOf<T>*>(x.data_ptr());
  RawOf<T>* dst = reinterpret_cast<RawOf<T>*>(dx.data_ptr());
  const float* r_in = rstd.data_ptr<float>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const RawOf<T>* gr = g + row * cols;
      const RawOf<T>* xr = src + row * cols;
      RawOf<T>* dr = dst + row * cols;
      const float r = r_in[row];
      float dot = 0.0f;  // Σ dy · y
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < cols; ++j) dot += Codec<T>::load(gr[j]) * Codec<T>::load(xr[j]) * r;
      const float mean = dot / static_cast<float>(cols);
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        dr[j] = Codec<T>::store(r * (Codec<T>::load(gr[j]) - Codec<T>::load(xr[j]) * r * mean));
      }
    }
  });
}

// x [B, H, S, d] with any strides but a contiguous last dim; cos, sin [B, S, d/2] (strides as given,
// 0 where broadcast), contiguous in the last dim. out is [B, H, S, d] contiguous.
template <typename T>
void rope_impl(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out, float sign) {
  const int64_t B = x.size(0), H = x.size(1), S = x.size(2), d = x.size(3), half = d / 2;
  const RawOf<T>* xs = reinterpret_cast<const RawOf<T>*>(x.data_ptr());
  const RawOf<T>* cs = reinterpret_cast<const RawOf<T>*>(cos.data_ptr());
  const RawOf<T>* ss = reinterpret_cast<const RawOf<T>*>(sin.data_ptr());
  RawOf<T>* os = reinterpret_cast<RawOf<T>*>(out.data_ptr());
  const int64_t xb = x.stride(0), xh = x.stride(1), xsr = x.stride(2);
  const int64_t cb = cos.stride(0), csr = cos.stride(1), sb = sin.stride(0), ssr = sin.stride(1);
  at::parallel_for(0, B * H * S, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (H * S), h = (row / S) % H, n = row % S;
      const RawOf<T>* xr = xs + b * xb + h * xh + n * xsr;
      const RawOf<T>* cr = cs + b * cb + n * csr;
      const RawOf<T>* sr = ss + b * sb + n * ssr;
      RawOf<T>* orow = os + row * d;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float even = Codec<T>::load(xr[2 * i]), odd = Codec<T>::load(xr[2 * i + 1]);
        const float c = Codec<T>::load(cr[i]), s = sign * Codec<T>::load(sr[i]);
        orow[2 * i] = Codec<T>::store(even * c - odd * s);
        orow[2 * i + 1] = Codec<T>::store(odd * c + even * s);
      }
    }
  });
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name, " must be float32 or bfloat16");
}

}  // namespace

// Returns (y, rstd): y like x, rstd float32 with one value per row.
std::vector<at::Tensor> rms_norm_forward(const at::Tensor& x_in, double eps) {
  check_float(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty({x.numel() / x.size(-1)}, x.options().dtype(at::kFloat));
  if (x.scalar_type() == at::kBFloat16) {
    rms_norm_forward_impl<at::BFloat16>(x, y, rstd, eps);
  } else {
    rms_norm_forward_impl<float>(x, y, rstd, eps);
  }
  return {y, rstd};
}

at::Tensor rms_norm_backward(const at::Tensor& grad_in, const at::Tensor& x, const at::Tensor& rstd) {
  check_float(grad_in, "grad");
  TORCH_CHECK(grad_in.scalar_type() == x.scalar_type() && grad_in.sizes() == x.sizes(), "grad must match x");
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor dx = at::empty_like(x);
  if (x.scalar_type() == at::kBFloat16) {
    rms_norm_backward_impl<at::BFloat16>(grad, x, rstd, dx);
  } else {
    rms_norm_backward_impl<float>(grad, x, rstd, dx);
  }
  return dx;
}

// x [B, H, S, d]; cos, sin broadcastable to [B, 1, S, d/2] in the dtype of x. sign = −1 rotates back.
at::Tensor rope(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in, double sign) {
  check_float(x_in, "x");
  TORCH_CHECK(x_in.dim() == 4 && x_in.size(3) % 2 == 0, "x must be [B, H, S, d] with even d");
  TORCH_CHECK(cos_in.scalar_type() == x_in.scalar_type() && sin_in.scalar_type() == x_in.scalar_type(),
              "cos and sin must have the dtype of x");
  const at::Tensor x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  const int64_t B = x.size(0), S = x.size(2), half = x.size(3) / 2;
  at::Tensor cos = cos_in.expand({B, 1, S, half}).select(1, 0);
  at::Tensor sin = sin_in.expand({B, 1, S, half}).select(1, 0);
  if (cos.stride(2) != 1) cos = cos.contiguous();
  if (sin.stride(2) != 1) sin = sin.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.scalar_type() == at::kBFloat16) {
    rope_impl<at::BFloat16>(x, cos, sin, out, static_cast<float>(sign));
  } else {
    rope_impl<float>(x, cos, sin, out, static_cast<float>(sign));
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm_forward", &rms_norm_forward, "parameter-free RMS norm: (y, rstd)");
  m.def("rms_norm_backward", &rms_norm_backward, "its backward pass");
  m.def("rope", &rope, "rotary embedding of interleaved pairs (sign -1: the inverse rotation)");
}
