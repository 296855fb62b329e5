// Dequantization (SPEC §6): per-element maps shared by the CPU and CUDA kernels.
//
//   q = (x + u) / n,  u ~ U[0, 1) from Philox (uniform_dequantize) or u = sigmoid(v) (the Flow++ tail)
//   unit:     y = q                      per-element log-det 0
//   centered: y = q - 1/2                per-element log-det 0
//   logit:    p = alpha + (1-2 alpha) q, y = log p - log(1-p), per-element log-det -log p - log(1-p)
// The per-sample constants D*(log(1-2 alpha) [logit] - log n) are added once per row by the launchers.
#pragma once

#include <dgmfast/common.h>

#include <type_traits>

namespace dgm {

enum DequantMode : int { kModeUnit = 0, kModeCentered = 1, kModeLogit = 2 };

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
template <int MODE, typename T>
DGM_HOST_DEVICE DGM_INLINE T sigmoid_tail_fwd_elem(T x, T v, T inv_n, T alpha, T* ld) {
  T mode_ld;
  T y = dequant_map<MODE>((x + dgm::sigmoid(v)) * inv_n, alpha, &mode_ld);
  *ld = mode_ld - dgm::softplus(v) - dgm::softplus(T(0) - v);
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
