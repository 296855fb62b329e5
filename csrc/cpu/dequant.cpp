// Dequantization (SPEC §6), C++ CPU kernels: uniform dequantization with Philox noise drawn in the
// kernel (no noise tensor), its inverse, Gaussian noise with its log-density, and the Flow++
// sigmoid tail. Per-element math: csrc/include/dgmfast/dequant.h and philox.h.
#include "loops.h"

#include <dgmfast/dequant.h>
#include <dgmfast/philox.h>
#include <dgmfast/rows.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

namespace dgm::cpu {
namespace {

constexpr int64_t kSub = 512;  // elements per noise/convert buffer inside a chunk
constexpr double kLog2Pi = 1.8378770664093453;

double dequant_row_constant(int64_t D, int64_t mode, double alpha, int64_t n_bits) {
  return D * ((mode == kModeLogit ? std::log1p(-2.0 * alpha) : 0.0) - n_bits * std::log(2.0));
}

template <typename int_t, typename out_t, int MODE>
void uniform_dequantize_impl(const at::Tensor& x, uint64_t seed, int64_t shift, int64_t n_bits, double alpha_d,
                             at::Tensor& y, at::Tensor& logdet) {
  using IO = VecIO<out_t>;
  using math_t = typename IO::math_t;
  using Vec = typename IO::Vec;
  const int64_t B = x.size(0), N = row_numel(x), xs = row_stride(x);
  const int_t* xp = x.const_data_ptr<int_t>();
  out_t* yp = y.mutable_data_ptr<out_t>();
  const math_t inv_n = std::ldexp(1.0, -static_cast<int>(n_bits)), alpha = alpha_d;
  const Vec vinv_n(inv_n), valpha(alpha);
  parallel_rows<math_t>(B, N, logdet.mutable_data_ptr<math_t>(), [&](int64_t b, int64_t lo, int64_t hi) {
    alignas(64) float u[kSub];
    alignas(64) math_t q[kSub];
    Vec vacc(0);
    math_t acc = 0;
    for (int64_t s = lo; s < hi; s += kSub) {
      const int64_t m = std::min(kSub, hi - s);
      philox_uniform_fill(static_cast<uint64_t>(b * N + s), m, 0, seed, u);
      const int_t* xb = xp + b * xs + s;
      for (int64_t j = 0; j < m; ++j) q[j] = (static_cast<math_t>(xb[j] >> shift) + u[j]) * inv_n;
      int64_t j = 0;
      for (; j + IO::kSize <= m; j += IO::kSize) {
        Vec ld;
        IO::store(yp + b * N + s + j, dequant_map<MODE>(Vec::loadu(q + j), valpha, &ld));
        vacc = vacc + ld;
      }
      for (; j < m; ++j) {
        math_t ld;
        yp[b * N + s + j] = static_cast<out_t>(dequant_map<MODE>(q[j], alpha, &ld));
        acc += ld;
      }
    }
    return acc + at::vec::vec_reduce_all<math_t>([](Vec a, Vec c) { return a + c; }, vacc);
  });
}

template <typename in_t, typename int_t, int MODE>
void uniform_dequantize_rev_impl(const at::Tensor& y, int64_t n_bits, double alpha_d, at::Tensor& x,
                                 at::Tensor& logdet) {
  using math_t = opmath_t<in_t>;
  const int64_t B = y.size(0), N = row_numel(y), ys = row_stride(y);
  const in_t* yp = y.const_data_ptr<in_t>();
  int_t* xp = x.mutable_data_ptr<int_t>();
  const math_t n = std::ldexp(1.0, static_cast<int>(n_bits)), alpha = alpha_d;
  parallel_rows<math_t>(B, N, logdet.mutable_data_ptr<math_t>(), [&](int64_t b, int64_t lo, int64_t hi) {
    math_t acc = 0;
    for (int64_t i = lo; i < hi; ++i) {
      math_t ld;
      const math_t q = dequant_unmap<MODE>(static_cast<math_t>(yp[b * ys + i]), alpha, &ld);
      const math_t k = std::floor(n * q);
      xp[b * N + i] = static_cast<int_t>(k < 0 ? math_t(0) : (k > n - 1 ? n - 1 : k));
      acc -= ld;
    }
    return acc;
  });
}

template <typename int_t, typename out_t, int MODE>
void sigmoid_tail_fwd_impl(const at::Tensor& x, const at::Tensor& v, int64_t n_bits, double alpha_d, at::Tensor& y,
                           at::Tensor& logdet) {
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
    for (int64_t s = lo; s < hi; s += kSub) {
      const int64_t m = std::min(kSub, hi - s);
      for (int64_t j = 0; j < m; ++j) xf[j] = static_cast<math_t>(xp[b * xs + s + j]);
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

at::ScalarType logdet_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> uniform_dequantize_fwd_cpu(const at::Tensor& x_in, const at::Tensor& seed,
                                                              int64_t n_bits, int64_t in_bits, int64_t mode,
                                                              double alpha, at::ScalarType dtype) {
  const at::Tensor x = row_contiguous(x_in);
  const int64_t B = x.size(0), N = row_numel(x);
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(dtype));
  at::Tensor logdet = at::empty({B}, x.options().dtype(logdet_dtype(dtype)));
  const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
  AT_DISPATCH_INTEGRAL_TYPES(x.scalar_type(), "uniform_dequantize_fwd_cpu", [&] {
    using int_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "uniform_dequantize_fwd_cpu", [&] {
      const bool known = dispatch_dequant_mode(mode, [&](auto m) {
        uniform_dequantize_impl<int_t, scalar_t, decltype(m)::value>(x, s, in_bits - n_bits, n_bits, alpha, y,
                                                                     logdet);
      });
      TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
    });
  });
  logdet.add_(dequant_row_constant(N, mode, alpha, n_bits));
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor> uniform_dequantize_rev_cpu(const at::Tensor& y_in, int64_t n_bits, int64_t mode,
                                                              double alpha) {
  const at::Tensor y = row_contiguous(y_in);
  const int64_t B = y.size(0), N = row_numel(y);
  at::Tensor x = at::empty(y.sizes(), y.options().dtype(n_bits <= 8 ? at::kByte : at::kInt));
  at::Tensor logdet = at::empty({B}, y.options().dtype(logdet_dtype(y.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "uniform_dequantize_rev_cpu", [&] {
    using in_t = scalar_t;
    const bool known = dispatch_dequant_mode(mode, [&](auto m) {
      if (n_bits <= 8) {
        uniform_dequantize_rev_impl<in_t, uint8_t, decltype(m)::value>(y, n_bits, alpha, x, logdet);
      } else {
        uniform_dequantize_rev_impl<in_t, int32_t, decltype(m)::value>(y, n_bits, alpha, x, logdet);
      }
    });
    TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
  });
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
        philox_normal_fill(static_cast<uint64_t>(b * N + st), m, 0, s, z);
        for (int64_t j = 0; j < m; ++j) {
          ep[b * N + st + j] = static_cast<scalar_t>(z[j]);
          acc += static_cast<math_t>(z[j]) * static_cast<math_t>(z[j]);
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
  AT_DISPATCH_INTEGRAL_TYPES(x.scalar_type(), "dequantize_sigmoid_tail_fwd_cpu", [&] {
    using int_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "dequantize_sigmoid_tail_fwd_cpu", [&] {
      const bool known = dispatch_dequant_mode(mode, [&](auto m) {
        sigmoid_tail_fwd_impl<int_t, scalar_t, decltype(m)::value>(x, v, n_bits, alpha, y, logdet);
      });
      TORCH_CHECK(known, "dgmfast: unknown dequantization mode id ", mode);
    });
  });
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
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("uniform_dequantize_fwd", &dgm::cpu::uniform_dequantize_fwd_cpu);
  m.impl("uniform_dequantize_rev", &dgm::cpu::uniform_dequantize_rev_cpu);
  m.impl("gaussian_sample_log_prob", &dgm::cpu::gaussian_sample_log_prob_cpu);
  m.impl("dequantize_sigmoid_tail_fwd", &dgm::cpu::dequantize_sigmoid_tail_fwd_cpu);
  m.impl("dequantize_sigmoid_tail_bwd", &dgm::cpu::dequantize_sigmoid_tail_bwd_cpu);
}
