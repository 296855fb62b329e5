// CUDA row-chunk helpers shared by the kernels of every family: a block of threads handles a
// chunk of one sample's elements and writes one partial sum; the launcher reduces the
// [B, chunks] partials in a fixed order, so per-sample reductions are deterministic.
#pragma once

#include <dgmfast/common.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

namespace dgm::cuda {

constexpr int kThreads = 256;
constexpr int64_t kChunk = kThreads * 16;  // elements per block

struct RowChunks {
  int64_t chunks;  // per row
  int64_t blocks;  // B * chunks
};

inline RowChunks row_chunks(int64_t B, int64_t N) {
  const int64_t chunks = N == 0 ? 1 : (N + kChunk - 1) / kChunk;
  return {chunks, B * chunks};
}

// The sample b and element range [lo, hi) of this block of a row-chunk launch.
struct RowChunk {
  int64_t b, lo, hi;
};

__device__ __forceinline__ RowChunk this_row_chunk(int64_t N, int64_t chunks) {
  const int64_t b = blockIdx.x / chunks, lo = (blockIdx.x % chunks) * kChunk;
  return {b, lo, lo + kChunk < N ? lo + kChunk : N};
}

// Launches kernel<<<rc.blocks, kThreads>>> on the current stream and checks the launch.
#define DGM_LAUNCH_ROWS(kernel, rc, ...)                                                      \
  kernel<<<(rc).blocks, ::dgm::cuda::kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(__VA_ARGS__); \
  C10_CUDA_KERNEL_LAUNCH_CHECK()

// Sum of v over the block; the result is valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? warp_sums[lane] : T(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  return v;
}

}  // namespace dgm::cuda
