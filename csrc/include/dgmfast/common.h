// Scalar math shared by the C++ CPU and CUDA kernels.
//
// Every family header (coupling.h, ...) writes its per-element math as templates over a
// value type T and calls only the primitives below through `dgm::`. On CUDA T is float or
// double; on the CPU the same templates are instantiated with at::vec::Vectorized<float/double>
// (overloads in csrc/cpu/vec_math.h, included before the family headers) and with scalars for
// the tails, so the CPU tests exercise exactly the math the CUDA kernels run.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DGM_HOST_DEVICE __host__ __device__
#define DGM_INLINE __forceinline__
#else
#define DGM_HOST_DEVICE
#define DGM_INLINE inline
#endif

namespace dgm {

DGM_HOST_DEVICE DGM_INLINE float exp(float x) { return ::expf(x); }
DGM_HOST_DEVICE DGM_INLINE double exp(double x) { return ::exp(x); }
// exp for hot loops: on the CPU the vector overloads (csrc/cpu/vec_math.h) are inlined, no library call.
DGM_HOST_DEVICE DGM_INLINE float exp_inline(float x) { return ::expf(x); }
DGM_HOST_DEVICE DGM_INLINE double exp_inline(double x) { return ::exp(x); }
DGM_HOST_DEVICE DGM_INLINE float log(float x) { return ::logf(x); }
DGM_HOST_DEVICE DGM_INLINE double log(double x) { return ::log(x); }
DGM_HOST_DEVICE DGM_INLINE float log1p(float x) { return ::log1pf(x); }
DGM_HOST_DEVICE DGM_INLINE double log1p(double x) { return ::log1p(x); }
DGM_HOST_DEVICE DGM_INLINE float tanh(float x) { return ::tanhf(x); }
DGM_HOST_DEVICE DGM_INLINE double tanh(double x) { return ::tanh(x); }
DGM_HOST_DEVICE DGM_INLINE float abs(float x) { return ::fabsf(x); }
DGM_HOST_DEVICE DGM_INLINE double abs(double x) { return ::fabs(x); }
DGM_HOST_DEVICE DGM_INLINE float max(float a, float b) { return ::fmaxf(a, b); }
DGM_HOST_DEVICE DGM_INLINE double max(double a, double b) { return ::fmax(a, b); }
DGM_HOST_DEVICE DGM_INLINE float min(float a, float b) { return ::fminf(a, b); }
DGM_HOST_DEVICE DGM_INLINE double min(double a, double b) { return ::fmin(a, b); }

// x >= 0 ? a : b (the CPU overload for vectors selects per lane).
template <typename T>
DGM_HOST_DEVICE DGM_INLINE T where_nonneg(T x, T a, T b) { return x >= T(0) ? a : b; }

// Whether x < bound (the CPU overload for vectors: in any lane).
template <typename T>
DGM_HOST_DEVICE DGM_INLINE bool any_less(T x, T bound) { return x < bound; }

// softplus(x) = log(1 + exp(x)), stable for any |x|.
template <typename T>
DGM_HOST_DEVICE DGM_INLINE T softplus(T x) {
  return dgm::max(x, T(0)) + dgm::log1p(dgm::exp(T(0) - dgm::abs(x)));
}

// sigmoid(x) = 1 / (1 + exp(-x)); exp overflow gives 1/inf = 0, never NaN.
template <typename T>
DGM_HOST_DEVICE DGM_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + dgm::exp(T(0) - x));
}

// Accumulation type: float for half/bfloat16/float inputs, double for double (SPEC §0).
template <typename scalar_t> struct opmath { using type = float; };
template <> struct opmath<double> { using type = double; };
template <typename scalar_t> using opmath_t = typename opmath<scalar_t>::type;

}  // namespace dgm
