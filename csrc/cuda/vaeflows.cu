// IAF step (SPEC §5), CUDA kernels. Per-element math: csrc/include/dgmfast/vaeflows.h, the same the C++
// CPU kernels run. Schemas are declared in csrc/cpu/vaeflows.cpp. Planar flows have no CUDA kernel yet:
// the cuda backend refuses them (dgmfast/ops/vaeflows.py) and CUDA tensors run on the triton backend.
#include "rows.cuh"

#include <dgmfast/rows.h>
#include <dgmfast/vaeflows.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace dgm::cuda {
namespace {

template <typename scalar_t>
__global__ void iaf_fwd_kernel(const scalar_t* __restrict__ z,   // [B, N], row stride zs
                               const scalar_t* __restrict__ m,   // mean, row stride ms
                               const scalar_t* __restrict__ r,   // raw log-scale, row stride rs
                               scalar_t* __restrict__ out,       // [B, N] contiguous
                               opmath_t<scalar_t>* __restrict__ partial,  // [B, chunks]
                               int64_t N, int64_t chunks, int64_t zs, int64_t ms, int64_t rs,
                               opmath_t<scalar_t> bias, bool reverse) {
  using math_t = opmath_t<scalar_t>;
  const int64_t b = blockIdx.x / chunks, lo = (blockIdx.x % chunks) * kChunk;
  const int64_t hi = lo + kChunk < N ? lo + kChunk : N;
  z += b * zs;
  m += b * ms;
  r += b * rs;
  out += b * N;
  math_t acc = 0;
#pragma unroll 4
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    math_t ld;
    out[i] = static_cast<scalar_t>(iaf_fwd_elem(static_cast<math_t>(z[i]), static_cast<math_t>(m[i]),
                                                static_cast<math_t>(r[i]), bias, reverse, &ld));
    acc += ld;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename scalar_t>
__global__ void iaf_bwd_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ m,
                               const scalar_t* __restrict__ r,
                               const scalar_t* __restrict__ gy,               // grad of out, row stride gys
                               const opmath_t<scalar_t>* __restrict__ gld,    // [B]
                               scalar_t* __restrict__ gz, scalar_t* __restrict__ gm,
                               scalar_t* __restrict__ gr,                     // outputs [B, N] contiguous
                               int64_t N, int64_t chunks, int64_t zs, int64_t ms, int64_t rs, int64_t gys,
                               opmath_t<scalar_t> bias, bool reverse) {
  using math_t = opmath_t<scalar_t>;
  const int64_t b = blockIdx.x / chunks, lo = (blockIdx.x % chunks) * kChunk;
  const int64_t hi = lo + kChunk < N ? lo + kChunk : N;
  z += b * zs;
  m += b * ms;
  r += b * rs;
  gy += b * gys;
  const math_t g_ld = gld[b];
#pragma unroll 4
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    math_t a, c, d;
    iaf_bwd_elem(static_cast<math_t>(z[i]), static_cast<math_t>(m[i]), static_cast<math_t>(r[i]), bias, reverse,
                 static_cast<math_t>(gy[i]), g_ld, &a, &c, &d);
    gz[b * N + i] = static_cast<scalar_t>(a);
    gm[b * N + i] = static_cast<scalar_t>(c);
    gr[b * N + i] = static_cast<scalar_t>(d);
  }
}

std::tuple<at::Tensor, at::Tensor> iaf_step_fwd_cuda(const at::Tensor& z_in, const at::Tensor& m_in,
                                                     const at::Tensor& r_in, double bias, bool reverse) {
  check_same_shape(z_in, m_in, "mean");
  check_same_shape(z_in, r_in, "log_scale_raw");
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = row_contiguous(z_in), m = row_contiguous(m_in), r = row_contiguous(r_in);
  const int64_t B = z.dim() == 0 ? 1 : z.size(0), N = row_numel(z);
  at::Tensor out = at::empty(z.sizes(), z.options());
  const auto ld_dtype = acc_scalar_type(z.scalar_type());
  const RowChunks rc = row_chunks(B, N);
  at::Tensor partial = at::empty({B, rc.chunks}, z.options().dtype(ld_dtype));
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "iaf_step_fwd_cuda", [&] {
      using math_t = opmath_t<scalar_t>;
      iaf_fwd_kernel<scalar_t><<<rc.blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          z.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<math_t>(), N, rc.chunks, row_stride(z),
          row_stride(m), row_stride(r), static_cast<math_t>(bias), reverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, at::sum(partial, {1})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> iaf_step_bwd_cuda(const at::Tensor& z_in, const at::Tensor& m_in,
                                                                 const at::Tensor& r_in, const at::Tensor& gy_in,
                                                                 const at::Tensor& gld_in, double bias, bool reverse) {
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = row_contiguous(z_in), m = row_contiguous(m_in), r = row_contiguous(r_in);
  const at::Tensor gy = row_contiguous(gy_in), gld = gld_in.contiguous();
  const int64_t B = z.dim() == 0 ? 1 : z.size(0), N = row_numel(z);
  at::Tensor gz = at::empty(z.sizes(), z.options()), gm = at::empty(z.sizes(), z.options()),
             gr = at::empty(z.sizes(), z.options());
  const RowChunks rc = row_chunks(B, N);
  if (B > 0 && N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "iaf_step_bwd_cuda", [&] {
      using math_t = opmath_t<scalar_t>;
      iaf_bwd_kernel<scalar_t><<<rc.blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          z.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
          gy.const_data_ptr<scalar_t>(), gld.const_data_ptr<math_t>(), gz.mutable_data_ptr<scalar_t>(),
          gm.mutable_data_ptr<scalar_t>(), gr.mutable_data_ptr<scalar_t>(), N, rc.chunks, row_stride(z),
          row_stride(m), row_stride(r), row_stride(gy), static_cast<math_t>(bias), reverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gz, gm, gr};
}

}  // namespace
}  // namespace dgm::cuda

TORCH_LIBRARY_IMPL(dgmfast_C, CUDA, m) {
  m.impl("iaf_step_fwd", &dgm::cuda::iaf_step_fwd_cuda);
  m.impl("iaf_step_bwd", &dgm::cuda::iaf_step_bwd_cuda);
}
