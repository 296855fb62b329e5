// Host-side layout helpers shared by the CPU and CUDA launchers (not device code).
// Kernels treat dim 0 as samples ("rows") and need each row contiguous; the batch stride is
// free, so views such as h.chunk(2, dim=1) of a conditioner's output are read in place.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace dgm {

// Accumulation / log-det dtype of SPEC §0: float64 for float64 inputs, float32 otherwise.
inline at::ScalarType acc_scalar_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline bool is_row_contiguous(const at::Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

inline at::Tensor row_contiguous(const at::Tensor& t) { return is_row_contiguous(t) ? t : t.contiguous(); }

inline int64_t row_stride(const at::Tensor& t) { return t.dim() == 0 ? 0 : t.stride(0); }

inline int64_t row_numel(const at::Tensor& t) { return t.dim() == 0 || t.size(0) == 0 ? 0 : t.numel() / t.size(0); }

// Planes: a [B, C, ...] tensor seen as B*C planes of the dims after 1. Kernels of per-channel ops
// need each plane contiguous; the batch and channel strides are free (any [B, C] layout qualifies).
inline bool is_plane_contiguous(const at::Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

inline at::Tensor plane_contiguous(const at::Tensor& t) { return is_plane_contiguous(t) ? t : t.contiguous(); }

inline int64_t plane_numel(const at::Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 2; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

inline void check_same_shape(const at::Tensor& a, const at::Tensor& b, const char* name) {
  TORCH_CHECK(a.sizes() == b.sizes(), "dgmfast: ", name, " must have shape ", a.sizes(), ", got ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "dgmfast: ", name, " must have dtype ", a.scalar_type(),
              ", got ", b.scalar_type());
}

}  // namespace dgm
