// Counter-based random numbers shared by the CPU and CUDA kernels (and mirrored bit for bit by
// kernels/_random.py in Triton), so one seed gives the same noise on every backend.
//
// Philox4x32-10 (Salmon et al., Random123). One call with counter (g_lo, g_hi, stream, 0) and key
// (seed_lo, seed_hi) gives four 32-bit words, which serve the four elements i = 4g .. 4g+3 of a call:
// uniform(i) is word i % 4; normal(i) is the cosine (even i) or sine (odd i) half of Box-Muller on
// words (2k, 2k+1), k = (i % 4) / 2. No state, no noise tensor: backward recomputes the noise from
// (seed, i).
#pragma once

#include <dgmfast/common.h>

namespace dgm {

struct Philox4 {
  uint32_t x[4];
};

// One Philox round on counter (c0..c3) and key (k0, k1), bumping the key.
DGM_HOST_DEVICE DGM_INLINE void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t& k0,
                                             uint32_t& k1) {
  const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
  const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(p1);
  c3 = static_cast<uint32_t>(p0);
  c0 = n0;
  c2 = n2;
  k0 += 0x9E3779B9u;
  k1 += 0xBB67AE85u;
}

DGM_HOST_DEVICE DGM_INLINE Philox4 philox4x32_10(uint64_t counter, uint32_t stream, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = stream, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) philox_round(c0, c1, c2, c3, k0, k1);
  return {{c0, c1, c2, c3}};
}

// Uniform in [0, 1) from the top 24 bits: exactly representable in float32, never 1.
DGM_HOST_DEVICE DGM_INLINE float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(bits >> 8) * 5.9604644775390625e-08f;  // 2^-24
}

// Box-Muller radius and angle from two words: u1 in (0, 1] (never log 0), u2 in [0, 1).
DGM_HOST_DEVICE DGM_INLINE void box_muller(uint32_t bits1, uint32_t bits2, float* radius, float* angle) {
  const float u1 = static_cast<float>((bits1 >> 8) + 1u) * 5.9604644775390625e-08f;
  *radius = ::sqrtf(-2.0f * ::logf(u1));
  *angle = 6.283185307179586f * uniform_from_bits(bits2);
}

DGM_HOST_DEVICE DGM_INLINE float philox_uniform(uint64_t index, uint32_t stream, uint64_t seed) {
  return uniform_from_bits(philox4x32_10(index >> 2, stream, seed).x[index & 3]);
}

DGM_HOST_DEVICE DGM_INLINE float philox_normal(uint64_t index, uint32_t stream, uint64_t seed) {
  const Philox4 r = philox4x32_10(index >> 2, stream, seed);
  const int k = static_cast<int>(index & 3);
  float radius, angle;
  box_muller(r.x[k & 2], r.x[(k & 2) + 1], &radius, &angle);
  return radius * ((k & 1) ? ::sinf(angle) : ::cosf(angle));
}

// Host side: the words of counters g0 .. g0+G-1 into w0..w3[0..G) (a loop over counters the compiler
// vectorizes; csrc/cpu/random.h builds the CPU noise fills on it).
inline void philox_words_block(uint64_t g0, int64_t G, uint32_t stream, uint64_t seed, uint32_t* __restrict w0,
                               uint32_t* __restrict w1, uint32_t* __restrict w2, uint32_t* __restrict w3) {
  for (int64_t g = 0; g < G; ++g) {
    const uint64_t counter = g0 + g;
    uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = stream, c3 = 0;
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) philox_round(c0, c1, c2, c3, k0, k1);
    w0[g] = c0;
    w1[g] = c1;
    w2[g] = c2;
    w3[g] = c3;
  }
}

}  // namespace dgm
