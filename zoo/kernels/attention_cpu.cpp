// Softmax attention for the CPU, blocked over query rows so that the scores never leave the cache.
//
// For every head a (q, k, v flattened to [A, S, d]) and block of query rows R:
//
//   forward:   S_R = Q_R Kᵀ (+ bias_R)      P_R = softmax(S_R)      O_R = (P_R ⊙ M_R) V
//   backward:  dV = (P ⊙ M)ᵀ dO      dP_R = (dO_R Vᵀ) ⊙ M_R      dS_R = P_R ⊙ (dP_R − rowsum(dP_R ⊙ P_R))
//              dQ_R = dS_R K         dK = dSᵀ Q
//
// Q arrives already multiplied by the logit scale and dO by the dropout rescaling 1/(1 − p). The
// matmuls are ATen's (oneDNN); the row kernels here compute the softmax with fp32 accumulation and a
// vectorised exp, draw the counter-based dropout mask M (common.h) by the element's index in the
// full [A, Sq, Sk] score tensor, and, in training, write P into the caller's [A, Sq, Sk] buffer. The
// backward pass turns that buffer into dS in place. Work on blocks is spread over threads by
// (head group, row block) tasks whose matmuls run on one thread each; dV and dK, which need every
// row of a head, are batched matmuls threaded inside.

#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "common.h"

namespace {

using namespace zoo_kernels;

// e^x for x ≤ 0 with a relative error below 3e-7: x = n·ln2 + r with |r| ≤ ln2/2 (Cody–Waite split
// of ln2), e^r by its Taylor polynomial of degree 6, 2^n by building the exponent bits. Arguments
// below −87 give exactly 0 (as expf's underflow does for a softmax). Branch-free, so loops vectorise.
inline float exp_nonpositive(float x) {
  const float clamped = x < -87.0f ? -87.0f : x;
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const float r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return x < -87.0f ? 0.0f : p * two_n;
}

// One row: probs = softmax(scores); with dropout also dropped = probs ⊙ M (element j has index
// base + j in the mask). `probs` may alias `scores`, `dropped` may alias `scores`; buf holds n floats.
template <typename T, bool Dropout>
void softmax_row(const typename Codec<T>::Raw* scores, typename Codec<T>::Raw* probs, typename Codec<T>::Raw* dropped,
                 int64_t n, int64_t base, uint64_t seed, uint32_t threshold, float* buf) {
  float max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max)
  for (int64_t j = 0; j < n; ++j) {
    const float x = Codec<T>::load(scores[j]);
    buf[j] = x;
    max = x > max ? x : max;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_nonpositive(buf[j] - max);
    buf[j] = e;
    sum += e;
  }
  const float inverse = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) probs[j] = Codec<T>::store(buf[j] * inverse);
  if constexpr (Dropout) {
    for (int64_t j = 0; j < n; ++j) dropped[j] = kept(seed, base + j, threshold) ? probs[j] : Codec<T>::store(0.0f);
  }
}

// One row, in place: probs (P) becomes dS = P ⊙ (g ⊙ M − rowsum(g ⊙ M ⊙ P)).
template <typename T, bool Dropout>
void softmax_backward_row(const typename Codec<T>::Raw* grad, typename Codec<T>::Raw* probs, int64_t n, int64_t base,
                          uint64_t seed, uint32_t threshold, float* buf) {
  float sum = 0.0f;
  if constexpr (Dropout) {
    for (int64_t j = 0; j < n; ++j) buf[j] = kept(seed, base + j, threshold) ? Codec<T>::load(grad[j]) : 0.0f;
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) buf[j] = Codec<T>::load(grad[j]);
  }
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += buf[j] * Codec<T>::load(probs[j]);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) probs[j] = Codec<T>::store(Codec<T>::load(probs[j]) * (buf[j] - sum));
}

template <typename T>
using RawOf = typename Codec<T>::Raw;

// Calls body(a0, g, r0, rows, scratch, buf) for every block of `group` heads from a0 and `rows` query
// rows from r0, spread over threads; each thread owns a [group, block_rows, Sk] scratch tensor and an
// Sk-float row buffer.
template <typename Body>
void for_each_block(int64_t A, int64_t Sq, int64_t Sk, int64_t group, int64_t block_rows, const at::TensorOptions& options,
                    const Body& body) {
  const int64_t groups = (A + group - 1) / group, blocks = (Sq + block_rows - 1) / block_rows;
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(Sk);
    at::Tensor scratch = at::empty({group, block_rows, Sk}, options);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t a0 = (task / blocks) * group, r0 = (task % blocks) * block_rows;
      body(a0, std::min(group, A - a0), r0, std::min(block_rows, Sq - r0), scratch, buf.data());
    }
  });
}

template <typename T>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& bias,
                  int64_t heads, const c10::optional<at::Tensor>& probs, at::Tensor& out, uint64_t seed, uint32_t threshold,
                  int64_t group, int64_t block_rows) {
  const int64_t A = q.size(0), Sq = q.size(1), Sk = k.size(1);
  RawOf<T>* probs_base = probs.has_value() ? reinterpret_cast<RawOf<T>*>(probs->data_ptr()) : nullptr;
  for_each_block(A, Sq, Sk, group, block_rows, q.options(),
                 [&](int64_t a0, int64_t g, int64_t r0, int64_t rows, at::Tensor& scores, float* buf) {
    at::Tensor s = scores.narrow(0, 0, g).narrow(1, 0, rows);  // contiguous: rows < block_rows only when g == 1
    at::bmm_out(s, q.narrow(0, a0, g).narrow(1, r0, rows), k.narrow(0, a0, g).transpose(1, 2));
    RawOf<T>* s_ptr = reinterpret_cast<RawOf<T>*>(s.data_ptr());
    for (int64_t h = 0; h < g; ++h) {
      const int64_t a = a0 + h;
      if (bias.has_value()) s[h].add_((*bias)[a / heads][a % heads].narrow(0, r0, rows));
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t base = (a * Sq + r0 + i) * Sk;
        RawOf<T>* row = s_ptr + (h * rows + i) * Sk;
        RawOf<T>* p_row = probs_base != nullptr ? probs_base + base : row;
        if (threshold > 0) {
          softmax_row<T, true>(row, p_row, row, Sk, base, seed, threshold, buf);
        } else {
          softmax_row<T, false>(row, p_row, nullptr, Sk, base, seed, threshold, buf);
        }
      }
    }
    // s holds P ⊙ M with dropout, else P unless P went to probs
    at::Tensor weights = threshold == 0 && probs.has_value() ? probs->narrow(0, a0, g).narrow(1, r0, rows) : s;
    at::Tensor o = out.narrow(0, a0, g).narrow(1, r0, rows);
    if (o.is_contiguous()) {
      at::bmm_out(o, weights, v.narrow(0, a0, g));
    } else {
      o.copy_(at::bmm(weights, v.narrow(0, a0, g)));
    }
  });
}

// Three phases, so that every thread has work even with fewer heads than threads: dV as batched
// matmuls (threaded inside), then dP, dS and dQ over (head group, row block) tasks, then dK.
template <typename T>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   at::Tensor& probs, at::Tensor& grad_q, at::Tensor& grad_k, at::Tensor& grad_v, uint64_t seed,
                   uint32_t threshold, int64_t group, int64_t block_rows) {
  const int64_t A = q.size(0), Sq = q.size(1), Sk = k.size(1);
  RawOf<T>* probs_base = reinterpret_cast<RawOf<T>*>(probs.data_ptr());
  if (threshold > 0) {  // dV = (P ⊙ M)ᵀ dO, with P ⊙ M drawn afresh from the seed, a few heads at a time
    const int64_t chunk = std::max<int64_t>(at::get_num_threads(), group);
    at::Tensor dropped = at::empty({std::min(chunk, A), Sq, Sk}, q.options());
    RawOf<T>* dst = reinterpret_cast<RawOf<T>*>(dropped.data_ptr());
    for (int64_t a0 = 0; a0 < A; a0 += chunk) {
      const int64_t c = std::min(chunk, A - a0), offset = a0 * Sq * Sk;
      at::parallel_for(0, c * Sq, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin * Sk; i < end * Sk; ++i) {
          dst[i] = kept(seed, offset + i, threshold) ? probs_base[offset + i] : Codec<T>::store(0.0f);
        }
      });
      at::Tensor dv = grad_v.narrow(0, a0, c);
      at::bmm_out(dv, dropped.narrow(0, 0, c).transpose(1, 2), grad_out.narrow(0, a0, c));
    }
  } else {
    at::bmm_out(grad_v, probs.transpose(1, 2), grad_out);
  }
  for_each_block(A, Sq, Sk, group, block_rows, q.options(),
                 [&](int64_t a0, int64_t g, int64_t r0, int64_t rows, at::Tensor& grad_s, float* buf) {
    at::Tensor gs = grad_s.narrow(0, 0, g).narrow(1, 0, rows);
    at::bmm_out(gs, grad_out.narrow(0, a0, g).narrow(1, r0, rows), v.narrow(0, a0, g).transpose(1, 2));
    const RawOf<T>* g_ptr = reinterpret_cast<const RawOf<T>*>(gs.data_ptr());
    for (int64_t h = 0; h < g; ++h) {
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t base = ((a0 + h) * Sq + r0 + i) * Sk;
        const RawOf<T>* g_row = g_ptr + (h * rows + i) * Sk;
        if (threshold > 0) {
          softmax_backward_row<T, true>(g_row, probs_base + base, Sk, base, seed, threshold, buf);
        } else {
          softmax_backward_row<T, false>(g_row, probs_base + base, Sk, base, seed, threshold, buf);
        }
      }
    }
    at::Tensor dq = grad_q.narrow(0, a0, g).narrow(1, r0, rows);
    at::Tensor ds = probs.narrow(0, a0, g).narrow(1, r0, rows);
    if (dq.is_contiguous()) {
      at::bmm_out(dq, ds, k.narrow(0, a0, g));
    } else {
      dq.copy_(at::bmm(ds, k.narrow(0, a0, g)));
    }
  });
  at::bmm_out(grad_k, probs.transpose(1, 2), q);  // probs now holds dS
}

// q, k, v as the kernels read them: [A, S, d] contiguous, one dtype, the same A, q and k of one d and
// k and v of one length.
void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* fn) {
  check_float(q, fn, "q");
  check_like(k, fn, "k", q, "q");
  check_like(v, fn, "v", q, "q");
  TORCH_CHECK(q.dim() == 3, fn, ": q must be [heads, Sq, d], got sizes ", q.sizes());
  TORCH_CHECK(k.dim() == 3, fn, ": k must be [heads, Sk, d], got sizes ", k.sizes());
  TORCH_CHECK(v.dim() == 3, fn, ": v must be [heads, Sk, dv], got sizes ", v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(2) == q.size(2), fn, ": k must be [heads, Sk, d] with q's heads and d = ",
              q.size(0), ", ", q.size(2), ", got sizes ", k.sizes());
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == k.size(1), fn,
              ": v must be [heads, Sk, dv] with q's heads and k's length = ", q.size(0), ", ", k.size(1), ", got sizes ",
              v.sizes());
  // the blocks are cut from rows; empty inputs have none (zoo.attention routes them to SoftmaxAttention)
  TORCH_CHECK(q.size(1) > 0 && k.size(1) > 0, fn, ": q and k must have at least one row, got Sq = ", q.size(1),
              ", Sk = ", k.size(1));
  check_contiguous(q, fn, "q");
  check_contiguous(k, fn, "k");
  check_contiguous(v, fn, "v");
}

void check_blocks(int64_t group, int64_t block_rows, int64_t Sq, const char* fn) {
  TORCH_CHECK(group > 0, fn, ": group must be positive, got ", group);
  TORCH_CHECK(block_rows > 0, fn, ": block_rows must be positive, got ", block_rows);
  TORCH_CHECK(group == 1 || block_rows >= Sq, fn, ": head groups need whole rows (block_rows >= Sq = ", Sq,
              "), got group = ", group, ", block_rows = ", block_rows);
}

void check_probs(const at::Tensor& probs, const at::Tensor& q, const at::Tensor& k, const char* fn) {
  check_like(probs, fn, "probs", q, "q");
  check_sizes(probs, fn, "probs", {q.size(0), q.size(1), k.size(1)}, "[heads, Sq, Sk]");
  check_contiguous(probs, fn, "probs");
}

}  // namespace

// q [A, Sq, d] (scaled), k [A, Sk, d], v [A, Sk, dv]; bias broadcastable to [A / heads, heads, Sq, Sk];
// probs: [A, Sq, Sk] to receive P (training) or None. Returns O without the 1/(1 − p) rescaling.
at::Tensor attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const c10::optional<at::Tensor>& bias, int64_t heads, const c10::optional<at::Tensor>& probs,
                             int64_t seed, int64_t threshold, int64_t group, int64_t block_rows) {
  constexpr const char* fn = "attention_forward";
  check_qkv(q, k, v, fn);
  const int64_t A = q.size(0), Sq = q.size(1), Sk = k.size(1);
  TORCH_CHECK(heads > 0 && A % heads == 0, fn, ": heads must be positive and divide q.size(0) = ", A, ", got ", heads);
  check_blocks(group, block_rows, Sq, fn);
  check_threshold(threshold, fn);
  block_rows = std::min(block_rows, Sq);
  c10::optional<at::Tensor> bias_full;
  if (bias.has_value()) {
    check_cpu(*bias, fn, "bias");
    TORCH_CHECK(at::isFloatingType(bias->scalar_type()), fn, ": bias must be a floating-point additive mask, got ",
                bias->scalar_type());
    check_broadcastable(*bias, fn, "bias", {A / heads, heads, Sq, Sk}, "[batch, heads, Sq, Sk]");
    bias_full = bias->to(q.scalar_type()).expand({A / heads, heads, Sq, Sk});  // read through ATen: any strides
  }
  if (probs.has_value()) check_probs(*probs, q, k, fn);
  at::Tensor out = at::empty({A, Sq, v.size(2)}, q.options());
  if (q.scalar_type() == at::kBFloat16) {
    forward_impl<at::BFloat16>(q, k, v, bias_full, heads, probs, out, seed, threshold, group, block_rows);
  } else {
    forward_impl<float>(q, k, v, bias_full, heads, probs, out, seed, threshold, group, block_rows);
  }
  return out;
}

// grad_out: dO already multiplied by 1/(1 − p). probs (P from the forward pass) is overwritten with dS.
std::vector<at::Tensor> attention_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, at::Tensor probs, int64_t seed, int64_t threshold,
                                           int64_t group, int64_t block_rows) {
  constexpr const char* fn = "attention_backward";
  check_qkv(q, k, v, fn);
  check_like(grad_out, fn, "grad_out", q, "q");
  check_sizes(grad_out, fn, "grad_out", {q.size(0), q.size(1), v.size(2)}, "[heads, Sq, dv]");
  check_contiguous(grad_out, fn, "grad_out");
  check_probs(probs, q, k, fn);
  check_blocks(group, block_rows, q.size(1), fn);
  check_threshold(threshold, fn);
  block_rows = std::min(block_rows, q.size(1));
  at::Tensor grad_q = at::empty_like(q), grad_k = at::empty_like(k), grad_v = at::empty_like(v);
  if (q.scalar_type() == at::kBFloat16) {
    backward_impl<at::BFloat16>(grad_out, q, k, v, probs, grad_q, grad_k, grad_v, seed, threshold, group, block_rows);
  } else {
    backward_impl<float>(grad_out, q, k, v, probs, grad_q, grad_k, grad_v, seed, threshold, group, block_rows);
  }
  return {grad_q, grad_k, grad_v};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attention_forward", &attention_forward, "blocked softmax attention with the counter-based dropout mask");
  m.def("attention_backward", &attention_backward, "its backward pass; overwrites probs with dS");
}
