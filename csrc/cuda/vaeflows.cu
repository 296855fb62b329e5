// Planar flows and the IAF step (SPEC §5), CUDA kernels. Scalar math: csrc/include/dgmfast/vaeflows.h, the
// same the C++ CPU kernels run. Schemas are declared in csrc/cpu/vaeflows.cpp.
#include "rows.cuh"

#include <dgmfast/rows.h>
#include <dgmfast/vaeflows.h>
#include <dgmfast/vaeflows_launch.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

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

// ---- planar flows: one warp per row, all L steps ------------------------------------------------------
//
// A warp walks one row through the L steps (rows strided over the grid, whose size depends on B only).
// Its z (and, backward, its running gradient) lives in a math-dtype workspace row; lane j owns elements
// j, j + 32, ... Dot products are lane partials summed by a fixed shuffle tree, so results are
// deterministic. Each step's u_hat coefficients are formed on the fly from u_l and w_l (two D-long dots),
// for shared and per-sample parameters alike. Backward with shared u, w (or b) accumulates the batch sums
// A_l = sum h g_z, Zs_l = sum g_a z_l, Gm_l = sum g_wuh, Ga_l = sum g_a per warp into its own slot; the
// launcher sums the slots in a fixed order and planar_uhat_kernel turns them into the gradients of u, w.

constexpr int kPlanarWarps = 4;         // warps per block
constexpr int64_t kPlanarMaxBlocks = 1024;

inline int64_t planar_blocks(int64_t B) {
  return std::max<int64_t>(1, std::min<int64_t>((B + kPlanarWarps - 1) / kPlanarWarps, kPlanarMaxBlocks));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// u, w [.., L, D] and b [.., L] read through strides (batch stride 0 when shared).
template <typename scalar_t>
struct PlanarParams {
  const scalar_t *u, *w, *b;
  int64_t ub, ul, wb, wl, bb, bl, L, D;
  __device__ __forceinline__ const scalar_t* u_at(int64_t row, int64_t l) const { return u + row * ub + l * ul; }
  __device__ __forceinline__ const scalar_t* w_at(int64_t row, int64_t l) const { return w + row * wb + l * wl; }
  __device__ __forceinline__ opmath_t<scalar_t> bias(int64_t row, int64_t l) const {
    return static_cast<opmath_t<scalar_t>>(b[row * bb + l * bl]);
  }
};

template <typename scalar_t>
PlanarParams<scalar_t> planar_params(const at::Tensor& u, const at::Tensor& w, const at::Tensor& b) {
  return {u.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
          u.dim() == 3 ? u.stride(0) : 0, u.stride(-2), w.dim() == 3 ? w.stride(0) : 0, w.stride(-2),
          b.dim() == 2 ? b.stride(0) : 0, b.stride(-1), w.size(-2), w.size(-1)};
}

// The coefficients of step l of `row` (every lane gets them): s = w.u, q = w.w.
template <typename scalar_t>
__device__ __forceinline__ PlanarCoefT<opmath_t<scalar_t>> planar_step_coef(const scalar_t* w, const scalar_t* u,
                                                                            int64_t D, int lane) {
  using math_t = opmath_t<scalar_t>;
  math_t s = 0, q = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const math_t wd = static_cast<math_t>(w[d]);
    s += wd * static_cast<math_t>(u[d]);
    q += wd * wd;
  }
  return planar_coef(warp_sum(s), warp_sum(q));
}

template <typename scalar_t>
__global__ void planar_fwd_kernel(const scalar_t* __restrict__ z,  // [B, D], row stride zs
                                  PlanarParams<scalar_t> P,
                                  opmath_t<scalar_t>* work,                 // [B, D] running z (may be out)
                                  scalar_t* out,                            // [B, D]; written when != work
                                  opmath_t<scalar_t>* __restrict__ logdet,  // [B]
                                  opmath_t<scalar_t>* __restrict__ pre,     // [B, L] pre-activations
                                  int64_t B, int64_t zs) {
  using math_t = opmath_t<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t D = P.D, L = P.L, warps = int64_t(gridDim.x) * kPlanarWarps;
  for (int64_t row = int64_t(blockIdx.x) * kPlanarWarps + threadIdx.x / 32; row < B; row += warps) {
    math_t* Z = work + row * D;
    for (int64_t d = lane; d < D; d += 32) Z[d] = static_cast<math_t>(z[row * zs + d]);
    math_t ld = 0;
    for (int64_t l = 0; l < L; ++l) {
      const scalar_t *w = P.w_at(row, l), *u = P.u_at(row, l);
      const auto k = planar_step_coef(w, u, D, lane);
      math_t wz = 0;
      for (int64_t d = lane; d < D; d += 32) wz += static_cast<math_t>(w[d]) * Z[d];
      const math_t a = warp_sum(wz) + P.bias(row, l), h = dgm::tanh(a);
      for (int64_t d = lane; d < D; d += 32)
        Z[d] += h * (static_cast<math_t>(u[d]) + k.c * static_cast<math_t>(w[d]));
      ld += planar_logdet_term(h, k.wuh);
      if (lane == 0) pre[row * L + l] = a;
    }
    if (static_cast<void*>(out) != static_cast<void*>(work))
      for (int64_t d = lane; d < D; d += 32) out[row * D + d] = static_cast<scalar_t>(Z[d]);
    if (lane == 0) logdet[row] = ld;
  }
}

template <typename scalar_t>
__global__ void planar_bwd_kernel(const scalar_t* __restrict__ z, PlanarParams<scalar_t> P,
                                  const opmath_t<scalar_t>* __restrict__ pre,  // [B, L]
                                  const scalar_t* __restrict__ gy,             // [B, D], row stride gys
                                  const opmath_t<scalar_t>* __restrict__ gld,  // [B]
                                  opmath_t<scalar_t>* __restrict__ work,       // [B, 2, D]: z_l, running g_z
                                  scalar_t* __restrict__ gz,                   // [B, D]
                                  scalar_t* __restrict__ gu, scalar_t* __restrict__ gw,  // [B, L, D] if per sample
                                  scalar_t* __restrict__ gb,                   // [B, L] if per sample
                                  opmath_t<scalar_t>* __restrict__ slots,      // [warps, part] zeroed
                                  int64_t part, bool shared_uw, bool shared_b, int64_t B, int64_t zs, int64_t gys) {
  using math_t = opmath_t<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t D = P.D, L = P.L, warp = int64_t(blockIdx.x) * kPlanarWarps + threadIdx.x / 32;
  math_t* A = slots + warp * part;  // shared u, w: A [L, D], Zs [L, D], Gm [L], Ga [L]; shared b only: Ga [L]
  math_t* Zs = A + L * D;
  math_t* Gm = Zs + L * D;
  math_t* Ga = shared_uw ? Gm + L : A;
  for (int64_t row = warp; row < B; row += int64_t(gridDim.x) * kPlanarWarps) {
    math_t *Z = work + row * 2 * D, *G = Z + D;
    const math_t* a = pre + row * L;
    for (int64_t d = lane; d < D; d += 32) {
      Z[d] = static_cast<math_t>(z[row * zs + d]);
      G[d] = static_cast<math_t>(gy[row * gys + d]);
    }
    for (int64_t l = 0; l < L; ++l) {  // z_L from the saved pre-activations
      const scalar_t *w = P.w_at(row, l), *u = P.u_at(row, l);
      const auto k = planar_step_coef(w, u, D, lane);
      const math_t h = dgm::tanh(a[l]);
      for (int64_t d = lane; d < D; d += 32)
        Z[d] += h * (static_cast<math_t>(u[d]) + k.c * static_cast<math_t>(w[d]));
    }
    const math_t g_ld = gld[row];
    for (int64_t l = L - 1; l >= 0; --l) {
      const scalar_t *w = P.w_at(row, l), *u = P.u_at(row, l);
      const auto k = planar_step_coef(w, u, D, lane);
      const math_t h = dgm::tanh(a[l]);
      math_t g_h = 0, g_hw = 0;
      for (int64_t d = lane; d < D; d += 32) {
        const math_t wd = static_cast<math_t>(w[d]), uh = static_cast<math_t>(u[d]) + k.c * wd;
        Z[d] -= h * uh;  // z_l
        g_h += G[d] * uh;
        g_hw += G[d] * wd;
      }
      math_t g_a, g_wuh;
      planar_step_grads(h, k.wuh, warp_sum(g_h), g_ld, &g_a, &g_wuh);
      g_hw = warp_sum(g_hw);
      if (shared_uw) {
        for (int64_t d = lane; d < D; d += 32) {
          A[l * D + d] += h * G[d];
          Zs[l * D + d] += g_a * Z[d];
        }
        if (lane == 0) Gm[l] += g_wuh;
      } else {
        math_t g_s, g_q;
        planar_uhat_grads(k, h * g_hw, g_wuh, &g_s, &g_q);
        for (int64_t d = lane; d < D; d += 32) {
          const math_t wd = static_cast<math_t>(w[d]), g_uh = h * G[d];
          gu[(row * L + l) * D + d] = static_cast<scalar_t>(g_uh + g_s * wd);
          gw[(row * L + l) * D + d] = static_cast<scalar_t>(k.c * g_uh + g_s * static_cast<math_t>(u[d]) +
                                                            2 * g_q * wd + g_a * Z[d]);
        }
      }
      if (lane == 0) {
        if (shared_b) Ga[l] += g_a;
        else gb[row * L + l] = static_cast<scalar_t>(g_a);
      }
      for (int64_t d = lane; d < D; d += 32) G[d] += g_a * static_cast<math_t>(w[d]);
    }
    for (int64_t d = lane; d < D; d += 32) gz[row * D + d] = static_cast<scalar_t>(G[d]);
  }
}

// Shared u, w: one warp per step l turns the batch sums into the gradients of u_l, w_l (through u_hat).
template <typename scalar_t>
__global__ void planar_uhat_kernel(PlanarParams<scalar_t> P, const opmath_t<scalar_t>* __restrict__ sum,
                                   scalar_t* __restrict__ gu, scalar_t* __restrict__ gw) {
  using math_t = opmath_t<scalar_t>;
  const int lane = threadIdx.x;
  const int64_t l = blockIdx.x, D = P.D, L = P.L;
  const scalar_t *w = P.w_at(0, l), *u = P.u_at(0, l);
  const math_t *A = sum + l * D, *Zs = sum + (L + l) * D;
  const auto k = planar_step_coef(w, u, D, lane);
  math_t gc = 0;
  for (int64_t d = lane; d < D; d += 32) gc += A[d] * static_cast<math_t>(w[d]);
  math_t g_s, g_q;
  planar_uhat_grads(k, warp_sum(gc), sum[2 * L * D + l], &g_s, &g_q);
  for (int64_t d = lane; d < D; d += 32) {
    const math_t wd = static_cast<math_t>(w[d]);
    gu[l * D + d] = static_cast<scalar_t>(A[d] + g_s * wd);
    gw[l * D + d] = static_cast<scalar_t>(k.c * A[d] + g_s * static_cast<math_t>(u[d]) + 2 * g_q * wd + Zs[d]);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> planar_flows_fwd_cuda(const at::Tensor& z_in, const at::Tensor& u_in,
                                                                     const at::Tensor& w_in, const at::Tensor& b) {
  check_planar(z_in, u_in, w_in, b);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = row_contiguous(z_in), u = last_contiguous(u_in), w = last_contiguous(w_in);
  const int64_t B = z.size(0), D = z.size(1), L = w.size(-2);
  const auto acc = z.options().dtype(acc_scalar_type(z.scalar_type()));
  at::Tensor out = at::empty(z.sizes(), z.options()), logdet = at::empty({B}, acc), pre = at::empty({B, L}, acc);
  const bool in_place = acc_scalar_type(z.scalar_type()) == z.scalar_type();  // float/double: z runs in out
  at::Tensor work = in_place ? out : at::empty({B, D}, acc);
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "planar_flows_fwd_cuda", [&] {
      using math_t = opmath_t<scalar_t>;
      planar_fwd_kernel<scalar_t><<<planar_blocks(B), kPlanarWarps * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
          z.const_data_ptr<scalar_t>(), planar_params<scalar_t>(u, w, b), static_cast<math_t*>(work.data_ptr()),
          out.mutable_data_ptr<scalar_t>(), logdet.mutable_data_ptr<math_t>(), pre.mutable_data_ptr<math_t>(), B,
          row_stride(z));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, logdet, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> planar_flows_bwd_cuda(
    const at::Tensor& z_in, const at::Tensor& u_in, const at::Tensor& w_in, const at::Tensor& b,
    const at::Tensor& pre_in, const at::Tensor& gy_in, const at::Tensor& gld_in) {
  check_planar(z_in, u_in, w_in, b);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const at::Tensor z = row_contiguous(z_in), u = last_contiguous(u_in), w = last_contiguous(w_in);
  const at::Tensor pre = pre_in.contiguous(), gy = row_contiguous(gy_in), gld = gld_in.contiguous();
  const int64_t B = z.size(0), D = z.size(1), L = w.size(-2);
  const bool shared_uw = w.dim() == 2, shared_b = b.dim() == 1;
  const auto acc = z.options().dtype(acc_scalar_type(z.scalar_type()));
  at::Tensor gz = at::empty(z.sizes(), z.options()), gu = at::empty(u.sizes(), u.options());
  at::Tensor gw = at::empty(w.sizes(), w.options()), gb = at::empty(b.sizes(), b.options());
  const int64_t blocks = planar_blocks(B), part = shared_uw ? L * (2 * D + 2) : (shared_b ? L : 0);
  at::Tensor slots = at::zeros({blocks * kPlanarWarps, part}, acc);
  at::Tensor work = at::empty({B, 2, D}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "planar_flows_bwd_cuda", [&] {
    using math_t = opmath_t<scalar_t>;
    const auto P = planar_params<scalar_t>(u, w, b);
    if (B > 0) {
      planar_bwd_kernel<scalar_t><<<blocks, kPlanarWarps * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
          z.const_data_ptr<scalar_t>(), P, pre.const_data_ptr<math_t>(), gy.const_data_ptr<scalar_t>(),
          gld.const_data_ptr<math_t>(), work.mutable_data_ptr<math_t>(), gz.mutable_data_ptr<scalar_t>(),
          gu.mutable_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(), gb.mutable_data_ptr<scalar_t>(),
          slots.mutable_data_ptr<math_t>(), part, shared_uw, shared_b, B, row_stride(z), row_stride(gy));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (part == 0) return;
    const at::Tensor sum = at::sum(slots, {0});  // fixed-order reduction over the warp slots
    if (shared_b) gb.copy_(sum.narrow(0, shared_uw ? 2 * L * D + L : 0, L));
    if (shared_uw && L > 0) {
      planar_uhat_kernel<scalar_t><<<L, 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
          P, sum.const_data_ptr<math_t>(), gu.mutable_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {gz, gu, gw, gb};
}

}  // namespace
}  // namespace dgm::cuda

TORCH_LIBRARY_IMPL(dgmfast_C, CUDA, m) {
  m.impl("iaf_step_fwd", &dgm::cuda::iaf_step_fwd_cuda);
  m.impl("iaf_step_bwd", &dgm::cuda::iaf_step_bwd_cuda);
  m.impl("planar_flows_fwd", &dgm::cuda::planar_flows_fwd_cuda);
  m.impl("planar_flows_bwd", &dgm::cuda::planar_flows_bwd_cuda);
}
