// Philox noise for the C++ CPU kernels, element for element the numbers of csrc/include/dgmfast/philox.h
// (and of kernels/_random.py): whole groups of four elements take their words from philox_words_block
// (vectorized over counters) and, for normals, a Box-Muller on at::vec::Vectorized<float> (cos and sin
// halves); unaligned heads and tails use the scalar per-element functions.
#pragma once

#include "vec_math.h"

#include <dgmfast/philox.h>

namespace dgm::cpu {

// Elements per noise buffer in the kernels (a multiple of every Vectorized<float> width).
constexpr int64_t kNoiseBlock = 256;
constexpr int64_t kGroups = 64;  // Philox counters per words block

// Calls one(i) for unaligned head/tail elements and four(w, G, out) for runs of G <= kGroups aligned
// groups whose words are w[0..3][0..G).
template <typename PerElement, typename PerGroups>
inline void philox_fill(uint64_t first, int64_t n, uint32_t stream, uint64_t seed, float* out,
                        const PerElement& one, const PerGroups& four) {
  alignas(64) uint32_t w[4][kGroups];
  int64_t j = 0;
  for (; j < n && ((first + j) & 3) != 0; ++j) out[j] = one(first + j);
  for (int64_t left = (n - j) / 4; left > 0;) {
    const int64_t G = left < kGroups ? left : kGroups;
    philox_words_block((first + j) >> 2, G, stream, seed, w[0], w[1], w[2], w[3]);
    four(w, G, out + j);
    j += 4 * G;
    left -= G;
  }
  for (; j < n; ++j) out[j] = one(first + j);
}

// out[j] = philox_uniform(first + j) for j < n.
inline void philox_uniform_fill(uint64_t first, int64_t n, uint32_t stream, uint64_t seed, float* out) {
  philox_fill(
      first, n, stream, seed, out, [&](uint64_t i) { return philox_uniform(i, stream, seed); },
      [](const uint32_t (*w)[kGroups], int64_t G, float* o) {
        for (int64_t g = 0; g < G; ++g)
          for (int k = 0; k < 4; ++k) o[4 * g + k] = uniform_from_bits(w[k][g]);
      });
}

// out[j] = philox_normal(first + j) for j < n.
inline void philox_normal_block(uint64_t first, uint32_t stream, uint64_t seed, int64_t n, float* out) {
  using Vec = at::vec::Vectorized<float>;
  philox_fill(
      first, n, stream, seed, out, [&](uint64_t i) { return philox_normal(i, stream, seed); },
      [](const uint32_t (*w)[kGroups], int64_t G, float* o) {
        alignas(64) float u1[kGroups], u2[kGroups], c[2][kGroups], s[2][kGroups];
        for (int k = 0; k < 2; ++k) {
          for (int64_t g = 0; g < kGroups; ++g) {  // the padding past G stays finite (u1 = 1)
            u1[g] = g < G ? static_cast<float>((w[2 * k][g] >> 8) + 1u) * 5.9604644775390625e-08f : 1.0f;
            u2[g] = g < G ? uniform_from_bits(w[2 * k + 1][g]) : 0.0f;
          }
          for (int64_t g = 0; g < G; g += Vec::size()) {
            const Vec radius = (Vec(-2.0f) * Vec::loadu(u1 + g).log()).sqrt();
            const Vec angle = Vec(6.283185307179586f) * Vec::loadu(u2 + g);
            (radius * angle.cos()).store(c[k] + g);
            (radius * angle.sin()).store(s[k] + g);
          }
        }
        for (int64_t g = 0; g < G; ++g) {
          o[4 * g] = c[0][g];
          o[4 * g + 1] = s[0][g];
          o[4 * g + 2] = c[1][g];
          o[4 * g + 3] = s[1][g];
        }
      });
}

}  // namespace dgm::cpu
