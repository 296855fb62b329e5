// Dequantization (SPEC §6), CUDA kernels. Per-element math: csrc/include/dgmfast/dequant.h and
// philox.h, the same the C++ CPU kernels run, so one seed gives the same noise on both.
// Schemas are declared in csrc/cpu/dequant.cpp.
#include "rows.cuh"

#include <dgmfast/dequant.h>
#include <dgmfast/philox.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

namespace dgm::cuda {
namespace {

constexpr double kLog2Pi = 1.8378770664093453;

double dequant_row_constant(int64_t D, int64_t mode, double alpha, int64_t n_bits) {
  return D * ((mode == kModeLogit ? std::log1p(-2.0 * alpha) : 0.0) - n_bits * std::log(2.0));
}

at::ScalarType logdet_dtype(at::ScalarType t) { return acc_scalar_type(t); }

template <typename int_t, typename out_t, int MODE>
__global__ void uniform_dequantize_kernel(const int_t* __restrict__ x,  // integer input, row stride xs
                                          out_t* __restrict__ y,        // [B, N]
                                          opmath_t<out_t>* __restrict__ partial,  // [B, chunks]
                                          int64_t N, int64_t chunks, int64_t xs, uint64_t seed, int shift,
                                          opmath_t<out_t> inv_n, opmath_t<out_t> alpha) {
  using math_t = opmath_t<out_t>;
  const auto [b, lo, hi] = this_row_chunk(N, chunks);
  math_t acc = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    const math_t u = philox_uniform(static_cast<uint64_t>(b * N + i), 0, seed);
    math_t ld;
    y[b * N + i] = static_cast<out_t>(
        dequant_map<MODE>(cube_point(static_cast<math_t>(x[b * xs + i] >> shift), u) * inv_n, alpha, &ld));
    acc += ld;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename in_t, typename int_t, int MODE>
__global__ void uniform_dequantize_rev_kernel(const in_t* __restrict__ y, int_t* __restrict__ x,
                                              opmath_t<in_t>* __restrict__ partial, int64_t N, int64_t chunks,
                                              int64_t ys, opmath_t<in_t> n, opmath_t<in_t> alpha) {
  using math_t = opmath_t<in_t>;
  const auto [b, lo, hi] = this_row_chunk(N, chunks);
  math_t acc = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    math_t ld;
    const math_t q = dequant_unmap<MODE>(static_cast<math_t>(y[b * ys + i]), alpha, &ld);
    const math_t k = floor(n * q);  // NaN (rejected by the functional in eager mode) maps to 0, not UB
    x[b * N + i] = static_cast<int_t>(k >= 0 ? (k > n - 1 ? n - 1 : k) : math_t(0));
    acc -= ld;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename out_t>
__global__ void gaussian_sample_log_prob_kernel(out_t* __restrict__ eps, opmath_t<out_t>* __restrict__ partial,
                                                int64_t N, int64_t chunks, uint64_t seed) {
  using math_t = opmath_t<out_t>;
  const auto [b, lo, hi] = this_row_chunk(N, chunks);
  math_t acc = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    const out_t e = static_cast<out_t>(philox_normal(static_cast<uint64_t>(b * N + i), 0, seed));
    eps[b * N + i] = e;  // the log-density is of the returned (rounded) eps
    const math_t z = static_cast<math_t>(e);
    acc -= math_t(0.5) * z * z;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename int_t, typename out_t, int MODE>
__global__ void sigmoid_tail_fwd_kernel(const int_t* __restrict__ x, const out_t* __restrict__ v,
                                        out_t* __restrict__ y, opmath_t<out_t>* __restrict__ partial, int64_t N,
                                        int64_t chunks, int64_t xs, int64_t vs, opmath_t<out_t> inv_n,
                                        opmath_t<out_t> alpha) {
  using math_t = opmath_t<out_t>;
  const auto [b, lo, hi] = this_row_chunk(N, chunks);
  math_t acc = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    math_t ld;
    y[b * N + i] = static_cast<out_t>(sigmoid_tail_fwd_elem<MODE>(
        static_cast<math_t>(x[b * xs + i]), static_cast<math_t>(v[b * vs + i]), inv_n, alpha, &ld));
    acc += ld;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename int_t, typename out_t, int MODE>
__global__ void sigmoid_tail_bwd_kernel(const int_t* __restrict__ x, const out_t* __restrict__ v,
                                        const out_t* __restrict__ gy, const opmath_t<out_t>* __restrict__ gld,
                                        out_t* __restrict__ gv, int64_t N, int64_t chunks, int64_t xs, int64_t vs,
                                        int64_t gs, opmath_t<out_t> inv_n, opmath_t<out_t> alpha) {
  using math_t = opmath_t<out_t>;
  const auto [b, lo, hi] = this_row_chunk(N, chunks);
  const math_t g_ld = gld[b];
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    gv[b * N + i] = static_cast<out_t>(sigmoid_tail_bwd_elem<MODE>(
        static_cast<math_t>(x[b * xs + i]), static_cast<math_t>(v[b * vs + i]), inv_n, alpha,
        static_cast<math_t>(gy[b * gs + i]), g_ld));
  }
}

std::tuple<at::Tensor, at::Tensor> uniform_dequantize_fwd_cuda(const at::Tensor& x_in, const at::Tensor& seed,
                                                               int64_t n_bits, int64_t in_bits, int64_t mode,
                                                               double alpha, at::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = row_contiguous(x_in);
  const int64_t B = x.size(0), N = row_numel(x);
  const RowChunks rc = row_chunks(B, N);
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(dtype));
  at::Tensor partial = at::empty({B, rc.chunks}, x.options().dtype(logdet_dtype(dtype)));
  const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
  if (B > 0 && N > 0) {
    AT_DISPATCH_INTEGRAL_TYPES(x.scalar_type(), "uniform_dequantize_fwd_cuda", [&] {
      using int_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "uniform_dequantize_fwd_cuda", [&] {
        using math_t = opmath_t<scalar_t>;
        const bool known = dispatch_dequant_mode(mode, [&](auto m) {
          DGM_LAUNCH_ROWS((uniform_dequantize_kernel<int_t, scalar_t, decltype(m)::value>), rc, x.const_data_ptr<int_t>(),
                     y.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<math_t>(), N, rc.chunks,
                     row_stride(x), s, static_cast<int>(in_bits - n_bits),
                     static_cast<math_t>(std::ldexp(1.0, -static_cast<int>(n_bits))), static_cast<math_t>(alpha));
        });
        TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
      });
    });
  } else {
    partial.zero_();
  }
  return {y, at::sum(partial, {1}).add_(dequant_row_constant(N, mode, alpha, n_bits))};
}

std::tuple<at::Tensor, at::Tensor> uniform_dequantize_rev_cuda(const at::Tensor& y_in, int64_t n_bits, int64_t mode,
                                                               double alpha) {
  const c10::cuda::CUDAGuard guard(y_in.device());
  const at::Tensor y = row_contiguous(y_in);
  const int64_t B = y.size(0), N = row_numel(y);
  const RowChunks rc = row_chunks(B, N);
  at::Tensor x = at::empty(y.sizes(), y.options().dtype(n_bits <= 8 ? at::kByte : at::kInt));
  at::Tensor partial = at::empty({B, rc.chunks}, y.options().dtype(logdet_dtype(y.scalar_type())));
  if (B > 0 && N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "uniform_dequantize_rev_cuda", [&] {
      using in_t = scalar_t;
      using math_t = opmath_t<in_t>;
      const math_t n = static_cast<math_t>(std::ldexp(1.0, static_cast<int>(n_bits)));
      const bool known = dispatch_dequant_mode(mode, [&](auto m) {
        if (n_bits <= 8) {
          DGM_LAUNCH_ROWS((uniform_dequantize_rev_kernel<in_t, uint8_t, decltype(m)::value>), rc, y.const_data_ptr<in_t>(),
                     x.mutable_data_ptr<uint8_t>(), partial.mutable_data_ptr<math_t>(), N, rc.chunks,
                     row_stride(y), n, static_cast<math_t>(alpha));
        } else {
          DGM_LAUNCH_ROWS((uniform_dequantize_rev_kernel<in_t, int32_t, decltype(m)::value>), rc, y.const_data_ptr<in_t>(),
                     x.mutable_data_ptr<int32_t>(), partial.mutable_data_ptr<math_t>(), N, rc.chunks,
                     row_stride(y), n, static_cast<math_t>(alpha));
        }
      });
      TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
    });
  } else {
    partial.zero_();
  }
  return {x, at::sum(partial, {1}).sub_(dequant_row_constant(N, mode, alpha, n_bits))};
}

std::tuple<at::Tensor, at::Tensor> gaussian_sample_log_prob_cuda(const at::Tensor& like, at::IntArrayRef shape,
                                                                 const at::Tensor& seed) {
  const c10::cuda::CUDAGuard guard(like.device());
  at::Tensor eps = at::empty(shape, like.options());
  const int64_t B = shape.empty() ? 1 : shape[0], N = B == 0 ? 0 : eps.numel() / B;
  const RowChunks rc = row_chunks(B, N);
  at::Tensor partial = at::empty({B, rc.chunks}, like.options().dtype(logdet_dtype(like.scalar_type())));
  const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
  if (B > 0 && N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "gaussian_sample_log_prob_cuda",
                                    [&] {
                                      using math_t = opmath_t<scalar_t>;
                                      DGM_LAUNCH_ROWS(gaussian_sample_log_prob_kernel<scalar_t>, rc,
                                                 eps.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<math_t>(),
                                                 N, rc.chunks, s);
                                    });
  } else {
    partial.zero_();
  }
  return {eps, at::sum(partial, {1}).sub_(0.5 * kLog2Pi * N)};
}

std::tuple<at::Tensor, at::Tensor> dequantize_sigmoid_tail_fwd_cuda(const at::Tensor& x_in, const at::Tensor& v_in,
                                                                    int64_t n_bits, int64_t mode, double alpha) {
  const c10::cuda::CUDAGuard guard(v_in.device());
  const at::Tensor x = row_contiguous(x_in), v = row_contiguous(v_in);
  const int64_t B = v.size(0), N = row_numel(v);
  const RowChunks rc = row_chunks(B, N);
  at::Tensor y = at::empty(v.sizes(), v.options());
  at::Tensor partial = at::empty({B, rc.chunks}, v.options().dtype(logdet_dtype(v.scalar_type())));
  if (B > 0 && N > 0) {
    AT_DISPATCH_INTEGRAL_TYPES(x.scalar_type(), "dequantize_sigmoid_tail_fwd_cuda", [&] {
      using int_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "dequantize_sigmoid_tail_fwd_cuda",
                                      [&] {
        using math_t = opmath_t<scalar_t>;
        const bool known = dispatch_dequant_mode(mode, [&](auto m) {
          DGM_LAUNCH_ROWS((sigmoid_tail_fwd_kernel<int_t, scalar_t, decltype(m)::value>), rc, x.const_data_ptr<int_t>(),
                     v.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<math_t>(),
                     N, rc.chunks, row_stride(x), row_stride(v),
                     static_cast<math_t>(std::ldexp(1.0, -static_cast<int>(n_bits))), static_cast<math_t>(alpha));
        });
        TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
      });
    });
  } else {
    partial.zero_();
  }
  return {y, at::sum(partial, {1}).add_(dequant_row_constant(N, mode, alpha, n_bits))};
}

at::Tensor dequantize_sigmoid_tail_bwd_cuda(const at::Tensor& x_in, const at::Tensor& v_in, const at::Tensor& gy_in,
                                            const at::Tensor& gld_in, int64_t n_bits, int64_t mode, double alpha) {
  const c10::cuda::CUDAGuard guard(v_in.device());
  const at::Tensor x = row_contiguous(x_in), v = row_contiguous(v_in), gy = row_contiguous(gy_in);
  const at::Tensor gld = gld_in.contiguous();
  const int64_t B = v.size(0), N = row_numel(v);
  const RowChunks rc = row_chunks(B, N);
  at::Tensor gv = at::empty(v.sizes(), v.options());
  if (B > 0 && N > 0) {
    AT_DISPATCH_INTEGRAL_TYPES(x.scalar_type(), "dequantize_sigmoid_tail_bwd_cuda", [&] {
      using int_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "dequantize_sigmoid_tail_bwd_cuda",
                                      [&] {
        using math_t = opmath_t<scalar_t>;
        const bool known = dispatch_dequant_mode(mode, [&](auto m) {
          DGM_LAUNCH_ROWS((sigmoid_tail_bwd_kernel<int_t, scalar_t, decltype(m)::value>), rc, x.const_data_ptr<int_t>(),
                     v.const_data_ptr<scalar_t>(), gy.const_data_ptr<scalar_t>(), gld.const_data_ptr<math_t>(),
                     gv.mutable_data_ptr<scalar_t>(), N, rc.chunks, row_stride(x), row_stride(v), row_stride(gy),
                     static_cast<math_t>(std::ldexp(1.0, -static_cast<int>(n_bits))), static_cast<math_t>(alpha));
        });
        TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
      });
    });
  }
  return gv;
}

}  // namespace
}  // namespace dgm::cuda

TORCH_LIBRARY_IMPL(dgmfast_C, CUDA, m) {
  m.impl("uniform_dequantize_fwd", &dgm::cuda::uniform_dequantize_fwd_cuda);
  m.impl("uniform_dequantize_rev", &dgm::cuda::uniform_dequantize_rev_cuda);
  m.impl("gaussian_sample_log_prob", &dgm::cuda::gaussian_sample_log_prob_cuda);
  m.impl("dequantize_sigmoid_tail_fwd", &dgm::cuda::dequantize_sigmoid_tail_fwd_cuda);
  m.impl("dequantize_sigmoid_tail_bwd", &dgm::cuda::dequantize_sigmoid_tail_bwd_cuda);
}
