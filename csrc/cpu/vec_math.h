// at::vec overloads of the dgm:: math primitives, so the templates of the family headers run
// vectorized on the CPU. Include this before any csrc/include/dgmfast/<family>.h.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace dgm {
using at::vec::Vectorized;

#define DGM_VEC_UNARY(name, method)                                                   \
  inline Vectorized<float> name(const Vectorized<float>& x) { return x.method(); }    \
  inline Vectorized<double> name(const Vectorized<double>& x) { return x.method(); }
DGM_VEC_UNARY(exp, exp)
DGM_VEC_UNARY(log, log)
DGM_VEC_UNARY(log1p, log1p)
DGM_VEC_UNARY(tanh, tanh)
DGM_VEC_UNARY(abs, abs)
#undef DGM_VEC_UNARY

template <typename T>
inline Vectorized<T> max(const Vectorized<T>& a, const Vectorized<T>& b) { return at::vec::maximum(a, b); }
template <typename T>
inline Vectorized<T> min(const Vectorized<T>& a, const Vectorized<T>& b) { return at::vec::minimum(a, b); }
}  // namespace dgm

#include <dgmfast/common.h>
