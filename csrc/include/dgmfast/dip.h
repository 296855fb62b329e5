// DIP-VAE covariance penalty (SPEC §8): the [D, D] epilogue shared by the kernels.
//
// One pass over mu [N, D] forms shifted sums with the shift c = mu[0] (so a batch whose mean is 1e4
// loses no accuracy to cancellation):  s1 = sum_n (mu_n - c),  s2 = sum_n (mu_n - c)(mu_n - c)^T,
// and for variant ii  e = sum_n exp(logvar_n). Then
//   mean = c + s1/N,  Cov = (s2 - s1 s1^T / N)/N  (+ diag(e)/N),
//   P = lambda_od sum_{i!=j} Cov_ij^2 + lambda_d sum_i (Cov_ii - 1)^2,
//   G = dP/dCov (symmetric): 2 lambda_od Cov_ij off the diagonal, 2 lambda_d (Cov_ii - 1) on it.
// The backward pass is dP/dmu_n = (2/N)(mu_n - mean) G and dP/dlogvar_nd = G_dd exp(logvar_nd)/N.
#pragma once

#include <dgmfast/common.h>

namespace dgm {

// Centred second moment m2 = s2 - s1 s1^T / N in place of s2 (row-major [D, D], row stride ld).
template <typename T>
DGM_HOST_DEVICE inline void dip_centre_sums(T* s2, const T* s1, int64_t D, int64_t ld, T n) {
  for (int64_t i = 0; i < D; ++i)
    for (int64_t j = 0; j < D; ++j) s2[i * ld + j] -= s1[i] * s1[j] / n;
}

// Penalty of the covariance cov = m2/N (+ diag(sum_exp)/N when sum_exp != nullptr); writes G into grad
// (row-major [D, D], contiguous).
template <typename T>
DGM_HOST_DEVICE inline T dip_penalty(const T* m2, int64_t ld, const T* sum_exp, int64_t D, T n, T lambda_od,
                                     T lambda_d, T* grad) {
  T off = 0, diag = 0;
  for (int64_t i = 0; i < D; ++i) {
    for (int64_t j = 0; j < D; ++j) {
      T c = m2[i * ld + j] / n;
      if (i != j) {
        off += c * c;
        grad[i * D + j] = T(2) * lambda_od * c;
      } else {
        T e = c + (sum_exp != nullptr ? sum_exp[i] / n : T(0)) - T(1);
        diag += e * e;
        grad[i * D + j] = T(2) * lambda_d * e;
      }
    }
  }
  return lambda_od * off + lambda_d * diag;
}

}  // namespace dgm
