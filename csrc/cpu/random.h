// Philox noise for the C++ CPU kernels, element for element the numbers of csrc/include/dgmfast/philox.h
// (and of kernels/_random.py): the counter loop is plain scalar code that the compiler vectorizes
// (64-bit lane products), Box-Muller runs on at::vec::Vectorized<float>.
#pragma once

#include "vec_math.h"

#include <dgmfast/philox.h>

namespace dgm::cpu {

// Elements drawn per call of philox_normal_block: a multiple of every Vectorized<float> width.
constexpr int64_t kNoiseBlock = 256;

// out[i] = N(0, 1) noise of element first + i, i < n <= kNoiseBlock (stream `stream`, key `seed`).
inline void philox_normal_block(uint64_t first, uint32_t stream, uint64_t seed, int64_t n, float* out) {
  using Vec = at::vec::Vectorized<float>;
  alignas(64) float u1[kNoiseBlock], u2[kNoiseBlock];
  const int64_t padded = (n + Vec::size() - 1) / Vec::size() * Vec::size();
  for (int64_t i = 0; i < padded; ++i) {
    const Philox4 r = philox4x32_10(first + static_cast<uint64_t>(i), stream, seed);
    u1[i] = static_cast<float>((r.x[0] >> 8) + 1u) * 5.9604644775390625e-08f;  // (0, 1]
    u2[i] = static_cast<float>(r.x[1] >> 8) * 5.9604644775390625e-08f;         // [0, 1)
  }
  alignas(64) float tmp[Vec::size()];
  for (int64_t i = 0; i < padded; i += Vec::size()) {
    const Vec radius = (Vec(-2.0f) * Vec::loadu(u1 + i).log()).sqrt();
    const Vec v = radius * (Vec(6.283185307179586f) * Vec::loadu(u2 + i)).cos();
    if (i + Vec::size() <= n) {
      v.store(out + i);
    } else {
      v.store(tmp);
      for (int64_t j = 0; i + j < n; ++j) out[i + j] = tmp[j];
    }
  }
}

}  // namespace dgm::cpu
