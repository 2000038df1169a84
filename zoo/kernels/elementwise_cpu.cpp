// Fused elementwise chains for the CPU: the parameter-free RMS norm and rotary position embedding.
//
// In PyTorch each is a chain of five to eight whole-tensor passes (casts, powers, means, products,
// stack and flatten), each with its own autograd node; here each direction is one pass over the
// data with fp32 arithmetic and a single rounding to the tensor's dtype.
//
//   rms_norm:  y = x · r,  r = (mean(x²) + ε)^(−1/2) per row;   dx = r · (dy − y · mean(dy · y)),
//              computed from y and r (the output is what stays in memory for the backward pass)
//   rope:      (x_2i, x_2i+1) ↦ (x_2i·c − x_2i+1·s, x_2i+1·c + x_2i·s) with c, s of the pair's angle;
//              its backward is the same rotation with −s.

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
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
void rms_norm_backward_impl(const at::Tensor& grad, const at::Tensor& y, const at::Tensor& rstd, at::Tensor& dx) {
  const int64_t cols = y.size(-1), rows = y.numel() / cols;
  const RawOf<T>* g = reinterpret_cast<const RawOf<T>*>(grad.data_ptr());
  const RawOf<T>* src = reinterpret_cast<const RawOf<T>*>(y.data_ptr());
  RawOf<T>* dst = reinterpret_cast<RawOf<T>*>(dx.data_ptr());
  const float* r_in = rstd.data_ptr<float>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const RawOf<T>* gr = g + row * cols;
      const RawOf<T>* yr = src + row * cols;
      RawOf<T>* dr = dst + row * cols;
      const float r = r_in[row];
      float dot = 0.0f;  // Σ dy · y
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < cols; ++j) dot += Codec<T>::load(gr[j]) * Codec<T>::load(yr[j]);
      const float mean = dot / static_cast<float>(cols);
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        dr[j] = Codec<T>::store(r * (Codec<T>::load(gr[j]) - Codec<T>::load(yr[j]) * mean));
      }
    }
  });
}

// x [B, H, S, d] with any strides but a contiguous last dim; cos, sin [B, S, d/2] (strides as given,
// 0 where broadcast), contiguous in the last dim. out is [B, H, S, d] with a contiguous last dim.
template <typename T>
void rope_impl(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out, float sign) {
  const int64_t B = x.size(0), H = x.size(1), S = x.size(2), d = x.size(3), half = d / 2;
  const RawOf<T>* xs = reinterpret_cast<const RawOf<T>*>(x.data_ptr());
  const RawOf<T>* cs = reinterpret_cast<const RawOf<T>*>(cos.data_ptr());
  const RawOf<T>* ss = reinterpret_cast<const RawOf<T>*>(sin.data_ptr());
  RawOf<T>* os = reinterpret_cast<RawOf<T>*>(out.data_ptr());
  const int64_t xb = x.stride(0), xh = x.stride(1), xsr = x.stride(2);
  const int64_t ob = out.stride(0), oh = out.stride(1), osr = out.stride(2);
  const int64_t cb = cos.stride(0), csr = cos.stride(1), sb = sin.stride(0), ssr = sin.stride(1);
  at::parallel_for(0, B * H * S, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (H * S), h = (row / S) % H, n = row % S;
      const RawOf<T>* xr = xs + b * xb + h * xh + n * xsr;
      const RawOf<T>* cr = cs + b * cb + n * csr;
      const RawOf<T>* sr = ss + b * sb + n * ssr;
      RawOf<T>* orow = os + b * ob + h * oh + n * osr;
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

// A last dimension read at unit stride (or of at most one element, where the stride is never used).
bool unit_last_stride(const at::Tensor& t) { return t.size(-1) <= 1 || t.stride(-1) == 1; }

}  // namespace

// Rows are the last dimension of x, read row-major: x must be contiguous (zoo::rms_norm makes it so).
// Returns (y, rstd): y like x, rstd float32 with one value per row.
std::vector<at::Tensor> rms_norm_forward(const at::Tensor& x, double eps) {
  constexpr const char* fn = "rms_norm_forward";
  check_float(x, fn, "x");
  TORCH_CHECK(x.dim() >= 1, fn, ": x must have a last dimension (the normalised one), got a scalar");
  check_contiguous(x, fn, "x");
  at::Tensor y = at::empty_like(x);
  const int64_t cols = x.size(-1), rows = cols == 0 ? 0 : x.numel() / cols;
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return {y, rstd};
  if (x.scalar_type() == at::kBFloat16) {
    rms_norm_forward_impl<at::BFloat16>(x, y, rstd, eps);
  } else {
    rms_norm_forward_impl<float>(x, y, rstd, eps);
  }
  return {y, rstd};
}

// grad and y contiguous and alike; y and rstd as rms_norm_forward returned them.
at::Tensor rms_norm_backward(const at::Tensor& grad, const at::Tensor& y, const at::Tensor& rstd) {
  constexpr const char* fn = "rms_norm_backward";
  check_float(y, fn, "y");
  check_like(grad, fn, "grad", y, "y");
  TORCH_CHECK(y.dim() >= 1, fn, ": y must have a last dimension (the normalised one), got a scalar");
  check_sizes(grad, fn, "grad", y.sizes(), "the size of y");
  const int64_t cols = y.size(-1), rows = cols == 0 ? 0 : y.numel() / cols;
  check_cpu(rstd, fn, "rstd");
  TORCH_CHECK(rstd.scalar_type() == at::kFloat, fn, ": rstd must be float32, got ", rstd.scalar_type());
  check_sizes(rstd, fn, "rstd", {rows}, "[rows of y]");
  check_contiguous(grad, fn, "grad");
  check_contiguous(y, fn, "y");
  check_contiguous(rstd, fn, "rstd");
  at::Tensor dx = at::empty_like(y);
  if (rows == 0) return dx;
  if (y.scalar_type() == at::kBFloat16) {
    rms_norm_backward_impl<at::BFloat16>(grad, y, rstd, dx);
  } else {
    rms_norm_backward_impl<float>(grad, y, rstd, dx);
  }
  return dx;
}

// x [B, H, S, d] with any strides but a unit one in d (q and k are usually transposed views of the
// projection's output; FusedRope copies only when d itself is strided); cos, sin broadcastable to
// [B, 1, S, d/2] in the dtype of x, with a unit stride in the last dimension. sign = −1 rotates back.
// The output is contiguous, or with keep_layout laid out as x is (zoo.kernels.empty_rows_like, the same
// rule): its rows ordered by x's strides across B, H and S, so a sequence-first q stays sequence first.
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos_in, const at::Tensor& sin_in, double sign, bool keep_layout) {
  constexpr const char* fn = "rope";
  check_float(x, fn, "x");
  TORCH_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, fn, ": x must be [B, H, S, d] with even d, got sizes ", x.sizes());
  TORCH_CHECK(unit_last_stride(x), fn, ": x must have a unit stride in its last dimension, got strides ", x.strides(),
              " (call .contiguous() on it)");
  const int64_t B = x.size(0), S = x.size(2), half = x.size(3) / 2;
  const auto check_table = [&](const at::Tensor& t, const char* name) {
    check_like(t, fn, name, x, "x");
    check_broadcastable(t, fn, name, {B, 1, S, half}, "[B, 1, S, d/2]");
    TORCH_CHECK(t.dim() >= 1 && t.size(-1) == half && unit_last_stride(t), fn, ": ", name, " must have d/2 = ", half,
                " elements at unit stride in its last dimension, got sizes ", t.sizes(), " with strides ", t.strides());
  };
  check_table(cos_in, "cos");
  check_table(sin_in, "sin");
  at::Tensor cos = cos_in.expand({B, 1, S, half}).select(1, 0);
  at::Tensor sin = sin_in.expand({B, 1, S, half}).select(1, 0);
  std::array<int64_t, 4> layout = {0, 1, 2, 3};
  if (keep_layout) {
    std::stable_sort(layout.begin(), layout.begin() + 3, [&](int64_t a, int64_t b) { return x.stride(a) > x.stride(b); });
  }
  at::Tensor out = at::empty_permuted(x.sizes(), layout, x.options());
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
