// Gaussian posterior (SPEC §7), CUDA kernels for reparameterize. Per-element math:
// csrc/include/dgmfast/gaussian.h, the same the C++ CPU kernels run; noise: csrc/include/dgmfast/philox.h
// (element (b, d) uses counter b*D + d, as every backend). Schemas are declared in csrc/cpu/gaussian.cpp.
// The mixture log-density has no CUDA C++ kernel: it runs on the triton backend on GPUs (see
// dgmfast/ops/gaussian.py for why), and the cuda backend refuses it.
#include "rows.cuh"

#include <dgmfast/gaussian.h>
#include <dgmfast/philox.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace dgm::cuda {
namespace {

template <typename math_t, typename scalar_t>
__device__ __forceinline__ math_t noise(const scalar_t* eps, int64_t b, int64_t D, int64_t i, uint64_t seed) {
  return eps != nullptr ? static_cast<math_t>(eps[i]) : static_cast<math_t>(philox_normal(b * D + i, 0, seed));
}

template <typename scalar_t>
__global__ void reparameterize_fwd_kernel(const scalar_t* __restrict__ mu,   // [B, D], row stride ms
                                          const scalar_t* __restrict__ lv,   // row stride ls
                                          const scalar_t* __restrict__ eps,  // row stride es, or nullptr: Philox
                                          scalar_t* __restrict__ z,          // [B, D] contiguous
                                          opmath_t<scalar_t>* __restrict__ kl_part,  // [B, chunks]
                                          opmath_t<scalar_t>* __restrict__ lq_part,  // [B, chunks]
                                          int64_t D, int64_t chunks, int64_t ms, int64_t ls, int64_t es,
                                          uint64_t seed) {
  using math_t = opmath_t<scalar_t>;
  const int64_t b = blockIdx.x / chunks, lo = (blockIdx.x % chunks) * kChunk;
  const int64_t hi = lo + kChunk < D ? lo + kChunk : D;
  mu += b * ms;
  lv += b * ls;
  if (eps != nullptr) eps += b * es;
  z += b * D;
  math_t kl = 0, lq = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    math_t klt, lqt;
    z[i] = static_cast<scalar_t>(reparameterize_fwd_elem(static_cast<math_t>(mu[i]), static_cast<math_t>(lv[i]),
                                                         noise<math_t>(eps, b, D, i, seed), &klt, &lqt));
    kl += klt;
    lq += lqt;
  }
  kl = block_sum(kl);
  __syncthreads();  // block_sum's shared scratch is reused
  lq = block_sum(lq);
  if (threadIdx.x == 0) {
    kl_part[blockIdx.x] = kl;
    lq_part[blockIdx.x] = lq;
  }
}

template <typename scalar_t>
__global__ void reparameterize_bwd_kernel(const scalar_t* __restrict__ mu, const scalar_t* __restrict__ lv,
                                          const scalar_t* __restrict__ eps,
                                          const scalar_t* __restrict__ gz,  // grad of z, row stride gzs
                                          const opmath_t<scalar_t>* __restrict__ gkl,  // [B]
                                          const opmath_t<scalar_t>* __restrict__ glq,  // [B]
                                          scalar_t* __restrict__ gmu, scalar_t* __restrict__ glv,
                                          scalar_t* __restrict__ geps,  // nullptr when eps was drawn
                                          int64_t D, int64_t chunks, int64_t ms, int64_t ls, int64_t es,
                                          int64_t gzs, uint64_t seed) {
  using math_t = opmath_t<scalar_t>;
  const int64_t b = blockIdx.x / chunks, lo = (blockIdx.x % chunks) * kChunk;
  const int64_t hi = lo + kChunk < D ? lo + kChunk : D;
  mu += b * ms;
  lv += b * ls;
  if (eps != nullptr) eps += b * es;
  gz += b * gzs;
  const math_t g_kl = gkl[b], g_lq = glq[b];
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    math_t g_mu, g_lv, g_eps;
    reparameterize_bwd_elem(static_cast<math_t>(mu[i]), static_cast<math_t>(lv[i]), noise<math_t>(eps, b, D, i, seed),
                            static_cast<math_t>(gz[i]), g_kl, g_lq, &g_mu, &g_lv, &g_eps);
    gmu[b * D + i] = static_cast<scalar_t>(g_mu);
    glv[b * D + i] = static_cast<scalar_t>(g_lv);
    if (geps != nullptr) geps[b * D + i] = static_cast<scalar_t>(g_eps);
  }
}

void check_posterior(const at::Tensor& mu, const at::Tensor& lv, const c10::optional<at::Tensor>& eps) {
  TORCH_CHECK(mu.dim() == 2, "dgmfast: mu must be [B, D], got ", mu.sizes());
  check_same_shape(mu, lv, "logvar");
  if (eps.has_value()) check_same_shape(mu, *eps, "eps");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_fwd_cuda(const at::Tensor& mu_in,
                                                                       const at::Tensor& lv_in,
                                                                       const c10::optional<at::Tensor>& eps_in,
                                                                       int64_t seed) {
  check_posterior(mu_in, lv_in, eps_in);
  const c10::cuda::CUDAGuard guard(mu_in.device());
  const at::Tensor mu = row_contiguous(mu_in), lv = row_contiguous(lv_in);
  const at::Tensor eps = eps_in.has_value() ? row_contiguous(*eps_in) : at::Tensor();
  const int64_t B = mu.size(0), D = mu.size(1);
  const auto acc = acc_scalar_type(mu.scalar_type());
  at::Tensor z = at::empty(mu.sizes(), mu.options());
  const RowChunks rc = row_chunks(B, D);
  at::Tensor kl_part = at::empty({B, rc.chunks}, mu.options().dtype(acc));
  at::Tensor lq_part = at::empty({B, rc.chunks}, mu.options().dtype(acc));
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_fwd_cuda", [&] {
      using math_t = opmath_t<scalar_t>;
      reparameterize_fwd_kernel<scalar_t><<<rc.blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          mu.const_data_ptr<scalar_t>(), lv.const_data_ptr<scalar_t>(),
          eps.defined() ? eps.const_data_ptr<scalar_t>() : nullptr, z.mutable_data_ptr<scalar_t>(),
          kl_part.mutable_data_ptr<math_t>(), lq_part.mutable_data_ptr<math_t>(), D, rc.chunks, row_stride(mu),
          row_stride(lv), eps.defined() ? row_stride(eps) : 0, static_cast<uint64_t>(seed));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {z, at::sum(kl_part, {1}), at::sum(lq_part, {1})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_bwd_cuda(
    const at::Tensor& mu_in, const at::Tensor& lv_in, const c10::optional<at::Tensor>& eps_in, int64_t seed,
    const at::Tensor& gz_in, const at::Tensor& gkl_in, const at::Tensor& glq_in) {
  check_posterior(mu_in, lv_in, eps_in);
  const c10::cuda::CUDAGuard guard(mu_in.device());
  const at::Tensor mu = row_contiguous(mu_in), lv = row_contiguous(lv_in), gz = row_contiguous(gz_in);
  const at::Tensor eps = eps_in.has_value() ? row_contiguous(*eps_in) : at::Tensor();
  const at::Tensor gkl = gkl_in.contiguous(), glq = glq_in.contiguous();
  const int64_t B = mu.size(0), D = mu.size(1);
  at::Tensor gmu = at::empty(mu.sizes(), mu.options()), glv = at::empty(mu.sizes(), mu.options());
  at::Tensor geps = at::empty(eps.defined() ? mu.sizes() : at::IntArrayRef{0}, mu.options());
  const RowChunks rc = row_chunks(B, D);
  if (B > 0 && D > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_bwd_cuda", [&] {
      using math_t = opmath_t<scalar_t>;
      reparameterize_bwd_kernel<scalar_t><<<rc.blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          mu.const_data_ptr<scalar_t>(), lv.const_data_ptr<scalar_t>(),
          eps.defined() ? eps.const_data_ptr<scalar_t>() : nullptr, gz.const_data_ptr<scalar_t>(),
          gkl.const_data_ptr<math_t>(), glq.const_data_ptr<math_t>(), gmu.mutable_data_ptr<scalar_t>(),
          glv.mutable_data_ptr<scalar_t>(), eps.defined() ? geps.mutable_data_ptr<scalar_t>() : nullptr, D,
          rc.chunks, row_stride(mu), row_stride(lv), eps.defined() ? row_stride(eps) : 0, row_stride(gz),
          static_cast<uint64_t>(seed));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gmu, glv, geps};
}

}  // namespace
}  // namespace dgm::cuda

TORCH_LIBRARY_IMPL(dgmfast_C, CUDA, m) {
  m.impl("reparameterize_fwd", &dgm::cuda::reparameterize_fwd_cuda);
  m.impl("reparameterize_bwd", &dgm::cuda::reparameterize_bwd_cuda);
}
