// Test hook for the vector math of vec_math.h: applies one of its functions to a contiguous float32 or
// float64 tensor, full vectors through the at::vec overload and the tail through a zero-padded vector, so
// tests can check each function's stated accuracy against float64 directly.
#include "vec_math.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <string>

namespace dgm::cpu {
namespace {

template <typename T, typename Fn>
void map_vectors(const T* x, T* y, int64_t n, Fn fn) {
  using Vec = at::vec::Vectorized<T>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) fn(Vec::loadu(x + i)).store(y + i);
  if (i < n) fn(Vec::loadu(x + i, n - i)).store(y + i, n - i);
}

at::Tensor vec_math_cpu(const at::Tensor& x_in, const std::string& fn) {
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
                    "x must be float32 or float64, got ", x_in.scalar_type());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vec_math_cpu", [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int64_t n = x.numel();
    if (fn == "exp_inline") map_vectors(xp, yp, n, [](const Vec& v) { return exp_inline(v); });
    else if (fn == "log1p") map_vectors(xp, yp, n, [](const Vec& v) { return log1p(v); });
    else if (fn == "tanh") map_vectors(xp, yp, n, [](const Vec& v) { return tanh(v); });
    else if (fn == "log_positive") map_vectors(xp, yp, n, [](const Vec& v) { return log_positive(v); });
    else if (fn == "log_positive_lut") map_vectors(xp, yp, n, [](const Vec& v) { return log_positive_lut(v); });
    else TORCH_CHECK_VALUE(false, "fn must be one of exp_inline, log1p, tanh, log_positive, log_positive_lut, got ", fn);
  });
  return y;
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) { m.def("vec_math(Tensor x, str fn) -> Tensor"); }

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) { m.impl("vec_math", &dgm::cpu::vec_math_cpu); }
