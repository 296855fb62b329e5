// Flow++ mixture-of-logistics coupling (SPEC §2), C++ CPU kernels. Math: csrc/include/dgmfast/mixlogistic.h.
// Each task takes a chunk of one row's elements in blocks of one vector's lanes (the last block of a run
// padded with zeros), copies the block's K parameters once into a tile (strided loads, any layout of
// mixlogistic_launch.h, prefetching the next blocks' lines), and runs every pass over K from the tile,
// vectorized across elements. The backward computes the K components (MixLinTerm) once per block for both
// of its passes and writes the parameter gradients with non-temporal stores.
// Schemas of the family are declared here; csrc/cuda/mixlogistic.cu registers the CUDA implementations.
#include "autograd.h"
#include "loops.h"

#include <dgmfast/mixlogistic.h>
#include <dgmfast/mixlogistic_launch.h>
#include <dgmfast/rows.h>

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

namespace dgm::cpu {
namespace {

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define DGM_STREAM_STORES 1
#else
#define DGM_STREAM_STORES 0
#endif

// Orders the non-temporal stores of Strided::store_stream before what follows.
inline void stream_fence() {
#if DGM_STREAM_STORES
  _mm_sfence();
#endif
}

// Software prefetch distance along the lanes: the parameters of a block are K separate streams per
// tensor (3K for a Flow++ conditioner's output), more than the hardware prefetchers follow.
constexpr int64_t kPrefetchLanes = 64;

// A tensor read or written through an ElemLayout, n <= kSize lanes at a time (lane j = inner index i + j).
template <typename scalar_t, typename ptr_t>
struct Strided {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  ptr_t p;
  ElemLayout L;

  ptr_t at(int64_t b, int64_t o, int64_t i, int64_t k = 0) const { return p + b * L.b + o * L.o + i * L.i + k * L.k; }

  // Asks for the lanes kPrefetchLanes after (o, i) (the next blocks of a run; a hint, never a fault).
  void prefetch(int64_t b, int64_t o, int64_t i, int64_t k) const {
    __builtin_prefetch(at(b, o, i + kPrefetchLanes, k));
  }
  Vec load(int64_t b, int64_t o, int64_t i, int64_t n, int64_t k = 0) const {
    const scalar_t* q = at(b, o, i, k);
    if (L.i == 1 && n == IO::kSize) return IO::load(q);
    math_t tmp[IO::kSize] = {};
    for (int64_t j = 0; j < n; ++j) tmp[j] = static_cast<math_t>(q[j * L.i]);
    return Vec::loadu(tmp);
  }
  // store() with a non-temporal (cache-bypassing) store where a whole float/double vector lands on one
  // aligned line, so written gradients are not first read into the caches; call stream_fence() after.
  void store_stream(int64_t b, int64_t o, int64_t i, int64_t n, const Vec& v, int64_t k = 0) const {
#if DGM_STREAM_STORES
    if constexpr (std::is_same_v<scalar_t, math_t>) {
      scalar_t* q = at(b, o, i, k);
      if (L.i == 1 && n == IO::kSize && reinterpret_cast<uintptr_t>(q) % sizeof(Vec) == 0) {
#if defined(CPU_CAPABILITY_AVX512)
        if constexpr (std::is_same_v<scalar_t, float>) _mm512_stream_ps(q, v); else _mm512_stream_pd(q, v);
#else
        if constexpr (std::is_same_v<scalar_t, float>) _mm256_stream_ps(q, v); else _mm256_stream_pd(q, v);
#endif
        return;
      }
    }
#endif
    store(b, o, i, n, v, k);
  }
  void store(int64_t b, int64_t o, int64_t i, int64_t n, const Vec& v, int64_t k = 0) const {
    scalar_t* q = at(b, o, i, k);
    if (L.i == 1 && n == IO::kSize) return IO::store(q, v);
    math_t tmp[IO::kSize];
    v.store(tmp);
    for (int64_t j = 0; j < n; ++j) q[j * L.i] = static_cast<scalar_t>(tmp[j]);
  }
};

template <typename scalar_t>
using In = Strided<scalar_t, const scalar_t*>;
template <typename scalar_t>
using Out = Strided<scalar_t, scalar_t*>;

// Calls fn(o, i, n, e) for the blocks of at most `width` elements of [lo, hi) that do not cross a
// multiple of M (element e = o*M + i).
template <typename Fn>
void for_blocks(int64_t lo, int64_t hi, int64_t M, int64_t width, const Fn& fn) {
  for (int64_t e = lo; e < hi;) {
    const int64_t o = e / M, i = e - o * M;
    const int64_t n = std::min({width, hi - e, M - i});
    fn(o, i, n, e);
    e += n;
  }
}

// The K parameters of one block of lanes, in the math dtype.
template <typename scalar_t>
struct Tile {
  using Vec = typename VecIO<scalar_t>::Vec;
  std::vector<Vec> pi, mu, l;
  explicit Tile(int64_t K) : pi(K), mu(K), l(K) {}
  void fill(const In<scalar_t>& P, const In<scalar_t>& U, const In<scalar_t>& S, int64_t b, int64_t o, int64_t i,
            int64_t n) {
    for (int64_t k = 0; k < static_cast<int64_t>(pi.size()); ++k) {
      pi[k] = P.load(b, o, i, n, k);
      mu[k] = U.load(b, o, i, n, k);
      l[k] = S.load(b, o, i, n, k);
      P.prefetch(b, o, i, k);
      U.prefetch(b, o, i, k);
      S.prefetch(b, o, i, k);
    }
  }
  auto loader() const {
    return [this](int64_t k, Vec& p, Vec& m, Vec& s) {
      p = pi[k];
      m = mu[k];
      s = l[k];
    };
  }
};

template <typename scalar_t, int MAP>
void fwd_impl(const MixInputs& in, at::Tensor& y, at::Tensor& logdet, double clamp_d, double min_ls_d, bool shift_scale,
              bool reverse) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = in.sz.B, N = in.sz.N, K = in.sz.K, M = in.sz.M;
  const In<scalar_t> X{in.x.const_data_ptr<scalar_t>(), in.Lx}, R{in.r.const_data_ptr<scalar_t>(), in.Lr},
      Sh{in.t.const_data_ptr<scalar_t>(), in.Lt}, P{in.pi.const_data_ptr<scalar_t>(), in.Lpi},
      U{in.mu.const_data_ptr<scalar_t>(), in.Lmu}, S{in.l.const_data_ptr<scalar_t>(), in.Ll};
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const Vec vclamp(static_cast<math_t>(clamp_d)), vmin(static_cast<math_t>(min_ls_d));
  const int iters = std::is_same_v<math_t, double> ? 80 : 40;

  parallel_rows<math_t>(B, N, logdet.mutable_data_ptr<math_t>(), [&](int64_t b, int64_t lo, int64_t hi) {
    Tile<scalar_t> tile(K);
    std::vector<Vec> E(reverse ? K : 0), Q(reverse ? K : 0);
    Vec acc(0);
    for_blocks(lo, hi, M, IO::kSize, [&](int64_t o, int64_t i, int64_t n, int64_t e) {
      tile.fill(P, U, S, b, o, i, n);
      const auto load = tile.loader();
      const Vec xin = X.load(b, o, i, n), r = R.load(b, o, i, n), t = Sh.load(b, o, i, n);
      Vec out, ld;
      if (!reverse) {
        out = mixlogistic_fwd_elem<MAP>(xin, r, t, vclamp, vmin, shift_scale, K, load, &ld);
      } else {
        Vec s;
        const Vec v = mixlogistic_target<MAP>(xin, r, t, vclamp, shift_scale, &s);
        Vec pi_max = tile.pi[0], l_max = tile.l[0], mu_min = tile.mu[0], mu_max = tile.mu[0];
        for (int64_t k = 1; k < K; ++k) {
          pi_max = dgm::max(pi_max, tile.pi[k]);
          l_max = dgm::max(l_max, tile.l[k]);
          mu_min = dgm::min(mu_min, tile.mu[k]);
          mu_max = dgm::max(mu_max, tile.mu[k]);
        }
        for (int64_t k = 0; k < K; ++k) {
          E[k] = dgm::exp(tile.pi[k] - pi_max);
          Q[k] = dgm::exp(Vec(0) - dgm::max(tile.l[k], vmin));
        }
        const Vec width = dgm::exp(dgm::max(l_max, vmin)) * (dgm::abs(v) + Vec(1));
        const auto exact = [&](const Vec& xm) {
          const auto st = mix_stats<false>(xm, vmin, K, load);
          return st.log_cdf() - st.log_sf();
        };
        out = mix_bisect(v, mu_min - width, mu_max + width, iters, K,
                         [&](int64_t k, Vec& e_k, Vec& mu_k, Vec& q_k) {
                           e_k = E[k];
                           mu_k = tile.mu[k];
                           q_k = Q[k];
                         },
                         exact);
        ld = Vec(0) - (mix_logdet_term(out, vmin, K, load) + s);
      }
      Out<scalar_t>{yp, {N, M, 1, 0}}.store(b, 0, e, n, out);
      acc = acc + Vec::set(Vec(0), ld, n);
    });
    return at::vec::vec_reduce_all<math_t>([](Vec a, Vec c) { return a + c; }, acc);
  });
}

template <typename scalar_t, int MAP>
void bwd_impl(const MixInputs& in, const at::Tensor& gy, const ElemLayout& Lgy, const at::Tensor& gld, at::Tensor& g_in,
              const std::array<at::Tensor, 3>& gpar, const std::array<ElemLayout, 3>& Lgpar, at::Tensor& g_r,
              at::Tensor* g_t, double clamp_d, double min_ls_d, bool shift_scale, bool reverse) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = in.sz.B, N = in.sz.N, K = in.sz.K, M = in.sz.M;
  const In<scalar_t> X{in.x.const_data_ptr<scalar_t>(), in.Lx}, R{in.r.const_data_ptr<scalar_t>(), in.Lr},
      Sh{in.t.const_data_ptr<scalar_t>(), in.Lt}, P{in.pi.const_data_ptr<scalar_t>(), in.Lpi},
      U{in.mu.const_data_ptr<scalar_t>(), in.Lmu}, S{in.l.const_data_ptr<scalar_t>(), in.Ll},
      GY{gy.const_data_ptr<scalar_t>(), Lgy};
  const ElemLayout Lrow{N, M, 1, 0};
  const Out<scalar_t> GX{g_in.mutable_data_ptr<scalar_t>(), Lrow}, GR{g_r.mutable_data_ptr<scalar_t>(), Lrow},
      GT{g_t != nullptr ? g_t->mutable_data_ptr<scalar_t>() : nullptr, Lrow},
      GP{gpar[0].mutable_data_ptr<scalar_t>(), Lgpar[0]}, GU{gpar[1].mutable_data_ptr<scalar_t>(), Lgpar[1]},
      GS{gpar[2].mutable_data_ptr<scalar_t>(), Lgpar[2]};
  const math_t* gldp = gld.const_data_ptr<math_t>();
  const Vec vclamp(static_cast<math_t>(clamp_d)), vmin(static_cast<math_t>(min_ls_d));

  parallel_rows<math_t>(B, N, nullptr, [&](int64_t b, int64_t lo, int64_t hi) {
    Tile<scalar_t> tile(K);
    std::vector<MixLinTerm<Vec>> terms(K);  // computed once, read by both passes over K
    const Vec g_ld(gldp[b]);
    for_blocks(lo, hi, M, IO::kSize, [&](int64_t o, int64_t i, int64_t n, int64_t e) {
      tile.fill(P, U, S, b, o, i, n);
      const auto load = tile.loader();
      const Vec xin = X.load(b, o, i, n);
      const auto loaded = loaded_terms(xin, vmin, K, load);
      for (int64_t k = 0; k < K; ++k) terms[k] = loaded(k);
      Vec gx, gr, gt;
      mixlogistic_bwd_elem<MAP>(
          xin, R.load(b, o, i, n), Sh.load(b, o, i, n), GY.load(b, o, i, n), g_ld, vclamp, vmin, shift_scale,
          reverse, K, [&](int64_t k) -> const MixLinTerm<Vec>& { return terms[k]; }, load,
          [&](int64_t k, const Vec& g_pi, const Vec& g_mu, const Vec& g_l) {
            GP.store_stream(b, o, i, n, g_pi, k);
            GU.store_stream(b, o, i, n, g_mu, k);
            GS.store_stream(b, o, i, n, g_l, k);
          },
          &gx, &gr, &gt);
      GX.store(b, 0, e, n, gx);
      GR.store(b, 0, e, n, gr);
      if (g_t != nullptr) GT.store(b, 0, e, n, gt);
    });
    stream_fence();
    return math_t(0);
  });
}

std::tuple<at::Tensor, at::Tensor> mixlogistic_coupling_fwd_cpu(const at::Tensor& x, const at::Tensor& logits,
                                                                 const at::Tensor& means, const at::Tensor& log_scales,
                                                                 const at::Tensor& log_scale, const at::Tensor& shift,
                                                                 int64_t scale_map, double clamp, double min_log_scale,
                                                                 bool shift_scale, bool reverse) {
  const MixInputs in = prepare_mix_inputs(x, logits, means, log_scales, log_scale, shift, nullptr);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const auto ld_dtype = acc_scalar_type(x.scalar_type());
  at::Tensor logdet = at::empty({x.size(0)}, x.options().dtype(ld_dtype));
  dispatch_mix(x, scale_map, [&](auto tag, auto map) {
    fwd_impl<typename decltype(tag)::type, decltype(map)::value>(in, y, logdet, clamp, min_log_scale, shift_scale, reverse);
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixlogistic_coupling_bwd_cpu(
    const at::Tensor& x, const at::Tensor& logits, const at::Tensor& means, const at::Tensor& log_scales,
    const at::Tensor& log_scale, const at::Tensor& shift, const at::Tensor& grad_out, const at::Tensor& grad_logdet,
    int64_t scale_map, double clamp, double min_log_scale, bool shift_scale, bool reverse) {
  const MixInputs in = prepare_mix_inputs(x, logits, means, log_scales, log_scale, shift, &grad_out);
  const int64_t M = in.sz.M;
  check_same_shape(x, grad_out, "grad_out");
  const int64_t ed = x.dim() - 1;
  ElemLayout Lgy;
  const at::Tensor gy = with_layout(grad_out, ed, M, false, &Lgy);
  const at::Tensor gld = grad_logdet.contiguous();
  std::array<ElemLayout, 3> Lg;
  const std::array<at::Tensor, 3> gpar = {grad_like(in.pi, ed, M, &Lg[0]), grad_like(in.mu, ed, M, &Lg[1]),
                                          grad_like(in.l, ed, M, &Lg[2])};
  at::Tensor g_in = at::empty(x.sizes(), x.options()), g_r = at::empty(x.sizes(), x.options());
  // forward "scale_shift": grad_shift is grad_out itself (the caller aliases it)
  const bool write_gt = reverse || shift_scale;
  at::Tensor g_t = at::empty(write_gt ? x.sizes() : at::IntArrayRef{0}, x.options());
  dispatch_mix(x, scale_map, [&](auto tag, auto map) {
    bwd_impl<typename decltype(tag)::type, decltype(map)::value>(in, gy, Lgy, gld, g_in, gpar, Lg, g_r, write_gt ? &g_t : nullptr, clamp, min_log_scale,
                            shift_scale, reverse);
  });
  return {g_in, gpar[0], gpar[1], gpar[2], g_r, g_t};
}

// ---- the Autograd kernel of eager calls (autograd.h) ----
//
// Saves the point in data space (the forward's input, the reverse's output) and the five parameter tensors, as
// _setup_context (dgmfast/ops/mixlogistic.py); in the forward "scale_shift" order grad_shift is grad_out itself.
using MixFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                                 double, double, bool, bool);
using MixBwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, int64_t, double, double, bool, bool);

struct MixLogisticNode : public torch::autograd::Function<MixLogisticNode> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& logits, const at::Tensor& means,
                                                const at::Tensor& log_scales, const at::Tensor& log_scale,
                                                const at::Tensor& shift, int64_t scale_map, double clamp,
                                                double min_log_scale, bool shift_scale, bool reverse) {
    static const auto op = dgmfast_op<MixFn>("mixlogistic_coupling_fwd");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, logdet] =
        op.call(x, logits, means, log_scales, log_scale, shift, scale_map, clamp, min_log_scale, shift_scale, reverse);
    ctx->save_for_backward({reverse ? y : x, logits, means, log_scales, log_scale, shift});
    ctx->saved_data["scale_map"] = scale_map;
    ctx->saved_data["clamp"] = clamp;
    ctx->saved_data["min_log_scale"] = min_log_scale;
    ctx->saved_data["shift_scale"] = shift_scale;
    ctx->saved_data["reverse"] = reverse;
    return {y, logdet};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = dgmfast_op<MixBwdFn>("mixlogistic_coupling_bwd");
    const auto s = ctx->get_saved_variables();
    check_first_order("mixlogistic_coupling_fwd", ctx, 6);
    auto& d = ctx->saved_data;
    const bool shift_scale = d["shift_scale"].toBool(), reverse = d["reverse"].toBool();
    auto [g_in, g_pi, g_mu, g_l, g_r, g_t] =
        op.call(s[0], s[1], s[2], s[3], s[4], s[5], grads[0], grads[1], d["scale_map"].toInt(), d["clamp"].toDouble(),
                d["min_log_scale"].toDouble(), shift_scale, reverse);
    if (!(reverse || shift_scale)) g_t = grads[0];
    return {g_in, g_pi, g_mu, g_l, g_r, g_t, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> mixlogistic_coupling_fwd_autograd(
    const at::Tensor& x, const at::Tensor& logits, const at::Tensor& means, const at::Tensor& log_scales,
    const at::Tensor& log_scale, const at::Tensor& shift, int64_t scale_map, double clamp, double min_log_scale,
    bool shift_scale, bool reverse) {
  auto out = MixLogisticNode::apply(x, logits, means, log_scales, log_scale, shift, scale_map, clamp, min_log_scale,
                                    shift_scale, reverse);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) {
  m.def("mixlogistic_coupling_fwd(Tensor x, Tensor logits, Tensor means, Tensor log_scales, Tensor log_scale, "
        "Tensor shift, int scale_map, float clamp, float min_log_scale, bool shift_scale, bool reverse) "
        "-> (Tensor, Tensor)");
  m.def("mixlogistic_coupling_bwd(Tensor x, Tensor logits, Tensor means, Tensor log_scales, Tensor log_scale, "
        "Tensor shift, Tensor grad_out, Tensor grad_logdet, int scale_map, float clamp, float min_log_scale, "
        "bool shift_scale, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("mixlogistic_coupling_fwd", &dgm::cpu::mixlogistic_coupling_fwd_cpu);
  m.impl("mixlogistic_coupling_bwd", &dgm::cpu::mixlogistic_coupling_bwd_cpu);
}

TORCH_LIBRARY_IMPL(dgmfast_C, Autograd, m) {
  m.impl("mixlogistic_coupling_fwd", &dgm::cpu::mixlogistic_coupling_fwd_autograd);
}
