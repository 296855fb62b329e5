// Philox noise for the C++ CPU kernels, element for element the numbers of csrc/include/dgmfast/philox.h
// (and of kernels/_random.py). Whole groups of four elements take their words from Philox run on SIMD
// registers (AVX-512 / AVX2 builds; the portable philox_words_block otherwise and for the counters
// left over); normals then do Box-Muller on at::vec::Vectorized<float> (cos and sin halves). Unaligned
// heads and tails use the scalar per-element functions.
//
// SIMD Philox: `kLanes` counters per register, one 32-bit word per 64-bit lane. _mm*_mul_epu32 reads
// only the low halves of the lanes, so each round is two full 32x32->64 products, two shifts and two
// three-way xors, with no shuffles; the high halves carry junk that never reaches a low half (only xor
// and the product's >> 32 move bits) and is dropped when the words are stored.
#pragma once

#include "vec_math.h"

#include <dgmfast/philox.h>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace dgm::cpu {

#if defined(CPU_CAPABILITY_AVX512)
struct PhiloxLanes {
  using V = __m512i;
  static constexpr int kLanes = 8;
  static V set1(uint64_t v) { return _mm512_set1_epi64(static_cast<long long>(v)); }
  static V counters(uint64_t first) { return _mm512_add_epi64(set1(first), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0)); }
  static V mul(V a, V m) { return _mm512_mul_epu32(a, m); }
  static V high(V p) { return _mm512_srli_epi64(p, 32); }
  static V xor2(V a, V b) { return _mm512_xor_si512(a, b); }
  static V xor3(V a, V b, V c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }
  // The low halves of the lanes, packed: 8 words.
  static void store_words(uint32_t* out, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi64_epi32(v)); }
  // Words of 8 counters in element order (counter-major): word k of counter g is element 4g + k,
  // elements 0..15 in *first, 16..31 in *second.
  static void elements(V c0, V c1, V c2, V c3, V* first, V* second) {
    const V e01 = _mm512_mask_blend_epi32(0xAAAA, c0, _mm512_slli_epi64(c1, 32));  // lane g: (w0, w1)
    const V e23 = _mm512_mask_blend_epi32(0xAAAA, c2, _mm512_slli_epi64(c3, 32));  // lane g: (w2, w3)
    *first = _mm512_permutex2var_epi64(e01, _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0), e23);
    *second = _mm512_permutex2var_epi64(e01, _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4), e23);
  }
  // uniform_from_bits of 16 words.
  static __m512 uniforms(V bits) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bits, 8)), _mm512_set1_ps(5.9604644775390625e-08f));
  }
};
#elif defined(CPU_CAPABILITY_AVX2)
struct PhiloxLanes {
  using V = __m256i;
  static constexpr int kLanes = 4;
  static V set1(uint64_t v) { return _mm256_set1_epi64x(static_cast<long long>(v)); }
  static V counters(uint64_t first) { return _mm256_add_epi64(set1(first), _mm256_set_epi64x(3, 2, 1, 0)); }
  static V mul(V a, V m) { return _mm256_mul_epu32(a, m); }
  static V high(V p) { return _mm256_srli_epi64(p, 32); }
  static V xor2(V a, V b) { return _mm256_xor_si256(a, b); }
  static V xor3(V a, V b, V c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  static void store_words(uint32_t* out, V v) {
    const __m256i packed = _mm256_permutevar8x32_epi32(v, _mm256_set_epi32(7, 5, 3, 1, 6, 4, 2, 0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(packed));
  }
  static void elements(V c0, V c1, V c2, V c3, V* first, V* second) {
    const V e01 = _mm256_blend_epi32(c0, _mm256_slli_epi64(c1, 32), 0xAA);
    const V e23 = _mm256_blend_epi32(c2, _mm256_slli_epi64(c3, 32), 0xAA);
    const V lo = _mm256_unpacklo_epi64(e01, e23), hi = _mm256_unpackhi_epi64(e01, e23);
    *first = _mm256_permute2x128_si256(lo, hi, 0x20);
    *second = _mm256_permute2x128_si256(lo, hi, 0x31);
  }
  static __m256 uniforms(V bits) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bits, 8)), _mm256_set1_ps(5.9604644775390625e-08f));
  }
};
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define DGM_PHILOX_SIMD
constexpr int kPhiloxRegs = 4;  // registers in flight per step: hides the multiply latency
constexpr int64_t kPhiloxStep = PhiloxLanes::kLanes * kPhiloxRegs;

// Runs Philox on counters g0 .. g0 + S - 1, S = G rounded down to a multiple of kPhiloxStep, calling
// store(g, c0, c1, c2, c3) with the final state of counters g0 + g .. (one register each); returns S.
template <typename Store>
inline int64_t philox_simd(uint64_t g0, int64_t G, uint32_t stream, uint64_t seed, const Store& store) {
  using L = PhiloxLanes;
  using V = L::V;
  const V m0 = L::set1(0xD2511F53u), m1 = L::set1(0xCD9E8D57u);
  V key0[10], key1[10];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {
    key0[round] = L::set1(k0);
    key1[round] = L::set1(k1);
  }
  // Round 1 on the state (counter bits 0..31, bits 32..63, stream, 0): the stream's product is the same
  // in every lane, and the zero word drops out of the second xor.
  const V stream_product = L::mul(L::set1(stream), m1);
  const V stream_key = L::xor2(L::high(stream_product), key0[0]);
  int64_t g = 0;
  for (; g + kPhiloxStep <= G; g += kPhiloxStep) {
    V c0[kPhiloxRegs], c1[kPhiloxRegs], c2[kPhiloxRegs], c3[kPhiloxRegs];
    for (int r = 0; r < kPhiloxRegs; ++r) {
      const V counter = L::counters(g0 + g + r * L::kLanes);  // low half: counter bits 0..31
      const V p0 = L::mul(counter, m0);
      c0[r] = L::xor2(L::high(counter), stream_key);
      c2[r] = L::xor2(L::high(p0), key1[0]);
      c1[r] = stream_product;
      c3[r] = p0;
    }
    for (int round = 1; round < 10; ++round) {
      for (int r = 0; r < kPhiloxRegs; ++r) {
        const V p0 = L::mul(c0[r], m0), p1 = L::mul(c2[r], m1);
        c0[r] = L::xor3(L::high(p1), c1[r], key0[round]);
        c2[r] = L::xor3(L::high(p0), c3[r], key1[round]);
        c1[r] = p1;
        c3[r] = p0;
      }
    }
    for (int r = 0; r < kPhiloxRegs; ++r) store(g + r * L::kLanes, c0[r], c1[r], c2[r], c3[r]);
  }
  return g;
}
#endif


// Elements per noise buffer in the kernels (a multiple of every Vectorized<float> width).
constexpr int64_t kNoiseBlock = 256;
constexpr int64_t kGroups = 64;  // Philox counters per words block of the normal fill and the uniform tail

// The words of counters g0 .. g0+G-1 into w0..w3[0..G): philox_words_block, SIMD where built (a last,
// partial step runs as a whole step into a buffer, so small blocks stay off the scalar path).
inline void philox_words(uint64_t g0, int64_t G, uint32_t stream, uint64_t seed, uint32_t* w0, uint32_t* w1,
                         uint32_t* w2, uint32_t* w3) {
  int64_t done = 0;
#ifdef DGM_PHILOX_SIMD
  const auto store_into = [](uint32_t* const* w) {
    return [w](int64_t g, auto c0, auto c1, auto c2, auto c3) {
      PhiloxLanes::store_words(w[0] + g, c0);
      PhiloxLanes::store_words(w[1] + g, c1);
      PhiloxLanes::store_words(w[2] + g, c2);
      PhiloxLanes::store_words(w[3] + g, c3);
    };
  };
  uint32_t* const out[4] = {w0, w1, w2, w3};
  done = philox_simd(g0, G, stream, seed, store_into(out));
  if (done < G) {
    alignas(64) uint32_t tail[4][kPhiloxStep];
    uint32_t* const buf[4] = {tail[0], tail[1], tail[2], tail[3]};
    philox_simd(g0 + done, kPhiloxStep, stream, seed, store_into(buf));
    for (int k = 0; k < 4; ++k) std::copy(tail[k], tail[k] + (G - done), out[k] + done);
    done = G;
  }
#endif
  philox_words_block(g0 + done, G - done, stream, seed, w0 + done, w1 + done, w2 + done, w3 + done);
}

#ifdef DGM_PHILOX_SIMD
// Uniform noise on vectors: calls f(e, u0, u1) with u0, u1 = philox_uniform of elements 4 g0 + e + k,
// k < kVec and kVec <= k < 2 kVec (Vectorized<float>, kVec = its size = 2 kLanes), for e = 0, 4 kLanes, ...
// up to the whole steps of the G counters g0 ..; returns the counters done (a multiple of kPhiloxStep).
template <typename F>
inline int64_t philox_uniform_vecs(uint64_t g0, int64_t G, uint32_t stream, uint64_t seed, const F& f) {
  static_assert(at::vec::Vectorized<float>::size() == 2 * PhiloxLanes::kLanes);
  return philox_simd(g0, G, stream, seed, [&](int64_t g, auto c0, auto c1, auto c2, auto c3) {
    PhiloxLanes::V first, second;
    PhiloxLanes::elements(c0, c1, c2, c3, &first, &second);
    f(4 * g, at::vec::Vectorized<float>(PhiloxLanes::uniforms(first)),
      at::vec::Vectorized<float>(PhiloxLanes::uniforms(second)));
  });
}
#endif

// out[j] = philox_uniform(4 g0 + j) for j < 4G: whole SIMD steps straight to uniforms, the rest (a last,
// partial step, or everything in portable builds) from philox_words.
inline void philox_uniform_groups(uint64_t g0, int64_t G, uint32_t stream, uint64_t seed, float* out) {
  int64_t done = 0;
#ifdef DGM_PHILOX_SIMD
  done = philox_uniform_vecs(g0, G, stream, seed, [&](int64_t e, const auto& u0, const auto& u1) {
    u0.store(out + e);
    u1.store(out + e + u0.size());
  });
#endif
  alignas(64) uint32_t w[4][kGroups];
  for (int64_t g = done; g < G; g += kGroups) {
    const int64_t n = std::min<int64_t>(kGroups, G - g);
    philox_words(g0 + g, n, stream, seed, w[0], w[1], w[2], w[3]);
    for (int64_t i = 0; i < n; ++i)
      for (int k = 0; k < 4; ++k) out[4 * (g + i) + k] = uniform_from_bits(w[k][i]);
  }
}

// out[j] = philox_uniform(first + j) for j < n.
inline void philox_uniform_fill(uint64_t first, int64_t n, uint32_t stream, uint64_t seed, float* out) {
  int64_t j = 0;
  for (; j < n && ((first + j) & 3) != 0; ++j) out[j] = philox_uniform(first + j, stream, seed);
  const int64_t G = (n - j) / 4;
  philox_uniform_groups((first + j) >> 2, G, stream, seed, out + j);
  for (j += 4 * G; j < n; ++j) out[j] = philox_uniform(first + j, stream, seed);
}

// out[j] = philox_normal(first + j) for j < n. Whole counters (4 elements each), kGroups at a time, go
// through a buffer, so a block of any alignment and length runs on vectors only.
inline void philox_normal_block(uint64_t first, uint32_t stream, uint64_t seed, int64_t n, float* out) {
  using Vec = at::vec::Vectorized<float>;
  alignas(64) uint32_t w[4][kGroups];
  alignas(64) float u1[kGroups], u2[kGroups], c[2][kGroups], s[2][kGroups], normals[4 * kGroups];
  const uint64_t last = first + static_cast<uint64_t>(std::max<int64_t>(n, 0));
  for (uint64_t g0 = first / 4; 4 * g0 < last; g0 += kGroups) {
    const int64_t G = std::min<int64_t>(kGroups, static_cast<int64_t>((last - 4 * g0 + 3) / 4));
    philox_words(g0, G, stream, seed, w[0], w[1], w[2], w[3]);
    const int64_t Gv = (G + Vec::size() - 1) / Vec::size() * Vec::size();
    for (int k = 0; k < 4; ++k) std::fill(w[k] + G, w[k] + Gv, 0u);  // the last vector's padding lanes
    for (int k = 0; k < 2; ++k) {
      // Box-Muller's uniforms (as box_muller in philox.h): u1 in (0, 1], so every lane's log is finite.
      // The top 24 bits fit an int32, whose conversion vectorizes.
      for (int64_t g = 0; g < Gv; ++g) {
        u1[g] = static_cast<float>(static_cast<int32_t>(w[2 * k][g] >> 8) + 1) * 5.9604644775390625e-08f;
        u2[g] = static_cast<float>(static_cast<int32_t>(w[2 * k + 1][g] >> 8)) * 5.9604644775390625e-08f;
      }
      for (int64_t g = 0; g < G; g += Vec::size()) {
        const Vec radius = (Vec(-2.0f) * Vec::loadu(u1 + g).log()).sqrt();
        const Vec angle = Vec(6.283185307179586f) * Vec::loadu(u2 + g);
        (radius * angle.cos()).store(c[k] + g);
        (radius * angle.sin()).store(s[k] + g);
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      normals[4 * g] = c[0][g];
      normals[4 * g + 1] = s[0][g];
      normals[4 * g + 2] = c[1][g];
      normals[4 * g + 3] = s[1][g];
    }
    const uint64_t lo = std::max(first, 4 * g0), hi = std::min(last, 4 * (g0 + G));
    std::copy(normals + (lo - 4 * g0), normals + (hi - 4 * g0), out + (lo - first));
  }
}

}  // namespace dgm::cpu
