// DIP-VAE covariance penalty (SPEC §8): the [D, D] epilogue shared by the kernels.
//
// The kernels form, in one pass over mu [N, D], the centred second moment m2 = sum_n (mu_n - mean)(mu_n - mean)^T
// (the CPU kernel centres each task's rows on their own mean and merges the tasks with Chan et al.'s update; the
// Triton kernel shifts by c = mu[0]: s1 = sum_n (mu_n - c), s2 = sum_n (mu_n - c)(mu_n - c)^T, m2 = s2 - s1 s1^T/N),
// and for variant ii e = sum_n exp(logvar_n). Then
//   Cov = m2/N  (+ diag(e)/N),
//   P = lambda_od sum_{i!=j} Cov_ij^2 + lambda_d sum_i (Cov_ii - 1)^2,
//   G = dP/dCov (symmetric): 2 lambda_od Cov_ij off the diagonal, 2 lambda_d (Cov_ii - 1) on it.
// The backward pass is dP/dmu_n = (2/N)(mu_n - mean) G and dP/dlogvar_nd = G_dd exp(logvar_nd)/N.
#pragma once

#include <dgmfast/common.h>

namespace dgm {

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
