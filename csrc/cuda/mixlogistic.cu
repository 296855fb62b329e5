// Flow++ mixture-of-logistics coupling (SPEC §2), CUDA kernels: one element per thread, its K parameters
// read through their strides (layouts of mixlogistic_launch.h). Per-element math:
// csrc/include/dgmfast/mixlogistic.h, the same the C++ CPU kernels run. Schemas: csrc/cpu/mixlogistic.cpp.
#include "rows.cuh"

#include <dgmfast/mixlogistic.h>
#include <dgmfast/mixlogistic_launch.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace dgm::cuda {
namespace {

// Element e of row b at b*L.b + o*L.o + i*L.i (e = o*M + i).
struct ElemPos {
  int64_t b, o, i;
  __device__ __forceinline__ int64_t operator()(const ElemLayout& L) const { return b * L.b + o * L.o + i * L.i; }
};

template <typename scalar_t>
struct ParamPtrs {  // the K parameters of one element
  const scalar_t *pi, *mu, *l;
  int64_t pi_k, mu_k, l_k;
  template <typename T>
  __device__ __forceinline__ void operator()(int64_t k, T& p, T& m, T& s) const {
    p = static_cast<T>(pi[k * pi_k]);
    m = static_cast<T>(mu[k * mu_k]);
    s = static_cast<T>(l[k * l_k]);
  }
};

template <typename scalar_t, int MAP>
__global__ void mixlogistic_fwd_kernel(const scalar_t* __restrict__ x,  // input (y in reverse), strided
                                       const scalar_t* __restrict__ pi, const scalar_t* __restrict__ mu,
                                       const scalar_t* __restrict__ l,  // mixture parameters, strided
                                       const scalar_t* __restrict__ r, const scalar_t* __restrict__ t,
                                       scalar_t* __restrict__ out,                  // [B, N] contiguous
                                       opmath_t<scalar_t>* __restrict__ partial,  // [B, chunks]
                                       int64_t N, int64_t M, int64_t K, int64_t chunks, ElemLayout Lx,
                                       ElemLayout Lpi, ElemLayout Lmu, ElemLayout Ll, ElemLayout Lr,
                                       ElemLayout Lt, opmath_t<scalar_t> clamp, opmath_t<scalar_t> min_ls,
                                       int iters, bool shift_scale, bool reverse) {
  using T = opmath_t<scalar_t>;
  const int64_t b = blockIdx.x / chunks, e = (blockIdx.x % chunks) * kThreads + threadIdx.x;
  T ld = 0;
  if (e < N) {
    const ElemPos pos{b, e / M, e % M};
    const ParamPtrs<scalar_t> load{pi + pos(Lpi), mu + pos(Lmu), l + pos(Ll), Lpi.k, Lmu.k, Ll.k};
    const T xin = static_cast<T>(x[pos(Lx)]), rv = static_cast<T>(r[pos(Lr)]), tv = static_cast<T>(t[pos(Lt)]);
    T res;
    if (!reverse) {
      res = mixlogistic_fwd_elem<MAP>(xin, rv, tv, clamp, min_ls, shift_scale, K, load, &ld);
    } else {
      T s;
      const T v = mixlogistic_target<MAP>(xin, rv, tv, clamp, shift_scale, &s);
      T pi_max, l_max, mu_min, mu_max;
      load(0, pi_max, mu_min, l_max);
      mu_max = mu_min;
      for (int64_t k = 1; k < K; ++k) {
        T p, m, sc;
        load(k, p, m, sc);
        pi_max = dgm::max(pi_max, p);
        l_max = dgm::max(l_max, sc);
        mu_min = dgm::min(mu_min, m);
        mu_max = dgm::max(mu_max, m);
      }
      const T width = dgm::exp(dgm::max(l_max, min_ls)) * (dgm::abs(v) + T(1));
      const auto load_emq = [&](int64_t k, T& E, T& m, T& q) {
        T p, sc;
        load(k, p, m, sc);
        E = dgm::exp(p - pi_max);
        q = dgm::exp(-dgm::max(sc, min_ls));
      };
      const auto exact = [&](T xm) {
        const auto st = mix_stats<false>(xm, min_ls, K, load);
        return st.log_cdf() - st.log_sf();
      };
      res = mix_bisect(v, mu_min - width, mu_max + width, iters, K, load_emq, exact);
      ld = -(mix_logdet_term(res, min_ls, K, load) + s);
    }
    out[b * N + e] = static_cast<scalar_t>(res);
  }
  ld = block_sum(ld);
  if (threadIdx.x == 0) partial[blockIdx.x] = ld;
}

template <typename scalar_t, int MAP>
__global__ void mixlogistic_bwd_kernel(const scalar_t* __restrict__ x,  // the point in data space, strided
                                       const scalar_t* __restrict__ pi, const scalar_t* __restrict__ mu,
                                       const scalar_t* __restrict__ l, const scalar_t* __restrict__ r,
                                       const scalar_t* __restrict__ t,
                                       const scalar_t* __restrict__ gy,  // grad of the op's output, strided
                                       const opmath_t<scalar_t>* __restrict__ gld,  // [B]
                                       scalar_t* __restrict__ g_in, scalar_t* __restrict__ g_r,
                                       scalar_t* __restrict__ g_t,  // [B, N]; g_t nullptr: not written
                                       scalar_t* __restrict__ g_pi, scalar_t* __restrict__ g_mu,
                                       scalar_t* __restrict__ g_l,  // strided
                                       int64_t N, int64_t M, int64_t K, ElemLayout Lx, ElemLayout Lpi,
                                       ElemLayout Lmu, ElemLayout Ll, ElemLayout Lr, ElemLayout Lt, ElemLayout Lgy,
                                       ElemLayout Lgpi, ElemLayout Lgmu, ElemLayout Lgl, opmath_t<scalar_t> clamp,
                                       opmath_t<scalar_t> min_ls, bool shift_scale, bool reverse) {
  using T = opmath_t<scalar_t>;
  const int64_t rows_chunks = (N + kThreads - 1) / kThreads;
  const int64_t b = blockIdx.x / rows_chunks, e = (blockIdx.x % rows_chunks) * kThreads + threadIdx.x;
  if (e >= N) return;
  const ElemPos pos{b, e / M, e % M};
  const ParamPtrs<scalar_t> load{pi + pos(Lpi), mu + pos(Lmu), l + pos(Ll), Lpi.k, Lmu.k, Ll.k};
  scalar_t *gp = g_pi + pos(Lgpi), *gm = g_mu + pos(Lgmu), *gs = g_l + pos(Lgl);
  const T xv = static_cast<T>(x[pos(Lx)]);
  T gin, gr, gt;
  mixlogistic_bwd_elem<MAP>(
      xv, static_cast<T>(r[pos(Lr)]), static_cast<T>(t[pos(Lt)]), static_cast<T>(gy[pos(Lgy)]), gld[b], clamp,
      min_ls, shift_scale, reverse, K, loaded_terms(xv, min_ls, K, load), load,
      [&](int64_t k, T a, T m, T s) {
        gp[k * Lgpi.k] = static_cast<scalar_t>(a);
        gm[k * Lgmu.k] = static_cast<scalar_t>(m);
        gs[k * Lgl.k] = static_cast<scalar_t>(s);
      },
      &gin, &gr, &gt);
  g_in[b * N + e] = static_cast<scalar_t>(gin);
  g_r[b * N + e] = static_cast<scalar_t>(gr);
  if (g_t != nullptr) g_t[b * N + e] = static_cast<scalar_t>(gt);
}

std::tuple<at::Tensor, at::Tensor> mixlogistic_coupling_fwd_cuda(
    const at::Tensor& x, const at::Tensor& logits, const at::Tensor& means, const at::Tensor& log_scales,
    const at::Tensor& log_scale, const at::Tensor& shift, int64_t scale_map, double clamp, double min_log_scale,
    bool shift_scale, bool reverse) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MixInputs in = prepare_mix_inputs(x, logits, means, log_scales, log_scale, shift, nullptr);
  const int64_t B = in.sz.B, N = in.sz.N, chunks = N == 0 ? 1 : (N + kThreads - 1) / kThreads;
  at::Tensor y = at::empty(x.sizes(), x.options());
  const auto ld_dtype = acc_scalar_type(x.scalar_type());
  at::Tensor partial = at::zeros({B, chunks}, x.options().dtype(ld_dtype));
  if (B > 0 && N > 0) {
    dispatch_mix(x, scale_map, [&](auto tag, auto map) {
      using scalar_t = typename decltype(tag)::type;
      using math_t = opmath_t<scalar_t>;
      mixlogistic_fwd_kernel<scalar_t, decltype(map)::value>
          <<<B * chunks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              in.x.const_data_ptr<scalar_t>(), in.pi.const_data_ptr<scalar_t>(), in.mu.const_data_ptr<scalar_t>(),
              in.l.const_data_ptr<scalar_t>(), in.r.const_data_ptr<scalar_t>(), in.t.const_data_ptr<scalar_t>(),
              y.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<math_t>(), N, in.sz.M, in.sz.K, chunks,
              in.Lx, in.Lpi, in.Lmu, in.Ll, in.Lr, in.Lt, static_cast<math_t>(clamp),
              static_cast<math_t>(min_log_scale), std::is_same_v<math_t, double> ? 80 : 40, shift_scale, reverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {y, at::sum(partial, {1})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixlogistic_coupling_bwd_cuda(
    const at::Tensor& x, const at::Tensor& logits, const at::Tensor& means, const at::Tensor& log_scales,
    const at::Tensor& log_scale, const at::Tensor& shift, const at::Tensor& grad_out, const at::Tensor& grad_logdet,
    int64_t scale_map, double clamp, double min_log_scale, bool shift_scale, bool reverse) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MixInputs in = prepare_mix_inputs(x, logits, means, log_scales, log_scale, shift, &grad_out);
  check_same_shape(x, grad_out, "grad_out");
  const int64_t B = in.sz.B, N = in.sz.N, M = in.sz.M, ed = x.dim() - 1;
  ElemLayout Lgy, Lgpi, Lgmu, Lgl;
  const at::Tensor gy = with_layout(grad_out, ed, M, false, &Lgy), gld = grad_logdet.contiguous();
  at::Tensor gpi = grad_like(in.pi, ed, M, &Lgpi), gmu = grad_like(in.mu, ed, M, &Lgmu),
             gl = grad_like(in.l, ed, M, &Lgl);
  at::Tensor g_in = at::empty(x.sizes(), x.options()), g_r = at::empty(x.sizes(), x.options());
  // forward "scale_shift": grad_shift is grad_out itself (the caller aliases it)
  const bool write_gt = reverse || shift_scale;
  at::Tensor g_t = at::empty(write_gt ? x.sizes() : at::IntArrayRef{0}, x.options());
  if (B > 0 && N > 0) {
    dispatch_mix(x, scale_map, [&](auto tag, auto map) {
      using scalar_t = typename decltype(tag)::type;
      using math_t = opmath_t<scalar_t>;
      const int64_t blocks = B * ((N + kThreads - 1) / kThreads);
      mixlogistic_bwd_kernel<scalar_t, decltype(map)::value>
          <<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              in.x.const_data_ptr<scalar_t>(), in.pi.const_data_ptr<scalar_t>(), in.mu.const_data_ptr<scalar_t>(),
              in.l.const_data_ptr<scalar_t>(), in.r.const_data_ptr<scalar_t>(), in.t.const_data_ptr<scalar_t>(),
              gy.const_data_ptr<scalar_t>(), gld.const_data_ptr<math_t>(), g_in.mutable_data_ptr<scalar_t>(),
              g_r.mutable_data_ptr<scalar_t>(), write_gt ? g_t.mutable_data_ptr<scalar_t>() : nullptr,
              gpi.mutable_data_ptr<scalar_t>(), gmu.mutable_data_ptr<scalar_t>(), gl.mutable_data_ptr<scalar_t>(), N,
              M, in.sz.K, in.Lx, in.Lpi, in.Lmu, in.Ll, in.Lr, in.Lt, Lgy, Lgpi, Lgmu, Lgl,
              static_cast<math_t>(clamp), static_cast<math_t>(min_log_scale), shift_scale, reverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {g_in, gpi, gmu, gl, g_r, g_t};
}

}  // namespace
}  // namespace dgm::cuda

TORCH_LIBRARY_IMPL(dgmfast_C, CUDA, m) {
  m.impl("mixlogistic_coupling_fwd", &dgm::cuda::mixlogistic_coupling_fwd_cuda);
  m.impl("mixlogistic_coupling_bwd", &dgm::cuda::mixlogistic_coupling_bwd_cuda);
}
