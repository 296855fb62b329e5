// ActNorm (SPEC §3), C++ CPU kernels: one vectorized pass per direction, and one fused backward
// pass that writes grad_x and per-tile channel sums, reduced in a fixed order (deterministic for any
// thread count). Per-channel math: csrc/include/dgmfast/actnorm.h. Schemas are declared here.
#include "loops.h"

#include <dgmfast/actnorm.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

namespace dgm::cpu {
namespace {

// Calls fn(c, b0, b1, s0, s1, task) for every tile of every channel, in parallel; task indexes
// the tile in [0, C * tiles.per_channel()). Each thread gets at least ~64K elements.
template <typename Fn>
void parallel_tiles(int64_t C, const ActNormTiles& tiles, int64_t B, int64_t S, const Fn& fn) {
  const int64_t per_channel = tiles.per_channel();
  const int64_t tile_numel = tiles.tile_b * tiles.tile_s;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, tile_numel));
  at::parallel_for(0, C * per_channel, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / per_channel, t = task % per_channel;
      const int64_t b0 = (t / tiles.ns) * tiles.tile_b, s0 = (t % tiles.ns) * tiles.tile_s;
      fn(c, b0, std::min(B, b0 + tiles.tile_b), s0, std::min(S, s0 + tiles.tile_s), task);
    }
  });
}

template <typename scalar_t>
void actnorm_fwd_impl(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& log_scale, at::Tensor& y,
                      bool reverse) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = x.size(0), C = x.size(1), S = plane_numel(x);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* lp = loc.const_data_ptr<scalar_t>();
  const scalar_t* sp = log_scale.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  parallel_tiles(C, actnorm_tiles(B, S, kRowChunk), B, S,
                 [&](int64_t c, int64_t b0, int64_t b1, int64_t s0, int64_t s1, int64_t) {
    math_t scale, shift;
    actnorm_channel<math_t>(lp[c], sp[c], reverse, &scale, &shift);
    const Vec vscale(scale), vshift(shift);
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* xb = xp + b * xs0 + c * xs1;
      scalar_t* yb = yp + (b * C + c) * S;
      int64_t s = s0;
      for (; s + IO::kSize <= s1; s += IO::kSize) IO::store(yb + s, actnorm_elem(IO::load(xb + s), vscale, vshift, reverse));
      for (; s < s1; ++s) yb[s] = static_cast<scalar_t>(actnorm_elem<math_t>(xb[s], scale, shift, reverse));
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
  const ActNormTiles tiles = actnorm_tiles(B, S, kRowChunk);
  const int64_t per_channel = tiles.per_channel();
  std::vector<math_t> partial(2 * C * per_channel, math_t(0));  // (sum g, sum g*z) per tile
  parallel_tiles(C, tiles, B, S, [&](int64_t c, int64_t b0, int64_t b1, int64_t s0, int64_t s1, int64_t task) {
    math_t scale, shift;
    actnorm_channel<math_t>(lp[c], sp[c], reverse, &scale, &shift);
    const Vec vscale(scale), vshift(shift);
    Vec vsum_g(0), vsum_gz(0);
    math_t sum_g = 0, sum_gz = 0;
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t *xb = xp + b * xs0 + c * xs1, *gb = gyp + b * gs0 + c * gs1;
      scalar_t* gxb = gxp + (b * C + c) * S;
      int64_t s = s0;
      for (; s + IO::kSize <= s1; s += IO::kSize) {
        const Vec g = IO::load(gb + s);
        IO::store(gxb + s, g * vscale);
        vsum_g = vsum_g + g;
        vsum_gz = vsum_gz + g * actnorm_scaled_part(IO::load(xb + s), vshift, reverse);
      }
      for (; s < s1; ++s) {
        const math_t g = static_cast<math_t>(gb[s]);
        gxb[s] = static_cast<scalar_t>(g * scale);
        sum_g += g;
        sum_gz += g * actnorm_scaled_part<math_t>(xb[s], shift, reverse);
      }
    }
    const auto add = [](Vec a, Vec b) { return a + b; };
    partial[2 * task] = sum_g + at::vec::vec_reduce_all<math_t>(add, vsum_g);
    partial[2 * task + 1] = sum_gz + at::vec::vec_reduce_all<math_t>(add, vsum_gz);
  });
  const math_t* gldp = gld.const_data_ptr<math_t>();
  math_t gld_sum = 0;
  for (int64_t b = 0; b < B; ++b) gld_sum += gldp[b];
  scalar_t* glp = g_loc.mutable_data_ptr<scalar_t>();
  scalar_t* gsp = g_log_scale.mutable_data_ptr<scalar_t>();
  for (int64_t c = 0; c < C; ++c) {
    math_t scale, shift, sum_g = 0, sum_gz = 0, gl, gs;
    actnorm_channel<math_t>(lp[c], sp[c], reverse, &scale, &shift);
    for (int64_t t = 0; t < per_channel; ++t) {
      sum_g += partial[2 * (c * per_channel + t)];
      sum_gz += partial[2 * (c * per_channel + t) + 1];
    }
    actnorm_channel_grads<math_t>(scale, sum_g, sum_gz, math_t(S) * gld_sum, reverse, &gl, &gs);
    glp[c] = static_cast<scalar_t>(gl);
    gsp[c] = static_cast<scalar_t>(gs);
  }
}

std::tuple<at::Tensor, at::Tensor> actnorm_fwd_cpu(const at::Tensor& x_in, const at::Tensor& loc_in,
                                                   const at::Tensor& log_scale_in, bool reverse) {
  check_actnorm_params(x_in, loc_in, log_scale_in);
  const at::Tensor x = plane_contiguous(x_in), loc = loc_in.contiguous(), log_scale = log_scale_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "actnorm_fwd_cpu", [&] {
    actnorm_fwd_impl<scalar_t>(x, loc, log_scale, y, reverse);
  });
  return {y, actnorm_logdet(x, log_scale, plane_numel(x), reverse)};
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
