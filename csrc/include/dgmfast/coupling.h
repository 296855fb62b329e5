// Affine coupling (SPEC §1): per-element math shared by the CPU and CUDA kernels.
//
//   s = scale_map(r)                      (exp: r, tanh: c*tanh(r/c), sigmoid: log(sigmoid(r+2)+eps))
//   forward  scale_shift: y = x*exp(s) + t        shift_scale: y = (x + t)*exp(s)
//   reverse  scale_shift: x = (y - t)*exp(-s)     shift_scale: x = y*exp(-s) - t
//
// Both directions are one map  out = shift_first ? (in + sign*t)*e : in*e + sign*t  with
// sign = +1 (forward) or -1 (reverse), e = exp(sign*s), shift_first = (order == shift_scale) != reverse,
// and logdet = sum(sign*s). Gradients: g_in = g*e, g_r = sign*s'(r)*(g*out_scaled + g_logdet) with
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

// s = scale_map(r); with NEED_DS also *ds = ds/dr.
template <int MAP, bool NEED_DS, typename T>
DGM_HOST_DEVICE DGM_INLINE T affine_log_scale(T r, T clamp, T eps, T* ds) {
  if constexpr (MAP == kMapExp) {
    if constexpr (NEED_DS) *ds = T(1);
    return r;
  } else if constexpr (MAP == kMapTanh) {
    T th = dgm::tanh(r / clamp);
    if constexpr (NEED_DS) *ds = T(1) - th * th;
    return clamp * th;
  } else if constexpr (MAP == kMapLogSigmoid) {
    // log sigmoid(v) = min(v, 0) - log1p(e), sigmoid(-v) = (v >= 0 ? e : 1) / (1 + e), e = exp(-|v|)
    T v = r + T(2);
    T e = dgm::exp(T(0) - dgm::abs(v));
    if constexpr (NEED_DS) *ds = dgm::where_nonneg(v, e, T(1)) / (T(1) + e);
    return dgm::min(v, T(0)) - dgm::log1p(e);
  } else {
    T sg = dgm::sigmoid(r + T(2));
    T d = sg + eps;
    if constexpr (NEED_DS) *ds = sg * (T(1) - sg) / d;
    return dgm::log(d);
  }
}

// One element of the coupling in the direction given by sign; returns out, sets *s_signed.
template <int MAP, typename T>
DGM_HOST_DEVICE DGM_INLINE T affine_coupling_fwd_elem(T x, T r, T t, T clamp, T eps, T sign,
                                                      bool shift_first, T* s_signed) {
  T s = sign * affine_log_scale<MAP, false>(r, clamp, eps, static_cast<T*>(nullptr));
  T e = dgm::exp(s);
  *s_signed = s;
  return shift_first ? (x + sign * t) * e : x * e + sign * t;
}

// Gradients of one element: *g_in and *g_r (g_t is sign*(shift_first ? g_in : g_out)).
template <int MAP, typename T>
DGM_HOST_DEVICE DGM_INLINE void affine_coupling_bwd_elem(T x, T r, T t, T g_out, T g_logdet, T clamp,
                                                         T eps, T sign, bool shift_first, T* g_in,
                                                         T* g_r) {
  T ds;
  T s = sign * affine_log_scale<MAP, true>(r, clamp, eps, &ds);
  T e = dgm::exp(s);
  T out_scaled = shift_first ? (x + sign * t) * e : x * e;
  *g_in = g_out * e;
  *g_r = sign * ds * (g_out * out_scaled + g_logdet);
}

}  // namespace dgm
