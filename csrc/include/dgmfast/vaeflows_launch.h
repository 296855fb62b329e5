// Host-side launcher helpers of planar flows (not device code), shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <dgmfast/rows.h>

namespace dgm {

// z [B, D]; u, w [L, D] (shared) or [B, L, D] (per sample); b [L] or [B, L]; one dtype.
inline void check_planar(const at::Tensor& z, const at::Tensor& u, const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK(z.dim() == 2, "dgmfast: z must be [B, D], got ", z.sizes());
  check_same_shape(w, u, "u");
  TORCH_CHECK((w.dim() == 2 || w.dim() == 3) && w.size(-1) == z.size(1), "dgmfast: w must be [L, D] or [B, L, D]");
  TORCH_CHECK((w.dim() == 2 || w.size(0) == z.size(0)) && (b.dim() == 1 || (b.dim() == 2 && b.size(0) == z.size(0))) &&
                  b.size(-1) == w.size(-2),
              "dgmfast: u, w must be [L, D] or [B, L, D] and b [L] or [B, L]");
  TORCH_CHECK(z.scalar_type() == w.scalar_type() && z.scalar_type() == b.scalar_type(), "dgmfast: dtypes differ");
}

// Parameters need only their last dim contiguous (batch and step strides are read as they are).
inline at::Tensor last_contiguous(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

}  // namespace dgm
