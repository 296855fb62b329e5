// Flow++ mixture-of-logistics coupling (SPEC §2): per-element math shared by the CPU and CUDA kernels.
//
// For one element x with K components (pi_k, mu_k, l_k), l_k = max(l_k, min_log_scale), q_k = exp(-l_k),
// z_k = (x - mu_k) q_k, e_k = exp(-|z_k|), w_k = 1/(1 + e_k), E_k = exp(pi_k - max_j pi_j):
//   log u      = log S_cdf - log S_norm,  S_cdf = sum_k E_k sigmoid(z_k),  S_norm = sum_k E_k
//   log (1-u)  = log S_sf  - log S_norm,  S_sf  = sum_k E_k sigmoid(-z_k)
//   log f      = log S_pdf - log S_norm,  S_pdf = sum_k E_k q_k e_k w_k^2
// with sigmoid(z) = w or e w by the sign of z: three exp and one division per component (mix_logs).
// Where S_cdf, S_sf or S_pdf falls below kMixLinearTiny (x far in the tails of every component), that lane
// takes the exact log-domain sums instead (mix_stats):
//   log u      = LSE_k[pi_k + min(z_k, 0)  ; weight w_k  ] - LSE_k[pi_k]
//   log (1-u)  = LSE_k[pi_k - max(z_k, 0)  ; weight w_k  ] - LSE_k[pi_k]
//   log f      = LSE_k[pi_k - l_k - |z_k|  ; weight w_k^2] - LSE_k[pi_k]
// (the SPEC's logsigmoid(+-z) = min(+-z, 0) - log(1 + e) and z - 2 softplus(z) = -|z| - 2 log(1 + e),
// with the log(1 + e) terms carried as weights), each one online pass with one more exp per term.
// Loops over k take a loader load(k, &pi, &mu, &l) so the CPU (vectorized over elements,
// T = at::vec::Vectorized) and CUDA (one element per thread, T = float/double) share them.
#pragma once

#include <dgmfast/common.h>
#include <dgmfast/coupling.h>

namespace dgm {

// Running weighted log-sum-exp: value = m + log(s), s = sum_j w_j exp(a_j - m), m = max_j a_j; with
// MOMENT also t = sum_j w_j g_j exp(a_j - m) (t / s is the softmax-weighted mean of g).
template <typename T, bool MOMENT = false>
struct OnlineLse {
  T m, s, t;
  DGM_HOST_DEVICE DGM_INLINE void init(T a, T w, T g) {
    m = a;
    s = w;
    if constexpr (MOMENT) t = w * g;
  }
  DGM_HOST_DEVICE DGM_INLINE void add(T a, T w, T g) {
    const T d = a - m;
    const T e = dgm::exp(T(0) - dgm::abs(d));
    s = dgm::where_nonneg(d, s * e + w, s + w * e);
    if constexpr (MOMENT) t = dgm::where_nonneg(d, t * e + w * g, t + w * g * e);
    m = dgm::max(m, a);
  }
  DGM_HOST_DEVICE DGM_INLINE T value() const { return m + dgm::log(s); }
};

// One component at one element.
template <typename T>
struct MixTerm {
  T pi, l, q, z, e, w;  // logit, clamped log-scale, exp(-l), standardized x, exp(-|z|), 1/(1 + e)
  MixTerm() = default;
  DGM_HOST_DEVICE DGM_INLINE MixTerm(T x, T pi_, T mu, T l_raw, T min_log_scale) : pi(pi_) {
    l = dgm::max(l_raw, min_log_scale);
    q = dgm::exp_inline(T(0) - l);
    z = (x - mu) * q;
    e = dgm::exp_inline(T(0) - dgm::abs(z));
    w = T(1) / (T(1) + e);
  }
  DGM_HOST_DEVICE DGM_INLINE T sigmoid_pos() const { return dgm::where_nonneg(z, w, e * w); }  // sigmoid(z)
  DGM_HOST_DEVICE DGM_INLINE T sigmoid_neg() const { return dgm::where_nonneg(z, e * w, w); }  // sigmoid(-z)
  DGM_HOST_DEVICE DGM_INLINE T density() const { return q * e * w * w; }  // q sigmoid(z) sigmoid(-z)
  DGM_HOST_DEVICE DGM_INLINE T a_cdf() const { return pi + dgm::min(z, T(0)); }
  DGM_HOST_DEVICE DGM_INLINE T a_sf() const { return pi - dgm::max(z, T(0)); }
  DGM_HOST_DEVICE DGM_INLINE T a_pdf() const { return pi - l - dgm::abs(z); }
};

// A component with its linear-domain mixture weight E = exp(pi - m), m = max_k pi_k.
template <typename T>
struct MixLinTerm : MixTerm<T> {
  T E;
  MixLinTerm() = default;
  DGM_HOST_DEVICE DGM_INLINE MixLinTerm(T x, T pi, T mu, T l_raw, T min_log_scale, T m)
      : MixTerm<T>(x, pi, mu, l_raw, min_log_scale), E(dgm::exp_inline(pi - m)) {}
};

// The four log-sums of one element, each an online log-sum-exp; with MOMENT the pdf sum also carries
// d log f / dx. The exact path, for elements where the linear sums of mix_logs underflow.
template <typename T, bool MOMENT>
struct MixStats {
  OnlineLse<T> norm, cdf, sf;
  OnlineLse<T, MOMENT> pdf;

  template <bool FIRST>
  DGM_HOST_DEVICE DGM_INLINE void add(T x, T pi, T mu, T l_raw, T min_log_scale) {
    const MixTerm<T> c(x, pi, mu, l_raw, min_log_scale);
    const T one(1), ww = c.w * c.w;
    // d log f_k / dx = (sigmoid(-z) - sigmoid(z)) q
    const T g = MOMENT ? (c.sigmoid_neg() - c.sigmoid_pos()) * c.q : T(0);
    if constexpr (FIRST) {
      norm.init(pi, one, one);
      cdf.init(c.a_cdf(), c.w, one);
      sf.init(c.a_sf(), c.w, one);
      pdf.init(c.a_pdf(), ww, g);
    } else {
      norm.add(pi, one, one);
      cdf.add(c.a_cdf(), c.w, one);
      sf.add(c.a_sf(), c.w, one);
      pdf.add(c.a_pdf(), ww, g);
    }
  }
  DGM_HOST_DEVICE DGM_INLINE T log_cdf() const { return cdf.value() - norm.value(); }
  DGM_HOST_DEVICE DGM_INLINE T log_sf() const { return sf.value() - norm.value(); }
  DGM_HOST_DEVICE DGM_INLINE T log_pdf() const { return pdf.value() - norm.value(); }
  DGM_HOST_DEVICE DGM_INLINE T dlog_pdf_dx() const { return pdf.t / pdf.s; }
};

template <bool MOMENT, typename T, typename Load>
DGM_HOST_DEVICE DGM_INLINE MixStats<T, MOMENT> mix_stats(T x, T min_log_scale, int64_t K, const Load& load) {
  MixStats<T, MOMENT> st;
  T pi, mu, l;
  load(0, pi, mu, l);
  st.template add<true>(x, pi, mu, l, min_log_scale);
  for (int64_t k = 1; k < K; ++k) {
    load(k, pi, mu, l);
    st.template add<false>(x, pi, mu, l, min_log_scale);
  }
  return st;
}

// max_k pi_k (no exp).
template <typename T, typename Load>
DGM_HOST_DEVICE DGM_INLINE T mix_max_logit(int64_t K, const Load& load) {
  T m, mu, l;
  load(0, m, mu, l);
  for (int64_t k = 1; k < K; ++k) {
    T pi;
    load(k, pi, mu, l);
    m = dgm::max(m, pi);
  }
  return m;
}

// The components of one element computed from load(k, &pi, &mu, &l) on each call: terms(k).
template <typename T, typename Load>
struct LoadedTerms {
  T x, min_log_scale, m;  // m = mix_max_logit
  const Load& load;
  DGM_HOST_DEVICE DGM_INLINE MixLinTerm<T> operator()(int64_t k) const {
    T pi, mu, l;
    load(k, pi, mu, l);
    return MixLinTerm<T>(x, pi, mu, l, min_log_scale, m);
  }
};
template <typename T, typename Load>
DGM_HOST_DEVICE DGM_INLINE LoadedTerms<T, Load> loaded_terms(T x, T min_log_scale, int64_t K, const Load& load) {
  return {x, min_log_scale, mix_max_logit<T>(K, load), load};
}

// Below this, a linear-domain sum may have lost terms to underflow (each lost term is below the smallest
// normal number, ~1e-38 in float32, so above it the K of them change the sum by < K 1e-8 relative).
constexpr double kMixLinearTiny = 1e-30;

// log u, log(1-u), log f (and with MOMENT d log f/dx) of one element. Fast path, three exp per component
// (q, e, E): the linear sums S_norm = sum E_k, S_cdf = sum E_k sigmoid(z_k), S_sf = sum E_k sigmoid(-z_k),
// S_pdf = sum E_k q_k e_k w_k^2, D = sum E_k q_k e_k w_k^2 (sigmoid(-z_k) - sigmoid(z_k)) q_k give
// log u = log S_cdf - log S_norm, ..., d log f/dx = D / S_pdf. In lanes where S_cdf, S_sf or S_pdf falls below
// kMixLinearTiny (S_norm >= 1), the exact log-domain sums `st` (mix_stats) are used instead.
template <typename T, bool MOMENT>
struct MixLogs {
  T log_cdf, log_sf, log_pdf, dlog_pdf_dx;
  T s_norm, s_cdf, s_sf, s_pdf;  // the linear sums
  T fast;                        // >= 0 in the lanes that use them
  bool any_exact;                // some lane does not: st holds its log-domain sums
  MixStats<T, MOMENT> st;
};

template <bool MOMENT, typename T, typename Terms, typename Load>
DGM_HOST_DEVICE DGM_INLINE MixLogs<T, MOMENT> mix_logs(T x, T min_log_scale, int64_t K, const Terms& terms,
                                                       const Load& load) {
  MixLogs<T, MOMENT> r;
  T s_norm(0), s_cdf(0), s_sf(0), s_pdf(0), d_pdf(0);
  for (int64_t k = 0; k < K; ++k) {
    const MixLinTerm<T>& c = terms(k);
    const T sp = c.sigmoid_pos(), sn = c.sigmoid_neg(), dens = c.E * c.density();
    s_norm = s_norm + c.E;
    s_cdf = s_cdf + c.E * sp;
    s_sf = s_sf + c.E * sn;
    s_pdf = s_pdf + dens;
    if constexpr (MOMENT) d_pdf = d_pdf + dens * (sn - sp) * c.q;
  }
  const T log_norm = dgm::log(s_norm);
  r.s_norm = s_norm;
  r.s_cdf = s_cdf;
  r.s_sf = s_sf;
  r.s_pdf = s_pdf;
  r.log_cdf = dgm::log(s_cdf) - log_norm;
  r.log_sf = dgm::log(s_sf) - log_norm;
  r.log_pdf = dgm::log(s_pdf) - log_norm;
  if constexpr (MOMENT) r.dlog_pdf_dx = d_pdf / s_pdf;
  r.fast = dgm::min(dgm::min(s_cdf, s_sf), s_pdf) - T(kMixLinearTiny);
  r.any_exact = dgm::any_less(r.fast, T(0));
  if (r.any_exact) {
    r.st = mix_stats<MOMENT>(x, min_log_scale, K, load);
    r.log_cdf = dgm::where_nonneg(r.fast, r.log_cdf, r.st.log_cdf());
    r.log_sf = dgm::where_nonneg(r.fast, r.log_sf, r.st.log_sf());
    r.log_pdf = dgm::where_nonneg(r.fast, r.log_pdf, r.st.log_pdf());
    if constexpr (MOMENT) r.dlog_pdf_dx = dgm::where_nonneg(r.fast, r.dlog_pdf_dx, r.st.dlog_pdf_dx());
  }
  return r;
}

// The log-det term log f - log u - log(1-u) of one element at x (without s).
template <typename T, typename Load>
DGM_HOST_DEVICE DGM_INLINE T mix_logdet_term(T x, T min_log_scale, int64_t K, const Load& load) {
  const MixLogs<T, false> lg = mix_logs<false>(x, min_log_scale, K, loaded_terms(x, min_log_scale, K, load), load);
  return lg.log_pdf - lg.log_cdf - lg.log_sf;
}

// Forward direction of one element: returns y, sets *ld to its log-det term log f - log u - log(1-u) + s.
template <int MAP, typename T, typename Load>
DGM_HOST_DEVICE DGM_INLINE T mixlogistic_fwd_elem(T x, T r, T t, T clamp, T min_log_scale, bool shift_scale,
                                                  int64_t K, const Load& load, T* ld) {
  const MixLogs<T, false> lg = mix_logs<false>(x, min_log_scale, K, loaded_terms(x, min_log_scale, K, load), load);
  const T lu = lg.log_cdf, lv = lg.log_sf;
  T s;
  const T es = affine_scale<MAP, true, false>(r, clamp, T(0), false, &s, static_cast<T*>(nullptr));
  *ld = lg.log_pdf - lu - lv + s;
  const T v = lu - lv;
  return shift_scale ? (v + t) * es : es * v + t;
}

// Reverse target v = logit(u) from y: (y - t) exp(-s) ("scale_shift") or y exp(-s) - t ("shift_scale");
// sets *s to s.
template <int MAP, typename T>
DGM_HOST_DEVICE DGM_INLINE T mixlogistic_target(T y, T r, T t, T clamp, bool shift_scale, T* s) {
  const T ens = affine_scale<MAP, true, false>(r, clamp, T(0), true, s, static_cast<T*>(nullptr));
  return shift_scale ? y * ens - t : (y - t) * ens;
}

// x with logit(F(x)) = v by `iters` bisection steps on [lo, hi] (fixed count, deterministic). Each step
// compares v with log S+ - log S-, S+- = sum_k E_k sigmoid(+-z_k), E_k = exp(pi_k - max pi): the stable
// two-sum form of logit(u) with the log-sum-exp shift taken from the logits (one exp per component).
// Where a sum falls below kMixLinearTiny (|logit| beyond ~69), exact(x) gives logit(F(x)) from the
// log-domain sums instead. load_emq(k, &E, &mu, &q) with q = exp(-l).
template <typename T, typename LoadEMQ, typename Exact>
DGM_HOST_DEVICE DGM_INLINE T mix_bisect(T v, T lo, T hi, int iters, int64_t K, const LoadEMQ& load_emq,
                                        const Exact& exact) {
  for (int it = 0; it < iters; ++it) {
    const T mid = T(0.5) * (lo + hi);
    T s_pos(0), s_neg(0);
    for (int64_t k = 0; k < K; ++k) {
      T E, mu, q;
      load_emq(k, E, mu, q);
      const T z = (mid - mu) * q;
      const T e = dgm::exp(T(0) - dgm::abs(z));
      const T ew = E / (T(1) + e), eew = ew * e;
      s_pos = s_pos + dgm::where_nonneg(z, ew, eew);
      s_neg = s_neg + dgm::where_nonneg(z, eew, ew);
    }
    T vm = dgm::log(s_pos) - dgm::log(s_neg);
    const T smallest = dgm::min(s_pos, s_neg);
    if (dgm::any_less(smallest, T(kMixLinearTiny))) {
      vm = dgm::where_nonneg(smallest - T(kMixLinearTiny), vm, exact(mid));
    }
    const T diff = vm - v;  // < 0: the root is above mid
    lo = dgm::where_nonneg(diff, lo, mid);
    hi = dgm::where_nonneg(diff, mid, hi);
  }
  return T(0.5) * (lo + hi);
}

// Gradients of one element in either direction, given its point x in data space (the input of the
// forward, the output of the reverse), g_out = dL/d(output), g_ld = dL/d(logdet) of its row. Sets
// *g_in (dL/dy in reverse), *g_r, *g_t and calls store(k, g_pi, g_mu, g_l) per component; terms(k) gives
// component k (MixLinTerm, e.g. loaded_terms), load(k, &pi, &mu, &l) its raw parameters (exact path).
//
// With G = dL/d(log u, log(1-u), log f) and alpha, beta, gamma the softmax weights inside the three sums:
//   g_pi_k = G_u alpha_k + G_s beta_k + G_f gamma_k - p_k (G_u + G_s + G_f),  p = softmax(pi)
//   Z_k    = G_u alpha_k sigmoid(-z_k) - G_s beta_k sigmoid(z_k) + G_f gamma_k (sigmoid(-z_k) - sigmoid(z_k))
//   g_mu_k = -q_k Z_k,  g_l_k = [l_k > min] (-z_k Z_k - G_f gamma_k),  dL/dx = sum_k q_k Z_k.
// From the linear sums of mix_logs: alpha_k = E_k sigmoid(z_k) / S_cdf, beta_k = E_k sigmoid(-z_k) / S_sf,
// gamma_k = E_k q_k e_k w_k^2 / S_pdf, p_k = E_k / S_norm (no exp); in the exact lanes alpha_k =
// w_k exp(pi_k + min(z_k, 0) - LSE_cdf) and so on.
// Forward: G_u = g_out e^s - g_ld, G_s = -g_out e^s - g_ld, G_f = g_ld. Reverse (implicit differentiation
// of v(x) = V(y, r, t), dv/dx = f/(u(1-u))): with g_hat = g_out + g_ld d(logdet)/dx and
// c = g_hat u(1-u)/f: G_u = g_ld - c, G_s = g_ld + c, G_f = -g_ld, dL/dy = c e^-s.
template <int MAP, typename T, typename Terms, typename Load, typename Store>
DGM_HOST_DEVICE DGM_INLINE void mixlogistic_bwd_elem(T x, T r, T t, T g_out, T g_ld, T clamp, T min_log_scale,
                                                     bool shift_scale, bool reverse, int64_t K, const Terms& terms,
                                                     const Load& load, const Store& store, T* g_in, T* g_r, T* g_t) {
  const MixLogs<T, true> lg = mix_logs<true>(x, min_log_scale, K, terms, load);
  const T lu = lg.log_cdf, lv = lg.log_sf, lf = lg.log_pdf, v = lu - lv;
  T s, ds;
  const T e_signed = affine_scale<MAP, true, true>(r, clamp, T(0), reverse, &s, &ds);  // e^s, e^-s in reverse
  T g_cdf, g_sf, g_pdf;
  if (!reverse) {
    const T g_v = g_out * e_signed;
    g_cdf = g_v - g_ld;
    g_sf = T(0) - g_v - g_ld;
    g_pdf = g_ld;
    *g_r = ds * (g_v * (shift_scale ? v + t : v) + g_ld);
    *g_t = shift_scale ? g_v : g_out;
  } else {
    // d logdet_rev / dx = -(d log f/dx - f/u + f/(1-u)); u(1-u)/f saturates at e^80 (float32 range)
    const T dld_dx = dgm::exp(lf - lu) - dgm::exp(lf - lv) - lg.dlog_pdf_dx;
    const T c = (g_out + g_ld * dld_dx) * dgm::exp(dgm::min(lu + lv - lf, T(80)));
    g_cdf = g_ld - c;
    g_sf = g_ld + c;
    g_pdf = T(0) - g_ld;
    *g_in = c * e_signed;
    *g_t = shift_scale ? T(0) - c : T(0) - c * e_signed;
    *g_r = T(0) - ds * (c * (shift_scale ? v + t : v) + g_ld);
  }
  const T g_sum = g_cdf + g_sf + g_pdf;
  const T inv_norm = T(1) / lg.s_norm, inv_cdf = T(1) / lg.s_cdf, inv_sf = T(1) / lg.s_sf,
          inv_pdf = T(1) / lg.s_pdf;
  T lse_norm(0), lse_cdf(0), lse_sf(0), lse_pdf(0);
  if (lg.any_exact) {
    lse_norm = lg.st.norm.value();
    lse_cdf = lg.st.cdf.value();
    lse_sf = lg.st.sf.value();
    lse_pdf = lg.st.pdf.value();
  }
  T g_x(0);
  for (int64_t k = 0; k < K; ++k) {
    const MixLinTerm<T>& c = terms(k);
    const T sp = c.sigmoid_pos(), sn = c.sigmoid_neg();
    T alpha = c.E * sp * inv_cdf, beta = c.E * sn * inv_sf, gamma = c.E * c.density() * inv_pdf,
      p = c.E * inv_norm;
    if (lg.any_exact) {
      alpha = dgm::where_nonneg(lg.fast, alpha, c.w * dgm::exp(c.a_cdf() - lse_cdf));
      beta = dgm::where_nonneg(lg.fast, beta, c.w * dgm::exp(c.a_sf() - lse_sf));
      gamma = dgm::where_nonneg(lg.fast, gamma, c.w * c.w * dgm::exp(c.a_pdf() - lse_pdf));
      p = dgm::where_nonneg(lg.fast, p, dgm::exp(c.pi - lse_norm));
    }
    const T Z = g_cdf * alpha * sn - g_sf * beta * sp + g_pdf * gamma * (sn - sp);
    const T g_l = T(0) - c.z * Z - g_pdf * gamma;
    store(k, g_cdf * alpha + g_sf * beta + g_pdf * gamma - p * g_sum, T(0) - c.q * Z,
          dgm::where_nonneg(min_log_scale - c.l, T(0), g_l));  // clamped (l_raw <= min): no gradient
    g_x = g_x + c.q * Z;
  }
  if (!reverse) *g_in = g_x;
}

}  // namespace dgm
