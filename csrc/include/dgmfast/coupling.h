// Affine coupling (SPEC §1): per-element math shared by the CPU and CUDA kernels.
//
//   s = scale_map(r)                      (exp: r, tanh: c*tanh(r/c), sigmoid: log(sigmoid(r+2)+eps))
//   forward  scale_shift: y = x*exp(s) + t        shift_scale: y = (x + t)*exp(s)
//   reverse  scale_shift: x = (y - t)*exp(-s)     shift_scale: x = y*exp(-s) - t
//
// Both directions are one map  out = shift_first ? (in + sign*t)*e : in*e + sign*t  with
// sign = +1 (forward) or -1 (reverse), e = exp(sign*s), shift_first = (order == shift_scale) != reverse,
// and logdet = sum(sign*s). e is formed without a log where the map allows (see affine_scale). Gradients: g_in = g*e, g_r = sign*s'(r)*(g*out_scaled + g_logdet) with
// out_scaled = the part of out multiplied by e, and g_t = sign*(shift_first ? g_in : g).
#pragma once

#include <dgmfast/common.h>

#include <type_traits>

namespace dgm {

enum ScaleMap : int { kScaleExp = 0, kScaleTanh = 1, kScaleSigmoid = 2 };
// Kernel-side variants: the sigmoid map with eps == 0 uses the exact -softplus(-v) form.
enum ScaleMapKernel : int { kMapExp = 0, kMapTanh = 1, kMapLogSigmoid = 2, kMapLogSigmoidEps = 3 };

// Host side: calls f(std::integral_constant<int, MAP>{}) for the kernel variant of (scale_map, eps);
// returns false for an unknown scale_map.
template <typename F>
inline bool dispatch_scale_map(int64_t scale_map, double eps, const F& f) {
  switch (scale_map) {
    case kScaleExp: f(std::integral_constant<int, kMapExp>{}); return true;
    case kScaleTanh: f(std::integral_constant<int, kMapTanh>{}); return true;
    case kScaleSigmoid:
      if (eps == 0.0) f(std::integral_constant<int, kMapLogSigmoid>{});
      else f(std::integral_constant<int, kMapLogSigmoidEps>{});
      return true;
    default: return false;
  }
}

// The scale factor exp(s) (exp(-s) when reverse) of s = scale_map(r), formed without a log where the
// map allows (sigmoid: exp(s) = sigmoid(v)); with NEED_S also *s = s, with NEED_DS also *ds = ds/dr.
template <int MAP, bool NEED_S, bool NEED_DS, typename T>
DGM_HOST_DEVICE DGM_INLINE T affine_scale(T r, T clamp, T eps, bool reverse, T* s, T* ds) {
  if constexpr (MAP == kMapExp) {
    if constexpr (NEED_S) *s = r;
    if constexpr (NEED_DS) *ds = T(1);
    return dgm::exp(reverse ? T(0) - r : r);
  } else if constexpr (MAP == kMapTanh) {
    T th = dgm::tanh(r / clamp);
    T sc = clamp * th;
    if constexpr (NEED_S) *s = sc;
    if constexpr (NEED_DS) *ds = T(1) - th * th;
    return dgm::exp(reverse ? T(0) - sc : sc);
  } else if constexpr (MAP == kMapLogSigmoid) {
    // e = exp(-|v|): sigmoid(v) = (v >= 0 ? 1 : e) / (1 + e), log sigmoid(v) = min(v, 0) - log1p(e),
    // ds = sigmoid(-v) = (v >= 0 ? e : 1) / (1 + e)
    T v = r + T(2);
    T e = dgm::exp(T(0) - dgm::abs(v));
    T one_e = T(1) + e;
    if constexpr (NEED_S) *s = dgm::min(v, T(0)) - dgm::log1p(e);
    if constexpr (NEED_DS) *ds = dgm::where_nonneg(v, e, T(1)) / one_e;
    T num = dgm::where_nonneg(v, T(1), e);
    return reverse ? one_e / num : num / one_e;
  } else {
    T sg = dgm::sigmoid(r + T(2));
    T d = sg + eps;
    if constexpr (NEED_S) *s = dgm::log(d);
    if constexpr (NEED_DS) *ds = sg * (T(1) - sg) / d;
    return reverse ? T(1) / d : d;
  }
}

// One element of the coupling in either direction; returns out and sets *s_signed = sign * s
// (its log-det contribution), sign = -1 in reverse.
template <int MAP, typename T>
DGM_HOST_DEVICE DGM_INLINE T affine_coupling_fwd_elem(T x, T r, T t, T clamp, T eps, bool reverse,
                                                      bool shift_first, T* s_signed) {
  T s;
  T e = affine_scale<MAP, true, false>(r, clamp, eps, reverse, &s, static_cast<T*>(nullptr));
  *s_signed = reverse ? T(0) - s : s;
  T signed_t = reverse ? T(0) - t : t;
  return shift_first ? (x + signed_t) * e : x * e + signed_t;
}

// Gradients of one element: *g_in and *g_r (g_t is sign*(shift_first ? g_in : g_out)).
template <int MAP, typename T>
DGM_HOST_DEVICE DGM_INLINE void affine_coupling_bwd_elem(T x, T r, T t, T g_out, T g_logdet, T clamp,
                                                         T eps, bool reverse, bool shift_first, T* g_in,
                                                         T* g_r) {
  T ds;
  T e = affine_scale<MAP, false, true>(r, clamp, eps, reverse, static_cast<T*>(nullptr), &ds);
  T out_scaled = shift_first ? (x + (reverse ? T(0) - t : t)) * e : x * e;
  *g_in = g_out * e;
  T g_r_unsigned = ds * (g_out * out_scaled + g_logdet);
  *g_r = reverse ? T(0) - g_r_unsigned : g_r_unsigned;
}

}  // namespace dgm
