// Planar flows and IAF steps (SPEC §5), C++ CPU kernels. Per-step scalar math:
// csrc/include/dgmfast/vaeflows.h (shared with CUDA); the D-long dot products and updates run
// vectorized on math-dtype row buffers padded to whole vectors (padding zero).
//
// planar_flows_fwd applies all L steps per row and saves only the pre-activations a [B, L] besides the
// inputs. planar_flows_bwd recomputes z_L = z_0 + sum_l u_hat_l tanh(a_l), then walks the steps backwards,
// recovering z_l = z_{l+1} - u_hat_l tanh(a_l) on the way (no [B, L, D] state is ever stored). Shared
// (per-step, not per-sample) u, w, b get their gradients from per-task sums reduced in task order.
#include "autograd.h"
#include "loops.h"

#include <dgmfast/rows.h>
#include <dgmfast/vaeflows.h>
#include <dgmfast/vaeflows_launch.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

namespace dgm::cpu {
namespace {

// ---- IAF step: element-wise ------------------------------------------------------------------------

template <typename scalar_t>
void iaf_fwd_impl(const at::Tensor& z, const at::Tensor& m, const at::Tensor& r, at::Tensor& out,
                  at::Tensor& logdet, double bias_d, bool reverse) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = z.size(0), N = row_numel(z);
  const scalar_t *zp = z.const_data_ptr<scalar_t>(), *mp = m.const_data_ptr<scalar_t>(),
                 *rp = r.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t zs = row_stride(z), ms = row_stride(m), rs = row_stride(r);
  const math_t bias = bias_d;
  parallel_rows<math_t>(B, N, logdet.mutable_data_ptr<math_t>(), [&](int64_t b, int64_t lo, int64_t hi) {
    const scalar_t *zb = zp + b * zs, *mb = mp + b * ms, *rb = rp + b * rs;
    scalar_t* ob = op + b * N;
    Vec vacc(0);
    int64_t i = lo;
    for (; i + IO::kSize <= hi; i += IO::kSize) {
      Vec ld;
      IO::store(ob + i, iaf_fwd_elem(IO::load(zb + i), IO::load(mb + i), IO::load(rb + i), Vec(bias), reverse, &ld));
      vacc = vacc + ld;
    }
    math_t acc = at::vec::vec_reduce_all<math_t>([](Vec a, Vec c) { return a + c; }, vacc);
    for (; i < hi; ++i) {
      math_t ld;
      ob[i] = static_cast<scalar_t>(iaf_fwd_elem(static_cast<math_t>(zb[i]), static_cast<math_t>(mb[i]),
                                                 static_cast<math_t>(rb[i]), bias, reverse, &ld));
      acc += ld;
    }
    return acc;
  });
}

template <typename scalar_t>
void iaf_bwd_impl(const at::Tensor& z, const at::Tensor& m, const at::Tensor& r, const at::Tensor& gy,
                  const at::Tensor& gld, at::Tensor& gz, at::Tensor& gm, at::Tensor& gr, double bias_d, bool reverse) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = z.size(0), N = row_numel(z);
  const scalar_t *zp = z.const_data_ptr<scalar_t>(), *mp = m.const_data_ptr<scalar_t>(),
                 *rp = r.const_data_ptr<scalar_t>(), *gyp = gy.const_data_ptr<scalar_t>();
  const math_t* gldp = gld.const_data_ptr<math_t>();
  scalar_t *gzp = gz.mutable_data_ptr<scalar_t>(), *gmp = gm.mutable_data_ptr<scalar_t>(),
           *grp = gr.mutable_data_ptr<scalar_t>();
  const int64_t zs = row_stride(z), ms = row_stride(m), rs = row_stride(r), gys = row_stride(gy);
  const math_t bias = bias_d;
  parallel_rows<math_t>(B, N, nullptr, [&](int64_t b, int64_t lo, int64_t hi) {
    const scalar_t *zb = zp + b * zs, *mb = mp + b * ms, *rb = rp + b * rs, *gyb = gyp + b * gys;
    scalar_t *gzb = gzp + b * N, *gmb = gmp + b * N, *grb = grp + b * N;
    const math_t g_ld = gldp[b];
    int64_t i = lo;
    for (; i + IO::kSize <= hi; i += IO::kSize) {
      Vec a, c, d;
      iaf_bwd_elem(IO::load(zb + i), IO::load(mb + i), IO::load(rb + i), Vec(bias), reverse, IO::load(gyb + i),
                   Vec(g_ld), &a, &c, &d);
      IO::store(gzb + i, a);
      IO::store(gmb + i, c);
      IO::store(grb + i, d);
    }
    for (; i < hi; ++i) {
      math_t a, c, d;
      iaf_bwd_elem(static_cast<math_t>(zb[i]), static_cast<math_t>(mb[i]), static_cast<math_t>(rb[i]), bias, reverse,
                   static_cast<math_t>(gyb[i]), g_ld, &a, &c, &d);
      gzb[i] = static_cast<scalar_t>(a);
      gmb[i] = static_cast<scalar_t>(c);
      grb[i] = static_cast<scalar_t>(d);
    }
    return math_t(0);
  });
}

at::ScalarType acc_type(const at::Tensor& t) { return acc_scalar_type(t.scalar_type()); }

std::tuple<at::Tensor, at::Tensor> iaf_step_fwd_cpu(const at::Tensor& z_in, const at::Tensor& m_in,
                                                    const at::Tensor& r_in, double bias, bool reverse) {
  check_same_shape(z_in, m_in, "mean");
  check_same_shape(z_in, r_in, "log_scale_raw");
  const at::Tensor z = row_contiguous(z_in), m = row_contiguous(m_in), r = row_contiguous(r_in);
  at::Tensor out = at::empty(z.sizes(), z.options());
  at::Tensor logdet = at::empty({z.dim() == 0 ? 1 : z.size(0)}, z.options().dtype(acc_type(z)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "iaf_step_fwd_cpu", [&] {
    iaf_fwd_impl<scalar_t>(z, m, r, out, logdet, bias, reverse);
  });
  return {out, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> iaf_step_bwd_cpu(const at::Tensor& z_in, const at::Tensor& m_in,
                                                                const at::Tensor& r_in, const at::Tensor& gy_in,
                                                                const at::Tensor& gld_in, double bias, bool reverse) {
  const at::Tensor z = row_contiguous(z_in), m = row_contiguous(m_in), r = row_contiguous(r_in);
  const at::Tensor gy = row_contiguous(gy_in), gld = gld_in.contiguous();
  at::Tensor gz = at::empty(z.sizes(), z.options()), gm = at::empty(z.sizes(), z.options()),
             gr = at::empty(z.sizes(), z.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "iaf_step_bwd_cpu", [&] {
    iaf_bwd_impl<scalar_t>(z, m, r, gy, gld, gz, gm, gr, bias, reverse);
  });
  return {gz, gm, gr};
}

// ---- planar flows: all L steps per row -------------------------------------------------------------

// Vector helpers on padded math-dtype rows of Dp elements (Dp a multiple of the vector size).
template <typename math_t>
struct RowOps {
  using Vec = at::vec::Vectorized<math_t>;
  static constexpr int64_t V = Vec::size();
  static int64_t padded(int64_t D) { return (D + V - 1) / V * V; }
  static math_t dot(const math_t* a, const math_t* b, int64_t Dp) {
    Vec acc(math_t(0));
    for (int64_t d = 0; d < Dp; d += V) acc = at::vec::fmadd(Vec::loadu(a + d), Vec::loadu(b + d), acc);
    return at::vec::vec_reduce_all<math_t>([](Vec x, Vec y) { return x + y; }, acc);
  }
  static void axpy(math_t* y, math_t a, const math_t* x, int64_t Dp) {  // y += a x
    const Vec va(a);
    for (int64_t d = 0; d < Dp; d += V) at::vec::fmadd(va, Vec::loadu(x + d), Vec::loadu(y + d)).store(y + d);
  }
  template <typename scalar_t>
  static void load(const scalar_t* p, int64_t D, math_t* out) {  // converting copy, padding untouched
    int64_t d = 0;
    for (; d + VecIO<scalar_t>::kSize <= D; d += VecIO<scalar_t>::kSize) VecIO<scalar_t>::load(p + d).store(out + d);
    for (; d < D; ++d) out[d] = static_cast<math_t>(p[d]);
  }
  template <typename scalar_t>
  static void store(scalar_t* p, const math_t* in, int64_t D) {
    int64_t d = 0;
    for (; d + VecIO<scalar_t>::kSize <= D; d += VecIO<scalar_t>::kSize) VecIO<scalar_t>::store(p + d, Vec::loadu(in + d));
    for (; d < D; ++d) p[d] = static_cast<scalar_t>(in[d]);
  }
};

// u, w [.., L, D] and b [.., L] read through strides (batch stride 0 when shared).
template <typename scalar_t>
struct PlanarInputs {
  using math_t = opmath_t<scalar_t>;
  using Ops = RowOps<math_t>;
  const scalar_t *u, *w, *b;
  int64_t ub, ul, wb, wl, bb, bl, L, D, Dp;
  bool shared_uw, shared_b;
  std::vector<math_t> W, U, UH;        // shared u, w: [L, Dp] each, computed once
  std::vector<PlanarCoefT<math_t>> K;  // shared u, w: [L]

  PlanarInputs(const at::Tensor& u_t, const at::Tensor& w_t, const at::Tensor& b_t)
      : u(u_t.const_data_ptr<scalar_t>()), w(w_t.const_data_ptr<scalar_t>()), b(b_t.const_data_ptr<scalar_t>()),
        ub(u_t.dim() == 3 ? u_t.stride(0) : 0), ul(u_t.stride(-2)), wb(w_t.dim() == 3 ? w_t.stride(0) : 0),
        wl(w_t.stride(-2)), bb(b_t.dim() == 2 ? b_t.stride(0) : 0), bl(b_t.stride(-1)), L(w_t.size(-2)),
        D(w_t.size(-1)), Dp(Ops::padded(w_t.size(-1))), shared_uw(w_t.dim() == 2), shared_b(b_t.dim() == 1) {
    if (shared_uw) {
      W.assign(L * Dp, 0), U.assign(L * Dp, 0), UH.assign(L * Dp, 0), K.resize(L);
      for (int64_t l = 0; l < L; ++l) coef(0, l, W.data() + l * Dp, U.data() + l * Dp, UH.data() + l * Dp, &K[l]);
    }
  }
  // Loads w_l, u_l of row `row` into Wr, Ur (padded) and forms u_hat_l and its coefficients.
  void coef(int64_t row, int64_t l, math_t* Wr, math_t* Ur, math_t* UHr, PlanarCoefT<math_t>* k) const {
    Ops::load(w + row * wb + l * wl, D, Wr);
    Ops::load(u + row * ub + l * ul, D, Ur);
    *k = planar_coef(Ops::dot(Wr, Ur, Dp), Ops::dot(Wr, Wr, Dp));
    using Vec = typename Ops::Vec;
    for (int64_t d = 0; d < Dp; d += Ops::V) (Vec::loadu(Ur + d) + Vec(k->c) * Vec::loadu(Wr + d)).store(UHr + d);
  }
  math_t bias(int64_t row, int64_t l) const { return static_cast<math_t>(b[row * bb + l * bl]); }

  // Step l of row `row`: pointers to w_l, u_l, u_hat_l and the coefficients (scratch used when per-sample).
  struct Step {
    const math_t *w, *u, *uh;
    PlanarCoefT<math_t> k;
  };
  Step step(int64_t row, int64_t l, math_t* scratch) const {
    if (shared_uw) return {W.data() + l * Dp, U.data() + l * Dp, UH.data() + l * Dp, K[l]};
    Step s{scratch, scratch + Dp, scratch + 2 * Dp, {}};
    coef(row, l, scratch, scratch + Dp, scratch + 2 * Dp, &s.k);
    return s;
  }
};

// Fixed rows per task (depends on B only): deterministic sums for shared parameters.
inline int64_t planar_rows_per_task(int64_t B) { return std::max<int64_t>(16, (B + 127) / 128); }

// Rows go in groups of one vector's width (16 float rows): the L-step chain of one row is latency-bound
// (dot, its lane sum, tanh, axpy, each waiting for the last), so a group runs each step's dot products for all
// its rows back to back, one vector tanh and log-det term for the group, then the updates.
template <typename scalar_t>
void planar_fwd_impl(const at::Tensor& z, const PlanarInputs<scalar_t>& P, at::Tensor& out, at::Tensor& logdet,
                     at::Tensor& pre) {
  using math_t = opmath_t<scalar_t>;
  using Ops = RowOps<math_t>;
  using Vec = typename Ops::Vec;
  constexpr int64_t G = Ops::V;
  const int64_t B = z.size(0), D = P.D, Dp = P.Dp, L = P.L, zs = row_stride(z);
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  math_t *ldp = logdet.mutable_data_ptr<math_t>(), *ap = pre.mutable_data_ptr<math_t>();
  at::parallel_for(0, (B + G - 1) / G, 1, [&](int64_t begin, int64_t end) {
    std::vector<math_t> Z(G * Dp, 0), scratch(G * 3 * Dp, 0);
    std::vector<typename PlanarInputs<scalar_t>::Step> steps(G);
    alignas(64) math_t a[G], h[G], wuh[G], ld[G];
    for (int64_t group = begin; group < end; ++group) {
      const int64_t r0 = group * G, rows = std::min(G, B - r0);
      for (int64_t r = 0; r < rows; ++r) Ops::load(zp + (r0 + r) * zs, D, Z.data() + r * Dp);
      std::fill(a, a + G, math_t(0));  // rows past B: h = 0, log-det term 0
      std::fill(wuh, wuh + G, math_t(0));
      Vec ld_v(0);
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t r = 0; r < rows; ++r) {
          steps[r] = P.step(r0 + r, l, scratch.data() + r * 3 * Dp);
          a[r] = Ops::dot(steps[r].w, Z.data() + r * Dp, Dp) + P.bias(r0 + r, l);
          wuh[r] = steps[r].k.wuh;
        }
        const Vec h_v = dgm::tanh(Vec::loadu(a));
        h_v.store(h);
        ld_v = ld_v + planar_logdet_term(h_v, Vec::loadu(wuh));
        for (int64_t r = 0; r < rows; ++r) {
          Ops::axpy(Z.data() + r * Dp, h[r], steps[r].uh, Dp);
          ap[(r0 + r) * L + l] = a[r];
        }
      }
      ld_v.store(ld);
      for (int64_t r = 0; r < rows; ++r) {
        Ops::store(op + (r0 + r) * D, Z.data() + r * Dp, D);
        ldp[r0 + r] = ld[r];
      }
    }
  });
}

template <typename scalar_t>
void planar_bwd_impl(const at::Tensor& z, const PlanarInputs<scalar_t>& P, const at::Tensor& pre,
                     const at::Tensor& gy, const at::Tensor& gld, at::Tensor& gz, at::Tensor& gu, at::Tensor& gw,
                     at::Tensor& gb) {
  using math_t = opmath_t<scalar_t>;
  using Ops = RowOps<math_t>;
  using Vec = typename Ops::Vec;
  const int64_t B = z.size(0), D = P.D, Dp = P.Dp, L = P.L, zs = row_stride(z), gys = row_stride(gy);
  const scalar_t *zp = z.const_data_ptr<scalar_t>(), *gyp = gy.const_data_ptr<scalar_t>();
  const math_t *ap = pre.const_data_ptr<math_t>(), *gldp = gld.const_data_ptr<math_t>();
  scalar_t *gzp = gz.mutable_data_ptr<scalar_t>(), *gup = gu.mutable_data_ptr<scalar_t>(),
           *gwp = gw.mutable_data_ptr<scalar_t>(), *gbp = gb.mutable_data_ptr<scalar_t>();
  // per-task sums for shared parameters: A_l = sum g_uhat, Zs_l = sum g_a z_l, Gm_l = sum g_wuh, Ga_l = sum g_a
  const int64_t per = planar_rows_per_task(B), tasks = (B + per - 1) / per;
  const int64_t part = P.shared_uw ? L * (2 * Dp + 2) : (P.shared_b ? L : 0);
  std::vector<math_t> partial(tasks * part, math_t(0));
  // Rows go in groups of G (one vector's width), as in the forward: per step, the group's dot products run back
  // to back and the step's scalar gradients are one vector computation. Within a task the shared sums still take
  // the rows in order, step by step.
  constexpr int64_t G = Ops::V;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<math_t> Z(G * Dp, 0), GZ(G * Dp, 0), GU(Dp, 0), GW(Dp, 0), scratch(G * 3 * Dp, 0), HT(L * G, 0);
    std::vector<typename PlanarInputs<scalar_t>::Step> steps(G);
    alignas(64) math_t a_l[G], wuh[G], g_h[G], g_ld[G], g_a[G], g_wuh[G];
    for (int64_t task = begin; task < end; ++task) {
      math_t* A = partial.data() + task * part;  // [L, Dp] when shared_uw
      math_t* Zs = A + L * Dp;
      math_t* Gm = P.shared_uw ? Zs + L * Dp : nullptr;
      math_t* Ga = P.shared_uw ? Gm + L : A;
      const int64_t t1 = std::min(B, (task + 1) * per);
      for (int64_t r0 = task * per; r0 < t1; r0 += G) {
        const int64_t rows = std::min(G, t1 - r0);
        std::fill(wuh, wuh + G, math_t(0));  // lanes past the group's rows stay 0 (finite step gradients)
        std::fill(g_h, g_h + G, math_t(0));
        std::fill(g_ld, g_ld + G, math_t(0));
        for (int64_t l = 0; l < L; ++l) {  // HT[l][r] = tanh(a_l) of row r, a vector per step (as the forward)
          std::fill(a_l, a_l + G, math_t(0));
          for (int64_t r = 0; r < rows; ++r) a_l[r] = ap[(r0 + r) * L + l];
          dgm::tanh(Vec::loadu(a_l)).store(HT.data() + l * G);
        }
        for (int64_t r = 0; r < rows; ++r) {
          Ops::load(zp + (r0 + r) * zs, D, Z.data() + r * Dp);
          Ops::load(gyp + (r0 + r) * gys, D, GZ.data() + r * Dp);
          g_ld[r] = gldp[r0 + r];
        }
        for (int64_t l = 0; l < L; ++l)  // z_L
          for (int64_t r = 0; r < rows; ++r)
            Ops::axpy(Z.data() + r * Dp, HT[l * G + r], P.step(r0 + r, l, scratch.data() + r * 3 * Dp).uh, Dp);
        for (int64_t l = L - 1; l >= 0; --l) {
          const math_t* h = HT.data() + l * G;
          for (int64_t r = 0; r < rows; ++r) {
            steps[r] = P.step(r0 + r, l, scratch.data() + r * 3 * Dp);
            Ops::axpy(Z.data() + r * Dp, -h[r], steps[r].uh, Dp);  // z_l
            g_h[r] = Ops::dot(GZ.data() + r * Dp, steps[r].uh, Dp);
            wuh[r] = steps[r].k.wuh;
          }
          Vec ga_v, gwuh_v;
          planar_step_grads(Vec::loadu(h), Vec::loadu(wuh), Vec::loadu(g_h), Vec::loadu(g_ld), &ga_v, &gwuh_v);
          ga_v.store(g_a);
          gwuh_v.store(g_wuh);
          if (P.shared_uw) {  // A_l += h g_z, Zs_l += g_a z_l row after row, each sum held in a register
            for (int64_t d = 0; d < Dp; d += Ops::V) {
              Vec a_sum = Vec::loadu(A + l * Dp + d), z_sum = Vec::loadu(Zs + l * Dp + d);
              for (int64_t r = 0; r < rows; ++r) {
                a_sum = at::vec::fmadd(Vec(h[r]), Vec::loadu(GZ.data() + r * Dp + d), a_sum);
                z_sum = at::vec::fmadd(Vec(g_a[r]), Vec::loadu(Z.data() + r * Dp + d), z_sum);
              }
              a_sum.store(A + l * Dp + d);
              z_sum.store(Zs + l * Dp + d);
            }
            for (int64_t r = 0; r < rows; ++r) Gm[l] += g_wuh[r];
          }
          for (int64_t r = 0; r < rows; ++r) {
            const auto& s = steps[r];
            math_t *zr = Z.data() + r * Dp, *gzr = GZ.data() + r * Dp;
            if (!P.shared_uw) {
              const int64_t row = r0 + r;
              math_t g_s, g_q;
              planar_uhat_grads(s.k, h[r] * Ops::dot(gzr, s.w, Dp), g_wuh[r], &g_s, &g_q);
              for (int64_t d = 0; d < Dp; d += Ops::V) {
                const Vec g_uh = Vec(h[r]) * Vec::loadu(gzr + d), wv = Vec::loadu(s.w + d);
                (g_uh + Vec(g_s) * wv).store(GU.data() + d);
                (Vec(s.k.c) * g_uh + Vec(g_s) * Vec::loadu(s.u + d) + Vec(2 * g_q) * wv +
                 Vec(g_a[r]) * Vec::loadu(zr + d)).store(GW.data() + d);
              }
              Ops::store(gup + (row * L + l) * D, GU.data(), D);
              Ops::store(gwp + (row * L + l) * D, GW.data(), D);
            }
            if (P.shared_b) Ga[l] += g_a[r];
            else gbp[(r0 + r) * L + l] = static_cast<scalar_t>(g_a[r]);
            Ops::axpy(gzr, g_a[r], s.w, Dp);
          }
        }
        for (int64_t r = 0; r < rows; ++r) Ops::store(gzp + (r0 + r) * D, GZ.data() + r * Dp, D);
      }
    }
  });
  if (part == 0) return;
  std::vector<math_t> sum(part, math_t(0));
  for (int64_t task = 0; task < tasks; ++task)
    for (int64_t k = 0; k < part; ++k) sum[k] += partial[task * part + k];
  const math_t* Ga = P.shared_uw ? sum.data() + 2 * L * Dp + L : sum.data();
  if (P.shared_b)
    for (int64_t l = 0; l < L; ++l) gbp[l] = static_cast<scalar_t>(Ga[l]);
  if (!P.shared_uw) return;
  std::vector<math_t> GU(Dp), GW(Dp);
  for (int64_t l = 0; l < L; ++l) {
    const math_t *A = sum.data() + l * Dp, *Zs = sum.data() + (L + l) * Dp, *w = P.W.data() + l * Dp,
                 *u = P.U.data() + l * Dp;
    const auto& k = P.K[l];
    math_t g_s, g_q;
    planar_uhat_grads(k, Ops::dot(A, w, Dp), sum[2 * L * Dp + l], &g_s, &g_q);
    for (int64_t d = 0; d < Dp; ++d) {
      GU[d] = A[d] + g_s * w[d];
      GW[d] = k.c * A[d] + g_s * u[d] + 2 * g_q * w[d] + Zs[d];
    }
    Ops::store(gup + l * D, GU.data(), D);
    Ops::store(gwp + l * D, GW.data(), D);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> planar_flows_fwd_cpu(const at::Tensor& z_in, const at::Tensor& u_in,
                                                                    const at::Tensor& w_in, const at::Tensor& b) {
  check_planar(z_in, u_in, w_in, b);
  const at::Tensor z = row_contiguous(z_in), u = last_contiguous(u_in), w = last_contiguous(w_in);
  const auto acc = z.options().dtype(acc_type(z));
  at::Tensor out = at::empty(z.sizes(), z.options()), logdet = at::empty({z.size(0)}, acc);
  at::Tensor pre = at::empty({z.size(0), w.size(-2)}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "planar_flows_fwd_cpu", [&] {
    planar_fwd_impl<scalar_t>(z, PlanarInputs<scalar_t>(u, w, b), out, logdet, pre);
  });
  return {out, logdet, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> planar_flows_bwd_cpu(
    const at::Tensor& z_in, const at::Tensor& u_in, const at::Tensor& w_in, const at::Tensor& b,
    const at::Tensor& pre_in, const at::Tensor& gy_in, const at::Tensor& gld_in) {
  check_planar(z_in, u_in, w_in, b);
  const at::Tensor z = row_contiguous(z_in), u = last_contiguous(u_in), w = last_contiguous(w_in);
  const at::Tensor pre = pre_in.contiguous(), gy = row_contiguous(gy_in), gld = gld_in.contiguous();
  at::Tensor gz = at::empty(z.sizes(), z.options()), gu = at::empty(u.sizes(), u.options());
  at::Tensor gw = at::empty(w.sizes(), w.options()), gb = at::empty(b.sizes(), b.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "planar_flows_bwd_cpu", [&] {
    planar_bwd_impl<scalar_t>(z, PlanarInputs<scalar_t>(u, w, b), pre, gy, gld, gz, gu, gw, gb);
  });
  return {gz, gu, gw, gb};
}

// ---- planar flows: the Autograd kernel of eager calls (autograd.h) ----
//
// Saves z, u, w, b and the pre-activations, as _planar_setup (dgmfast/ops/vaeflows.py); the pre-activations
// output takes no gradient.
using PlanarFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, const at::Tensor&);
using PlanarBwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&);

struct PlanarNode : public torch::autograd::Function<PlanarNode> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& z,
                                                const at::Tensor& u, const at::Tensor& w, const at::Tensor& b) {
    static const auto op = dgmfast_op<PlanarFn>("planar_flows_fwd");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, logdet, pre] = op.call(z, u, w, b);
    ctx->save_for_backward({z, u, w, b, pre});
    ctx->mark_non_differentiable({pre});
    return {out, logdet, pre};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = dgmfast_op<PlanarBwdFn>("planar_flows_bwd");
    const auto s = ctx->get_saved_variables();
    check_first_order("planar_flows_fwd", ctx, 4);
    auto [gz, gu, gw, gb] = op.call(s[0], s[1], s[2], s[3], s[4], grads[0], grads[1]);
    return {gz, gu, gw, gb};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> planar_flows_fwd_autograd(const at::Tensor& z, const at::Tensor& u,
                                                                         const at::Tensor& w, const at::Tensor& b) {
  auto out = PlanarNode::apply(z, u, w, b);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) {
  m.def("iaf_step_fwd(Tensor z, Tensor mean, Tensor log_scale_raw, float sigmoid_bias, bool reverse) -> (Tensor, Tensor)");
  m.def("iaf_step_bwd(Tensor z, Tensor mean, Tensor log_scale_raw, Tensor grad_out, Tensor grad_logdet, "
        "float sigmoid_bias, bool reverse) -> (Tensor, Tensor, Tensor)");
  m.def("planar_flows_fwd(Tensor z, Tensor u, Tensor w, Tensor b) -> (Tensor, Tensor, Tensor)");
  m.def("planar_flows_bwd(Tensor z, Tensor u, Tensor w, Tensor b, Tensor pre_act, Tensor grad_z, "
        "Tensor grad_logdet) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("iaf_step_fwd", &dgm::cpu::iaf_step_fwd_cpu);
  m.impl("iaf_step_bwd", &dgm::cpu::iaf_step_bwd_cpu);
  m.impl("planar_flows_fwd", &dgm::cpu::planar_flows_fwd_cpu);
  m.impl("planar_flows_bwd", &dgm::cpu::planar_flows_bwd_cpu);
}

TORCH_LIBRARY_IMPL(dgmfast_C, Autograd, m) {
  m.impl("planar_flows_fwd", &dgm::cpu::planar_flows_fwd_autograd);
}
