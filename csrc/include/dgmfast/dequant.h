// Dequantization (SPEC §6): per-element maps shared by the CPU and CUDA kernels.
//
//   q = (x + u) / n,  u ~ U[0, 1) from Philox (uniform_dequantize) or u = sigmoid(v) (the Flow++ tail)
//   unit:     y = q                      per-element log-det 0
//   centered: y = q - 1/2                per-element log-det 0
//   logit:    p = alpha + (1-2 alpha) q, y = log p - log(1-p), per-element log-det -log p - log(1-p)
// The per-sample constants D*(log(1-2 alpha) [logit] - log n) are added once per row by the launchers.
#pragma once

#include <dgmfast/common.h>

#include <limits>
#include <type_traits>

namespace dgm {

enum DequantMode : int { kModeUnit = 0, kModeCentered = 1, kModeLogit = 2 };

// x + u for an integer x and u in [0, 1), kept inside the cube [x, x + 1): in float32, x + u rounds up
// to x + 1 when u is within half an ulp of 1 (x >= 1), which would move the point to the next cube
// (and break reverse). (x + 1)(1 - eps/2) is the largest S below the integer x + 1. T is S or, on the
// CPU, a vector of S.
template <typename T, typename S = T>
DGM_HOST_DEVICE DGM_INLINE T cube_point(T x, T u) {
  constexpr S kBelowOne = S(1) - std::numeric_limits<S>::epsilon() / S(2);
  return dgm::min(x + u, (x + T(1)) * T(kBelowOne));
}

// y of the mode at q; *ld = the per-element log-det term (constants excluded).
template <int MODE, typename T>
DGM_HOST_DEVICE DGM_INLINE T dequant_map(T q, T alpha, T* ld) {
  if constexpr (MODE == kModeUnit) {
    *ld = T(0);
    return q;
  } else if constexpr (MODE == kModeCentered) {
    *ld = T(0);
    return q - T(0.5);
  } else {
    T p = alpha + (T(1) - T(2) * alpha) * q;
    T lp = dgm::log(p), l1p = dgm::log(T(1) - p);
    *ld = T(0) - (lp + l1p);
    return lp - l1p;
  }
}

// The logit map in the form the CPU loop evaluates cheaply: returns the odds p / (1-p), whose log is y,
// and sets *factor = p (1-p), whose -log is the per-element log-det. Both lie in
// [alpha/(1-alpha), (1-alpha)/alpha] and [alpha(1-alpha), 1/4]: positive normal numbers, so the loop
// may use a log without special cases. It multiplies up to logit_factor_group(alpha) factors before
// taking one log, so each element costs one log instead of two; p(1-p) >= alpha(1-alpha) bounds the
// product away from underflow. It takes the cube point n q and slope = (1 - 2 alpha) / n: the same p as
// alpha + (1 - 2 alpha) q, as scaling by 1/n = 2^-n_bits is exact, with one multiply fewer.
template <typename T>
DGM_HOST_DEVICE DGM_INLINE T logit_odds_factor(T point, T slope, T alpha, T* factor) {
  T p = alpha + slope * point;
  T p1 = T(1) - p;
  *factor = p * p1;
  return p / p1;
}

// How many factors p(1-p) >= alpha(1-alpha) multiply without leaving the normal float32 range
// (product >= 1e-30): 8 for alpha >= 1.6e-4, at least 1 for any alpha in (0, 1/2).
inline int logit_factor_group(double alpha) {
  int group = 1;
  while (group < 8 && std::pow(alpha * (1.0 - alpha), group + 1) >= 1e-30) ++group;
  return group;
}

// dy/dq and d(ld)/dq of dequant_map at q.
template <int MODE, typename T>
DGM_HOST_DEVICE DGM_INLINE void dequant_map_grad(T q, T alpha, T* dy_dq, T* dld_dq) {
  if constexpr (MODE == kModeLogit) {
    T p = alpha + (T(1) - T(2) * alpha) * q;
    T k = (T(1) - T(2) * alpha) / (p * (T(1) - p));
    *dy_dq = k;
    *dld_dq = k * (T(2) * p - T(1));
  } else {
    *dy_dq = T(1);
    *dld_dq = T(0);
  }
}

// The inverse: q in [0, 1) from y, and the per-element log-det term of the forward map at q (so the
// reverse log-det is minus its sum, constants included).
template <int MODE, typename T>
DGM_HOST_DEVICE DGM_INLINE T dequant_unmap(T y, T alpha, T* ld_forward) {
  if constexpr (MODE == kModeUnit) {
    *ld_forward = T(0);
    return y;
  } else if constexpr (MODE == kModeCentered) {
    *ld_forward = T(0);
    return y + T(0.5);
  } else {
    // p = sigmoid(y); -log p - log(1-p) = softplus(-y) + softplus(y)
    *ld_forward = dgm::softplus(y) + dgm::softplus(T(0) - y);
    return (dgm::sigmoid(y) - alpha) / (T(1) - T(2) * alpha);
  }
}

// The Flow++ tail: u = sigmoid(v), q = (x + u) * inv_n; returns y, *ld = mode term + log sigmoid'(v).
// One exp serves both: with e = exp(-|v|), sigmoid(v) = 1/(1+e) (v >= 0) or e/(1+e), and
// log sigmoid'(v) = -softplus(v) - softplus(-v) = -|v| - 2 log1p(e).
template <int MODE, typename T>
DGM_HOST_DEVICE DGM_INLINE T sigmoid_tail_fwd_elem(T x, T v, T inv_n, T alpha, T* ld) {
  const T e = dgm::exp(T(0) - dgm::abs(v));
  const T r = T(1) / (T(1) + e);
  T mode_ld;
  T y = dequant_map<MODE>((x + dgm::where_nonneg(v, r, e * r)) * inv_n, alpha, &mode_ld);
  *ld = mode_ld - dgm::abs(v) - T(2) * dgm::log1p(e);
  return y;
}

// Gradient of the tail w.r.t. v given the gradients of y and of the row's log-det.
template <int MODE, typename T>
DGM_HOST_DEVICE DGM_INLINE T sigmoid_tail_bwd_elem(T x, T v, T inv_n, T alpha, T g_y, T g_ld) {
  T sg = dgm::sigmoid(v);
  T dy_dq, dld_dq;
  dequant_map_grad<MODE>((x + sg) * inv_n, alpha, &dy_dq, &dld_dq);
  return (g_y * dy_dq + g_ld * dld_dq) * sg * (T(1) - sg) * inv_n + g_ld * (T(1) - T(2) * sg);
}

// Host side: calls f(std::integral_constant<int, MODE>{}); false for an unknown mode.
template <typename F>
inline bool dispatch_dequant_mode(int64_t mode, const F& f) {
  switch (mode) {
    case kModeUnit: f(std::integral_constant<int, kModeUnit>{}); return true;
    case kModeCentered: f(std::integral_constant<int, kModeCentered>{}); return true;
    case kModeLogit: f(std::integral_constant<int, kModeLogit>{}); return true;
    default: return false;
  }
}

}  // namespace dgm
