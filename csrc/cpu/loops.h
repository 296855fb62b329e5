// Loop helpers shared by the C++ CPU kernels: converting loads/stores between the storage
// dtype and the math dtype (float for half/bfloat16/float, double for double), and a
// deterministic parallel row-chunk loop with per-row reductions.
#pragma once

#include "vec_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace dgm::cpu {

// Vectorized<opmath_t<scalar_t>> loads/stores from scalar_t memory.
template <typename scalar_t>
struct VecIO {
  using math_t = opmath_t<scalar_t>;
  using Vec = at::vec::Vectorized<math_t>;
  static constexpr int64_t kSize = Vec::size();

  static Vec load(const scalar_t* p) {
    if constexpr (std::is_same_v<scalar_t, math_t>) {
      return Vec::loadu(p);
    } else {
      Vec out;
      at::vec::load_to_float<scalar_t>(p, out);
      return out;
    }
  }
  static void store(scalar_t* p, const Vec& v) {
    if constexpr (std::is_same_v<scalar_t, math_t>) {
      v.store(p);
    } else {
      math_t tmp[kSize];
      v.store(tmp);
      for (int64_t i = 0; i < kSize; ++i) p[i] = static_cast<scalar_t>(tmp[i]);
    }
  }
  // The first `count` <= kSize elements (the other lanes are zero) / stores only those.
  static Vec load(const scalar_t* p, int64_t count) {
    if (count == kSize) return load(p);
    if constexpr (std::is_same_v<scalar_t, math_t>) {
      return Vec::loadu(p, count);
    } else {
      scalar_t tmp[kSize] = {};
      std::copy(p, p + count, tmp);
      return load(tmp);
    }
  }
  static void store(scalar_t* p, const Vec& v, int64_t count) {
    if (count == kSize) return store(p, v);
    math_t tmp[kSize];
    v.store(tmp);
    for (int64_t i = 0; i < count; ++i) p[i] = static_cast<scalar_t>(tmp[i]);
  }
};

// Elements per task of a row-chunk loop: large enough to amortize the task, small enough
// that a few rows still spread over every thread. Fixed, so results never depend on threads.
constexpr int64_t kRowChunk = 16384;

// Rows per parallel task so that a task holds at least kRowChunk elements (1 for rows that long).
inline int64_t rows_grain(int64_t N) { return std::max<int64_t>(1, kRowChunk / std::max<int64_t>(N, 1)); }

// For each row b in [0, B) and chunk [lo, hi) of its N elements, in parallel, calls
// acc = chunk_fn(b, lo, hi) and writes out[b] = sum of that row's chunk results, summed in
// chunk order (deterministic for any thread count).
// Short rows are grouped so that a thread gets at least kRowChunk elements (a small batch runs inline,
// without waking the thread pool).
template <typename acc_t, typename ChunkFn>
void parallel_rows(int64_t B, int64_t N, acc_t* out, const ChunkFn& chunk_fn) {
  const int64_t chunks = std::max<int64_t>(1, (N + kRowChunk - 1) / kRowChunk);
  std::vector<acc_t> partial(B * chunks, acc_t(0));
  at::parallel_for(0, B * chunks, rows_grain(N), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, c = task % chunks;
      const int64_t lo = c * kRowChunk, hi = std::min(N, lo + kRowChunk);
      partial[task] = lo < hi ? chunk_fn(b, lo, hi) : acc_t(0);
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    acc_t s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[b * chunks + c];
    if (out != nullptr) out[b] = s;
  }
}

// Calls tile_fn(b0, b1) on tiles of at most `tile_rows` consecutive whole rows of N elements covering
// [0, B), in parallel with at least kRowChunk elements per task. Tiles never depend on the thread count.
template <typename TileFn>
void parallel_row_tiles(int64_t B, int64_t N, int64_t tile_rows, const TileFn& tile_fn) {
  const int64_t tiles = (B + tile_rows - 1) / tile_rows;
  at::parallel_for(0, tiles, std::max<int64_t>(1, rows_grain(N) / tile_rows), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) tile_fn(t * tile_rows, std::min(B, (t + 1) * tile_rows));
  });
}

}  // namespace dgm::cpu
