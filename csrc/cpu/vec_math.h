// at::vec overloads of the dgm:: math primitives, so the templates of the family headers run
// vectorized on the CPU. Include this before any csrc/include/dgmfast/<family>.h.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <limits>

namespace dgm {
using at::vec::Vectorized;

#define DGM_VEC_UNARY(name, method)                                                   \
  inline Vectorized<float> name(const Vectorized<float>& x) { return x.method(); }    \
  inline Vectorized<double> name(const Vectorized<double>& x) { return x.method(); }
DGM_VEC_UNARY(exp, exp)
DGM_VEC_UNARY(log, log)
DGM_VEC_UNARY(abs, abs)
#undef DGM_VEC_UNARY

// log1p(x) = log(u) * x / (u - 1) with u = 1 + x (Goldberg's correction of the rounding of 1 + x);
// x where u == 1, log(u) where u is inf. Sleef's log1p is several times slower than its log here.
template <typename T>
inline Vectorized<T> log1p(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1)), u = one + x, d = u - one;
  Vectorized<T> out = u.log() * x / d;
  out = Vectorized<T>::blendv(out, x, d == Vectorized<T>(T(0)));
  return Vectorized<T>::blendv(out, u.log(), u == Vectorized<T>(std::numeric_limits<T>::infinity()));
}

// tanh(x) = sign(x) * (1 - e) / (1 + e), e = exp(-2|x|) in (0, 1]: absolute error ~1 ulp of 1 (the
// kernels use tanh for bounded log-scales, where absolute error is what counts); Sleef's tanh is
// about 4x slower.
template <typename T>
inline Vectorized<T> tanh(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1)), e = (x.abs() * Vectorized<T>(T(-2))).exp();
  const Vectorized<T> t = (one - e) / (one + e);
  return Vectorized<T>::blendv(t, Vectorized<T>(T(0)) - t, x < Vectorized<T>(T(0)));
}

template <typename T>
inline Vectorized<T> where_nonneg(const Vectorized<T>& x, const Vectorized<T>& a, const Vectorized<T>& b) {
  return Vectorized<T>::blendv(b, a, x >= Vectorized<T>(T(0)));
}
template <typename T>
inline bool any_less(const Vectorized<T>& x, const Vectorized<T>& bound) {
  return (x < bound).zero_mask() != (1 << Vectorized<T>::size()) - 1;
}
template <typename T>
inline Vectorized<T> max(const Vectorized<T>& a, const Vectorized<T>& b) { return at::vec::maximum(a, b); }
template <typename T>
inline Vectorized<T> min(const Vectorized<T>& a, const Vectorized<T>& b) { return at::vec::minimum(a, b); }
}  // namespace dgm

#include <dgmfast/common.h>
