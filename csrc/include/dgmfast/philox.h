// Counter-based random numbers shared by the CPU and CUDA kernels (and mirrored bit for bit by
// kernels/_random.py in Triton), so one seed gives the same noise on every backend.
//
// Philox4x32-10 (Salmon et al., Random123). Element i of a call with 64-bit seed s and stream id
// `stream` uses counter (i_lo, i_hi, stream, 0) and key (s_lo, s_hi). No state, no noise tensor:
// backward recomputes the noise from (seed, i).
#pragma once

#include <dgmfast/common.h>

namespace dgm {

struct Philox4 {
  uint32_t x[4];
};

DGM_HOST_DEVICE DGM_INLINE Philox4 philox4x32_10(uint64_t index, uint32_t stream, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32), c2 = stream, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
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
  return {{c0, c1, c2, c3}};
}

// Uniform in [0, 1) from the top 24 bits: exactly representable in float32, never 1.
DGM_HOST_DEVICE DGM_INLINE float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(bits >> 8) * 5.9604644775390625e-08f;  // 2^-24
}

// Standard normal by Box-Muller from two words: u1 in (0, 1] (never log 0), u2 in [0, 1).
DGM_HOST_DEVICE DGM_INLINE float normal_from_bits(uint32_t bits1, uint32_t bits2) {
  const float u1 = static_cast<float>((bits1 >> 8) + 1u) * 5.9604644775390625e-08f;
  const float u2 = uniform_from_bits(bits2);
  return ::sqrtf(-2.0f * ::logf(u1)) * ::cosf(6.283185307179586f * u2);
}

DGM_HOST_DEVICE DGM_INLINE float philox_uniform(uint64_t index, uint32_t stream, uint64_t seed) {
  return uniform_from_bits(philox4x32_10(index, stream, seed).x[0]);
}

DGM_HOST_DEVICE DGM_INLINE float philox_normal(uint64_t index, uint32_t stream, uint64_t seed) {
  const Philox4 r = philox4x32_10(index, stream, seed);
  return normal_from_bits(r.x[0], r.x[1]);
}

}  // namespace dgm
