// Affine coupling (SPEC §1), CUDA kernels. Per-element math: csrc/include/dgmfast/coupling.h,
// the same the C++ CPU kernels run. Schemas are declared in csrc/cpu/coupling.cpp.
#include "rows.cuh"

#include <dgmfast/coupling.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace dgm::cuda {
namespace {

template <typename scalar_t, int MAP>
__global__ void affine_coupling_fwd_kernel(const scalar_t* __restrict__ x,  // [B, N], row stride xs
                                           const scalar_t* __restrict__ r,  // raw log-scale, row stride rs
                                           const scalar_t* __restrict__ t,  // shift, row stride ts
                                           scalar_t* __restrict__ y,        // [B, N] contiguous
                                           opmath_t<scalar_t>* __restrict__ partial,  // [B, chunks]
                                           int64_t N, int64_t chunks, int64_t xs, int64_t rs, int64_t ts,
                                           opmath_t<scalar_t> clamp, opmath_t<scalar_t> eps,
                                           bool reverse, bool shift_first) {
  using math_t = opmath_t<scalar_t>;
  const auto [b, lo, hi] = this_row_chunk(N, chunks);
  x += b * xs;
  r += b * rs;
  t += b * ts;
  y += b * N;
  math_t acc = 0;
#pragma unroll 4
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    math_t s;
    y[i] = static_cast<scalar_t>(affine_coupling_fwd_elem<MAP>(
        static_cast<math_t>(x[i]), static_cast<math_t>(r[i]), static_cast<math_t>(t[i]), clamp, eps, reverse,
        shift_first, &s));
    acc += s;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename scalar_t, int MAP>
__global__ void affine_coupling_bwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ r,
                                           const scalar_t* __restrict__ t,
                                           const scalar_t* __restrict__ gy,  // grad of out, row stride gys
                                           const opmath_t<scalar_t>* __restrict__ gld,  // [B]
                                           scalar_t* __restrict__ gx, scalar_t* __restrict__ gr,
                                           scalar_t* __restrict__ gt,  // nullptr in the forward direction
                                           int64_t N, int64_t chunks, int64_t xs, int64_t rs, int64_t ts,
                                           int64_t gys, opmath_t<scalar_t> clamp, opmath_t<scalar_t> eps,
                                           bool reverse, bool shift_first) {
  using math_t = opmath_t<scalar_t>;
  const auto [b, lo, hi] = this_row_chunk(N, chunks);
  x += b * xs;
  r += b * rs;
  t += b * ts;
  gy += b * gys;
  gx += b * N;
  gr += b * N;
  const math_t g_logdet = gld[b];
#pragma unroll 4
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    math_t g_in, g_r, g_out = static_cast<math_t>(gy[i]);
    affine_coupling_bwd_elem<MAP>(static_cast<math_t>(x[i]), static_cast<math_t>(r[i]),
                                  static_cast<math_t>(t[i]), g_out, g_logdet, clamp, eps, reverse, shift_first,
                                  &g_in, &g_r);
    gx[i] = static_cast<scalar_t>(g_in);
    gr[i] = static_cast<scalar_t>(g_r);
    if (gt != nullptr) gt[b * N + i] = static_cast<scalar_t>(-(shift_first ? g_in : g_out));  // reverse only
  }
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_fwd_cuda(const at::Tensor& x_in, const at::Tensor& r_in,
                                                            const at::Tensor& t_in, int64_t scale_map,
                                                            double clamp, double eps, bool shift_first,
                                                            bool reverse) {
  check_same_shape(x_in, r_in, "log_scale");
  check_same_shape(x_in, t_in, "shift");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = row_contiguous(x_in), r = row_contiguous(r_in), t = row_contiguous(t_in);
  const int64_t B = x.dim() == 0 ? 1 : x.size(0), N = row_numel(x);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const auto ld_dtype = acc_scalar_type(x.scalar_type());
  const RowChunks rc = row_chunks(B, N);
  at::Tensor partial = at::empty({B, rc.chunks}, x.options().dtype(ld_dtype));
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_fwd_cuda", [&] {
      using math_t = opmath_t<scalar_t>;
      const bool known = dispatch_scale_map(scale_map, eps, [&](auto map) {
        DGM_LAUNCH_ROWS((affine_coupling_fwd_kernel<scalar_t, decltype(map)::value>), rc,
                x.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
                y.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<math_t>(), N, rc.chunks, row_stride(x),
                row_stride(r), row_stride(t), static_cast<math_t>(clamp), static_cast<math_t>(eps),
                reverse, shift_first);
      });
      TORCH_CHECK(known, "dgmfast: unknown scale_map id ", scale_map);
    });
  }
  return {y, at::sum(partial, {1})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_coupling_bwd_cuda(
    const at::Tensor& x_in, const at::Tensor& r_in, const at::Tensor& t_in, const at::Tensor& gy_in,
    const at::Tensor& gld_in, int64_t scale_map, double clamp, double eps, bool shift_first, bool reverse) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = row_contiguous(x_in), r = row_contiguous(r_in), t = row_contiguous(t_in);
  const at::Tensor gy = row_contiguous(gy_in), gld = gld_in.contiguous();
  const int64_t B = x.dim() == 0 ? 1 : x.size(0), N = row_numel(x);
  at::Tensor gx = at::empty(x.sizes(), x.options()), gr = at::empty(x.sizes(), x.options());
  // In the forward direction grad_shift is grad_y or grad_x itself: the caller aliases it.
  at::Tensor gt = at::empty(reverse ? x.sizes() : at::IntArrayRef{0}, x.options());
  const RowChunks rc = row_chunks(B, N);
  if (B > 0 && N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_bwd_cuda", [&] {
      using math_t = opmath_t<scalar_t>;
      const bool known = dispatch_scale_map(scale_map, eps, [&](auto map) {
        DGM_LAUNCH_ROWS((affine_coupling_bwd_kernel<scalar_t, decltype(map)::value>), rc,
                x.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
                gy.const_data_ptr<scalar_t>(), gld.const_data_ptr<math_t>(), gx.mutable_data_ptr<scalar_t>(),
                gr.mutable_data_ptr<scalar_t>(), reverse ? gt.mutable_data_ptr<scalar_t>() : nullptr, N,
                rc.chunks, row_stride(x), row_stride(r), row_stride(t), row_stride(gy),
                static_cast<math_t>(clamp), static_cast<math_t>(eps), reverse, shift_first);
      });
      TORCH_CHECK(known, "dgmfast: unknown scale_map id ", scale_map);
    });
  }
  return {gx, gr, gt};
}

}  // namespace
}  // namespace dgm::cuda

TORCH_LIBRARY_IMPL(dgmfast_C, CUDA, m) {
  m.impl("affine_coupling_fwd", &dgm::cuda::affine_coupling_fwd_cuda);
  m.impl("affine_coupling_bwd", &dgm::cuda::affine_coupling_bwd_cuda);
}
