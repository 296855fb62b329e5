// Affine coupling (SPEC §1), C++ CPU kernels: one vectorized pass per direction.
// Schemas of the family are declared here (the CPU file is always built); the CUDA file
// registers its implementations of the same schemas.
#include "autograd.h"
#include "loops.h"

#include <dgmfast/coupling.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace dgm::cpu {
namespace {

template <typename scalar_t, int MAP>
void affine_coupling_fwd_impl(const at::Tensor& x, const at::Tensor& r, const at::Tensor& t, at::Tensor& y,
                              at::Tensor& logdet, double clamp_d, double eps_d, bool shift_first,
                              bool reverse) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = x.size(0), N = row_numel(x);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* rp = r.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t xs = row_stride(x), rs = row_stride(r), ts = row_stride(t);
  const math_t clamp = clamp_d, eps = eps_d;
  const Vec vclamp(clamp), veps(eps);

  parallel_rows<math_t>(B, N, logdet.mutable_data_ptr<math_t>(), [&](int64_t b, int64_t lo, int64_t hi) {
    const scalar_t *xb = xp + b * xs, *rb = rp + b * rs, *tb = tp + b * ts;
    scalar_t* yb = yp + b * N;
    Vec vacc(0);
    int64_t i = lo;
    for (; i + IO::kSize <= hi; i += IO::kSize) {
      Vec s;
      Vec out = affine_coupling_fwd_elem<MAP>(IO::load(xb + i), IO::load(rb + i), IO::load(tb + i), vclamp,
                                              veps, reverse, shift_first, &s);
      IO::store(yb + i, out);
      vacc = vacc + s;
    }
    math_t acc = at::vec::vec_reduce_all<math_t>([](Vec a, Vec c) { return a + c; }, vacc);
    for (; i < hi; ++i) {
      math_t s;
      yb[i] = static_cast<scalar_t>(affine_coupling_fwd_elem<MAP>(
          static_cast<math_t>(xb[i]), static_cast<math_t>(rb[i]), static_cast<math_t>(tb[i]), clamp, eps,
          reverse, shift_first, &s));
      acc += s;
    }
    return acc;
  });
}

template <typename scalar_t, int MAP>
void affine_coupling_bwd_impl(const at::Tensor& x, const at::Tensor& r, const at::Tensor& t,
                              const at::Tensor& gy, const at::Tensor& gld, at::Tensor& gx, at::Tensor& gr,
                              at::Tensor* gt, double clamp_d, double eps_d, bool shift_first, bool reverse) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = x.size(0), N = row_numel(x);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* rp = r.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
  const math_t* gldp = gld.const_data_ptr<math_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  scalar_t* grp = gr.mutable_data_ptr<scalar_t>();
  scalar_t* gtp = gt != nullptr ? gt->mutable_data_ptr<scalar_t>() : nullptr;
  const int64_t xs = row_stride(x), rs = row_stride(r), ts = row_stride(t), gys = row_stride(gy);
  const math_t clamp = clamp_d, eps = eps_d;
  const Vec vclamp(clamp), veps(eps);

  parallel_rows<math_t>(B, N, nullptr, [&](int64_t b, int64_t lo, int64_t hi) {
    const scalar_t *xb = xp + b * xs, *rb = rp + b * rs, *tb = tp + b * ts, *gyb = gyp + b * gys;
    scalar_t *gxb = gxp + b * N, *grb = grp + b * N, *gtb = gtp != nullptr ? gtp + b * N : nullptr;
    const math_t g_logdet = gldp[b];
    const Vec vgld(g_logdet);
    int64_t i = lo;
    for (; i + IO::kSize <= hi; i += IO::kSize) {
      Vec g_in, g_r;
      Vec g_out = IO::load(gyb + i);
      affine_coupling_bwd_elem<MAP>(IO::load(xb + i), IO::load(rb + i), IO::load(tb + i), g_out, vgld, vclamp,
                                    veps, reverse, shift_first, &g_in, &g_r);
      IO::store(gxb + i, g_in);
      IO::store(grb + i, g_r);
      if (gtb != nullptr) IO::store(gtb + i, Vec(0) - (shift_first ? g_in : g_out));  // reverse only
    }
    for (; i < hi; ++i) {
      math_t g_in, g_r, g_out = static_cast<math_t>(gyb[i]);
      affine_coupling_bwd_elem<MAP>(static_cast<math_t>(xb[i]), static_cast<math_t>(rb[i]),
                                    static_cast<math_t>(tb[i]), g_out, g_logdet, clamp, eps, reverse, shift_first,
                                    &g_in, &g_r);
      gxb[i] = static_cast<scalar_t>(g_in);
      grb[i] = static_cast<scalar_t>(g_r);
      if (gtb != nullptr) gtb[i] = static_cast<scalar_t>(-(shift_first ? g_in : g_out));
    }
    return math_t(0);
  });
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_fwd_cpu(const at::Tensor& x_in, const at::Tensor& r_in,
                                                           const at::Tensor& t_in, int64_t scale_map,
                                                           double clamp, double eps, bool shift_first,
                                                           bool reverse) {
  check_same_shape(x_in, r_in, "log_scale");
  check_same_shape(x_in, t_in, "shift");
  const at::Tensor x = row_contiguous(x_in), r = row_contiguous(r_in), t = row_contiguous(t_in);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const auto ld_dtype = acc_scalar_type(x.scalar_type());
  at::Tensor logdet = at::empty({x.dim() == 0 ? 1 : x.size(0)}, x.options().dtype(ld_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_fwd_cpu", [&] {
    const bool known = dispatch_scale_map(scale_map, eps, [&](auto map) {
      affine_coupling_fwd_impl<scalar_t, decltype(map)::value>(x, r, t, y, logdet, clamp, eps, shift_first,
                                                               reverse);
    });
    TORCH_CHECK(known, "dgmfast: unknown scale_map id ", scale_map);
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_coupling_bwd_cpu(
    const at::Tensor& x_in, const at::Tensor& r_in, const at::Tensor& t_in, const at::Tensor& gy_in,
    const at::Tensor& gld_in, int64_t scale_map, double clamp, double eps, bool shift_first, bool reverse) {
  const at::Tensor x = row_contiguous(x_in), r = row_contiguous(r_in), t = row_contiguous(t_in);
  const at::Tensor gy = row_contiguous(gy_in), gld = gld_in.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options()), gr = at::empty(x.sizes(), x.options());
  // In the forward direction grad_shift is grad_y or grad_x itself: the caller aliases it.
  at::Tensor gt = at::empty(reverse ? x.sizes() : at::IntArrayRef{0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_bwd_cpu", [&] {
    const bool known = dispatch_scale_map(scale_map, eps, [&](auto map) {
      affine_coupling_bwd_impl<scalar_t, decltype(map)::value>(x, r, t, gy, gld, gx, gr, reverse ? &gt : nullptr,
                                                               clamp, eps, shift_first, reverse);
    });
    TORCH_CHECK(known, "dgmfast: unknown scale_map id ", scale_map);
  });
  return {gx, gr, gt};
}

// ---- the Autograd kernel of eager calls (autograd.h) ----
//
// Saves x, log_scale and shift, as _setup_context (dgmfast/ops/coupling.py); in the forward direction grad_shift is
// grad_x (shift_first) or grad_y itself.
using CouplingFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                                      double, double, bool, bool);
using CouplingBwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                     const at::Tensor&, const at::Tensor&,
                                                                     const at::Tensor&, int64_t, double, double, bool,
                                                                     bool);

struct AffineCouplingNode : public torch::autograd::Function<AffineCouplingNode> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& r, const at::Tensor& t, int64_t scale_map,
                                                double clamp, double eps, bool shift_first, bool reverse) {
    static const auto op = dgmfast_op<CouplingFn>("affine_coupling_fwd");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, logdet] = op.call(x, r, t, scale_map, clamp, eps, shift_first, reverse);
    ctx->save_for_backward({x, r, t});
    ctx->saved_data["scale_map"] = scale_map;
    ctx->saved_data["clamp"] = clamp;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["shift_first"] = shift_first;
    ctx->saved_data["reverse"] = reverse;
    return {y, logdet};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = dgmfast_op<CouplingBwdFn>("affine_coupling_bwd");
    const auto s = ctx->get_saved_variables();
    check_first_order("affine_coupling_fwd", ctx, 3);
    auto& d = ctx->saved_data;
    const bool shift_first = d["shift_first"].toBool(), reverse = d["reverse"].toBool();
    auto [gx, gr, gt] = op.call(s[0], s[1], s[2], grads[0], grads[1], d["scale_map"].toInt(), d["clamp"].toDouble(),
                                d["eps"].toDouble(), shift_first, reverse);
    if (!reverse) gt = shift_first ? gx : grads[0];
    return {gx, gr, gt, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> affine_coupling_fwd_autograd(const at::Tensor& x, const at::Tensor& r,
                                                                const at::Tensor& t, int64_t scale_map, double clamp,
                                                                double eps, bool shift_first, bool reverse) {
  auto out = AffineCouplingNode::apply(x, r, t, scale_map, clamp, eps, shift_first, reverse);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) {
  m.def("affine_coupling_fwd(Tensor x, Tensor log_scale, Tensor shift, int scale_map, float clamp, float eps, "
        "bool shift_first, bool reverse) -> (Tensor, Tensor)");
  m.def("affine_coupling_bwd(Tensor x, Tensor log_scale, Tensor shift, Tensor grad_y, Tensor grad_logdet, "
        "int scale_map, float clamp, float eps, bool shift_first, bool reverse) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("affine_coupling_fwd", &dgm::cpu::affine_coupling_fwd_cpu);
  m.impl("affine_coupling_bwd", &dgm::cpu::affine_coupling_bwd_cpu);
}

TORCH_LIBRARY_IMPL(dgmfast_C, Autograd, m) {
  m.impl("affine_coupling_fwd", &dgm::cpu::affine_coupling_fwd_autograd);
}
