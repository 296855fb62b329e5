// Planar flows and IAF steps (SPEC §5): scalar math shared by the CPU and CUDA kernels.
//
// Planar step l (the D-long dot products and vector updates live in the kernels):
//   s = w.u, q = w.w, m = -1 + softplus(s), c = (m - s)/q, u_hat = u + c w, w.u_hat = m
//   (q == 0: c = 0, w.u_hat = 0, the step's Jacobian is the identity)
//   a = w.z + b, h = tanh(a), z <- z + u_hat h, logdet += log1p((1 - h^2) m)      (m > -1: always finite)
// Backward of one step, from g_z (grad of the step's output z) and g_ld (grad of logdet):
//   g_a = (g_z.u_hat)(1 - h^2) - g_ld m 2h(1 - h^2)/(1 + (1 - h^2) m),  g_{w.u_hat} = g_ld (1 - h^2)/(1 + (1 - h^2) m)
//   g_uhat = h g_z, g_b = g_a, g_z <- g_z + g_a w, g_w += g_a z_l
// and through u_hat (planar_uhat_grads, linear in (gc = g_uhat.w, g_wuh), so sums over a batch can be taken first):
//   g_s = gc dc/ds + g_wuh m'(s),  g_q = gc dc/dq,  g_u = g_uhat + g_s w,  g_w += c g_uhat + g_s u + 2 g_q w.
//
// IAF step (stable form): v = r + bias, g = sigmoid(v);  forward z' = g z + (1 - g) mean, logdet log g;
// reverse z = mean + (z' - mean)(1 + exp(-v)) (= (z' - (1 - g) mean)/g without a division), logdet -log g.
#pragma once

#include <dgmfast/common.h>

namespace dgm {

// u_hat coefficients of one step from s = w.u and q = w.w.
template <typename T>
struct PlanarCoefT {
  T c;      // u_hat = u + c w
  T wuh;    // w.u_hat
  T dc_ds;  // dc/ds
  T dc_dq;  // dc/dq
  T dm_ds;  // d(w.u_hat)/ds
};

template <typename T>
DGM_HOST_DEVICE DGM_INLINE PlanarCoefT<T> planar_coef(T s, T q) {
  PlanarCoefT<T> k;
  if (q > T(0)) {
    T m = dgm::softplus(s) - T(1);
    k.c = (m - s) / q;
    k.wuh = m;
    k.dc_ds = (T(0) - dgm::sigmoid(T(0) - s)) / q;  // (m'(s) - 1)/q
    k.dc_dq = T(0) - k.c / q;
    k.dm_ds = dgm::sigmoid(s);
  } else {
    k.c = k.wuh = k.dc_ds = k.dc_dq = k.dm_ds = T(0);
  }
  return k;
}

// logdet contribution of one step.
template <typename T>
DGM_HOST_DEVICE DGM_INLINE T planar_logdet_term(T h, T wuh) {
  return dgm::log1p((T(1) - h * h) * wuh);
}

// Backward of a step's scalars: g_h = g_z.u_hat, g_ld -> *g_a, *g_wuh.
template <typename T>
DGM_HOST_DEVICE DGM_INLINE void planar_step_grads(T h, T wuh, T g_h, T g_ld, T* g_a, T* g_wuh) {
  T k = T(1) - h * h;
  T inv = T(1) / (T(1) + k * wuh);
  *g_a = k * (g_h - g_ld * wuh * T(2) * h * inv);
  *g_wuh = g_ld * k * inv;
}

// Scalars of the gradient through u_hat: from gc = g_uhat.w and g_wuh -> *g_s (of s = w.u), *g_q (of q = w.w).
template <typename T>
DGM_HOST_DEVICE DGM_INLINE void planar_uhat_grads(const PlanarCoefT<T>& k, T gc, T g_wuh, T* g_s, T* g_q) {
  *g_s = gc * k.dc_ds + g_wuh * k.dm_ds;
  *g_q = gc * k.dc_dq;
}

// IAF: returns z' (forward) or z (reverse) and sets *ld to the element's logdet (log g, or -log g).
template <typename T>
DGM_HOST_DEVICE DGM_INLINE T iaf_fwd_elem(T z, T mean, T r, T bias, bool reverse, T* ld) {
  T v = r + bias;
  T e = dgm::exp(T(0) - dgm::abs(v));
  T one_e = T(1) + e;
  T log_g = dgm::min(v, T(0)) - dgm::log1p(e);
  if (!reverse) {
    *ld = log_g;
    T g = dgm::where_nonneg(v, T(1), e) / one_e;
    return mean + g * (z - mean);
  }
  *ld = T(0) - log_g;
  return mean + (z - mean) * (T(1) + dgm::exp(T(0) - v));
}

// IAF gradients of one element: *g_z, *g_mean, *g_r from g_out and g_ld.
template <typename T>
DGM_HOST_DEVICE DGM_INLINE void iaf_bwd_elem(T z, T mean, T r, T bias, bool reverse, T g_out, T g_ld, T* g_z,
                                             T* g_mean, T* g_r) {
  T v = r + bias;
  T e = dgm::exp(T(0) - dgm::abs(v));
  T one_e = T(1) + e;
  T g = dgm::where_nonneg(v, T(1), e) / one_e;    // sigmoid(v)
  T gm = dgm::where_nonneg(v, e, T(1)) / one_e;   // sigmoid(-v) = 1 - g
  if (!reverse) {
    *g_z = g_out * g;
    *g_mean = g_out * gm;
    *g_r = gm * (g * (z - mean) * g_out + g_ld);
  } else {
    T inv_e = dgm::exp(T(0) - v);  // 1/g - 1
    *g_z = g_out * (T(1) + inv_e);
    *g_mean = T(0) - g_out * inv_e;
    *g_r = T(0) - (z - mean) * inv_e * g_out - gm * g_ld;
  }
}

}  // namespace dgm
