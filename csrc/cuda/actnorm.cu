// ActNorm (SPEC §3), CUDA kernels. Per-channel math: csrc/include/dgmfast/actnorm.h, the same the
// C++ CPU kernels run. Schemas are declared in csrc/cpu/actnorm.cpp. A block handles one tile of one
// channel (tile_b samples x tile_s plane elements, about kChunk elements); the backward writes one
// (sum g, sum g*z) pair per tile, reduced over tiles by the launcher in a fixed order (deterministic).
#include "rows.cuh"

#include <dgmfast/actnorm.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace dgm::cuda {
namespace {

// Tiling of each channel's [B, S] elements into tiles of about `target` elements, one block per tile.
struct ActNormTiles {
  int64_t tile_b, tile_s;  // samples and plane elements per tile
  int64_t nb, ns;          // tiles along B and along S
  int64_t per_channel() const { return nb * ns; }
};

inline ActNormTiles actnorm_tiles(int64_t B, int64_t S, int64_t target) {
  ActNormTiles t;
  t.tile_s = S < target ? (S > 0 ? S : 1) : target;
  t.tile_b = target / t.tile_s;
  if (t.tile_b > B) t.tile_b = B > 0 ? B : 1;
  if (t.tile_b < 1) t.tile_b = 1;
  t.nb = B > 0 ? (B + t.tile_b - 1) / t.tile_b : 0;
  t.ns = S > 0 ? (S + t.tile_s - 1) / t.tile_s : 0;
  return t;
}

struct TileIndex {
  int64_t c, b0, s0;
  int nb_local, ns_local;  // tile extent, clipped at the tensor's edge
};

__device__ __forceinline__ TileIndex tile_index(int64_t B, int64_t S, ActNormTiles tiles) {
  const int64_t per_channel = tiles.nb * tiles.ns;
  const int64_t c = blockIdx.x / per_channel, t = blockIdx.x % per_channel;
  const int64_t b0 = (t / tiles.ns) * tiles.tile_b, s0 = (t % tiles.ns) * tiles.tile_s;
  const int64_t b1 = b0 + tiles.tile_b < B ? b0 + tiles.tile_b : B, s1 = s0 + tiles.tile_s < S ? s0 + tiles.tile_s : S;
  return {c, b0, s0, static_cast<int>(b1 - b0), static_cast<int>(s1 - s0)};
}

template <typename scalar_t>
__global__ void actnorm_fwd_kernel(const scalar_t* __restrict__ x,          // [B, C, S], planes contiguous
                                   const scalar_t* __restrict__ loc,        // [C]
                                   const scalar_t* __restrict__ log_scale,  // [C]
                                   scalar_t* __restrict__ y,                // [B, C, S] contiguous
                                   int64_t B, int64_t C, int64_t S, int64_t xs0, int64_t xs1,  // x strides
                                   ActNormTiles tiles, bool reverse) {
  using math_t = opmath_t<scalar_t>;
  const TileIndex ti = tile_index(B, S, tiles);
  math_t scale, shift;
  actnorm_channel<math_t>(static_cast<math_t>(loc[ti.c]), static_cast<math_t>(log_scale[ti.c]), reverse, &scale,
                          &shift);
  const int n = ti.nb_local * ti.ns_local;
  for (int k = threadIdx.x; k < n; k += kThreads) {
    const int bl = k / ti.ns_local;
    const int64_t b = ti.b0 + bl, s = ti.s0 + (k - bl * ti.ns_local);
    const math_t in = static_cast<math_t>(x[b * xs0 + ti.c * xs1 + s]);
    y[(b * C + ti.c) * S + s] = static_cast<scalar_t>(actnorm_elem(in, scale, shift, reverse));
  }
}

template <typename scalar_t>
__global__ void actnorm_bwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ loc,
                                   const scalar_t* __restrict__ log_scale,
                                   const scalar_t* __restrict__ gy,          // grad of out, planes contiguous
                                   scalar_t* __restrict__ gx,                // [B, C, S] contiguous
                                   opmath_t<scalar_t>* __restrict__ partial,  // [C, tiles per channel, 2]
                                   int64_t B, int64_t C, int64_t S, int64_t xs0, int64_t xs1, int64_t gs0,
                                   int64_t gs1, ActNormTiles tiles, bool reverse) {
  using math_t = opmath_t<scalar_t>;
  const TileIndex ti = tile_index(B, S, tiles);
  math_t scale, shift;
  actnorm_channel<math_t>(static_cast<math_t>(loc[ti.c]), static_cast<math_t>(log_scale[ti.c]), reverse, &scale,
                          &shift);
  math_t sum_g = 0, sum_gz = 0;
  const int n = ti.nb_local * ti.ns_local;
  for (int k = threadIdx.x; k < n; k += kThreads) {
    const int bl = k / ti.ns_local;
    const int64_t b = ti.b0 + bl, s = ti.s0 + (k - bl * ti.ns_local);
    const math_t g = static_cast<math_t>(gy[b * gs0 + ti.c * gs1 + s]);
    const math_t in = static_cast<math_t>(x[b * xs0 + ti.c * xs1 + s]);
    gx[(b * C + ti.c) * S + s] = static_cast<scalar_t>(g * scale);
    sum_g += g;
    sum_gz += g * actnorm_scaled_part(in, shift, reverse);
  }
  sum_g = block_sum(sum_g);
  __syncthreads();  // block_sum's shared buffer is reused
  sum_gz = block_sum(sum_gz);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = sum_g;
    partial[2 * blockIdx.x + 1] = sum_gz;
  }
}

// Channel gradients from the tile sums, one thread per channel (tiles summed in order).
template <typename scalar_t>
__global__ void actnorm_channel_grads_kernel(const opmath_t<scalar_t>* __restrict__ partial,  // [C, T, 2]
                                             const scalar_t* __restrict__ loc,
                                             const scalar_t* __restrict__ log_scale,
                                             const opmath_t<scalar_t>* __restrict__ gld_sum,  // [1]: sum_b grad_logdet
                                             scalar_t* __restrict__ g_loc, scalar_t* __restrict__ g_log_scale,
                                             int64_t C, int64_t per_channel, int64_t S, bool reverse) {
  using math_t = opmath_t<scalar_t>;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  math_t scale, shift, sum_g = 0, sum_gz = 0, gl, gs;
  actnorm_channel<math_t>(static_cast<math_t>(loc[c]), static_cast<math_t>(log_scale[c]), reverse, &scale, &shift);
  for (int64_t t = 0; t < per_channel; ++t) {
    sum_g += partial[2 * (c * per_channel + t)];
    sum_gz += partial[2 * (c * per_channel + t) + 1];
  }
  actnorm_channel_grads<math_t>(scale, sum_g, sum_gz, static_cast<math_t>(S) * gld_sum[0], reverse, &gl, &gs);
  g_loc[c] = static_cast<scalar_t>(gl);
  g_log_scale[c] = static_cast<scalar_t>(gs);
}

at::ScalarType actnorm_acc_type(const at::Tensor& x) {
  return acc_scalar_type(x.scalar_type());
}

// The [B] log-det, the same for every sample.
at::Tensor actnorm_logdet(const at::Tensor& x, const at::Tensor& log_scale, int64_t plane_size, bool reverse) {
  const at::Tensor sum = at::sum(log_scale, {0}, false, actnorm_acc_type(x));
  return sum.mul(static_cast<double>(reverse ? -plane_size : plane_size)).expand({x.size(0)}).contiguous();
}

std::tuple<at::Tensor, at::Tensor> actnorm_fwd_cuda(const at::Tensor& x_in, const at::Tensor& loc_in,
                                                    const at::Tensor& log_scale_in, bool reverse) {
  check_actnorm_params(x_in, loc_in, log_scale_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = plane_contiguous(x_in), loc = loc_in.contiguous(), log_scale = log_scale_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), S = plane_numel(x);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const ActNormTiles tiles = actnorm_tiles(B, S, kChunk);
  const int64_t blocks = C * tiles.per_channel();
  if (blocks > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "actnorm_fwd_cuda", [&] {
      actnorm_fwd_kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), loc.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(),
          y.mutable_data_ptr<scalar_t>(), B, C, S, x.stride(0), x.stride(1), tiles, reverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {y, actnorm_logdet(x, log_scale, S, reverse)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_bwd_cuda(const at::Tensor& x_in, const at::Tensor& loc_in,
                                                                const at::Tensor& log_scale_in,
                                                                const at::Tensor& gy_in, const at::Tensor& gld_in,
                                                                bool reverse) {
  check_actnorm_params(x_in, loc_in, log_scale_in);
  check_same_shape(x_in, gy_in, "grad_y");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = plane_contiguous(x_in), loc = loc_in.contiguous(), log_scale = log_scale_in.contiguous();
  const at::Tensor gy = plane_contiguous(gy_in);
  const int64_t B = x.size(0), C = x.size(1), S = plane_numel(x);
  at::Tensor gx = at::empty(x.sizes(), x.options());
  at::Tensor g_loc = at::empty(loc.sizes(), loc.options()), g_log_scale = at::empty(loc.sizes(), loc.options());
  const ActNormTiles tiles = actnorm_tiles(B, S, kChunk);
  const int64_t per_channel = tiles.per_channel();
  at::Tensor partial = at::empty({C, per_channel, 2}, x.options().dtype(actnorm_acc_type(x)));
  const at::Tensor gld_sum = at::sum(gld_in, {0}, false, actnorm_acc_type(x));
  if (C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "actnorm_bwd_cuda", [&] {
      using math_t = opmath_t<scalar_t>;
      const auto stream = c10::cuda::getCurrentCUDAStream();
      if (per_channel > 0) {
        actnorm_bwd_kernel<scalar_t><<<C * per_channel, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), loc.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(),
            gy.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<math_t>(), B,
            C, S, x.stride(0), x.stride(1), gy.stride(0), gy.stride(1), tiles, reverse);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      actnorm_channel_grads_kernel<scalar_t><<<(C + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          partial.const_data_ptr<math_t>(), loc.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(),
          gld_sum.const_data_ptr<math_t>(), g_loc.mutable_data_ptr<scalar_t>(),
          g_log_scale.mutable_data_ptr<scalar_t>(), C, per_channel, S, reverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gx, g_loc, g_log_scale};
}

}  // namespace
}  // namespace dgm::cuda

TORCH_LIBRARY_IMPL(dgmfast_C, CUDA, m) {
  m.impl("actnorm_fwd", &dgm::cuda::actnorm_fwd_cuda);
  m.impl("actnorm_bwd", &dgm::cuda::actnorm_bwd_cuda);
}
