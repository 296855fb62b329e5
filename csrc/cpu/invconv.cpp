// Invertible 1x1 convolution (SPEC §4), C++ CPU kernels. In Glow's LU form one op per direction maps x [B, C, ...]
// (seen as [B, C, S]) to y = A x over the channels, A = W (forward) or W^-1 (reverse), with
// W = P L (U + diag(sign_s * exp(log_abs_s))) assembled inside the op and logdet = +-S * sum(log_abs_s); one backward
// pass returns grad_x = A^T grad_y and the gradients of the LU parameters (through grad_A = sum_{b,s} grad_y x^T,
// summed over fixed tasks in a fixed order: deterministic for any thread count). The dense form's op is the mixing
// alone, y = W x with a given W (InvConv1x1(lu=False) passes W or its cached inverse), with grad_x and grad_W.
// At the small channel counts of flows, oneDNN's 1x1 convolution and the dozen [C, C] autograd ops that
// assemble W cost ~0.5 ms per layer and step; these kernels stream x once per direction.
#include "autograd.h"
#include "loops.h"

#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <vector>

namespace dgm::cpu {
namespace {

using Mat = std::vector<double>;  // [C, C] row-major; the [C, C] algebra runs in float64

// The LU parameters of SPEC §4 as float64 matrices, with P as the index p (P[i, p[i]] = 1).
struct LUParams {
  int64_t C;
  std::vector<int64_t> p;
  Mat lower, upper;          // strict triangles (the other entries of the tensors are ignored, as the reference)
  std::vector<double> diag;  // sign_s * exp(log_abs_s): the diagonal of U + diag(.)
  double log_abs_det;        // sum(log_abs_s), summed in the parameters' dtype as the reference
};

template <typename T>
LUParams read_lu_params(const at::Tensor& perm, const at::Tensor& lower, const at::Tensor& upper,
                        const at::Tensor& sign_s, const at::Tensor& log_abs_s) {
  LUParams lu;
  const int64_t C = lu.C = perm.size(0);
  const T *pp = perm.const_data_ptr<T>(), *lp = lower.const_data_ptr<T>(), *up = upper.const_data_ptr<T>();
  const T *sp = sign_s.const_data_ptr<T>(), *ls = log_abs_s.const_data_ptr<T>();
  lu.p.assign(C, -1);
  std::vector<bool> used(C, false);
  for (int64_t i = 0; i < C; ++i) {
    for (int64_t j = 0; j < C; ++j) {
      const T v = pp[i * C + j];
      TORCH_CHECK(v == T(0) || (v == T(1) && lu.p[i] < 0 && !used[j]),
                  "dgmfast: invconv perm must be a permutation matrix (one 1 per row and column, 0 elsewhere); "
                  "entry (", i, ", ", j, ") is ", static_cast<double>(v));
      if (v == T(1)) lu.p[i] = j, used[j] = true;
    }
    TORCH_CHECK(lu.p[i] >= 0, "dgmfast: invconv perm must be a permutation matrix; row ", i, " has no 1");
  }
  lu.lower.assign(C * C, 0.0);
  lu.upper.assign(C * C, 0.0);
  lu.diag.resize(C);
  T sum = 0;
  for (int64_t r = 0; r < C; ++r) {
    for (int64_t k = 0; k < r; ++k) lu.lower[r * C + k] = static_cast<double>(lp[r * C + k]);
    for (int64_t k = r + 1; k < C; ++k) lu.upper[r * C + k] = static_cast<double>(up[r * C + k]);
    lu.diag[r] = static_cast<double>(sp[r]) * std::exp(static_cast<double>(ls[r]));
    sum += ls[r];
  }
  lu.log_abs_det = static_cast<double>(sum);
  return lu;
}

// M = U + diag: row r of M is diag[r] at r and upper[r, j] for j > r.
inline double m_entry(const LUParams& lu, int64_t r, int64_t j) {
  return j == r ? lu.diag[r] : (j > r ? lu.upper[r * lu.C + j] : 0.0);
}

// W = P L M.
Mat lu_weight(const LUParams& lu) {
  const int64_t C = lu.C;
  Mat lm(C * C, 0.0), w(C * C);
  for (int64_t r = 0; r < C; ++r) {
    double* row = lm.data() + r * C;
    for (int64_t j = r; j < C; ++j) row[j] = m_entry(lu, r, j);
    for (int64_t k = 0; k < r; ++k) {
      const double l = lu.lower[r * C + k];
      for (int64_t j = k; j < C; ++j) row[j] += l * m_entry(lu, k, j);
    }
  }
  for (int64_t i = 0; i < C; ++i) std::copy_n(lm.data() + lu.p[i] * C, C, w.data() + i * C);
  return w;
}

// W^-1 = M^-1 L^-1 P^T: forward substitution through L, then back substitution through M.
Mat lu_inverse(const LUParams& lu) {
  const int64_t C = lu.C;
  Mat a(C * C, 0.0);
  for (int64_t i = 0; i < C; ++i) a[lu.p[i] * C + i] = 1.0;  // P^T
  for (int64_t r = 0; r < C; ++r) {
    for (int64_t k = 0; k < r; ++k) {
      const double l = lu.lower[r * C + k];
      for (int64_t j = 0; j < C; ++j) a[r * C + j] -= l * a[k * C + j];
    }
  }
  for (int64_t r = C - 1; r >= 0; --r) {
    for (int64_t k = r + 1; k < C; ++k) {
      const double u = lu.upper[r * C + k];
      for (int64_t j = 0; j < C; ++j) a[r * C + j] -= u * a[k * C + j];
    }
    for (int64_t j = 0; j < C; ++j) a[r * C + j] /= lu.diag[r];
  }
  return a;
}

// Register blocks: channel_mix computes kOutBlock output channels x kMixVecs vectors of plane elements per pass
// over c (one broadcast of a[o, c] feeds kMixVecs fmas); mixing_grad accumulates kGradBlock x kGradBlock (o, c)
// pairs per pass over the plane elements.
constexpr int64_t kOutBlock = 4, kMixVecs = 4, kGradBlock = 4;

// The mixing matrix of a direction in the kernels' math dtype, optionally transposed, with zero rows padding the
// row count to a multiple of kOutBlock.
template <typename math_t>
std::vector<math_t> mixing_matrix(const Mat& a, int64_t C, bool transpose) {
  std::vector<math_t> out((C + kOutBlock - 1) / kOutBlock * kOutBlock * C, math_t(0));
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j < C; ++j) out[i * C + j] = static_cast<math_t>(transpose ? a[j * C + i] : a[i * C + j]);
  return out;
}

// Tasks over x [B, C, S]: blocks of `rows` samples x chunks of `tile_s` plane elements, about `target` elements
// each; fixed by the sizes (never by the thread count), so sums over tasks are deterministic.
struct MixTiling {
  int64_t tile_s, ns, rows, nb;
  int64_t tasks() const { return nb * ns; }
  int64_t b0(int64_t task) const { return task / ns * rows; }
  int64_t s0(int64_t task) const { return task % ns * tile_s; }
};

MixTiling make_mix_tiling(int64_t B, int64_t C, int64_t S, int64_t target) {
  MixTiling t;
  const int64_t lanes = at::vec::Vectorized<float>::size();
  t.tile_s = std::max<int64_t>(1, std::min(S, std::max(lanes, target / std::max<int64_t>(C, 1) / lanes * lanes)));
  t.ns = S > 0 ? (S + t.tile_s - 1) / t.tile_s : 0;
  t.rows = std::max<int64_t>(1, target / std::max<int64_t>(C * t.tile_s, 1));
  t.nb = B > 0 ? (B + t.rows - 1) / t.rows : 0;
  return t;
}

// out[o, s + v*L ...] for V vectors of plane elements of one sample, from s (in: its C plane rows at stride is1;
// out: its contiguous [C, S] planes); the last vector holds n_last elements.
template <typename scalar_t, int64_t V>
void mix_vectors(const scalar_t* in, int64_t is1, const opmath_t<scalar_t>* a, int64_t C, int64_t S, int64_t s,
                 int64_t n_last, scalar_t* out) {
  using IO = VecIO<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int64_t L = IO::kSize;
  for (int64_t o0 = 0; o0 < C; o0 += kOutBlock) {
    const auto* ao = a + o0 * C;  // rows o0 .. o0 + kOutBlock - 1 (zero past C)
    Vec acc[kOutBlock][V];
    for (int64_t i = 0; i < kOutBlock; ++i)
      for (int64_t v = 0; v < V; ++v) acc[i][v] = Vec(0);
    for (int64_t c = 0; c < C; ++c) {
      Vec xv[V];
      for (int64_t v = 0; v < V; ++v) xv[v] = IO::load(in + c * is1 + s + v * L, v == V - 1 ? n_last : L);
      for (int64_t i = 0; i < kOutBlock; ++i) {
        const Vec w(ao[i * C + c]);
        for (int64_t v = 0; v < V; ++v) acc[i][v] = at::vec::fmadd(w, xv[v], acc[i][v]);
      }
    }
    for (int64_t i = 0; i < std::min(kOutBlock, C - o0); ++i)
      for (int64_t v = 0; v < V; ++v) IO::store(out + (o0 + i) * S + s + v * L, acc[i][v], v == V - 1 ? n_last : L);
  }
}

// out[b, o, s] = sum_c a[o, c] in[b, c, s] over x [B, C, S] (plane-contiguous, any batch/channel strides), a from
// mixing_matrix; out is contiguous.
template <typename scalar_t>
void channel_mix(const at::Tensor& in, const std::vector<opmath_t<scalar_t>>& a, at::Tensor& out) {
  constexpr int64_t L = VecIO<scalar_t>::kSize;
  const int64_t B = in.size(0), C = in.size(1), S = plane_numel(in), is0 = in.stride(0), is1 = in.stride(1);
  const scalar_t* ip = in.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const MixTiling t = make_mix_tiling(B, C, S, kRowChunk);
  at::parallel_for(0, t.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s0 = t.s0(task), s1 = std::min(S, s0 + t.tile_s);
      for (int64_t b = t.b0(task); b < std::min(B, t.b0(task) + t.rows); ++b) {
        int64_t s = s0;
        for (; s + kMixVecs * L <= s1; s += kMixVecs * L)
          mix_vectors<scalar_t, kMixVecs>(ip + b * is0, is1, a.data(), C, S, s, L, op + b * C * S);
        for (; s < s1; s += L)
          mix_vectors<scalar_t, 1>(ip + b * is0, is1, a.data(), C, S, s, std::min(L, s1 - s), op + b * C * S);
      }
    }
  });
}

// acc[i][j] += g_rows[i][s] * x_rows[j][s] over s in [s0, s1), vectorized (the tail's missing lanes load as 0).
template <typename scalar_t, int64_t G>
void accumulate_outer(const scalar_t* const* g_rows, const scalar_t* const* x_rows, int64_t s0, int64_t s1,
                      typename VecIO<scalar_t>::Vec (&acc)[G][G]) {
  using IO = VecIO<scalar_t>;
  using Vec = typename IO::Vec;
  constexpr int64_t L = IO::kSize;
  const auto step = [&](int64_t s, int64_t n) {
    Vec gv[G], xv[G];
    for (int64_t i = 0; i < G; ++i) {
      gv[i] = IO::load(g_rows[i] + s, n);
      xv[i] = IO::load(x_rows[i] + s, n);
    }
    for (int64_t i = 0; i < G; ++i)
      for (int64_t j = 0; j < G; ++j) acc[i][j] = at::vec::fmadd(gv[i], xv[j], acc[i][j]);
  };
  int64_t s = s0;
  for (; s + L <= s1; s += L) step(s, L);
  if (s < s1) step(s, s1 - s);
}

// grad_A[o, c] = sum_{b, s} g[b, o, s] x[b, c, s] in float64. Tasks of about 64K elements (their g and x stay in L2
// across the (o, c) blocks); per task and kGradBlock x kGradBlock block of (o, c), one vector accumulator per pair
// in registers (a block past C repeats channel C - 1 and its sums are dropped). The task sums are added in task
// order.
template <typename scalar_t>
Mat mixing_grad(const at::Tensor& g, const at::Tensor& x) {
  using IO = VecIO<scalar_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  constexpr int64_t G = kGradBlock;
  const int64_t B = x.size(0), C = x.size(1), S = plane_numel(x);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), gs0 = g.stride(0), gs1 = g.stride(1);
  const scalar_t *xp = x.const_data_ptr<scalar_t>(), *gp = g.const_data_ptr<scalar_t>();
  const MixTiling t = make_mix_tiling(B, C, S, 4 * kRowChunk);
  std::vector<math_t> partial(t.tasks() * C * C);
  const auto add = [](Vec u, Vec v) { return u + v; };
  at::parallel_for(0, t.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s0 = t.s0(task), s1 = std::min(S, s0 + t.tile_s), b1 = std::min(B, t.b0(task) + t.rows);
      for (int64_t o0 = 0; o0 < C; o0 += G) {
        for (int64_t c0 = 0; c0 < C; c0 += G) {
          Vec acc[G][G];
          for (int64_t i = 0; i < G; ++i)
            for (int64_t j = 0; j < G; ++j) acc[i][j] = Vec(0);
          for (int64_t b = t.b0(task); b < b1; ++b) {
            const scalar_t *g_rows[G], *x_rows[G];
            for (int64_t i = 0; i < G; ++i) {
              g_rows[i] = gp + b * gs0 + std::min(o0 + i, C - 1) * gs1;
              x_rows[i] = xp + b * xs0 + std::min(c0 + i, C - 1) * xs1;
            }
            accumulate_outer<scalar_t, G>(g_rows, x_rows, s0, s1, acc);
          }
          for (int64_t i = 0; i < std::min(G, C - o0); ++i)
            for (int64_t j = 0; j < std::min(G, C - c0); ++j)
              partial[(task * C + o0 + i) * C + c0 + j] = at::vec::vec_reduce_all<math_t>(add, acc[i][j]);
        }
      }
    }
  });
  Mat out(C * C, 0.0);
  for (int64_t task = 0; task < t.tasks(); ++task)
    for (int64_t i = 0; i < C * C; ++i) out[i] += static_cast<double>(partial[task * C * C + i]);
  return out;
}

// A parameter of the op `op` on x [B, C, ...]: shape `want`, x's accumulation dtype, x's device.
void check_param(const at::Tensor& x, const char* op, const char* name, const at::Tensor& t,
                 std::vector<int64_t> want) {
  const at::IntArrayRef shape(want);
  TORCH_CHECK(t.sizes() == shape, "dgmfast: ", op, " ", name, " must have shape ", shape, " (C = x.shape[1]), got ",
              t.sizes());
  const auto acc = acc_scalar_type(x.scalar_type());
  TORCH_CHECK(t.scalar_type() == acc, "dgmfast: ", op, " ", name, " must have dtype ", acc,
              " (the accumulation dtype of x's ", x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "dgmfast: ", op, " ", name, " must be on ", x.device(), ", got ", t.device());
}

void check_invconv_inputs(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lower,
                          const at::Tensor& upper, const at::Tensor& sign_s, const at::Tensor& log_abs_s) {
  TORCH_CHECK(x.dim() >= 2, "dgmfast: invconv x must be [B, C, ...], got shape ", x.sizes());
  const int64_t C = x.size(1);
  check_param(x, "invconv", "perm", perm, {C, C});
  check_param(x, "invconv", "lower", lower, {C, C});
  check_param(x, "invconv", "upper", upper, {C, C});
  check_param(x, "invconv", "sign_s", sign_s, {C});
  check_param(x, "invconv", "log_abs_s", log_abs_s, {C});
}

LUParams read_params(const at::Tensor& perm, const at::Tensor& lower, const at::Tensor& upper,
                     const at::Tensor& sign_s, const at::Tensor& log_abs_s) {
  const auto c = [](const at::Tensor& t) { return t.contiguous(); };
  return perm.scalar_type() == at::kDouble
             ? read_lu_params<double>(c(perm), c(lower), c(upper), c(sign_s), c(log_abs_s))
             : read_lu_params<float>(c(perm), c(lower), c(upper), c(sign_s), c(log_abs_s));
}

std::tuple<at::Tensor, at::Tensor> invconv_lu_fwd_cpu(const at::Tensor& x_in, const at::Tensor& perm,
                                                      const at::Tensor& lower, const at::Tensor& upper,
                                                      const at::Tensor& sign_s, const at::Tensor& log_abs_s,
                                                      bool reverse) {
  check_invconv_inputs(x_in, perm, lower, upper, sign_s, log_abs_s);
  const LUParams lu = read_params(perm, lower, upper, sign_s, log_abs_s);
  const at::Tensor x = plane_contiguous(x_in);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const auto acc = acc_scalar_type(x.scalar_type());
  const double plane = static_cast<double>(plane_numel(x));
  at::Tensor logdet = at::empty({x.size(0)}, x.options().dtype(acc));
  logdet.fill_(lu.log_abs_det * (reverse ? -plane : plane));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "invconv_lu_fwd_cpu", [&] {
    channel_mix<scalar_t>(x, mixing_matrix<opmath_t<scalar_t>>(reverse ? lu_inverse(lu) : lu_weight(lu), lu.C, false),
                          y);
  });
  return {y, logdet};
}

// Gradients of the LU parameters from grad_W: with W = P L M, grad_L = P^T grad_W M^T (strict lower part) and
// grad_M = L^T P^T grad_W (strict upper part for `upper`; its diagonal times diag for log_abs_s).
std::tuple<Mat, Mat, Mat> lu_param_grads(const LUParams& lu, const Mat& gw) {
  const int64_t C = lu.C;
  Mat glm(C * C), g_lower(C * C, 0.0), g_upper(C * C, 0.0), g_ls(C);
  for (int64_t i = 0; i < C; ++i) std::copy_n(gw.data() + i * C, C, glm.data() + lu.p[i] * C);  // P^T grad_W
  for (int64_t r = 0; r < C; ++r) {
    for (int64_t k = 0; k < r; ++k) {
      double s = 0;
      for (int64_t j = k; j < C; ++j) s += glm[r * C + j] * m_entry(lu, k, j);
      g_lower[r * C + k] = s;
    }
  }
  for (int64_t k = 0; k < C; ++k) {
    for (int64_t j = k; j < C; ++j) {
      double s = glm[k * C + j];
      for (int64_t r = k + 1; r < C; ++r) s += lu.lower[r * C + k] * glm[r * C + j];
      if (j == k) g_ls[k] = s * lu.diag[k];
      else g_upper[k * C + j] = s;
    }
  }
  return {g_lower, g_upper, g_ls};
}

// grad_W of the reverse map's A = W^-1: -A^T grad_A A^T.
Mat inverse_grad(const Mat& a, const Mat& ga, int64_t C) {
  Mat t(C * C, 0.0), out(C * C, 0.0);
  for (int64_t i = 0; i < C; ++i)  // t = A^T grad_A
    for (int64_t k = 0; k < C; ++k)
      for (int64_t j = 0; j < C; ++j) t[i * C + j] += a[k * C + i] * ga[k * C + j];
  for (int64_t i = 0; i < C; ++i)  // out = -t A^T
    for (int64_t j = 0; j < C; ++j) {
      double s = 0;
      for (int64_t k = 0; k < C; ++k) s += t[i * C + k] * a[j * C + k];
      out[i * C + j] = -s;
    }
  return out;
}

at::Tensor to_tensor(const Mat& m, const at::Tensor& like) {
  return at::from_blob(const_cast<double*>(m.data()), like.sizes(), at::TensorOptions().dtype(at::kDouble))
      .to(like.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

// x: the op's input in either direction (the map is linear in it, so grad_A needs only x and grad_y).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> invconv_lu_bwd_cpu(
    const at::Tensor& x_in, const at::Tensor& perm, const at::Tensor& lower, const at::Tensor& upper,
    const at::Tensor& sign_s, const at::Tensor& log_abs_s, const at::Tensor& gy_in, const at::Tensor& gld_in,
    bool reverse) {
  check_invconv_inputs(x_in, perm, lower, upper, sign_s, log_abs_s);
  check_same_shape(x_in, gy_in, "grad_y");
  const LUParams lu = read_params(perm, lower, upper, sign_s, log_abs_s);
  const int64_t C = lu.C;
  const at::Tensor x = plane_contiguous(x_in), gy = plane_contiguous(gy_in);
  at::Tensor gx = at::empty(x.sizes(), x.options());
  const Mat a = reverse ? lu_inverse(lu) : lu_weight(lu);
  Mat ga;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "invconv_lu_bwd_cpu", [&] {
    channel_mix<scalar_t>(gy, mixing_matrix<opmath_t<scalar_t>>(a, C, true), gx);
    ga = mixing_grad<scalar_t>(gy, x);
  });
  auto [g_lower, g_upper, g_ls] = lu_param_grads(lu, reverse ? inverse_grad(a, ga, C) : ga);
  const at::Tensor gld = gld_in.to(at::kDouble).contiguous();
  double gld_sum = 0;
  for (int64_t b = 0; b < gld.numel(); ++b) gld_sum += gld.const_data_ptr<double>()[b];
  const double plane = static_cast<double>(plane_numel(x));
  for (int64_t k = 0; k < C; ++k) g_ls[k] += (reverse ? -plane : plane) * gld_sum;
  return {gx, to_tensor(g_lower, lower), to_tensor(g_upper, upper),
          to_tensor(g_ls, log_abs_s)};
}

// ---- the dense form: y = W x with a given weight ----

void check_channel_mix_inputs(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() >= 2, "dgmfast: channel_mix x must be [B, C, ...], got shape ", x.sizes());
  check_param(x, "channel_mix", "weight", weight, {x.size(1), x.size(1)});
}

Mat read_matrix(const at::Tensor& w) {
  const at::Tensor w64 = w.to(at::kDouble).contiguous();
  return Mat(w64.const_data_ptr<double>(), w64.const_data_ptr<double>() + w64.numel());
}

at::Tensor channel_mix_fwd_cpu(const at::Tensor& x_in, const at::Tensor& weight) {
  check_channel_mix_inputs(x_in, weight);
  const at::Tensor x = plane_contiguous(x_in);
  at::Tensor y = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_mix_fwd_cpu", [&] {
    channel_mix<scalar_t>(x, mixing_matrix<opmath_t<scalar_t>>(read_matrix(weight), x.size(1), false), y);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> channel_mix_bwd_cpu(const at::Tensor& x_in, const at::Tensor& weight,
                                                       const at::Tensor& gy_in) {
  check_channel_mix_inputs(x_in, weight);
  check_same_shape(x_in, gy_in, "grad_y");
  const at::Tensor x = plane_contiguous(x_in), gy = plane_contiguous(gy_in);
  at::Tensor gx = at::empty(x.sizes(), x.options());
  Mat gw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_mix_bwd_cpu", [&] {
    channel_mix<scalar_t>(gy, mixing_matrix<opmath_t<scalar_t>>(read_matrix(weight), x.size(1), true), gx);
    gw = mixing_grad<scalar_t>(gy, x);
  });
  return {gx, to_tensor(gw, weight)};
}

// ---- the Autograd kernel of eager calls (autograd.h) ----
//
// Saves the op's inputs, as _setup_context (dgmfast/ops/invconv.py); perm and sign_s are fixed buffers and take no
// gradient.
using InvconvFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                     const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
using InvconvBwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, bool);

struct InvconvLUNode : public torch::autograd::Function<InvconvLUNode> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& perm, const at::Tensor& lower,
                                                const at::Tensor& upper, const at::Tensor& sign_s,
                                                const at::Tensor& log_abs_s, bool reverse) {
    static const auto op = dgmfast_op<InvconvFn>("invconv_lu_fwd");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, logdet] = op.call(x, perm, lower, upper, sign_s, log_abs_s, reverse);
    ctx->save_for_backward({x, perm, lower, upper, sign_s, log_abs_s});
    ctx->saved_data["reverse"] = reverse;
    return {y, logdet};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = dgmfast_op<InvconvBwdFn>("invconv_lu_bwd");
    const auto s = ctx->get_saved_variables();
    check_first_order("invconv_lu_fwd", ctx, 6);
    auto [gx, g_lower, g_upper, g_ls] =
        op.call(s[0], s[1], s[2], s[3], s[4], s[5], grads[0], grads[1], ctx->saved_data["reverse"].toBool());
    return {gx, at::Tensor(), g_lower, g_upper, at::Tensor(), g_ls, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> invconv_lu_fwd_autograd(const at::Tensor& x, const at::Tensor& perm,
                                                           const at::Tensor& lower, const at::Tensor& upper,
                                                           const at::Tensor& sign_s, const at::Tensor& log_abs_s,
                                                           bool reverse) {
  auto out = InvconvLUNode::apply(x, perm, lower, upper, sign_s, log_abs_s, reverse);
  return {out[0], out[1]};
}

using ChannelMixFn = at::Tensor(const at::Tensor&, const at::Tensor&);
using ChannelMixBwdFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&);

// Saves x and the weight, as _mix_setup_context (dgmfast/ops/invconv.py).
struct ChannelMixNode : public torch::autograd::Function<ChannelMixNode> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight) {
    static const auto op = dgmfast_op<ChannelMixFn>("channel_mix_fwd");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({x, weight});
    return op.call(x, weight);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op = dgmfast_op<ChannelMixBwdFn>("channel_mix_bwd");
    const auto s = ctx->get_saved_variables();
    check_first_order("channel_mix_fwd", ctx, 2);
    auto [gx, gw] = op.call(s[0], s[1], grads[0]);
    return {gx, gw};
  }
};

at::Tensor channel_mix_fwd_autograd(const at::Tensor& x, const at::Tensor& weight) {
  return ChannelMixNode::apply(x, weight);
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) {
  m.def("invconv_lu_fwd(Tensor x, Tensor perm, Tensor lower, Tensor upper, Tensor sign_s, Tensor log_abs_s, "
        "bool reverse) -> (Tensor, Tensor)");
  m.def("invconv_lu_bwd(Tensor x, Tensor perm, Tensor lower, Tensor upper, Tensor sign_s, Tensor log_abs_s, "
        "Tensor grad_y, Tensor grad_logdet, bool reverse) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("channel_mix_fwd(Tensor x, Tensor weight) -> Tensor");
  m.def("channel_mix_bwd(Tensor x, Tensor weight, Tensor grad_y) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("invconv_lu_fwd", &dgm::cpu::invconv_lu_fwd_cpu);
  m.impl("invconv_lu_bwd", &dgm::cpu::invconv_lu_bwd_cpu);
  m.impl("channel_mix_fwd", &dgm::cpu::channel_mix_fwd_cpu);
  m.impl("channel_mix_bwd", &dgm::cpu::channel_mix_bwd_cpu);
}

TORCH_LIBRARY_IMPL(dgmfast_C, Autograd, m) {
  m.impl("invconv_lu_fwd", &dgm::cpu::invconv_lu_fwd_autograd);
  m.impl("channel_mix_fwd", &dgm::cpu::channel_mix_fwd_autograd);
}
