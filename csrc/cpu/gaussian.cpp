// Gaussian posterior (SPEC §7) and diagonal-Gaussian mixture log-density (SPEC §9), C++ CPU kernels.
// Schemas of the family are declared here (the CPU file is always built); csrc/cuda/gaussian.cu
// registers the CUDA implementation of reparameterize (the mixture runs on Triton on GPUs).
//
// Mixture layout: the parameters are copied once per call into K-contiguous tables
// (mT, pT = exp(-lv): [D][Kp], Kp = K rounded up to the vector width, padding lanes with p = 0 and
// weight -inf; rows Ks = Kp + one vector apart, so walks over d do not alias in the cache), so the kernels vectorize over components and never touch an [N, K, D] tensor.
//   forward   parallel over tiles of kRows rows; per K tile of kKTile lanes the logits go to a
//             [kRows, kKTile] buffer and update a running (max, sum) per row: an online logsumexp.
//             per_dim: per (n, d), a max pass and a sum pass over K (one exp per term, inline: exp_inline
//             measured 9-10% faster than Sleef's call on the per_dim passes, no faster on the joint ones).
//   backward  one fused pass: the row tiles are split into one contiguous slot per thread; per (K tile, row tile)
//             block it recomputes the logits once (as the forward), forms r = g * exp(logit - out) with the saved
//             output, then per d, with diff = z - m: g_z[n, d] = -sum_k r diff p (the slot owns its rows), and into
//             the slot's own [D][Ks] sums: sum_n r diff, sum_n r diff^2, sum_n r (and over non-band pairs for g_w).
//             The slots' sums are added in slot order: g_m = p sum r diff, g_lv = 0.5 (p sum r diff^2 - sum r).
// Results are deterministic run to run (the parameter gradients' last bits depend on the thread count, through the
// slots). Extra memory: the tables (O(K*D)), per-slot sums (O(K*D) each), per-thread buffers (O(K)), and z as a
// contiguous math-dtype copy when it is not one already (half inputs).
// MSS pair weights (SPEC §10): pair (n, k) with o = (k - n - band_offset) mod K < len(band) takes
// log weight band[o] instead of log_weights[k]; band pairs get no log_weights gradient.
#include "autograd.h"
#include "loops.h"
#include "random.h"

#include <dgmfast/gaussian.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

namespace dgm::cpu {
namespace {

// ---- reparameterize ---------------------------------------------------------------------------
//
// The kernels walk blocks of at most kNoiseBlock elements: a segment of one row when rows are at least
// kNoiseBlock long (rows chunked by parallel_rows), otherwise a tile of whole rows whose noise is one
// Philox range (the counters b*D + d of consecutive rows are consecutive). A block's inputs are read
// as one flat run (in place when the rows are contiguous in the math dtype, else gathered into a
// buffer), so the math runs on full vectors even for D = 10, and its outputs, [B, D] contiguous, are
// flat too. Every row's sums are formed by one task in a fixed order.

template <typename T>
struct KlLogQ {  // the two per-row sums of reparameterize
  T kl = 0, log_q = 0;
  KlLogQ(T v = 0) : kl(v), log_q(v) {}
  KlLogQ(T k, T q) : kl(k), log_q(q) {}
  KlLogQ& operator+=(const KlLogQ& o) {
    kl += o.kl;
    log_q += o.log_q;
    return *this;
  }
};

// Elements [lo, lo + n) of rows [b0, b1) of p (row stride `stride`), row after row: p itself when they are
// already one contiguous run of the math dtype, else copied (and converted) into buf.
template <typename scalar_t, typename math_t>
const math_t* gather_block(const scalar_t* p, int64_t stride, int64_t b0, int64_t b1, int64_t lo, int64_t n,
                           math_t* buf) {
  const scalar_t* first = p + b0 * stride + lo;
  const bool one_run = stride == n || b1 - b0 == 1;
  if constexpr (std::is_same_v<scalar_t, math_t>) {
    if (one_run) return first;
  }
  const int64_t rows = one_run ? 1 : b1 - b0, len = one_run ? (b1 - b0) * n : n;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < len; ++i) buf[r * len + i] = static_cast<math_t>(first[r * stride + i]);
  return buf;
}

// The noise of a block: the given eps, or Philox counters b*D + lo + i (consecutive over the block).
template <typename scalar_t, typename math_t>
const math_t* load_noise(const scalar_t* ep, int64_t es, uint64_t seed, int64_t D, int64_t b0, int64_t b1,
                         int64_t lo, int64_t n, math_t* out) {
  if (ep != nullptr) return gather_block(ep, es, b0, b1, lo, n, out);
  const int64_t total = (b1 - b0) * n;
  if constexpr (std::is_same_v<math_t, float>) {
    philox_normal_block(static_cast<uint64_t>(b0 * D + lo), 0, seed, total, out);
  } else {
    alignas(64) float noise[kNoiseBlock];
    philox_normal_block(static_cast<uint64_t>(b0 * D + lo), 0, seed, total, noise);
    for (int64_t i = 0; i < total; ++i) out[i] = static_cast<math_t>(noise[i]);
  }
  return out;
}

// Sum of p[0..n).
template <typename math_t>
math_t sum_terms(const math_t* p, int64_t n) {
  using Vec = at::vec::Vectorized<math_t>;
  Vec acc(0);
  for (int64_t i = 0; i < n; i += Vec::size()) acc = acc + Vec::loadu(p + i, std::min<int64_t>(Vec::size(), n - i));
  return at::vec::vec_reduce_all<math_t>([](Vec a, Vec c) { return a + c; }, acc);
}

// Calls block(b0, b1, lo, n, sums) over blocks covering the [B, D] batch in parallel; the block sets
// sums[b - b0] to its sum for row b. Writes out[b] = row b's total (if out is not null).
template <typename acc_t, typename Block>
void for_blocks(int64_t B, int64_t D, acc_t* out, const Block& block) {
  if (D >= kNoiseBlock) {
    parallel_rows<acc_t>(B, D, out, [&](int64_t b, int64_t lo, int64_t hi) {
      acc_t acc(0);
      for (int64_t s = lo; s < hi; s += kNoiseBlock) {
        acc_t part(0);
        block(b, b + 1, s, std::min(kNoiseBlock, hi - s), &part);
        acc += part;
      }
      return acc;
    });
    return;
  }
  const int64_t tile = kNoiseBlock / std::max<int64_t>(D, 1);
  parallel_row_tiles(B, D, tile, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> sums(b1 - b0);
    block(b0, b1, 0, D, sums.data());
    if (out != nullptr) std::copy(sums.begin(), sums.end(), out + b0);
  });
}

template <typename scalar_t>
void reparameterize_fwd_impl(const at::Tensor& mu, const at::Tensor& lv, const at::Tensor* eps, uint64_t seed,
                             at::Tensor& z, at::Tensor& kl, at::Tensor& log_q) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = mu.size(0), D = mu.size(1);
  const scalar_t *mp = mu.const_data_ptr<scalar_t>(), *lp = lv.const_data_ptr<scalar_t>();
  const scalar_t* ep = eps != nullptr ? eps->const_data_ptr<scalar_t>() : nullptr;
  const int64_t ms = row_stride(mu), ls = row_stride(lv), es = eps != nullptr ? row_stride(*eps) : 0;
  scalar_t* zp = z.mutable_data_ptr<scalar_t>();
  std::vector<KlLogQ<math_t>> sums(B);
  for_blocks<KlLogQ<math_t>>(B, D, sums.data(), [&](int64_t b0, int64_t b1, int64_t lo, int64_t n,
                                                    KlLogQ<math_t>* row_sums) {
    alignas(64) math_t mb[kNoiseBlock], lb[kNoiseBlock], eb[kNoiseBlock], klt[kNoiseBlock], lqt[kNoiseBlock];
    const math_t* m = gather_block(mp, ms, b0, b1, lo, n, mb);
    const math_t* l = gather_block(lp, ls, b0, b1, lo, n, lb);
    const math_t* e = load_noise(ep, es, seed, D, b0, b1, lo, n, eb);
    const int64_t total = (b1 - b0) * n;
    for (int64_t i = 0; i < total; i += IO::kSize) {
      const int64_t c = std::min<int64_t>(IO::kSize, total - i);  // the last vector may be partial
      Vec kt, qt;
      IO::store(zp + b0 * D + lo + i, reparameterize_fwd_elem(Vec::loadu(m + i, c), Vec::loadu(l + i, c),
                                                              Vec::loadu(e + i, c), &kt, &qt), c);
      kt.store(klt + i, c);
      qt.store(lqt + i, c);
    }
    for (int64_t r = 0; r < b1 - b0; ++r)
      row_sums[r] = KlLogQ<math_t>(sum_terms(klt + r * n, n), sum_terms(lqt + r * n, n));
  });
  math_t *klp = kl.mutable_data_ptr<math_t>(), *lqp = log_q.mutable_data_ptr<math_t>();
  for (int64_t b = 0; b < B; ++b) {
    klp[b] = sums[b].kl;
    lqp[b] = sums[b].log_q;
  }
}

template <typename scalar_t>
void reparameterize_bwd_impl(const at::Tensor& mu, const at::Tensor& lv, const at::Tensor* eps, uint64_t seed,
                             const at::Tensor& gz, const at::Tensor& gkl, const at::Tensor& glq, at::Tensor& gmu,
                             at::Tensor& glv, at::Tensor* geps) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = mu.size(0), D = mu.size(1);
  const scalar_t *mp = mu.const_data_ptr<scalar_t>(), *lp = lv.const_data_ptr<scalar_t>();
  const scalar_t* ep = eps != nullptr ? eps->const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* gzp = gz.const_data_ptr<scalar_t>();
  const math_t *gklp = gkl.const_data_ptr<math_t>(), *glqp = glq.const_data_ptr<math_t>();
  const int64_t ms = row_stride(mu), ls = row_stride(lv), es = eps != nullptr ? row_stride(*eps) : 0;
  const int64_t gzs = row_stride(gz);
  scalar_t *gmp = gmu.mutable_data_ptr<scalar_t>(), *glp = glv.mutable_data_ptr<scalar_t>();
  scalar_t* gep = geps != nullptr ? geps->mutable_data_ptr<scalar_t>() : nullptr;
  for_blocks<math_t>(B, D, static_cast<math_t*>(nullptr), [&](int64_t b0, int64_t b1, int64_t lo, int64_t n,
                                                              math_t*) {
    alignas(64) math_t mb[kNoiseBlock], lb[kNoiseBlock], eb[kNoiseBlock], gb[kNoiseBlock], gk[kNoiseBlock],
        gq[kNoiseBlock];
    const math_t* m = gather_block(mp, ms, b0, b1, lo, n, mb);
    const math_t* l = gather_block(lp, ls, b0, b1, lo, n, lb);
    const math_t* g = gather_block(gzp, gzs, b0, b1, lo, n, gb);
    const math_t* e = load_noise(ep, es, seed, D, b0, b1, lo, n, eb);
    for (int64_t b = b0; b < b1; ++b) {  // the per-row incoming gradients of kl and log_q, per element
      for (int64_t i = 0; i < n; i += Vec::size()) {
        const int64_t c = std::min<int64_t>(Vec::size(), n - i);
        Vec(gklp[b]).store(gk + (b - b0) * n + i, c);
        Vec(glqp[b]).store(gq + (b - b0) * n + i, c);
      }
    }
    const int64_t total = (b1 - b0) * n, at = b0 * D + lo;
    for (int64_t i = 0; i < total; i += IO::kSize) {
      const int64_t c = std::min<int64_t>(IO::kSize, total - i);
      Vec g_mu, g_lv, g_eps;
      reparameterize_bwd_elem(Vec::loadu(m + i, c), Vec::loadu(l + i, c), Vec::loadu(e + i, c), Vec::loadu(g + i, c),
                              Vec::loadu(gk + i, c), Vec::loadu(gq + i, c), &g_mu, &g_lv, &g_eps);
      IO::store(gmp + at + i, g_mu, c);
      IO::store(glp + at + i, g_lv, c);
      if (gep != nullptr) IO::store(gep + at + i, g_eps, c);
    }
  });
}

void check_posterior(const at::Tensor& mu, const at::Tensor& lv, const c10::optional<at::Tensor>& eps) {
  TORCH_CHECK(mu.dim() == 2, "dgmfast: mu must be [B, D], got ", mu.sizes());
  check_same_shape(mu, lv, "logvar");
  if (eps.has_value()) check_same_shape(mu, *eps, "eps");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_fwd_cpu(const at::Tensor& mu_in, const at::Tensor& lv_in,
                                                                      const c10::optional<at::Tensor>& eps_in,
                                                                      int64_t seed) {
  check_posterior(mu_in, lv_in, eps_in);
  const at::Tensor mu = row_contiguous(mu_in), lv = row_contiguous(lv_in);
  const at::Tensor eps = eps_in.has_value() ? row_contiguous(*eps_in) : at::Tensor();
  const auto acc = acc_scalar_type(mu.scalar_type());
  at::Tensor z = at::empty(mu.sizes(), mu.options());
  at::Tensor kl = at::empty({mu.size(0)}, mu.options().dtype(acc));
  at::Tensor log_q = at::empty({mu.size(0)}, mu.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_fwd_cpu", [&] {
    reparameterize_fwd_impl<scalar_t>(mu, lv, eps.defined() ? &eps : nullptr, static_cast<uint64_t>(seed), z, kl,
                                      log_q);
  });
  return {z, kl, log_q};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_bwd_cpu(
    const at::Tensor& mu_in, const at::Tensor& lv_in, const c10::optional<at::Tensor>& eps_in, int64_t seed,
    const at::Tensor& gz_in, const at::Tensor& gkl_in, const at::Tensor& glq_in) {
  check_posterior(mu_in, lv_in, eps_in);
  const at::Tensor mu = row_contiguous(mu_in), lv = row_contiguous(lv_in), gz = row_contiguous(gz_in);
  const at::Tensor eps = eps_in.has_value() ? row_contiguous(*eps_in) : at::Tensor();
  const at::Tensor gkl = gkl_in.contiguous(), glq = glq_in.contiguous();
  at::Tensor gmu = at::empty(mu.sizes(), mu.options()), glv = at::empty(mu.sizes(), mu.options());
  at::Tensor geps = at::empty(eps.defined() ? mu.sizes() : at::IntArrayRef{0}, mu.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparameterize_bwd_cpu", [&] {
    reparameterize_bwd_impl<scalar_t>(mu, lv, eps.defined() ? &eps : nullptr, static_cast<uint64_t>(seed), gz, gkl,
                                      glq, gmu, glv, eps.defined() ? &geps : nullptr);
  });
  return {gmu, glv, geps};
}

// ---- reparameterize: the Autograd kernel of eager calls (autograd.h) ----
//
// Saves mu, logvar, the given eps and the seed, as _reparameterize_setup_context (dgmfast/ops/gaussian.py).
using ReparameterizeFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                        const c10::optional<at::Tensor>&, int64_t);
using ReparameterizeBwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, int64_t, const at::Tensor&,
    const at::Tensor&, const at::Tensor&);

struct ReparameterizeNode : public torch::autograd::Function<ReparameterizeNode> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& mu,
                                                const at::Tensor& lv, const c10::optional<at::Tensor>& eps,
                                                int64_t seed) {
    static const auto op = dgmfast_op<ReparameterizeFn>("reparameterize_fwd");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [z, kl, log_q] = op.call(mu, lv, eps, seed);
    ctx->save_for_backward({mu, lv, eps.value_or(at::Tensor())});
    ctx->saved_data["seed"] = seed;
    return {z, kl, log_q};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = dgmfast_op<ReparameterizeBwdFn>("reparameterize_bwd");
    const auto saved = ctx->get_saved_variables();
    check_first_order("reparameterize_fwd", ctx, saved[2].defined() ? 3 : 2);  // eps given or not
    const c10::optional<at::Tensor> eps = saved[2].defined() ? c10::optional<at::Tensor>(saved[2]) : c10::nullopt;
    auto [gmu, glv, geps] = op.call(saved[0], saved[1], eps, ctx->saved_data["seed"].toInt(), grads[0], grads[1],
                                    grads[2]);
    return {gmu, glv, eps.has_value() ? geps : at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_fwd_autograd(const at::Tensor& mu, const at::Tensor& lv,
                                                                           const c10::optional<at::Tensor>& eps,
                                                                           int64_t seed) {
  auto out = ReparameterizeNode::apply(mu, lv, eps, seed);
  return {out[0], out[1], out[2]};
}

// ---- diagonal-Gaussian mixture -------------------------------------------------------------------

constexpr int64_t kRows = 8;     // rows per register tile
constexpr int64_t kKTile = 512;  // component lanes per online-logsumexp tile

template <typename math_t>
struct MixtureTables {
  using Vec = at::vec::Vectorized<math_t>;
  static constexpr int64_t kLanes = Vec::size();
  int64_t K, D, Kp, Ks;         // components, dims, K padded to the vector width, row stride of the tables
  std::vector<math_t> mT, pT;  // [D][Ks]: means, exp(-logvars); padding lanes 0
  // per_dim=false: [Kp] w_k - 0.5*(D log 2pi + sum_d lv_kd); per_dim=true: [D][Ks] w_k - 0.5*(log 2pi + lv_kd);
  // padding lanes -inf
  std::vector<math_t> base;
  std::vector<math_t> w, band;  // log_weights [K], band log weights [nb]
  int64_t band_offset;

  template <typename F>  // f(k, band[o] - w[k]) for the band pairs (n, k) of row n
  void for_band(int64_t n, const F& f) const {
    for (int64_t o = 0; o < static_cast<int64_t>(band.size()); ++o) {
      const int64_t k = ((n + band_offset + o) % K + K) % K;
      f(k, band[o] - w[k]);
    }
  }
};

template <typename scalar_t, typename math_t = opmath_t<scalar_t>>
MixtureTables<math_t> make_tables(const at::Tensor& means, const at::Tensor& lvs, const at::Tensor& log_w,
                                  const at::Tensor& band, int64_t band_offset, bool per_dim) {
  MixtureTables<math_t> t;
  const int64_t K = means.size(0), D = means.size(1), L = MixtureTables<math_t>::kLanes;
  t.K = K;
  t.D = D;
  t.Kp = (K + L - 1) / L * L;
  t.Ks = t.Kp + L;
  t.band_offset = band_offset;
  t.mT.assign(D * t.Ks, math_t(0));
  t.pT.assign(D * t.Ks, math_t(0));
  t.base.assign((per_dim ? D : 1) * t.Ks, -std::numeric_limits<math_t>::infinity());
  t.w.resize(K);
  const at::Tensor band_d = band.to(at::kDouble).contiguous();
  for (int64_t o = 0; o < band_d.numel(); ++o) t.band.push_back(static_cast<math_t>(band_d.const_data_ptr<double>()[o]));
  const scalar_t *mp = means.const_data_ptr<scalar_t>(), *lp = lvs.const_data_ptr<scalar_t>();
  const scalar_t* wp = log_w.const_data_ptr<scalar_t>();
  const int64_t m0 = means.stride(0), m1 = means.stride(1), l0 = lvs.stride(0), l1 = lvs.stride(1);
  const int64_t ws = log_w.stride(0), Ks = t.Ks;
  const math_t half_log2pi = static_cast<math_t>(0.5 * kLog2Pi);
  at::parallel_for(0, K, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const math_t wk = static_cast<math_t>(wp[k * ws]);
      t.w[k] = wk;
      math_t lv_sum = 0;
      for (int64_t d = 0; d < D; ++d) {
        const math_t lv = static_cast<math_t>(lp[k * l0 + d * l1]);
        t.mT[d * Ks + k] = static_cast<math_t>(mp[k * m0 + d * m1]);
        t.pT[d * Ks + k] = -lv;  // exponentiated below, a vector at a time
        if (per_dim) t.base[d * Ks + k] = wk - half_log2pi - math_t(0.5) * lv;
        lv_sum += lv;
      }
      if (!per_dim) t.base[k] = wk - static_cast<math_t>(D) * half_log2pi - math_t(0.5) * lv_sum;
    }
    using Vec = at::vec::Vectorized<math_t>;
    for (int64_t d = 0; d < D; ++d)
      for (int64_t k = begin; k < end; k += Vec::size()) {
        const int64_t count = std::min<int64_t>(Vec::size(), end - k);
        Vec::loadu(t.pT.data() + d * Ks + k, count).exp().store(t.pT.data() + d * Ks + k, count);
      }
  });
  return t;
}

// Rows [n0, n0 + kRows) of z (math dtype, [N, D] contiguous), padded with zero rows past N.
template <typename math_t>
const math_t* row_tile(const math_t* z, int64_t N, int64_t D, int64_t n0, std::vector<math_t>& pad) {
  if (n0 + kRows <= N) return z + n0 * D;
  pad.assign(kRows * D, math_t(0));
  std::copy(z + n0 * D, z + N * D, pad.begin());
  return pad.data();
}

// Logit of (row r of the tile, component k), k in [k0, k1): base + band delta - 0.5*quad, stored at
// lbuf[r * row_stride + (k - k0) * k_scale]: row-major [r][k - k0] with (kKTile, 1), or [vector][r][lane] with
// (L, kRows) for L-lane vectors.
template <typename math_t>
void logits_tile(const MixtureTables<math_t>& t, const math_t* zt, const math_t* delta, int64_t k0, int64_t k1,
                 math_t* lbuf, int64_t row_stride, int64_t k_scale) {
  using Vec = at::vec::Vectorized<math_t>;
  const int64_t D = t.D, Kp = t.Kp;
  for (int64_t kb = k0; kb < k1; kb += Vec::size()) {
    Vec acc[kRows];
    for (int64_t r = 0; r < kRows; ++r) acc[r] = Vec(0);
    for (int64_t d = 0; d < D; ++d) {
      const Vec m = Vec::loadu(t.mT.data() + d * t.Ks + kb), p = Vec::loadu(t.pT.data() + d * t.Ks + kb);
      for (int64_t r = 0; r < kRows; ++r) acc[r] = gaussian_quad_acc(Vec(zt[r * D + d]), m, p, acc[r]);
    }
    const Vec c = Vec::loadu(t.base.data() + kb);
    for (int64_t r = 0; r < kRows; ++r)
      (c + Vec::loadu(delta + r * Kp + kb) - Vec(math_t(0.5)) * acc[r]).store(lbuf + r * row_stride + (kb - k0) * k_scale);
  }
}

template <typename math_t>
math_t vec_max(const math_t* x, int64_t n) {  // n a multiple of the vector width
  using Vec = at::vec::Vectorized<math_t>;
  Vec m(-std::numeric_limits<math_t>::infinity());
  for (int64_t i = 0; i < n; i += Vec::size()) m = at::vec::maximum(m, Vec::loadu(x + i));
  return at::vec::vec_reduce_all<math_t>([](Vec a, Vec b) { return at::vec::maximum(a, b); }, m);
}

template <typename math_t>
math_t hsum(const at::vec::Vectorized<math_t>& v) {
  return at::vec::vec_reduce_all<math_t>([](auto a, auto b) { return a + b; }, v);
}

// Per-thread band terms of a row tile: delta[r][k] = band[o] - w[k] on the band pairs, else 0; keep[r][k] = 0 on
// the band pairs (they take no log_weights gradient), else 1.
template <typename math_t>
struct TileDelta {
  std::vector<math_t> delta, keep;
  const MixtureTables<math_t>& t;
  explicit TileDelta(const MixtureTables<math_t>& tables)
      : delta(kRows * tables.Kp, math_t(0)), keep(kRows * tables.Kp, math_t(1)), t(tables) {}
  void set(int64_t n0, int64_t rows, bool on) {
    for (int64_t r = 0; r < rows; ++r)
      t.for_band(n0 + r, [&](int64_t k, math_t dl) {
        delta[r * t.Kp + k] = on ? dl : math_t(0);
        keep[r * t.Kp + k] = on ? math_t(0) : math_t(1);
      });
  }
};

// forward, per_dim=false: out[n] = logsumexp_k logit(n, k), online over K tiles.
template <typename math_t>
void mixture_fwd_joint(const MixtureTables<math_t>& t, const math_t* z, int64_t N, math_t* out) {
  using Vec = at::vec::Vectorized<math_t>;
  const math_t ninf = -std::numeric_limits<math_t>::infinity();
  const int64_t tiles = (N + kRows - 1) / kRows;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<math_t> lbuf(kRows * kKTile), pad;
    TileDelta<math_t> band(t);
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * kRows, rows = std::min(kRows, N - n0);
      const math_t* zt = row_tile(z, N, t.D, n0, pad);
      band.set(n0, rows, true);
      math_t run_max[kRows], run_sum[kRows];
      std::fill(run_max, run_max + kRows, ninf);
      std::fill(run_sum, run_sum + kRows, math_t(0));
      for (int64_t k0 = 0; k0 < t.Kp; k0 += kKTile) {
        const int64_t k1 = std::min(t.Kp, k0 + kKTile);
        logits_tile(t, zt, band.delta.data(), k0, k1, lbuf.data(), kKTile, 1);
        for (int64_t r = 0; r < rows; ++r) {
          const math_t* lr = lbuf.data() + r * kKTile;
          const math_t new_max = std::max(run_max[r], vec_max(lr, k1 - k0));
          if (new_max == ninf) continue;
          Vec s(0);
          for (int64_t i = 0; i < k1 - k0; i += Vec::size()) s = s + (Vec::loadu(lr + i) - Vec(new_max)).exp();
          run_sum[r] = run_sum[r] * std::exp(run_max[r] - new_max) + hsum(s);
          run_max[r] = new_max;
        }
      }
      for (int64_t r = 0; r < rows; ++r) out[n0 + r] = run_max[r] == ninf ? ninf : run_max[r] + std::log(run_sum[r]);
      band.set(n0, rows, false);
    }
  });
}

// forward, per_dim=true: out[n, d] = logsumexp_k (base[d][k] + delta - 0.5 (z - m)^2 p): max pass, sum pass.
template <typename math_t>
void mixture_fwd_per_dim(const MixtureTables<math_t>& t, const math_t* z, int64_t N, math_t* out) {
  using Vec = at::vec::Vectorized<math_t>;
  const math_t ninf = -std::numeric_limits<math_t>::infinity();
  const int64_t D = t.D, Kp = t.Kp;
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    TileDelta<math_t> band(t);
    const math_t* delta = band.delta.data();
    for (int64_t n = begin; n < end; ++n) {
      band.set(n, 1, true);
      for (int64_t d = 0; d < D; ++d) {
        const Vec zv(z[n * D + d]);
        const math_t *mT = t.mT.data() + d * t.Ks, *pT = t.pT.data() + d * t.Ks, *bs = t.base.data() + d * t.Ks;
        const auto term = [&](int64_t kb) {
          return Vec::loadu(bs + kb) + Vec::loadu(delta + kb) -
                 Vec(math_t(0.5)) * gaussian_quad_acc(zv, Vec::loadu(mT + kb), Vec::loadu(pT + kb), Vec(0));
        };
        Vec vmax(ninf);
        for (int64_t kb = 0; kb < Kp; kb += Vec::size()) vmax = at::vec::maximum(vmax, term(kb));
        const math_t mx = at::vec::vec_reduce_all<math_t>([](Vec a, Vec b) { return at::vec::maximum(a, b); }, vmax);
        if (mx == ninf) {
          out[n * D + d] = ninf;
          continue;
        }
        Vec s(0);
        for (int64_t kb = 0; kb < Kp; kb += Vec::size()) s = s + exp_inline(term(kb) - Vec(mx));
        out[n * D + d] = mx + std::log(hsum(s));
      }
      band.set(n, 1, false);
    }
  });
}

// ---- mixture backward: one fused pass ----
//
// Every gradient comes from one recomputation of the logits. The row tiles are split into S = min(threads, tiles)
// contiguous slots, one task each; a slot owns g_z of its rows and sums the parameter terms over its rows into its
// own ParamSums, which are added in slot order at the end (reduce_param_sums). Results are deterministic run to run;
// the parameter gradients' last bits depend on the thread count through S.

// One slot's sums over its rows, laid out like the tables ([D][Ks], [Ks]); diff = z - m:
//   rd = sum_n r diff,  rd2 = sum_n r diff^2,  r = sum_n r ([D][Ks] with per_dim),  w = sum_n r over non-band pairs.
template <typename math_t>
struct ParamSums {
  std::vector<math_t> rd, rd2, r, w;
  ParamSums(const MixtureTables<math_t>& t, bool per_dim)
      : rd(t.D * t.Ks, math_t(0)), rd2(t.D * t.Ks, math_t(0)), r((per_dim ? t.D : 1) * t.Ks, math_t(0)),
        w(t.Ks, math_t(0)) {}
};

// Responsibility scale (g, out) of one output with r = g * exp(logit - out): (0, 0) where it has no density
// (out = -inf, so every logit is -inf) and (0, inf) for a padding row, so r is exactly 0 there.
template <typename math_t>
inline void row_grad(bool real, math_t g, math_t o, math_t* g_eff, math_t* o_eff) {
  const bool dead = !real || o == -std::numeric_limits<math_t>::infinity();
  *g_eff = dead ? math_t(0) : g;
  *o_eff = real ? (dead ? math_t(0) : o) : std::numeric_limits<math_t>::infinity();
}

// out[r * stride] += the sum of the lanes of acc[r], r < rows. (The accumulators are stored first, so that they
// stay in registers in the loop that fills them.)
template <typename math_t>
inline void add_lane_sums(const at::vec::Vectorized<math_t>* acc, int64_t rows, math_t* out, int64_t stride) {
  constexpr int64_t L = at::vec::Vectorized<math_t>::size();
  alignas(64) math_t lanes[kRows * L];
  for (int64_t r = 0; r < kRows; ++r) acc[r].store(lanes + r * L);
  for (int64_t r = 0; r < rows; ++r) out[r * stride] += hsum(at::vec::Vectorized<math_t>::loadu(lanes + r * L));
}

// Walks one slot, row tiles [tile0, tile1), k tile by k tile: block(k0, k1, n0, rows, zt, band) per (k tile, row
// tile), with zt the tile's rows of z (padded) and band set for them. g_z of the slot's rows starts at 0.
template <typename math_t, typename Block>
void for_slot_blocks(const MixtureTables<math_t>& t, const math_t* z, int64_t N, int64_t tile0, int64_t tile1,
                     math_t* gz, const Block& block) {
  std::vector<math_t> pad;
  TileDelta<math_t> band(t);
  std::fill(gz + tile0 * kRows * t.D, gz + std::min(N, tile1 * kRows) * t.D, math_t(0));
  for (int64_t k0 = 0; k0 < t.Kp; k0 += kKTile) {
    const int64_t k1 = std::min(t.Kp, k0 + kKTile);
    for (int64_t tile = tile0; tile < tile1; ++tile) {
      const int64_t n0 = tile * kRows, rows = std::min(kRows, N - n0);
      band.set(n0, rows, true);
      block(k0, k1, n0, rows, row_tile(z, N, t.D, n0, pad), band);
      band.set(n0, rows, false);
    }
  }
}

// per_dim=false, one slot. Per block: the logits (logits_tile, [vector][row][lane]), r = g exp(logit - out) in
// place, the sums of r and r * keep; then per d, over the component vectors where some r of the tile is nonzero
// (an all-zero vector adds exactly 0, so it is skipped), two at a time, with nd = m - z:
//   rd -= r nd,  rd2 += r nd^2,  g_z[n, d] += sum_k r nd p.
template <typename math_t>
void mixture_bwd_joint_slot(const MixtureTables<math_t>& t, const math_t* z, const math_t* out, const math_t* g,
                            int64_t N, int64_t tile0, int64_t tile1, math_t* gz, ParamSums<math_t>& ps) {
  using Vec = at::vec::Vectorized<math_t>;
  constexpr int64_t L = Vec::size();
  const int64_t D = t.D, Ks = t.Ks, Kp = t.Kp;
  std::vector<math_t> rbuf(kRows * kKTile), zero_r(kRows * L, math_t(0));
  std::vector<int64_t> active(kKTile / L + 1);
  for_slot_blocks(t, z, N, tile0, tile1, gz, [&](int64_t k0, int64_t k1, int64_t n0, int64_t rows, const math_t* zt,
                                                 const TileDelta<math_t>& band) {
    logits_tile(t, zt, band.delta.data(), k0, k1, rbuf.data(), L, kRows);
    const auto rbuf_of = [&](int64_t kb) { return kb == Kp ? zero_r.data() : rbuf.data() + (kb - k0) * kRows; };
    math_t ge[kRows], oe[kRows];
    for (int64_t r = 0; r < kRows; ++r) row_grad(r < rows, r < rows ? g[n0 + r] : 0, r < rows ? out[n0 + r] : 0,
                                                 &ge[r], &oe[r]);
    int64_t n_active = 0;
    for (int64_t kb = k0; kb < k1; kb += L) {
      math_t* rv = rbuf.data() + (kb - k0) * kRows;
      Vec sum_r(0), sum_w(0), mag(0);
      for (int64_t r = 0; r < kRows; ++r) {
        const Vec resp = Vec(ge[r]) * (Vec::loadu(rv + r * L) - Vec(oe[r])).exp();
        resp.store(rv + r * L);
        sum_r = sum_r + resp;
        sum_w = sum_w + resp * Vec::loadu(band.keep.data() + r * Kp + kb);
        mag = at::vec::maximum(mag, resp.abs());
      }
      (Vec::loadu(ps.r.data() + kb) + sum_r).store(ps.r.data() + kb);
      (Vec::loadu(ps.w.data() + kb) + sum_w).store(ps.w.data() + kb);
      if (mag.zero_mask() != (1 << L) - 1) active[n_active++] = kb;
    }
    if (n_active % 2) active[n_active++] = Kp;  // the padding vector past Kp: p = 0, r = 0 (zero_r)
    for (int64_t d = 0; d < D; ++d) {
      const math_t *mT = t.mT.data() + d * Ks, *pT = t.pT.data() + d * Ks, *zd = zt + d;
      math_t *rd = ps.rd.data() + d * Ks, *rd2 = ps.rd2.data() + d * Ks;
      Vec gzd[kRows];
      for (int64_t r = 0; r < kRows; ++r) gzd[r] = Vec(0);
      for (int64_t i = 0; i < n_active; i += 2) {  // two component vectors at a time: each z broadcast serves both
        const int64_t kb[2] = {active[i], active[i + 1]};
        const math_t* rv[2] = {rbuf_of(kb[0]), rbuf_of(kb[1])};
        Vec m[2], p[2], a1[2], a2[2];
        for (int j = 0; j < 2; ++j) {
          m[j] = Vec::loadu(mT + kb[j]);
          p[j] = Vec::loadu(pT + kb[j]);
          a1[j] = Vec::loadu(rd + kb[j]);
          a2[j] = Vec::loadu(rd2 + kb[j]);
        }
        for (int64_t r = 0; r < kRows; ++r) {
          const Vec zr(zd[r * D]);
          for (int j = 0; j < 2; ++j) {
            const Vec nd = m[j] - zr, r_nd = Vec::loadu(rv[j] + r * L) * nd;
            a1[j] = a1[j] - r_nd;
            a2[j] = at::vec::fmadd(r_nd, nd, a2[j]);
            gzd[r] = at::vec::fmadd(r_nd, p[j], gzd[r]);
          }
        }
        for (int j = 0; j < 2; ++j) {
          a1[j].store(rd + kb[j]);
          a2[j].store(rd2 + kb[j]);
        }
      }
      add_lane_sums(gzd, rows, gz + n0 * D + d, D);
    }
  });
}

// per_dim=true, one slot. Per block, d and component vector, with nd = m - z:
//   r = g_nd exp(base + delta - 0.5 nd^2 p - out_nd),  rd -= r nd,  rd2 += r nd^2,  r_sum[d] += r,
//   g_z[n, d] += sum_k r nd p;  the sums of r over d per (row, component) add to w where keep.
template <typename math_t>
void mixture_bwd_per_dim_slot(const MixtureTables<math_t>& t, const math_t* z, const math_t* out, const math_t* g,
                              int64_t N, int64_t tile0, int64_t tile1, math_t* gz, ParamSums<math_t>& ps) {
  using Vec = at::vec::Vectorized<math_t>;
  constexpr int64_t L = Vec::size();
  const int64_t D = t.D, Ks = t.Ks, Kp = t.Kp;
  const Vec half(math_t(0.5));
  std::vector<math_t> rsum(kRows * kKTile);
  for_slot_blocks(t, z, N, tile0, tile1, gz, [&](int64_t k0, int64_t k1, int64_t n0, int64_t rows, const math_t* zt,
                                                 const TileDelta<math_t>& band) {
    std::fill(rsum.begin(), rsum.end(), math_t(0));
    for (int64_t d = 0; d < D; ++d) {
      const math_t *mT = t.mT.data() + d * Ks, *pT = t.pT.data() + d * Ks, *bs = t.base.data() + d * Ks;
      math_t *rd = ps.rd.data() + d * Ks, *rd2 = ps.rd2.data() + d * Ks, *rs = ps.r.data() + d * Ks;
      math_t ge[kRows], oe[kRows];
      Vec gzd[kRows];
      for (int64_t r = 0; r < kRows; ++r) {
        const int64_t nd = (n0 + r) * D + d;
        row_grad(r < rows, r < rows ? g[nd] : 0, r < rows ? out[nd] : 0, &ge[r], &oe[r]);
        gzd[r] = Vec(0);
      }
      for (int64_t kb = k0; kb < k1; kb += L) {
        const Vec m = Vec::loadu(mT + kb), p = Vec::loadu(pT + kb), b = Vec::loadu(bs + kb);
        Vec a1 = Vec::loadu(rd + kb), a2 = Vec::loadu(rd2 + kb), a3 = Vec::loadu(rs + kb);
        for (int64_t r = 0; r < kRows; ++r) {
          const Vec zv(zt[r * D + d]), nd = m - zv;
          const Vec v = b + Vec::loadu(band.delta.data() + r * Kp + kb) - half * gaussian_quad_acc(zv, m, p, Vec(0));
          const Vec resp = Vec(ge[r]) * exp_inline(v - Vec(oe[r])), r_nd = resp * nd;
          a1 = a1 - r_nd;
          a2 = at::vec::fmadd(r_nd, nd, a2);
          a3 = a3 + resp;
          gzd[r] = at::vec::fmadd(r_nd, p, gzd[r]);
          math_t* rsp = rsum.data() + r * kKTile + kb - k0;
          (Vec::loadu(rsp) + resp).store(rsp);
        }
        a1.store(rd + kb);
        a2.store(rd2 + kb);
        a3.store(rs + kb);
      }
      add_lane_sums(gzd, rows, gz + n0 * D + d, D);
    }
    for (int64_t kb = k0; kb < k1; kb += L) {
      Vec sum_w = Vec::loadu(ps.w.data() + kb);
      for (int64_t r = 0; r < kRows; ++r)
        sum_w = sum_w + Vec::loadu(rsum.data() + r * kKTile + kb - k0) * Vec::loadu(band.keep.data() + r * Kp + kb);
      sum_w.store(ps.w.data() + kb);
    }
  });
}

// The parameter gradients from the slots' sums (added in slot order), written [K, D] / [K]:
//   g_m = p sum rd,  g_lv = 0.5 (p sum rd2 - sum r),  g_w = sum w.
template <typename math_t>
void reduce_param_sums(const MixtureTables<math_t>& t, const std::vector<ParamSums<math_t>>& sums, bool per_dim,
                       math_t* gm, math_t* glv, math_t* gw) {
  using Vec = at::vec::Vectorized<math_t>;
  constexpr int64_t L = Vec::size();
  const int64_t D = t.D, Ks = t.Ks, K = t.K;
  at::parallel_for(0, t.Kp / L, 1, [&](int64_t begin, int64_t end) {
    alignas(64) math_t tm[L], tl[L];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t kb = blk * L, lanes = std::min(L, K - kb);
      for (int64_t d = 0; d < D; ++d) {
        const int64_t dk = d * Ks + kb;
        Vec s1(0), s2(0), s3(0);
        for (const auto& ps : sums) {
          s1 = s1 + Vec::loadu(ps.rd.data() + dk);
          s2 = s2 + Vec::loadu(ps.rd2.data() + dk);
          s3 = s3 + Vec::loadu(ps.r.data() + (per_dim ? dk : kb));
        }
        const Vec p = Vec::loadu(t.pT.data() + dk);
        (p * s1).store(tm);
        (Vec(math_t(0.5)) * (p * s2 - s3)).store(tl);
        for (int64_t j = 0; j < lanes; ++j) {
          gm[(kb + j) * D + d] = tm[j];
          glv[(kb + j) * D + d] = tl[j];
        }
      }
      Vec sw(0);
      for (const auto& ps : sums) sw = sw + Vec::loadu(ps.w.data() + kb);
      sw.store(tm);
      for (int64_t j = 0; j < lanes; ++j) gw[kb + j] = tm[j];
    }
  });
}

// Backward: the slots in parallel, then the parameter gradients.
template <typename math_t>
void mixture_bwd(const MixtureTables<math_t>& t, const math_t* z, const math_t* out, const math_t* g, int64_t N,
                 bool per_dim, math_t* gz, math_t* gm, math_t* glv, math_t* gw) {
  const int64_t tiles = (N + kRows - 1) / kRows;
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles));
  std::vector<ParamSums<math_t>> sums;
  for (int64_t s = 0; s < slots; ++s) sums.emplace_back(t, per_dim);
  at::parallel_for(0, slots, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const int64_t tile0 = tiles * s / slots, tile1 = tiles * (s + 1) / slots;
      if (per_dim) mixture_bwd_per_dim_slot(t, z, out, g, N, tile0, tile1, gz, sums[s]);
      else mixture_bwd_joint_slot(t, z, out, g, N, tile0, tile1, gz, sums[s]);
    }
  });
  reduce_param_sums(t, sums, per_dim, gm, glv, gw);
}

void check_mixture(const at::Tensor& z, const at::Tensor& means, const at::Tensor& lvs, const at::Tensor& log_w,
                   const at::Tensor& band) {
  TORCH_CHECK(z.dim() == 2 && means.dim() == 2, "dgmfast: z and means must be 2-D, got ", z.sizes(), " and ",
              means.sizes());
  TORCH_CHECK(means.size(1) == z.size(1), "dgmfast: means must have D = ", z.size(1), ", got ", means.sizes());
  check_same_shape(means, lvs, "logvars");
  TORCH_CHECK(log_w.dim() == 1 && log_w.size(0) == means.size(0), "dgmfast: log_weights must be [", means.size(0),
              "], got ", log_w.sizes());
  TORCH_CHECK(means.scalar_type() == z.scalar_type() && log_w.scalar_type() == z.scalar_type(),
              "dgmfast: z, means, logvars and log_weights must share one dtype");
  TORCH_CHECK(band.dim() == 1 && band.size(0) <= means.size(0), "dgmfast: band must be 1-D with at most K entries");
  TORCH_CHECK(means.size(0) > 0, "dgmfast: the mixture needs at least one component");
}

at::ScalarType math_dtype(const at::Tensor& t) { return acc_scalar_type(t.scalar_type()); }

at::Tensor gaussian_mixture_fwd_cpu(const at::Tensor& z_in, const at::Tensor& means, const at::Tensor& lvs,
                                    const at::Tensor& log_w, const at::Tensor& band, int64_t band_offset,
                                    bool per_dim) {
  check_mixture(z_in, means, lvs, log_w, band);
  const int64_t N = z_in.size(0), D = z_in.size(1);
  const at::Tensor z = z_in.to(math_dtype(z_in)).contiguous();
  at::Tensor out = per_dim ? at::empty({N, D}, z.options()) : at::empty({N}, z.options());
  if (N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z_in.scalar_type(), "gaussian_mixture_fwd_cpu", [&] {
    using math_t = opmath_t<scalar_t>;
    const auto t = make_tables<scalar_t>(means, lvs, log_w, band, band_offset, per_dim);
    if (per_dim) mixture_fwd_per_dim(t, z.const_data_ptr<math_t>(), N, out.mutable_data_ptr<math_t>());
    else mixture_fwd_joint(t, z.const_data_ptr<math_t>(), N, out.mutable_data_ptr<math_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_mixture_bwd_cpu(
    const at::Tensor& z_in, const at::Tensor& means, const at::Tensor& lvs, const at::Tensor& log_w,
    const at::Tensor& band, int64_t band_offset, bool per_dim, const at::Tensor& out_in, const at::Tensor& g_in) {
  check_mixture(z_in, means, lvs, log_w, band);
  const int64_t N = z_in.size(0), D = z_in.size(1), K = means.size(0);
  const auto mt = math_dtype(z_in);
  const at::Tensor z = z_in.to(mt).contiguous(), out = out_in.to(mt).contiguous(), g = g_in.to(mt).contiguous();
  at::Tensor gz = at::empty({N, D}, z.options()), gm = at::empty({K, D}, z.options());
  at::Tensor glv = at::empty({K, D}, z.options()), gw = at::empty({K}, z.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z_in.scalar_type(), "gaussian_mixture_bwd_cpu", [&] {
    using math_t = opmath_t<scalar_t>;
    const auto t = make_tables<scalar_t>(means, lvs, log_w, band, band_offset, per_dim);
    const math_t *zp = z.const_data_ptr<math_t>(), *op = out.const_data_ptr<math_t>(), *gp = g.const_data_ptr<math_t>();
    mixture_bwd(t, zp, op, gp, N, per_dim, gz.mutable_data_ptr<math_t>(), gm.mutable_data_ptr<math_t>(),
                glv.mutable_data_ptr<math_t>(), gw.mutable_data_ptr<math_t>());
  });
  const auto st = z_in.scalar_type();
  return {gz.to(st), gm.to(st), glv.to(st), gw.to(st)};
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) {
  m.def("reparameterize_fwd(Tensor mu, Tensor logvar, Tensor? eps, int seed) -> (Tensor, Tensor, Tensor)");
  m.def("reparameterize_bwd(Tensor mu, Tensor logvar, Tensor? eps, int seed, Tensor grad_z, Tensor grad_kl, "
        "Tensor grad_log_q) -> (Tensor, Tensor, Tensor)");
  m.def("gaussian_mixture_fwd(Tensor z, Tensor means, Tensor logvars, Tensor log_weights, Tensor band, "
        "int band_offset, bool per_dim) -> Tensor");
  m.def("gaussian_mixture_bwd(Tensor z, Tensor means, Tensor logvars, Tensor log_weights, Tensor band, "
        "int band_offset, bool per_dim, Tensor out, Tensor grad_out) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("reparameterize_fwd", &dgm::cpu::reparameterize_fwd_cpu);
  m.impl("reparameterize_bwd", &dgm::cpu::reparameterize_bwd_cpu);
  m.impl("gaussian_mixture_fwd", &dgm::cpu::gaussian_mixture_fwd_cpu);
  m.impl("gaussian_mixture_bwd", &dgm::cpu::gaussian_mixture_bwd_cpu);
}

TORCH_LIBRARY_IMPL(dgmfast_C, Autograd, m) {
  m.impl("reparameterize_fwd", &dgm::cpu::reparameterize_fwd_autograd);
}
