// ActNorm (SPEC §3): per-channel math shared by the CPU and CUDA kernels.
//
//   forward  y = (x + loc[c]) * exp(log_scale[c])        logdet[b] =  S * sum_c log_scale[c]
//   reverse  x = y * exp(-log_scale[c]) - loc[c]          logdet[b] = -S * sum_c log_scale[c]
// on x viewed as [B, C, S] (S = product of the dims after the channel dim, 1 for [B, C] vectors).
// Both directions are  out = reverse ? in*scale + shift : (in + shift)*scale  with the channel's
// scale = exp(sign*log_scale), shift = sign*loc, sign = -1 in reverse. Gradients, with
// z = reverse ? in : in + shift (the part of out multiplied by scale), sum_g = sum g and
// sum_gz = sum g*z over the channel's B*S elements, G = sum_b grad_logdet[b]:
//   g_in = g*scale,  g_loc = reverse ? -sum_g : scale*sum_g,  g_log_scale = sign*(scale*sum_gz + S*G).
#pragma once

#include <dgmfast/common.h>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace dgm {

// The channel's (scale, shift) in one direction.
template <typename T>
DGM_HOST_DEVICE DGM_INLINE void actnorm_channel(T loc, T log_scale, bool reverse, T* scale, T* shift) {
  *scale = dgm::exp(reverse ? T(0) - log_scale : log_scale);
  *shift = reverse ? T(0) - loc : loc;
}

// z = the part of out that scale multiplies (out = z*scale in forward, z*scale + shift in reverse).
template <typename T>
DGM_HOST_DEVICE DGM_INLINE T actnorm_scaled_part(T in, T shift, bool reverse) {
  return reverse ? in : in + shift;
}

template <typename T>
DGM_HOST_DEVICE DGM_INLINE T actnorm_elem(T in, T scale, T shift, bool reverse) {
  return reverse ? in * scale + shift : (in + shift) * scale;
}

// Channel gradients from the channel's sums (see the header comment).
template <typename T>
DGM_HOST_DEVICE DGM_INLINE void actnorm_channel_grads(T scale, T sum_g, T sum_gz, T plane_size_x_gld_sum,
                                                      bool reverse, T* g_loc, T* g_log_scale) {
  *g_loc = reverse ? T(0) - sum_g : scale * sum_g;
  const T g = scale * sum_gz + plane_size_x_gld_sum;
  *g_log_scale = reverse ? T(0) - g : g;
}

// Host side: the launchers' shape/dtype checks.
inline void check_actnorm_params(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& log_scale) {
  TORCH_CHECK(x.dim() >= 2, "dgmfast: x must be [B, C, ...], got ", x.sizes());
  for (const at::Tensor* p : {&loc, &log_scale}) {
    TORCH_CHECK(p->dim() == 1 && p->size(0) == x.size(1), "dgmfast: actnorm parameters must have shape [",
                x.size(1), "], got ", p->sizes());
    TORCH_CHECK(p->scalar_type() == x.scalar_type(), "dgmfast: actnorm parameters must have dtype ",
                x.scalar_type(), ", got ", p->scalar_type());
  }
}

}  // namespace dgm
