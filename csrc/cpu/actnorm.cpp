// ActNorm (SPEC §3), C++ CPU kernels: one vectorized pass per direction, and one fused backward
// pass that writes grad_x and per-task channel sums, reduced in a fixed order (deterministic for any
// thread count). Per-channel math: csrc/include/dgmfast/actnorm.h. Schemas are declared here.
#include "autograd.h"
#include "loops.h"

#include <dgmfast/actnorm.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

namespace dgm::cpu {
namespace {

// CPU tiling of x viewed as [B, C, S]: a task handles `rows` samples x a group of `cg` channels x one
// chunk of `tile_s` plane elements, visited in memory order (b, then c, then s), so every task streams
// contiguous memory (one run of rows*C*S elements when the group is all channels and S fits one chunk).
// The tiling depends on the sizes only, never on the thread count: sums over tasks are deterministic.
// rows >= 16/tile_s keeps the per-task channel partials of the backward below 1/16 of the elements.
struct Tiling {
  int64_t tile_s, ns;  // plane elements per chunk, chunks per plane
  int64_t cg, ncg;     // channels per group, groups
  int64_t rows, nb;    // samples per block, blocks
  int64_t tasks() const { return nb * ncg * ns; }
};

Tiling make_tiling(int64_t B, int64_t C, int64_t S) {
  constexpr int64_t K = kRowChunk;
  Tiling t;
  t.tile_s = std::max<int64_t>(1, std::min(S, K));
  t.ns = S > 0 ? (S + t.tile_s - 1) / t.tile_s : 0;
  const int64_t min_rows = (16 + t.tile_s - 1) / t.tile_s;
  t.cg = std::max<int64_t>(1, std::min(C, K / (t.tile_s * min_rows)));
  t.ncg = C > 0 ? (C + t.cg - 1) / t.cg : 0;
  t.rows = std::max(min_rows, K / (t.cg * t.tile_s));
  t.nb = B > 0 ? (B + t.rows - 1) / t.rows : 0;
  return t;
}

// Calls fn(task, b0, b1, c0, c1, s0, s1) for every task, in parallel (about kRowChunk elements each).
template <typename Fn>
void parallel_tasks(const Tiling& t, int64_t B, int64_t C, int64_t S, const Fn& fn) {
  at::parallel_for(0, t.tasks(), 4, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / (t.ncg * t.ns), gi = (task / t.ns) % t.ncg, si = task % t.ns;
      const int64_t b0 = bi * t.rows, c0 = gi * t.cg, s0 = si * t.tile_s;
      fn(task, b0, std::min(B, b0 + t.rows), c0, std::min(C, c0 + t.cg), s0, std::min(S, s0 + t.tile_s));
    }
  });
}

// The direction is a template parameter: the inner loop is one add and one multiply (or one fma) per vector.
template <typename scalar_t, bool reverse>
void actnorm_fwd_impl(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& log_scale, at::Tensor& y) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = x.size(0), C = x.size(1), S = plane_numel(x);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* lp = loc.const_data_ptr<scalar_t>();
  const scalar_t* sp = log_scale.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  std::vector<math_t> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) actnorm_channel<math_t>(lp[c], sp[c], reverse, &scale[c], &shift[c]);
  parallel_tasks(make_tiling(B, C, S), B, C, S,
                 [&](int64_t, int64_t b0, int64_t b1, int64_t c0, int64_t c1, int64_t s0, int64_t s1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t c = c0; c < c1; ++c) {
        const scalar_t* xb = xp + b * xs0 + c * xs1;
        scalar_t* yb = yp + (b * C + c) * S;
        const math_t sc = scale[c], sh = shift[c];
        const Vec vscale(sc), vshift(sh);
        int64_t s = s0;
        for (; s + IO::kSize <= s1; s += IO::kSize) {
          IO::store(yb + s, actnorm_elem(IO::load(xb + s), vscale, vshift, reverse));
        }
        for (; s < s1; ++s) yb[s] = static_cast<scalar_t>(actnorm_elem<math_t>(xb[s], sc, sh, reverse));
      }
    }
  });
}

template <typename scalar_t>
void actnorm_bwd_impl(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& log_scale, const at::Tensor& gy,
                      const at::Tensor& gld, at::Tensor& gx, at::Tensor& g_loc, at::Tensor& g_log_scale,
                      bool reverse) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = x.size(0), C = x.size(1), S = plane_numel(x);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), gs0 = gy.stride(0), gs1 = gy.stride(1);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
  const scalar_t* lp = loc.const_data_ptr<scalar_t>();
  const scalar_t* sp = log_scale.const_data_ptr<scalar_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  std::vector<math_t> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) actnorm_channel<math_t>(lp[c], sp[c], reverse, &scale[c], &shift[c]);
  const Tiling t = make_tiling(B, C, S);
  // (sum g, sum g*z) per block of samples, channel and plane chunk: [nb, C, ns, 2]
  std::vector<math_t> partial(2 * t.nb * C * t.ns, math_t(0));
  const auto add = [](Vec a, Vec b) { return a + b; };
  parallel_tasks(t, B, C, S, [&](int64_t task, int64_t b0, int64_t b1, int64_t c0, int64_t c1, int64_t s0,
                                 int64_t s1) {
    const int64_t bi = task / (t.ncg * t.ns), si = task % t.ns;
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t c = c0; c < c1; ++c) {
        const scalar_t *xb = xp + b * xs0 + c * xs1, *gb = gyp + b * gs0 + c * gs1;
        scalar_t* gxb = gxp + (b * C + c) * S;
        const math_t sc = scale[c], sh = shift[c];
        math_t sum_g = 0, sum_gz = 0;
        int64_t s = s0;
        if (s1 - s0 >= IO::kSize) {
          const Vec vscale(sc), vshift(sh);
          Vec vsum_g(0), vsum_gz(0);
          for (; s + IO::kSize <= s1; s += IO::kSize) {
            const Vec g = IO::load(gb + s);
            IO::store(gxb + s, g * vscale);
            vsum_g = vsum_g + g;
            vsum_gz = vsum_gz + g * actnorm_scaled_part(IO::load(xb + s), vshift, reverse);
          }
          sum_g = at::vec::vec_reduce_all<math_t>(add, vsum_g);
          sum_gz = at::vec::vec_reduce_all<math_t>(add, vsum_gz);
        }
        for (; s < s1; ++s) {
          const math_t g = static_cast<math_t>(gb[s]);
          gxb[s] = static_cast<scalar_t>(g * sc);
          sum_g += g;
          sum_gz += g * actnorm_scaled_part<math_t>(xb[s], sh, reverse);
        }
        math_t* out = partial.data() + 2 * ((bi * C + c) * t.ns + si);
        out[0] += sum_g;
        out[1] += sum_gz;
      }
    }
  });
  const math_t* gldp = gld.const_data_ptr<math_t>();
  math_t gld_sum = 0;
  for (int64_t b = 0; b < B; ++b) gld_sum += gldp[b];
  scalar_t* glp = g_loc.mutable_data_ptr<scalar_t>();
  scalar_t* gsp = g_log_scale.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, C, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      math_t sum_g = 0, sum_gz = 0, gl, gs;
      for (int64_t bi = 0; bi < t.nb; ++bi) {
        for (int64_t si = 0; si < t.ns; ++si) {
          const math_t* in = partial.data() + 2 * ((bi * C + c) * t.ns + si);
          sum_g += in[0];
          sum_gz += in[1];
        }
      }
      actnorm_channel_grads<math_t>(scale[c], sum_g, sum_gz, math_t(S) * gld_sum, reverse, &gl, &gs);
      glp[c] = static_cast<scalar_t>(gl);
      gsp[c] = static_cast<scalar_t>(gs);
    }
  });
}

// The [B] log-det, the same for every sample: plane * sum(log_scale) (negated in reverse).
template <typename scalar_t>
void actnorm_logdet_impl(const at::Tensor& log_scale, int64_t plane, bool reverse, at::Tensor& logdet) {
  using math_t = opmath_t<scalar_t>;
  const scalar_t* sp = log_scale.const_data_ptr<scalar_t>();
  math_t sum = 0;
  for (int64_t c = 0; c < log_scale.size(0); ++c) sum += static_cast<math_t>(sp[c]);
  sum *= static_cast<math_t>(reverse ? -plane : plane);
  math_t* out = logdet.mutable_data_ptr<math_t>();
  for (int64_t b = 0; b < logdet.size(0); ++b) out[b] = sum;
}

std::tuple<at::Tensor, at::Tensor> actnorm_fwd_cpu(const at::Tensor& x_in, const at::Tensor& loc_in,
                                                   const at::Tensor& log_scale_in, bool reverse) {
  check_actnorm_params(x_in, loc_in, log_scale_in);
  const at::Tensor x = plane_contiguous(x_in), loc = loc_in.contiguous(), log_scale = log_scale_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor logdet = at::empty({x.size(0)}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble
                                                                                                : at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "actnorm_fwd_cpu", [&] {
    if (reverse) actnorm_fwd_impl<scalar_t, true>(x, loc, log_scale, y);
    else actnorm_fwd_impl<scalar_t, false>(x, loc, log_scale, y);
    actnorm_logdet_impl<scalar_t>(log_scale, plane_numel(x), reverse, logdet);
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_bwd_cpu(const at::Tensor& x_in, const at::Tensor& loc_in,
                                                               const at::Tensor& log_scale_in, const at::Tensor& gy_in,
                                                               const at::Tensor& gld_in, bool reverse) {
  check_actnorm_params(x_in, loc_in, log_scale_in);
  check_same_shape(x_in, gy_in, "grad_y");
  const at::Tensor x = plane_contiguous(x_in), loc = loc_in.contiguous(), log_scale = log_scale_in.contiguous();
  const at::Tensor gy = plane_contiguous(gy_in), gld = gld_in.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options());
  at::Tensor g_loc = at::empty(loc.sizes(), loc.options()), g_log_scale = at::empty(loc.sizes(), loc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "actnorm_bwd_cpu", [&] {
    actnorm_bwd_impl<scalar_t>(x, loc, log_scale, gy, gld, gx, g_loc, g_log_scale, reverse);
  });
  return {gx, g_loc, g_log_scale};
}

// ---- the Autograd kernel of eager calls (autograd.h) ----
//
// Saves x, loc and log_scale, as _setup_context (dgmfast/ops/actnorm.py).
using ActnormFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
using ActnormBwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&, bool);

struct ActnormNode : public torch::autograd::Function<ActnormNode> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& loc, const at::Tensor& log_scale, bool reverse) {
    static const auto op = dgmfast_op<ActnormFn>("actnorm_fwd");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, logdet] = op.call(x, loc, log_scale, reverse);
    ctx->save_for_backward({x, loc, log_scale});
    ctx->saved_data["reverse"] = reverse;
    return {y, logdet};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = dgmfast_op<ActnormBwdFn>("actnorm_bwd");
    const auto s = ctx->get_saved_variables();
    check_first_order("actnorm_fwd", ctx, 3);
    auto [gx, g_loc, g_log_scale] = op.call(s[0], s[1], s[2], grads[0], grads[1], ctx->saved_data["reverse"].toBool());
    return {gx, g_loc, g_log_scale, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> actnorm_fwd_autograd(const at::Tensor& x, const at::Tensor& loc,
                                                        const at::Tensor& log_scale, bool reverse) {
  auto out = ActnormNode::apply(x, loc, log_scale, reverse);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) {
  m.def("actnorm_fwd(Tensor x, Tensor loc, Tensor log_scale, bool reverse) -> (Tensor, Tensor)");
  m.def("actnorm_bwd(Tensor x, Tensor loc, Tensor log_scale, Tensor grad_y, Tensor grad_logdet, bool reverse) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("actnorm_fwd", &dgm::cpu::actnorm_fwd_cpu);
  m.impl("actnorm_bwd", &dgm::cpu::actnorm_bwd_cpu);
}

TORCH_LIBRARY_IMPL(dgmfast_C, Autograd, m) {
  m.impl("actnorm_fwd", &dgm::cpu::actnorm_fwd_autograd);
}
