// Dequantization (SPEC §6), C++ CPU kernels: uniform dequantization with Philox noise drawn in the
// kernel (no noise tensor), its inverse, Gaussian noise with its log-density, and the Flow++
// sigmoid tail. Per-element math: csrc/include/dgmfast/dequant.h and philox.h.
#include "loops.h"
#include "random.h"

#include <dgmfast/dequant.h>
#include <dgmfast/philox.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/max.h>
#include <ATen/ops/min.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>

namespace dgm::cpu {
namespace {

constexpr int64_t kSub = 512;  // elements per noise/convert buffer inside a chunk
constexpr double kLog2Pi = 1.8378770664093453;

// Integer pixels must lie in [0, 2**bits): the kernels OR together x >> bits (nonzero for values
// >= 2**bits and, arithmetic shift, for negatives) while they read x, so the check costs no extra
// pass and also holds under torch.compile. On failure the message matches the Python validation.
void check_pixels(const at::Tensor& x, int64_t bits, const std::atomic<bool>& out_of_range) {
  if (!out_of_range.load()) return;
  TORCH_CHECK_VALUE(false, "x must have values in [0, ", int64_t(1) << bits, ") for ", bits, " bits, got values in [",
                    at::min(x).item<int64_t>(), ", ", at::max(x).item<int64_t>(), "]");
}

double dequant_row_constant(int64_t D, int64_t mode, double alpha, int64_t n_bits) {
  return D * ((mode == kModeLogit ? std::log1p(-2.0 * alpha) : 0.0) - n_bits * std::log(2.0));
}

// The points q = cube_point(x >> shift, u) / n of pixels x and noise u, a Vectorized<math_t> or one at
// a time; ORs the x >> in_bits (nonzero: out of range) into its state as it reads x. Float math from 8-
// or 32-bit pixels on SIMD builds loads them as one int32 vector; otherwise lane by lane.
template <typename int_t, typename math_t>
class DequantPoints {
 public:
  using Vec = at::vec::Vectorized<math_t>;

  DequantPoints(int shift, int64_t in_bits, int64_t n_bits)
      : shift_(shift), in_bits_(in_bits), inv_n_(std::ldexp(1.0, -static_cast<int>(n_bits))), vinv_n_(inv_n_) {}

  Vec operator()(const int_t* x, const float* u) { return unscaled(x, u) * vinv_n_; }
  // n q, the cube point before the scaling by 1/n.
  Vec unscaled(const int_t* x, const float* u) {
#ifdef DGM_PHILOX_SIMD
    if constexpr (kIntVec) {
      const IVec v = at::vec::convert_to_int32<int_t>(x);
      over_vec_ = over_vec_ | (v >> IVec(static_cast<int32_t>(in_bits_)));
      return cube_point<Vec, float>(at::vec::convert<float>(v >> IVec(shift_)), Vec::loadu(u));
    }
#endif
    alignas(64) math_t q[Vec::size()];
    for (int k = 0; k < Vec::size(); ++k) q[k] = point(x[k], u[k]);
    return Vec::loadu(q);
  }
  math_t operator()(int_t x, float u) { return point(x, u) * inv_n_; }
  bool out_of_range() const {
#ifdef DGM_PHILOX_SIMD
    if constexpr (kIntVec) {
      if (at::vec::vec_reduce_all<int32_t>([](IVec a, IVec b) { return a | b; }, over_vec_) != 0) return true;
    }
#endif
    return over_ != 0;
  }

 private:
  math_t point(int_t x, float u) {
    over_ |= x >> in_bits_;
    return cube_point(static_cast<math_t>(x >> shift_), static_cast<math_t>(u));
  }
  int shift_;
  int64_t in_bits_;
  math_t inv_n_;
  Vec vinv_n_;
  int64_t over_ = 0;
#ifdef DGM_PHILOX_SIMD
  using IVec = at::vec::Vectorized<int32_t>;
  static constexpr bool kIntVec = std::is_same_v<math_t, float> && (sizeof(int_t) == 1 || sizeof(int_t) == 4);
  IVec over_vec_{0};
#endif
};

// y = map(cube_point(x >> shift, u) / n) for each element, u = philox_uniform(b N + i), and per row the
// sum of the log-det terms. The noise comes in kSub-element blocks (philox_uniform_fill, SIMD where
// built); the map loop reads the pixels and the block's noise a vector at a time.
template <typename int_t, typename out_t, int MODE>
void uniform_dequantize_impl(const at::Tensor& x, uint64_t seed, int64_t in_bits, int64_t n_bits, double alpha_d,
                             at::Tensor& y, at::Tensor& logdet, std::atomic<bool>& out_of_range) {
  using IO = VecIO<out_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = x.size(0), N = row_numel(x), xs = row_stride(x);
  const int_t* xp = x.const_data_ptr<int_t>();
  out_t* yp = y.mutable_data_ptr<out_t>();
  const int shift = static_cast<int>(in_bits - n_bits);
  const math_t alpha = alpha_d;
  const math_t inv_n = std::ldexp(1.0, -static_cast<int>(n_bits));
  const Vec valpha(alpha), vslope((math_t(1) - math_t(2) * alpha) * inv_n);  // see logit_odds_factor
  const int group = logit_factor_group(alpha_d);
  // the odds and factors of logit_odds_factor are >= alpha (1 - alpha): normal floats, for log_positive_lut,
  // unless alpha is (nearly) subnormal
  const bool normal_logs = alpha_d >= 2.0 * std::numeric_limits<float>::min();
  const auto log_of = [&](const Vec& v) { return normal_logs ? log_positive_lut(v) : v.log(); };
  parallel_rows<math_t>(B, N, logdet.mutable_data_ptr<math_t>(), [&](int64_t b, int64_t lo, int64_t hi) {
    const int_t* xb = xp + b * xs;
    out_t* yb = yp + b * N;
    DequantPoints<int_t, math_t> points(shift, in_bits, n_bits);
    alignas(64) float u[kSub];
    Vec vacc(0);
    math_t acc = 0;
    for (int64_t s = lo; s < hi; s += kSub) {
      const int64_t m = std::min(kSub, hi - s);
      philox_uniform_fill(static_cast<uint64_t>(b * N + s), m, 0, seed, u);
      int64_t j = 0;
      if constexpr (MODE == kModeLogit) {  // one log per element: see logit_odds_factor
        while (j + IO::kSize <= m) {
          Vec prod(1);
          for (int k = 0; k < group && j + IO::kSize <= m; ++k, j += IO::kSize) {
            Vec factor;
            const Vec odds = logit_odds_factor(points.unscaled(xb + s + j, u + j), vslope, valpha, &factor);
            IO::store(yb + s + j, log_of(odds));
            prod = prod * factor;
          }
          vacc = vacc - log_of(prod);
        }
      } else {
        for (; j + IO::kSize <= m; j += IO::kSize) {
          Vec ld;
          IO::store(yb + s + j, dequant_map<MODE>(points(xb + s + j, u + j), valpha, &ld));
          vacc = vacc + ld;
        }
      }
      for (; j < m; ++j) {
        math_t ld;
        yb[s + j] = static_cast<out_t>(dequant_map<MODE>(points(xb[s + j], u[j]), alpha, &ld));
        acc += ld;
      }
    }
    if (points.out_of_range()) out_of_range.store(true);
    return acc + at::vec::vec_reduce_all<math_t>([](Vec a, Vec c) { return a + c; }, vacc);
  });
}

template <typename in_t, typename int_t, int MODE>
void uniform_dequantize_rev_impl(const at::Tensor& y, int64_t n_bits, double alpha_d, at::Tensor& x,
                                 at::Tensor& logdet, std::atomic<bool>& has_nan) {
  using math_t = opmath_t<in_t>;
  const int64_t B = y.size(0), N = row_numel(y), ys = row_stride(y);
  const in_t* yp = y.const_data_ptr<in_t>();
  int_t* xp = x.mutable_data_ptr<int_t>();
  const math_t n = std::ldexp(1.0, static_cast<int>(n_bits)), alpha = alpha_d;
  parallel_rows<math_t>(B, N, logdet.mutable_data_ptr<math_t>(), [&](int64_t b, int64_t lo, int64_t hi) {
    math_t acc = 0;
    bool nan = false;
    for (int64_t i = lo; i < hi; ++i) {
      math_t ld;
      const math_t q = dequant_unmap<MODE>(static_cast<math_t>(yp[b * ys + i]), alpha, &ld);
      const math_t k = std::floor(n * q);
      nan |= k != k;  // no integer to return (and casting NaN is undefined): raised below
      xp[b * N + i] = static_cast<int_t>(k >= 0 ? (k > n - 1 ? n - 1 : k) : math_t(0));
      acc -= ld;
    }
    if (nan) has_nan.store(true);
    return acc;
  });
}

template <typename int_t, typename out_t, int MODE>
void sigmoid_tail_fwd_impl(const at::Tensor& x, const at::Tensor& v, int64_t n_bits, double alpha_d, at::Tensor& y,
                           at::Tensor& logdet, std::atomic<bool>& out_of_range) {
  using IO = VecIO<out_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = x.size(0), N = row_numel(x), xs = row_stride(x), vs = row_stride(v);
  const int_t* xp = x.const_data_ptr<int_t>();
  const out_t* vp = v.const_data_ptr<out_t>();
  out_t* yp = y.mutable_data_ptr<out_t>();
  const math_t inv_n = std::ldexp(1.0, -static_cast<int>(n_bits)), alpha = alpha_d;
  const Vec vinv_n(inv_n), valpha(alpha);
  parallel_rows<math_t>(B, N, logdet.mutable_data_ptr<math_t>(), [&](int64_t b, int64_t lo, int64_t hi) {
    alignas(64) math_t xf[kSub];
    Vec vacc(0);
    math_t acc = 0;
    int64_t over = 0;
    for (int64_t s = lo; s < hi; s += kSub) {
      const int64_t m = std::min(kSub, hi - s);
      const int_t* xb = xp + b * xs + s;
      for (int64_t j = 0; j < m; ++j) {
        over |= xb[j] >> n_bits;
        xf[j] = static_cast<math_t>(xb[j]);
      }
      const out_t* vb = vp + b * vs + s;
      out_t* yb = yp + b * N + s;
      int64_t j = 0;
      for (; j + IO::kSize <= m; j += IO::kSize) {
        Vec ld;
        IO::store(yb + j, sigmoid_tail_fwd_elem<MODE>(Vec::loadu(xf + j), IO::load(vb + j), vinv_n, valpha, &ld));
        vacc = vacc + ld;
      }
      for (; j < m; ++j) {
        math_t ld;
        yb[j] = static_cast<out_t>(sigmoid_tail_fwd_elem<MODE>(xf[j], static_cast<math_t>(vb[j]), inv_n, alpha, &ld));
        acc += ld;
      }
    }
    if (over != 0) out_of_range.store(true);
    return acc + at::vec::vec_reduce_all<math_t>([](Vec a, Vec c) { return a + c; }, vacc);
  });
}

template <typename int_t, typename out_t, int MODE>
void sigmoid_tail_bwd_impl(const at::Tensor& x, const at::Tensor& v, const at::Tensor& gy, const at::Tensor& gld,
                           int64_t n_bits, double alpha_d, at::Tensor& gv) {
  using IO = VecIO<out_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = x.size(0), N = row_numel(x), xs = row_stride(x), vs = row_stride(v), gs = row_stride(gy);
  const int_t* xp = x.const_data_ptr<int_t>();
  const out_t *vp = v.const_data_ptr<out_t>(), *gyp = gy.const_data_ptr<out_t>();
  const math_t* gldp = gld.const_data_ptr<math_t>();
  out_t* gvp = gv.mutable_data_ptr<out_t>();
  const math_t inv_n = std::ldexp(1.0, -static_cast<int>(n_bits)), alpha = alpha_d;
  const Vec vinv_n(inv_n), valpha(alpha);
  parallel_rows<math_t>(B, N, nullptr, [&](int64_t b, int64_t lo, int64_t hi) {
    alignas(64) math_t xf[kSub];
    const math_t g_ld = gldp[b];
    const Vec vg_ld(g_ld);
    for (int64_t s = lo; s < hi; s += kSub) {
      const int64_t m = std::min(kSub, hi - s);
      for (int64_t j = 0; j < m; ++j) xf[j] = static_cast<math_t>(xp[b * xs + s + j]);
      const out_t *vb = vp + b * vs + s, *gb = gyp + b * gs + s;
      out_t* ob = gvp + b * N + s;
      int64_t j = 0;
      for (; j + IO::kSize <= m; j += IO::kSize) {
        IO::store(ob + j, sigmoid_tail_bwd_elem<MODE>(Vec::loadu(xf + j), IO::load(vb + j), vinv_n, valpha,
                                                      IO::load(gb + j), vg_ld));
      }
      for (; j < m; ++j) {
        ob[j] = static_cast<out_t>(sigmoid_tail_bwd_elem<MODE>(xf[j], static_cast<math_t>(vb[j]), inv_n, alpha,
                                                               static_cast<math_t>(gb[j]), g_ld));
      }
    }
    return math_t(0);
  });
}

at::ScalarType logdet_dtype(at::ScalarType t) { return acc_scalar_type(t); }

std::tuple<at::Tensor, at::Tensor> uniform_dequantize_fwd_cpu(const at::Tensor& x_in, const at::Tensor& seed,
                                                              int64_t n_bits, int64_t in_bits, int64_t mode,
                                                              double alpha, at::ScalarType dtype) {
  const at::Tensor x = row_contiguous(x_in);
  const int64_t B = x.size(0), N = row_numel(x);
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(dtype));
  at::Tensor logdet = at::empty({B}, x.options().dtype(logdet_dtype(dtype)));
  const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
  std::atomic<bool> out_of_range{false};
  AT_DISPATCH_INTEGRAL_TYPES(x.scalar_type(), "uniform_dequantize_fwd_cpu", [&] {
    using int_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "uniform_dequantize_fwd_cpu", [&] {
      const bool known = dispatch_dequant_mode(mode, [&](auto m) {
        uniform_dequantize_impl<int_t, scalar_t, decltype(m)::value>(x, s, in_bits, n_bits, alpha, y, logdet,
                                                                     out_of_range);
      });
      TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
    });
  });
  check_pixels(x, in_bits, out_of_range);
  logdet.add_(dequant_row_constant(N, mode, alpha, n_bits));
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor> uniform_dequantize_rev_cpu(const at::Tensor& y_in, int64_t n_bits, int64_t mode,
                                                              double alpha) {
  const at::Tensor y = row_contiguous(y_in);
  const int64_t B = y.size(0), N = row_numel(y);
  at::Tensor x = at::empty(y.sizes(), y.options().dtype(n_bits <= 8 ? at::kByte : at::kInt));
  at::Tensor logdet = at::empty({B}, y.options().dtype(logdet_dtype(y.scalar_type())));
  std::atomic<bool> has_nan{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "uniform_dequantize_rev_cpu", [&] {
    using in_t = scalar_t;
    const bool known = dispatch_dequant_mode(mode, [&](auto m) {
      if (n_bits <= 8) {
        uniform_dequantize_rev_impl<in_t, uint8_t, decltype(m)::value>(y, n_bits, alpha, x, logdet, has_nan);
      } else {
        uniform_dequantize_rev_impl<in_t, int32_t, decltype(m)::value>(y, n_bits, alpha, x, logdet, has_nan);
      }
    });
    TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
  });
  TORCH_CHECK_VALUE(!has_nan.load(), "x (reverse=True: the dequantized values) must not contain NaN");
  logdet.sub_(dequant_row_constant(N, mode, alpha, n_bits));
  return {x, logdet};
}

std::tuple<at::Tensor, at::Tensor> gaussian_sample_log_prob_cpu(const at::Tensor& like, at::IntArrayRef shape,
                                                                const at::Tensor& seed) {
  at::Tensor eps = at::empty(shape, like.options());
  const int64_t B = shape.empty() ? 1 : shape[0], N = B == 0 ? 0 : eps.numel() / B;
  at::Tensor log_prob = at::empty({B}, like.options().dtype(logdet_dtype(like.scalar_type())));
  const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "gaussian_sample_log_prob_cpu", [&] {
    using math_t = opmath_t<scalar_t>;
    scalar_t* ep = eps.mutable_data_ptr<scalar_t>();
    parallel_rows<math_t>(B, N, log_prob.mutable_data_ptr<math_t>(), [&](int64_t b, int64_t lo, int64_t hi) {
      alignas(64) float z[kSub];
      math_t acc = 0;
      for (int64_t st = lo; st < hi; st += kSub) {
        const int64_t m = std::min(kSub, hi - st);
        philox_normal_block(static_cast<uint64_t>(b * N + st), 0, s, m, z);
        for (int64_t j = 0; j < m; ++j) {
          const scalar_t e = static_cast<scalar_t>(z[j]);  // the log-density is of the returned eps
          ep[b * N + st + j] = e;
          acc += static_cast<math_t>(e) * static_cast<math_t>(e);
        }
      }
      return math_t(-0.5) * acc;
    });
  });
  log_prob.sub_(0.5 * kLog2Pi * N);
  return {eps, log_prob};
}

std::tuple<at::Tensor, at::Tensor> dequantize_sigmoid_tail_fwd_cpu(const at::Tensor& x_in, const at::Tensor& v_in,
                                                                   int64_t n_bits, int64_t mode, double alpha) {
  const at::Tensor x = row_contiguous(x_in), v = row_contiguous(v_in);
  const int64_t B = x.size(0), N = row_numel(x);
  at::Tensor y = at::empty(v.sizes(), v.options());
  at::Tensor logdet = at::empty({B}, v.options().dtype(logdet_dtype(v.scalar_type())));
  std::atomic<bool> out_of_range{false};
  AT_DISPATCH_INTEGRAL_TYPES(x.scalar_type(), "dequantize_sigmoid_tail_fwd_cpu", [&] {
    using int_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "dequantize_sigmoid_tail_fwd_cpu", [&] {
      const bool known = dispatch_dequant_mode(mode, [&](auto m) {
        sigmoid_tail_fwd_impl<int_t, scalar_t, decltype(m)::value>(x, v, n_bits, alpha, y, logdet, out_of_range);
      });
      TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
    });
  });
  check_pixels(x, n_bits, out_of_range);
  logdet.add_(dequant_row_constant(N, mode, alpha, n_bits));
  return {y, logdet};
}

at::Tensor dequantize_sigmoid_tail_bwd_cpu(const at::Tensor& x_in, const at::Tensor& v_in, const at::Tensor& gy_in,
                                           const at::Tensor& gld_in, int64_t n_bits, int64_t mode, double alpha) {
  const at::Tensor x = row_contiguous(x_in), v = row_contiguous(v_in), gy = row_contiguous(gy_in);
  const at::Tensor gld = gld_in.contiguous();
  at::Tensor gv = at::empty(v.sizes(), v.options());
  AT_DISPATCH_INTEGRAL_TYPES(x.scalar_type(), "dequantize_sigmoid_tail_bwd_cpu", [&] {
    using int_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "dequantize_sigmoid_tail_bwd_cpu", [&] {
      const bool known = dispatch_dequant_mode(mode, [&](auto m) {
        sigmoid_tail_bwd_impl<int_t, scalar_t, decltype(m)::value>(x, v, gy, gld, n_bits, alpha, gv);
      });
      TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
    });
  });
  return gv;
}

// The Philox words of counters first .. first + count - 1 as the CPU kernels make them (philox_words in
// random.h: SIMD where built), as uint32 bits in an int32 [4, count] tensor; tests compare them with the
// scalar generator's.
at::Tensor philox_words_cpu(const at::Tensor& seed, int64_t first_counter, int64_t count, int64_t stream) {
  TORCH_CHECK_VALUE(count >= 0, "count must be >= 0, got ", count);
  at::Tensor w = at::empty({4, count}, seed.options().dtype(at::kInt));
  uint32_t* p = reinterpret_cast<uint32_t*>(w.mutable_data_ptr<int32_t>());
  philox_words(static_cast<uint64_t>(first_counter), count, static_cast<uint32_t>(stream),
               static_cast<uint64_t>(seed.item<int64_t>()), p, p + count, p + 2 * count, p + 3 * count);
  return w;
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) {
  m.def("uniform_dequantize_fwd(Tensor x, Tensor seed, int n_bits, int in_bits, int mode, float alpha, "
        "ScalarType dtype) -> (Tensor, Tensor)");
  m.def("uniform_dequantize_rev(Tensor y, int n_bits, int mode, float alpha) -> (Tensor, Tensor)");
  m.def("gaussian_sample_log_prob(Tensor like, int[] shape, Tensor seed) -> (Tensor, Tensor)");
  m.def("dequantize_sigmoid_tail_fwd(Tensor x, Tensor v, int n_bits, int mode, float alpha) -> (Tensor, Tensor)");
  m.def("dequantize_sigmoid_tail_bwd(Tensor x, Tensor v, Tensor grad_y, Tensor grad_logdet, int n_bits, int mode, "
        "float alpha) -> Tensor");
  m.def("philox_words(Tensor seed, int first_counter, int count, int stream) -> Tensor");
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("uniform_dequantize_fwd", &dgm::cpu::uniform_dequantize_fwd_cpu);
  m.impl("uniform_dequantize_rev", &dgm::cpu::uniform_dequantize_rev_cpu);
  m.impl("gaussian_sample_log_prob", &dgm::cpu::gaussian_sample_log_prob_cpu);
  m.impl("dequantize_sigmoid_tail_fwd", &dgm::cpu::dequantize_sigmoid_tail_fwd_cpu);
  m.impl("dequantize_sigmoid_tail_bwd", &dgm::cpu::dequantize_sigmoid_tail_bwd_cpu);
  m.impl("philox_words", &dgm::cpu::philox_words_cpu);
}
