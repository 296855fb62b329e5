// DIP-VAE covariance penalty (SPEC §8), C++ CPU kernels: one pass for the centred sums (a Gram
// micro-kernel over row tiles, each task's rows centred on their own mean), the [D, D] epilogue of csrc/include/dgmfast/dip.h, one pass for the
// gradient. Row tasks of fixed size write their own partial sums, reduced in task order: deterministic
// for any thread count. Schemas of the family are declared here.
#include "loops.h"

#include <dgmfast/dip.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace dgm::cpu {
namespace {

constexpr int64_t kDipRows = 512;  // rows per task of the sums pass
constexpr int64_t kTile = 8;       // output rows of one Gram tile / rows of one gradient tile

// D rounded up so rows of the math-dtype buffers hold whole vectors and whole Gram tiles.
template <typename math_t>
int64_t padded_dim(int64_t D) {
  const int64_t unit = std::max<int64_t>(at::vec::Vectorized<math_t>::size(), kTile);
  return (D + unit - 1) / unit * unit;
}

// buf[0:Dp] = row[0:D] - centre[0:D] in the math dtype; buf's padding stays as it is (zero).
template <typename scalar_t>
void load_centred(const scalar_t* row, const opmath_t<scalar_t>* centre, int64_t D, opmath_t<scalar_t>* buf) {
  using IO = VecIO<scalar_t>;
  int64_t d = 0;
  for (; d + IO::kSize <= D; d += IO::kSize) (IO::load(row + d) - IO::Vec::loadu(centre + d)).store(buf + d);
  for (; d < D; ++d) buf[d] = static_cast<opmath_t<scalar_t>>(row[d]) - centre[d];
}

// S[i0:i0+kTile, j0:j0+TJ*V] += X[:, i0:i0+kTile]^T X[:, j0:j0+TJ*V] over `rows` rows of X [rows, Dp].
template <typename math_t, int TJ>
void gram_tile(const math_t* X, int64_t rows, int64_t Dp, int64_t i0, int64_t j0, math_t* S) {
  using Vec = at::vec::Vectorized<math_t>;
  constexpr int64_t V = Vec::size();
  Vec acc[kTile][TJ];
  for (int64_t i = 0; i < kTile; ++i)
    for (int t = 0; t < TJ; ++t) acc[i][t] = Vec(math_t(0));
  for (int64_t r = 0; r < rows; ++r) {
    const math_t* x = X + r * Dp;
    Vec xj[TJ];
    for (int t = 0; t < TJ; ++t) xj[t] = Vec::loadu(x + j0 + t * V);
    for (int64_t i = 0; i < kTile; ++i) {
      const Vec xi(x[i0 + i]);
      for (int t = 0; t < TJ; ++t) acc[i][t] = at::vec::fmadd(xi, xj[t], acc[i][t]);
    }
  }
  for (int64_t i = 0; i < kTile; ++i)
    for (int t = 0; t < TJ; ++t) {
      math_t* s = S + (i0 + i) * Dp + j0 + t * V;
      (Vec::loadu(s) + acc[i][t]).store(s);
    }
}

// S += X^T X for the tiles reaching the diagonal or above it (the caller mirrors the upper triangle).
template <typename math_t>
void gram_upper(const math_t* X, int64_t rows, int64_t Dp, math_t* S) {
  constexpr int64_t V = at::vec::Vectorized<math_t>::size();
  for (int64_t i0 = 0; i0 < Dp; i0 += kTile) {
    int64_t j0 = i0 / V * V;
    for (; j0 + 2 * V <= Dp; j0 += 2 * V) gram_tile<math_t, 2>(X, rows, Dp, i0, j0, S);
    for (; j0 < Dp; j0 += V) gram_tile<math_t, 1>(X, rows, Dp, i0, j0, S);
  }
}

// Sums of mu [N, D] relative to its first row c: s1 [Dp] = sum_n (mu_n - c) and the centred second moment
// m2 [Dp, Dp] = sum_n (mu_n - mean)(mu_n - mean)^T (full, symmetric) and, with logvar, se [Dp] =
// sum_n exp(logvar_n). Each task centres its rows on their own mean t (relative to c) before its Gram, and the
// tasks are merged in task order with Chan et al.'s update, m2 = sum_t [m2_t + n_t (t - T)(t - T)^T], T = s1/N:
// the Gram never sees the batch mean, so a row c far from it (a large mean, an outlier first row) costs no
// accuracy to cancellation. Outputs start zeroed.
template <typename scalar_t>
void dip_sums(const at::Tensor& mu, const at::Tensor* logvar, int64_t Dp, opmath_t<scalar_t>* s1,
              opmath_t<scalar_t>* m2, opmath_t<scalar_t>* se) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t N = mu.size(0), D = mu.size(1);
  if (N == 0) return;
  const scalar_t* mp = mu.const_data_ptr<scalar_t>();
  const scalar_t* lp = logvar != nullptr ? logvar->const_data_ptr<scalar_t>() : nullptr;
  const int64_t ms = row_stride(mu), ls = logvar != nullptr ? row_stride(*logvar) : 0;
  std::vector<math_t> centre(Dp, math_t(0));
  for (int64_t d = 0; d < D; ++d) centre[d] = static_cast<math_t>(mp[d]);
  const int64_t tasks = (N + kDipRows - 1) / kDipRows, part = Dp * Dp + 2 * Dp;
  std::vector<math_t> partial(tasks * part, math_t(0));  // per task: sum of rows - c, m2_t, sum exp(logvar)
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<math_t> X(kDipRows * Dp, math_t(0));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t lo = task * kDipRows, rows = std::min(N, lo + kDipRows) - lo;
      math_t *p1 = partial.data() + task * part, *p2 = p1 + Dp, *pe = p2 + Dp * Dp;
      for (int64_t r = 0; r < rows; ++r) load_centred(mp + (lo + r) * ms, centre.data(), D, X.data() + r * Dp);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < Dp; d += IO::kSize)
          (Vec::loadu(p1 + d) + Vec::loadu(X.data() + r * Dp + d)).store(p1 + d);
      for (int64_t d = 0; d < Dp; d += IO::kSize) {  // rows - t (padding stays 0)
        const Vec t = Vec::loadu(p1 + d) / Vec(static_cast<math_t>(rows));
        for (int64_t r = 0; r < rows; ++r) (Vec::loadu(X.data() + r * Dp + d) - t).store(X.data() + r * Dp + d);
      }
      gram_upper(X.data(), rows, Dp, p2);
      if (lp != nullptr) {
        for (int64_t r = 0; r < rows; ++r) {
          const scalar_t* lr = lp + (lo + r) * ls;
          int64_t d = 0;
          for (; d + IO::kSize <= D; d += IO::kSize) (Vec::loadu(pe + d) + IO::load(lr + d).exp()).store(pe + d);
          for (; d < D; ++d) pe[d] += dgm::exp(static_cast<math_t>(lr[d]));
        }
      }
    }
  });
  for (int64_t task = 0; task < tasks; ++task) {
    const math_t* p = partial.data() + task * part;
    for (int64_t k = 0; k < Dp; ++k) s1[k] += p[k];
    for (int64_t k = 0; k < Dp; ++k) se[k] += p[Dp + Dp * Dp + k];
  }
  std::vector<math_t> dev(Dp, math_t(0));  // t - T of a task
  for (int64_t task = 0; task < tasks; ++task) {
    const math_t* p = partial.data() + task * part;
    const math_t n_t = static_cast<math_t>(std::min(N, (task + 1) * kDipRows) - task * kDipRows);
    for (int64_t d = 0; d < D; ++d) dev[d] = p[d] / n_t - s1[d] / static_cast<math_t>(N);
    for (int64_t i = 0; i < Dp; ++i)
      for (int64_t j = i; j < Dp; ++j) m2[i * Dp + j] += p[Dp + i * Dp + j] + n_t * dev[i] * dev[j];
  }
  for (int64_t i = 0; i < Dp; ++i)
    for (int64_t j = 0; j < i; ++j) m2[i * Dp + j] = m2[j * Dp + i];
}

void check_inputs(const at::Tensor& mu, const std::optional<at::Tensor>& logvar) {
  TORCH_CHECK(mu.dim() == 2, "dgmfast: mu must be [N, D], got ", mu.sizes());
  if (logvar.has_value()) check_same_shape(mu, *logvar, "logvar");
}

at::ScalarType acc_type(const at::Tensor& t) { return acc_scalar_type(t.scalar_type()); }

// Shared by the moments op and the penalty forward: offset = s1/N = mean - mu[0], m2 (padded [Dp, Dp]).
template <typename scalar_t>
struct Moments {
  using math_t = opmath_t<scalar_t>;
  int64_t D, Dp;
  std::vector<math_t> s1, m2, se;
  Moments(const at::Tensor& mu, const at::Tensor* logvar)
      : D(mu.size(1)), Dp(padded_dim<math_t>(mu.size(1))), s1(Dp, 0), m2(Dp * Dp, 0), se(Dp, 0) {
    dip_sums<scalar_t>(mu, logvar, Dp, s1.data(), m2.data(), se.data());
  }
  void write(at::Tensor& offset, at::Tensor* m2_out, at::Tensor* se_out, int64_t N) const {
    math_t* o = offset.mutable_data_ptr<math_t>();
    for (int64_t d = 0; d < D; ++d) o[d] = N > 0 ? s1[d] / static_cast<math_t>(N) : math_t(0);
    if (m2_out != nullptr) {
      math_t* m = m2_out->mutable_data_ptr<math_t>();
      for (int64_t i = 0; i < D; ++i)
        for (int64_t j = 0; j < D; ++j) m[i * D + j] = m2[i * Dp + j];
    }
    if (se_out != nullptr && se_out->numel() > 0) {
      math_t* e = se_out->mutable_data_ptr<math_t>();
      for (int64_t d = 0; d < D; ++d) e[d] = se[d];
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> dip_moments_cpu(const at::Tensor& mu_in,
                                                               const std::optional<at::Tensor>& logvar_in) {
  check_inputs(mu_in, logvar_in);
  const at::Tensor mu = row_contiguous(mu_in);
  const std::optional<at::Tensor> logvar =
      logvar_in.has_value() ? std::optional<at::Tensor>(row_contiguous(*logvar_in)) : std::nullopt;
  const int64_t N = mu.size(0), D = mu.size(1);
  const auto opts = mu.options().dtype(acc_type(mu));
  at::Tensor offset = at::empty({D}, opts), m2 = at::empty({D, D}, opts);
  at::Tensor se = at::empty({logvar.has_value() ? D : 0}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "dip_moments_cpu", [&] {
    Moments<scalar_t> mom(mu, logvar.has_value() ? &*logvar : nullptr);
    mom.write(offset, &m2, &se, N);
  });
  return {offset, m2, se};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dip_vae_penalty_fwd_cpu(const at::Tensor& mu_in,
                                                                       const std::optional<at::Tensor>& logvar_in,
                                                                       double lambda_od, double lambda_d) {
  check_inputs(mu_in, logvar_in);
  TORCH_CHECK(mu_in.size(0) > 0, "dgmfast: dip_vae_penalty needs at least one row");
  const at::Tensor mu = row_contiguous(mu_in);
  const std::optional<at::Tensor> logvar =
      logvar_in.has_value() ? std::optional<at::Tensor>(row_contiguous(*logvar_in)) : std::nullopt;
  const int64_t N = mu.size(0), D = mu.size(1);
  const auto opts = mu.options().dtype(acc_type(mu));
  at::Tensor penalty = at::empty({}, opts), offset = at::empty({D}, opts), grad = at::empty({D, D}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "dip_vae_penalty_fwd_cpu", [&] {
    using math_t = opmath_t<scalar_t>;
    Moments<scalar_t> mom(mu, logvar.has_value() ? &*logvar : nullptr);
    mom.write(offset, nullptr, nullptr, N);
    *penalty.mutable_data_ptr<math_t>() =
        dip_penalty(mom.m2.data(), mom.Dp, logvar.has_value() ? mom.se.data() : nullptr, D,
                    static_cast<math_t>(N), static_cast<math_t>(lambda_od), static_cast<math_t>(lambda_d),
                    grad.mutable_data_ptr<math_t>());
  });
  return {penalty, offset, grad};
}

// grad_mu_n = 2 (mu_n - mu_0 - offset) coef,  grad_logvar_nd = coef_dd exp(logvar_nd).
template <typename scalar_t>
void dip_bwd_impl(const at::Tensor& mu, const at::Tensor* logvar, const at::Tensor& offset, const at::Tensor& coef,
                  at::Tensor& gmu, at::Tensor* glv) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  constexpr int64_t V = IO::kSize;
  const int64_t N = mu.size(0), D = mu.size(1), Dp = padded_dim<math_t>(D);
  if (N == 0) return;
  const scalar_t* mp = mu.const_data_ptr<scalar_t>();
  const int64_t ms = row_stride(mu);
  std::vector<math_t> C(Dp * Dp, 0), diag(Dp, 0);
  const math_t* op = offset.const_data_ptr<math_t>();
  const math_t* cp = coef.const_data_ptr<math_t>();
  for (int64_t i = 0; i < D; ++i) {
    for (int64_t j = 0; j < D; ++j) C[i * Dp + j] = math_t(2) * cp[i * D + j];
    diag[i] = cp[i * D + i];
  }
  // mu_n - mean is formed as (mu_n - mu_0) - offset: exact where mu_n and mu_0 are close (a large mean)
  std::vector<math_t> first(Dp, 0), off(Dp, 0);
  for (int64_t d = 0; d < D; ++d) first[d] = static_cast<math_t>(mp[d]), off[d] = op[d];
  scalar_t* gp = gmu.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, (N + kTile - 1) / kTile, 8, [&](int64_t begin, int64_t end) {
    std::vector<math_t> X(kTile * Dp, 0), out(kTile * Dp, 0);
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * kTile, rows = std::min(N, n0 + kTile) - n0;
      for (int64_t r = 0; r < rows; ++r) {
        math_t* x = X.data() + r * Dp;
        load_centred(mp + (n0 + r) * ms, first.data(), D, x);
        for (int64_t d = 0; d < Dp; d += V) (Vec::loadu(x + d) - Vec::loadu(off.data() + d)).store(x + d);
      }
      for (int64_t j0 = 0; j0 < Dp; j0 += V) {
        Vec acc[kTile];
        for (int64_t r = 0; r < kTile; ++r) acc[r] = Vec(math_t(0));
        for (int64_t i = 0; i < D; ++i) {
          const Vec c = Vec::loadu(C.data() + i * Dp + j0);
          for (int64_t r = 0; r < kTile; ++r) acc[r] = at::vec::fmadd(Vec(X[r * Dp + i]), c, acc[r]);
        }
        for (int64_t r = 0; r < kTile; ++r) acc[r].store(out.data() + r * Dp + j0);
      }
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* g = gp + (n0 + r) * D;
        const math_t* o = out.data() + r * Dp;
        for (int64_t d = 0; d < D; ++d) g[d] = static_cast<scalar_t>(o[d]);
      }
    }
  });
  if (glv != nullptr) {
    const scalar_t* lp = logvar->const_data_ptr<scalar_t>();
    const int64_t ls = row_stride(*logvar);
    scalar_t* glp = glv->mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* lr = lp + n * ls;
        scalar_t* g = glp + n * D;
        int64_t d = 0;
        for (; d + V <= D; d += V) IO::store(g + d, Vec::loadu(diag.data() + d) * IO::load(lr + d).exp());
        for (; d < D; ++d) g[d] = static_cast<scalar_t>(diag[d] * dgm::exp(static_cast<math_t>(lr[d])));
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> dip_vae_penalty_bwd_cpu(const at::Tensor& mu_in,
                                                           const std::optional<at::Tensor>& logvar_in,
                                                           const at::Tensor& offset_in, const at::Tensor& coef_in) {
  check_inputs(mu_in, logvar_in);
  const at::Tensor mu = row_contiguous(mu_in);
  const std::optional<at::Tensor> logvar =
      logvar_in.has_value() ? std::optional<at::Tensor>(row_contiguous(*logvar_in)) : std::nullopt;
  const int64_t D = mu.size(1);
  const auto acc = acc_type(mu);
  TORCH_CHECK(offset_in.sizes() == at::IntArrayRef{D} && offset_in.scalar_type() == acc,
              "dgmfast: offset must be [D] in the accumulation dtype");
  TORCH_CHECK(coef_in.sizes() == at::IntArrayRef({D, D}) && coef_in.scalar_type() == acc,
              "dgmfast: coef must be [D, D] in the accumulation dtype");
  const at::Tensor offset = offset_in.contiguous(), coef = coef_in.contiguous();
  at::Tensor gmu = at::empty(mu.sizes(), mu.options());
  at::Tensor glv = at::empty(logvar.has_value() ? mu.sizes() : at::IntArrayRef{0}, mu.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "dip_vae_penalty_bwd_cpu", [&] {
    dip_bwd_impl<scalar_t>(mu, logvar.has_value() ? &*logvar : nullptr, offset, coef, gmu,
                           logvar.has_value() ? &glv : nullptr);
  });
  return {gmu, glv};
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) {
  m.def("dip_moments(Tensor mu, Tensor? logvar) -> (Tensor, Tensor, Tensor)");
  m.def("dip_vae_penalty_fwd(Tensor mu, Tensor? logvar, float lambda_od, float lambda_d) -> (Tensor, Tensor, Tensor)");
  m.def("dip_vae_penalty_bwd(Tensor mu, Tensor? logvar, Tensor offset, Tensor coef) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("dip_moments", &dgm::cpu::dip_moments_cpu);
  m.impl("dip_vae_penalty_fwd", &dgm::cpu::dip_vae_penalty_fwd_cpu);
  m.impl("dip_vae_penalty_bwd", &dgm::cpu::dip_vae_penalty_bwd_cpu);
}
