// Gaussian posterior (SPEC §7) and diagonal-Gaussian log-densities (SPEC §9, §10): per-element
// math shared by the CPU and CUDA kernels (templates over T: scalars, or at::vec::Vectorized on the CPU).
//
//   reparameterize:  std = exp(lv/2),  z = mu + std*eps,
//                    kl term = 0.5*(mu^2 + std^2 - lv - 1),  log_q term = -0.5*(log 2pi + lv + eps^2)
//   gradients:       g_mu = g_z + g_kl*mu
//                    g_lv = 0.5*(g_z*std*eps + g_kl*(std^2 - 1) - g_logq)
//                    g_eps = g_z*std - g_logq*eps                 (only when eps is given)
//   mixture:         log N(z; m, lv) = -0.5*(log 2pi + lv + (z - m)^2 * p),  p = exp(-lv)
#pragma once

#include <dgmfast/common.h>

namespace dgm {

constexpr double kLog2Pi = 1.8378770664093454835606594728112;

// One element of reparameterize: returns z, sets its KL and log q(z|x) contributions.
template <typename T>
DGM_HOST_DEVICE DGM_INLINE T reparameterize_fwd_elem(T mu, T lv, T eps, T* kl_term, T* log_q_term) {
  const T sd = dgm::exp(T(0.5) * lv);
  *kl_term = T(0.5) * (mu * mu + sd * sd - lv - T(1));
  *log_q_term = T(-0.5) * (T(kLog2Pi) + lv + eps * eps);
  return mu + sd * eps;
}

// Gradients of one element given the incoming g_z and the per-row g_kl, g_logq.
template <typename T>
DGM_HOST_DEVICE DGM_INLINE void reparameterize_bwd_elem(T mu, T lv, T eps, T g_z, T g_kl, T g_logq, T* g_mu,
                                                        T* g_lv, T* g_eps) {
  const T sd = dgm::exp(T(0.5) * lv);
  *g_mu = g_z + g_kl * mu;
  *g_lv = T(0.5) * (g_z * sd * eps + g_kl * (sd * sd - T(1)) - g_logq);
  *g_eps = g_z * sd - g_logq * eps;
}

// (z - m)^2 * p added to acc: the data term of -2 log N(z; m, lv) with p = exp(-lv).
template <typename T>
DGM_HOST_DEVICE DGM_INLINE T gaussian_quad_acc(T z, T m, T p, T acc) {
  const T diff = z - m;
  return acc + diff * diff * p;
}

}  // namespace dgm
