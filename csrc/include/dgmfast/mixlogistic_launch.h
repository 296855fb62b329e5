// Host-side launcher helpers of the mixture coupling (not device code), shared by the CPU and CUDA launchers:
// tensor layouts, input preparation, dtype and scale-map dispatch.
//
// Element-wise tensors are [B, ...] and mixture parameters [B, ..., K]. The kernels address element e of
// row b (component k) at  b*L.b + (e / M)*L.o + (e % M)*L.i + k*L.k  for one split e = o*M + i shared by
// all tensors of a call. So K-last contiguous parameters (L.i = K, L.k = 1), permuted views of a
// conditioner's output such as h.view(B, C, 3K+2, H, W).permute(0, 1, 3, 4, 2)[..., 2:K+2]
// (L.o = (3K+2)HW, L.i = 1, L.k = HW) and zero-stride (expanded) tensors are all read in place; a tensor
// whose element dims do not collapse to at most two runs of that split is copied (made contiguous).
// dgmfast/ops/mixlogistic.py implements the same rules for the Triton launchers.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <dgmfast/coupling.h>
#include <dgmfast/rows.h>

#include <vector>

namespace dgm {

struct ElemLayout {
  int64_t b, o, i, k;  // element strides: batch, outer index, inner index, component
};

// Element dims [1, 1 + elem_dims) of t collapsed into runs (size, stride), innermost first; size-1 dims
// skipped. Returns the number of runs (at most 2 are recorded; more means "not two-level").
inline int collapse_runs(const at::Tensor& t, int64_t elem_dims, int64_t size[2], int64_t stride[2]) {
  int n = 0;
  for (int64_t d = elem_dims; d >= 1; --d) {
    const int64_t sz = t.size(d), st = t.stride(d);
    if (sz == 1) continue;
    if (n > 0 && n <= 2 && st == size[n - 1] * stride[n - 1]) {
      size[n - 1] *= sz;
      continue;
    }
    if (n < 2) {
      size[n] = sz;
      stride[n] = st;
    }
    ++n;
  }
  return n;
}

// The inner size M for tensors with element dims counts elem_dims: that of the first tensor whose
// element dims form two runs, else N (one run covers the row).
inline int64_t choose_inner(const std::vector<std::pair<const at::Tensor*, int64_t>>& tensors, int64_t N) {
  for (const auto& [t, ed] : tensors) {
    int64_t size[2], stride[2];
    if (collapse_runs(*t, ed, size, stride) == 2) return size[0];
  }
  return N > 0 ? N : 1;
}

// The layout of t for split M, or false when t cannot be read in place with it.
inline bool elem_layout(const at::Tensor& t, int64_t elem_dims, int64_t M, bool has_k, ElemLayout* out) {
  int64_t size[2] = {1, 1}, stride[2] = {0, 0};
  const int n = collapse_runs(t, elem_dims, size, stride);
  if (n > 2 || (n == 2 && size[0] != M)) return false;
  out->b = t.dim() > 0 ? t.stride(0) : 0;
  out->k = has_k ? t.stride(t.dim() - 1) : 0;
  if (n == 2) {
    out->i = stride[0];
    out->o = stride[1];
  } else {
    out->i = n == 1 ? stride[0] : 0;
    out->o = M * out->i;
  }
  return true;
}

// t itself when its layout fits split M, else a contiguous copy; sets *layout.
inline at::Tensor with_layout(const at::Tensor& t, int64_t elem_dims, int64_t M, bool has_k, ElemLayout* layout) {
  if (elem_layout(t, elem_dims, M, has_k, layout)) return t;
  at::Tensor c = t.contiguous();
  TORCH_CHECK(elem_layout(c, elem_dims, M, has_k, layout), "dgmfast: internal layout error");
  return c;
}

// An uninitialized gradient for parameter p: p's own dim order (empty_like) when that layout fits M,
// else contiguous.
inline at::Tensor grad_like(const at::Tensor& p, int64_t elem_dims, int64_t M, ElemLayout* layout) {
  at::Tensor g = at::empty_like(p);
  if (elem_layout(g, elem_dims, M, true, layout)) return g;
  g = at::empty(p.sizes(), p.options());
  TORCH_CHECK(elem_layout(g, elem_dims, M, true, layout), "dgmfast: internal layout error");
  return g;
}

struct MixSizes {
  int64_t B, N, K, M;  // rows, elements per row, components, inner split
};

// The inputs of one call with their layouts, every tensor split at one M (copies where a layout does not
// fit); `extra` (the incoming gradient, or nullptr) takes part in choosing M.
struct MixInputs {
  at::Tensor x, pi, mu, l, r, t;
  ElemLayout Lx, Lpi, Lmu, Ll, Lr, Lt;
  MixSizes sz;
};

inline MixInputs prepare_mix_inputs(const at::Tensor& x, const at::Tensor& pi, const at::Tensor& mu,
                                    const at::Tensor& l, const at::Tensor& r, const at::Tensor& t,
                                    const at::Tensor* extra) {
  TORCH_CHECK(x.dim() >= 1, "dgmfast: x must have a batch dim");
  check_same_shape(x, r, "log_scale");
  check_same_shape(x, t, "shift");
  const int64_t K = pi.size(-1), ed = x.dim() - 1;
  TORCH_CHECK(K >= 1, "dgmfast: logits must have K >= 1 components");
  std::vector<int64_t> psizes(x.sizes().begin(), x.sizes().end());
  psizes.push_back(K);
  for (const auto* p : {&pi, &mu, &l}) {
    TORCH_CHECK(p->sizes() == at::IntArrayRef(psizes), "dgmfast: mixture parameters must have shape ", psizes,
                ", got ", p->sizes());
    TORCH_CHECK(p->scalar_type() == x.scalar_type(), "dgmfast: mixture parameters must have dtype ",
                x.scalar_type());
  }
  const int64_t B = x.size(0), N = row_numel(x);
  std::vector<std::pair<const at::Tensor*, int64_t>> all = {{&x, ed}, {&r, ed}, {&t, ed}, {&pi, ed}, {&mu, ed},
                                                            {&l, ed}};
  if (extra != nullptr) all.push_back({extra, ed});
  const int64_t M = choose_inner(all, N);
  MixInputs in;
  in.x = with_layout(x, ed, M, false, &in.Lx);
  in.r = with_layout(r, ed, M, false, &in.Lr);
  in.t = with_layout(t, ed, M, false, &in.Lt);
  in.pi = with_layout(pi, ed, M, true, &in.Lpi);
  in.mu = with_layout(mu, ed, M, true, &in.Lmu);
  in.l = with_layout(l, ed, M, true, &in.Ll);
  in.sz = {B, N, K, M};
  return in;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<scalar_t>{}, std::integral_constant<int, MAP>{}) for x's dtype and the scale map.
template <typename F>
void dispatch_mix(const at::Tensor& x, int64_t scale_map, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mixlogistic_coupling", [&] {
    const bool known = dispatch_scale_map(scale_map, 0.0, [&](auto map) { f(TypeTag<scalar_t>{}, map); });
    TORCH_CHECK(known, "dgmfast: unknown scale_map id ", scale_map);
  });
}

}  // namespace dgm
