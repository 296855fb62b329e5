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
};

// Elements per task of a row-chunk loop: large enough to amortize the task, small enough
// that a few rows still spread over every thread. Fixed, so results never depend on threads.
constexpr int64_t kRowChunk = 16384;

// For each row b in [0, B) and chunk [lo, hi) of its N elements, in parallel, calls
// acc = chunk_fn(b, lo, hi) and writes out[b] = sum of that row's chunk results, summed in
// chunk order (deterministic for any thread count).
template <typename acc_t, typename ChunkFn>
void parallel_rows(int64_t B, int64_t N, acc_t* out, const ChunkFn& chunk_fn) {
  const int64_t chunks = std::max<int64_t>(1, (N + kRowChunk - 1) / kRowChunk);
  std::vector<acc_t> partial(B * chunks, acc_t(0));
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
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

}  // namespace dgm::cpu
