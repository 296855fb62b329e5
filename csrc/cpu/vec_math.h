// at::vec overloads of the dgm:: math primitives, so the templates of the family headers run
// vectorized on the CPU. Include this before any csrc/include/dgmfast/<family>.h.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <limits>

namespace dgm {
using at::vec::Vectorized;

#define DGM_VEC_UNARY(name, method)                                                   \
  inline Vectorized<float> name(const Vectorized<float>& x) { return x.method(); }    \
  inline Vectorized<double> name(const Vectorized<double>& x) { return x.method(); }
DGM_VEC_UNARY(exp, exp)
DGM_VEC_UNARY(log, log)
DGM_VEC_UNARY(abs, abs)
#undef DGM_VEC_UNARY

// exp(x) without a library call, so loops that call it keep their values in registers: Sleef's expf
// algorithm (~1 ulp) inline. x = n ln2 + r (Cody-Waite, |r| <= ln2/2), exp(r) by its degree-7 polynomial,
// times 2^n as two factors 2^(n/2) 2^(n - n/2) (denormal results too); 0 below -104, inf above 100.
inline Vectorized<float> exp_inline(const Vectorized<float>& x) {
  using V = Vectorized<float>;
  using I = Vectorized<int32_t>;
  const V n = (x * V(1.442695040888963407f)).round();
  V r = at::vec::fmadd(n, V(-0.693145751953125f), x);
  r = at::vec::fmadd(n, V(-1.428606765330187045e-06f), r);
  V u(0.000198527617612853646278381f);
  u = at::vec::fmadd(u, r, V(0.00139304355252534151077271f));
  u = at::vec::fmadd(u, r, V(0.00833336077630519866943359f));
  u = at::vec::fmadd(u, r, V(0.0416664853692054748535156f));
  u = at::vec::fmadd(u, r, V(0.166666671633720397949219f));
  u = at::vec::fmadd(u, r, V(0.5f));
  u = at::vec::fmadd(r * r, u, r) + V(1.0f);
  const I q = at::vec::convert_to_int_of_same_size(n), h = q >> I(1);
  u = u * at::vec::cast<float>((h + I(127)) << I(23)) * at::vec::cast<float>((q - h + I(127)) << I(23));
  u = V::blendv(u, V(0.0f), x < V(-104.0f));
  return V::blendv(u, V(std::numeric_limits<float>::infinity()), x > V(100.0f));
}
inline Vectorized<double> exp_inline(const Vectorized<double>& x) { return x.exp(); }

// log1p(x) = log(u) * x / (u - 1) with u = 1 + x (Goldberg's correction of the rounding of 1 + x);
// x where u == 1, log(u) where u is inf. Sleef's log1p is several times slower than its log here.
template <typename T>
inline Vectorized<T> log1p(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1)), u = one + x, d = u - one;
  Vectorized<T> out = u.log() * x / d;
  out = Vectorized<T>::blendv(out, x, d == Vectorized<T>(T(0)));
  return Vectorized<T>::blendv(out, u.log(), u == Vectorized<T>(std::numeric_limits<T>::infinity()));
}

// tanh(x) = sign(x) * (1 - e) / (1 + e), e = exp(-2|x|) in (0, 1]: absolute error ~1 ulp of 1 (the
// kernels use tanh for bounded log-scales, where absolute error is what counts); Sleef's tanh is
// about 4x slower.
template <typename T>
inline Vectorized<T> tanh(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1)), e = (x.abs() * Vectorized<T>(T(-2))).exp();
  const Vectorized<T> t = (one - e) / (one + e);
  return Vectorized<T>::blendv(t, Vectorized<T>(T(0)) - t, x < Vectorized<T>(T(0)));
}

// log(x) for positive normal float32 x (no zero, subnormal, inf or NaN handling): x = m 2^e with m in
// [sqrt(1/2), sqrt(2)), log x = e ln 2 + log m, log m by Cephes' logf polynomial in m - 1 (within 1 ulp
// on [1e-3, 1e3]); several times cheaper than Sleef's log, which handles every input. Double: Sleef.
inline Vectorized<float> log_positive(const Vectorized<float>& x) {
  using Vec = Vectorized<float>;
  using IVec = Vectorized<int32_t>;
  const IVec bits = at::vec::cast<int32_t>(x);
  const IVec e = (bits - IVec(0x3f3504f3)) >> IVec(23);  // floor(log2(x / sqrt(1/2)))
  const Vec f = at::vec::cast<float>(bits - (e << IVec(23))) - Vec(1.0f);
  const Vec ef = at::vec::convert<float>(e), z = f * f;
  Vec p(7.0376836292e-2f);
  for (float c : {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f, -1.6668057665e-1f,
                  2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f})
    p = at::vec::fmadd(p, f, Vec(c));
  Vec y = at::vec::fmadd(ef, Vec(-2.12194440e-4f), p * f * z);  // ln 2 = 0.693359375 - 2.12194440e-4
  y = at::vec::fmadd(z, Vec(-0.5f), y);
  return at::vec::fmadd(ef, Vec(0.693359375f), f + y);
}
inline Vectorized<double> log_positive(const Vectorized<double>& x) { return x.log(); }

// log(x) for positive normal float32 x, cheaper than log_positive where AVX-512 gives a 32-entry table
// lookup in one two-register permute (log_positive elsewhere). x = m 2^e with m in [0.75, 1.5), whose 32
// intervals of 2^18 bit patterns (the top bits of x - 0.75's pattern) each hold a c_i ~ 1/m: 1/midpoint
// rounded to float, but exactly 1 on the two intervals next to 1, so log x keeps its relative accuracy there.
// log x = e ln 2 - log c_i + log1p(r), r = m c_i - 1 (one fma), |r| <= 1/32, log1p(r) by its Taylor
// polynomial of degree 5 (truncation below 6e-9 relative); -log c_i is tabulated rounded to float.
#if defined(CPU_CAPABILITY_AVX512)
inline Vectorized<float> log_positive_lut(const Vectorized<float>& x) {
  alignas(64) static constexpr float kC[32] = {
      1.319587588e+00f, 1.292929292e+00f, 1.267326713e+00f, 1.242718458e+00f, 1.219047666e+00f, 1.196261644e+00f,
      1.174311876e+00f, 1.153153181e+00f, 1.132743359e+00f, 1.113043427e+00f, 1.094017148e+00f, 1.075630307e+00f,
      1.057851195e+00f, 1.040650368e+00f, 1.024000049e+00f, 1.000000000e+00f, 1.000000000e+00f, 9.552238584e-01f,
      9.275362492e-01f, 9.014084339e-01f, 8.767123222e-01f, 8.533333540e-01f, 8.311688304e-01f, 8.101266026e-01f,
      7.901234627e-01f, 7.710843086e-01f, 7.529411912e-01f, 7.356321812e-01f, 7.191011310e-01f, 7.032967210e-01f,
      6.881720424e-01f, 6.736842394e-01f};
  alignas(64) static constexpr float kMinusLogC[32] = {
      -2.773192525e-01f, -2.569104135e-01f, -2.369097322e-01f, -2.173012793e-01f, -1.980699450e-01f,
      -1.792013943e-01f, -1.606823355e-01f, -1.425000876e-01f, -1.246424392e-01f, -1.070980877e-01f,
      -8.985637873e-02f, -7.290682197e-02f, -5.623967573e-02f, -3.984587267e-02f, -2.371657453e-02f, 0.0f, 0.0f,
      4.580955952e-02f, 7.522340119e-02f, 1.037968099e-01f, 1.315763593e-01f, 1.586050093e-01f, 1.849223375e-01f,
      2.105647475e-01f, 2.355660647e-01f, 2.599575520e-01f, 2.837681472e-01f, 3.070250452e-01f, 3.297532797e-01f,
      3.519763947e-01f, 3.737164140e-01f, 3.949937522e-01f};
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i from_075 = _mm512_sub_epi32(bits, _mm512_set1_epi32(0x3f400000));  // 0.75's bit pattern
  const __m512i e = _mm512_srai_epi32(from_075, 23);
  const __m512 m = _mm512_castsi512_ps(_mm512_sub_epi32(bits, _mm512_slli_epi32(e, 23)));
  const __m512i interval = _mm512_srli_epi32(from_075, 18);  // the permute reads its low 5 bits
  const __m512 c = _mm512_permutex2var_ps(_mm512_load_ps(kC), interval, _mm512_load_ps(kC + 16));
  const __m512 minus_log_c =
      _mm512_permutex2var_ps(_mm512_load_ps(kMinusLogC), interval, _mm512_load_ps(kMinusLogC + 16));
  const __m512 r = _mm512_fmsub_ps(m, c, _mm512_set1_ps(1.0f));
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.2f), _mm512_set1_ps(-0.25f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.333333343f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(-0.5f));
  const __m512 log1p_r = _mm512_fmadd_ps(_mm512_mul_ps(r, r), p, r);
  const __m512 ef = _mm512_cvtepi32_ps(e);  // ln 2 = 0.693359375 - 2.12194440e-4
  const __m512 low = _mm512_add_ps(_mm512_fmadd_ps(ef, _mm512_set1_ps(-2.12194440e-4f), minus_log_c), log1p_r);
  return _mm512_fmadd_ps(ef, _mm512_set1_ps(0.693359375f), low);
}
#else
inline Vectorized<float> log_positive_lut(const Vectorized<float>& x) { return log_positive(x); }
#endif
inline Vectorized<double> log_positive_lut(const Vectorized<double>& x) { return x.log(); }

template <typename T>
inline Vectorized<T> where_nonneg(const Vectorized<T>& x, const Vectorized<T>& a, const Vectorized<T>& b) {
  return Vectorized<T>::blendv(b, a, x >= Vectorized<T>(T(0)));
}
template <typename T>
inline bool any_less(const Vectorized<T>& x, const Vectorized<T>& bound) {
  return (x < bound).zero_mask() != (1 << Vectorized<T>::size()) - 1;
}
template <typename T>
inline Vectorized<T> max(const Vectorized<T>& a, const Vectorized<T>& b) { return at::vec::maximum(a, b); }
template <typename T>
inline Vectorized<T> min(const Vectorized<T>& a, const Vectorized<T>& b) { return at::vec::minimum(a, b); }
}  // namespace dgm

#include <dgmfast/common.h>
