"""Gaussian posterior (SPEC §7) and diagonal-Gaussian mixture log-density (SPEC §9) as torch.library custom ops.

``dgmfast::reparameterize_fwd`` returns (z, kl, log_q); eps is given, or drawn in-kernel from a seed
(a CPU int64 scalar tensor, so torch.compile does not specialize on it): element (b, d) uses Philox
counter b*D + d on every backend. ``dgmfast::reparameterize_bwd`` recomputes eps from the seed: backward
saves mu, logvar and the seed only (and eps when the caller gave it, as it is an input).

``dgmfast::gaussian_mixture_fwd`` returns out ([N], or [N, D] with per_dim) in the math dtype (float32,
float64 for float64 inputs); ``dgmfast::gaussian_mixture_bwd`` recomputes the logits with the saved output
as the per-row logsumexp and returns the gradients of z, means, logvars and log_weights. ``band`` (a
1-D math-dtype tensor, usually empty) and ``band_offset`` give the pair weights of the MSS estimator: pair
(n, k) with o = (k - n - band_offset) mod K < len(band) takes log weight band[o] instead of
log_weights[k] (band weights are constants: no gradient).

Backends: "cpu" calls dgmfast._C (csrc/cpu/gaussian.cpp); "cuda" does so for reparameterize
(csrc/cuda/gaussian.cu); "triton" launches kernels/gaussian.py.
The mixture has no CUDA C++ kernel on purpose: it is a matrix-shaped op (an [N, K] tile of logits per
program, reduced over D, with an online logsumexp over K tiles), which Triton tiles and schedules well
on the GPU; a hand-written CUDA copy would duplicate that kernel without a new capability. So the cuda
backend refuses it with that reason and GPU tensors run on triton.
"""
import torch
from torch import Tensor

from dgmfast.backends import register_op
from dgmfast.ops.common import custom_op, row_contiguous, row_stride, triton_acc, triton_row_config
from dgmfast.reference.common import acc_dtype

MIXTURE_CUDA_REFUSAL = ("the mixture log-density is matrix-shaped ([N, K] logit tiles reduced over D); on GPUs "
                        "it runs on the triton backend, which dgmfast uses instead of a separate CUDA C++ kernel")


def _mixture_refusals(backend, device, dtype):
    return [MIXTURE_CUDA_REFUSAL] if backend == "cuda" else []


register_op("reparameterize")  # every backend takes float16/bfloat16/float32/float64
register_op("gaussian_mixture_log_prob", _mixture_refusals)


# ---- reparameterize ------------------------------------------------------------------------------

def _reparameterize_fwd_triton(mu, logvar, eps, seed):
    from dgmfast.kernels.gaussian import _reparameterize_fwd_kernel

    mu, logvar = row_contiguous(mu), row_contiguous(logvar)
    eps = row_contiguous(eps) if eps is not None else None
    B, D = mu.shape
    block, warps = triton_row_config(D, mu.device)
    chunks = -(-D // block)
    z = mu.new_empty(mu.shape)
    kl_part = torch.empty((B, chunks), dtype=acc_dtype(mu.dtype), device=mu.device)
    lq_part = torch.empty_like(kl_part)
    if B * chunks > 0:
        _reparameterize_fwd_kernel[(B * chunks,)](
            mu, logvar, eps if eps is not None else mu, z, kl_part, lq_part, D, chunks,
            row_stride(mu), row_stride(logvar), row_stride(eps) if eps is not None else 0, seed,
            HAS_EPS=eps is not None, ACC=triton_acc(mu.dtype), BLOCK=block, num_warps=warps)
    return z, kl_part.sum(1), lq_part.sum(1)


def _reparameterize_bwd_triton(mu, logvar, eps, seed, gz, gkl, glq):
    from dgmfast.kernels.gaussian import _reparameterize_bwd_kernel

    mu, logvar, gz = row_contiguous(mu), row_contiguous(logvar), row_contiguous(gz)
    eps = row_contiguous(eps) if eps is not None else None
    B, D = mu.shape
    block, warps = triton_row_config(D, mu.device)
    chunks = -(-D // block)
    gmu, glv = mu.new_empty(mu.shape), mu.new_empty(mu.shape)
    geps = mu.new_empty(mu.shape if eps is not None else (0,))
    if B * chunks > 0:
        _reparameterize_bwd_kernel[(B * chunks,)](
            mu, logvar, eps if eps is not None else mu, gz, gkl.contiguous(), glq.contiguous(), gmu, glv, geps,
            D, chunks, row_stride(mu), row_stride(logvar), row_stride(eps) if eps is not None else 0,
            row_stride(gz), seed, HAS_EPS=eps is not None, ACC=triton_acc(mu.dtype), BLOCK=block, num_warps=warps)
    return gmu, glv, geps


# cpu/cuda eager calls record the C++ node of dgmfast_C::reparameterize_fwd (csrc/cpu/gaussian.cpp), whose
# backward is _reparameterize_backward's call of dgmfast_C::reparameterize_bwd
@custom_op("dgmfast::reparameterize_fwd", native_autograd=("cpu", "cuda"))
def reparameterize_fwd(mu: Tensor, logvar: Tensor, eps: Tensor | None, seed: Tensor,
                       backend: str) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _reparameterize_fwd_triton(mu, logvar, eps, int(seed))
    return torch.ops.dgmfast_C.reparameterize_fwd(mu, logvar, eps, int(seed))


@reparameterize_fwd.register_fake
def _(mu, logvar, eps, seed, backend):
    acc = acc_dtype(mu.dtype)
    return mu.new_empty(mu.shape), mu.new_empty((mu.shape[0],), dtype=acc), mu.new_empty((mu.shape[0],), dtype=acc)


@custom_op("dgmfast::reparameterize_bwd")
def reparameterize_bwd(mu: Tensor, logvar: Tensor, eps: Tensor | None, seed: Tensor, grad_z: Tensor,
                       grad_kl: Tensor, grad_log_q: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _reparameterize_bwd_triton(mu, logvar, eps, int(seed), grad_z, grad_kl, grad_log_q)
    return torch.ops.dgmfast_C.reparameterize_bwd(mu, logvar, eps, int(seed), grad_z, grad_kl, grad_log_q)


@reparameterize_bwd.register_fake
def _(mu, logvar, eps, seed, grad_z, grad_kl, grad_log_q, backend):
    return mu.new_empty(mu.shape), mu.new_empty(mu.shape), mu.new_empty(mu.shape if eps is not None else (0,))


def _reparameterize_setup_context(ctx, inputs, output):
    mu, logvar, eps, seed, backend = inputs
    ctx.has_eps = eps is not None
    ctx.save_for_backward(mu, logvar, seed, *([eps] if eps is not None else []))
    ctx.backend = backend


def _reparameterize_backward(ctx, grad_z, grad_kl, grad_log_q):
    mu, logvar, seed, *eps = ctx.saved_tensors
    eps = eps[0] if ctx.has_eps else None
    gmu, glv, geps = reparameterize_bwd(mu, logvar, eps, seed, grad_z, grad_kl, grad_log_q, ctx.backend)
    return gmu, glv, (geps if ctx.has_eps else None), None, None


reparameterize_fwd.register_autograd(_reparameterize_backward, setup_context=_reparameterize_setup_context)


# ---- diagonal-Gaussian mixture -------------------------------------------------------------------

def _mixture_triton_config(n, k, d, device):
    """(BLOCK_N, BLOCK_K, BLOCK_D, num_warps): [64, 64] logit tiles on GPUs; the interpreter prefers
    tiles as large as the problem (fewer Python-level steps)."""
    import triton
    if device.type == "cuda":
        return 64, 64, 32, 4
    cap = lambda v, hi: min(max(triton.next_power_of_2(max(v, 1)), 16), hi)  # noqa: E731
    return cap(n, 128), cap(k, 128), cap(d, 64), 4


def _mixture_args(z, means, logvars, log_weights, band, band_offset):
    N, D = z.shape
    K = means.shape[0]
    return (N, K, D, band_offset, z.stride(0), z.stride(1), means.stride(0), means.stride(1),
            logvars.stride(0), logvars.stride(1), log_weights.stride(0))


def _mixture_fwd_triton(z, means, logvars, log_weights, band, band_offset, per_dim):
    from dgmfast.kernels import gaussian as kern

    N, D = z.shape
    bn, bk, bd, warps = _mixture_triton_config(N, means.shape[0], D, z.device)
    acc = acc_dtype(z.dtype)
    args = _mixture_args(z, means, logvars, log_weights, band, band_offset)
    meta = dict(NB=band.numel(), ACC=triton_acc(z.dtype), BLOCK_N=bn, num_warps=warps)
    band = band if band.numel() else log_weights  # never read when NB == 0
    if per_dim:
        out = torch.empty((N, D), dtype=acc, device=z.device)
        if N * D > 0:
            kern._mixture_per_dim_fwd_kernel[(-(-N // bn), -(-D // bd))](
                z, means, logvars, log_weights, band, out, *args, BLOCK_D=bd, **meta)
    else:
        out = torch.empty((N,), dtype=acc, device=z.device)
        if N > 0:
            kern._mixture_fwd_kernel[(-(-N // bn),)](z, means, logvars, log_weights, band, out, *args,
                                                     BLOCK_K=bk, **meta)
    return out


def _mixture_bwd_triton(z, means, logvars, log_weights, band, band_offset, per_dim, out, grad_out):
    from dgmfast.kernels import gaussian as kern

    N, D = z.shape
    K = means.shape[0]
    bn, bk, bd, warps = _mixture_triton_config(N, K, D, z.device)
    acc = acc_dtype(z.dtype)
    args = _mixture_args(z, means, logvars, log_weights, band, band_offset)
    meta = dict(NB=band.numel(), ACC=triton_acc(z.dtype), BLOCK_N=bn, num_warps=warps)
    band = band if band.numel() else log_weights  # never read when NB == 0
    out, grad_out = out.contiguous(), grad_out.contiguous()
    gw = torch.empty((K,), dtype=acc, device=z.device)
    if per_dim:
        gz = torch.empty((N, D), dtype=acc, device=z.device)
        gm, glv = torch.empty((K, D), dtype=acc, device=z.device), torch.empty((K, D), dtype=acc, device=z.device)
        dblocks = -(-D // bd)
        gw_part = torch.empty((K, dblocks), dtype=acc, device=z.device)
        if N * D > 0:
            kern._mixture_per_dim_bwd_z_kernel[(-(-N // bn), dblocks)](
                z, means, logvars, log_weights, band, out, grad_out, gz, *args, BLOCK_D=bd, **meta)
        if D > 0:
            kern._mixture_per_dim_bwd_params_kernel[(K, dblocks)](
                z, means, logvars, log_weights, band, out, grad_out, gm, glv, gw_part, *args, dblocks,
                BLOCK_D=bd, **meta)
            gw = gw_part.sum(1)
        else:
            gw.zero_()
    else:
        # g_z, g_m and g_lv are sums over tiles, accumulated in place by the program that owns them
        gz = torch.zeros((N, D), dtype=acc, device=z.device)
        gm, glv = torch.zeros((K, D), dtype=acc, device=z.device), torch.zeros((K, D), dtype=acc, device=z.device)
        if N > 0:
            kern._mixture_bwd_z_kernel[(-(-N // bn),)](
                z, means, logvars, log_weights, band, out, grad_out, gz, *args, BLOCK_K=bk, **meta)
        kern._mixture_bwd_params_kernel[(-(-K // bk),)](
            z, means, logvars, log_weights, band, out, grad_out, gm, glv, gw, *args, BLOCK_K=bk, **meta)
    return gz.to(z.dtype), gm.to(z.dtype), glv.to(z.dtype), gw.to(z.dtype)


@custom_op("dgmfast::gaussian_mixture_fwd")
def gaussian_mixture_fwd(z: Tensor, means: Tensor, logvars: Tensor, log_weights: Tensor, band: Tensor,
                         band_offset: int, per_dim: bool, backend: str) -> Tensor:
    if backend == "triton":
        return _mixture_fwd_triton(z, means, logvars, log_weights, band, band_offset, per_dim)
    return torch.ops.dgmfast_C.gaussian_mixture_fwd(z, means, logvars, log_weights, band, band_offset, per_dim)


@gaussian_mixture_fwd.register_fake
def _(z, means, logvars, log_weights, band, band_offset, per_dim, backend):
    return z.new_empty(tuple(z.shape) if per_dim else (z.shape[0],), dtype=acc_dtype(z.dtype))


@custom_op("dgmfast::gaussian_mixture_bwd")
def gaussian_mixture_bwd(z: Tensor, means: Tensor, logvars: Tensor, log_weights: Tensor, band: Tensor,
                         band_offset: int, per_dim: bool, out: Tensor, grad_out: Tensor,
                         backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _mixture_bwd_triton(z, means, logvars, log_weights, band, band_offset, per_dim, out, grad_out)
    return torch.ops.dgmfast_C.gaussian_mixture_bwd(z, means, logvars, log_weights, band, band_offset, per_dim, out,
                                                    grad_out)


@gaussian_mixture_bwd.register_fake
def _(z, means, logvars, log_weights, band, band_offset, per_dim, out, grad_out, backend):
    return (z.new_empty(z.shape), means.new_empty(means.shape), logvars.new_empty(logvars.shape),
            log_weights.new_empty(log_weights.shape))


def _mixture_setup_context(ctx, inputs, output):
    z, means, logvars, log_weights, band, band_offset, per_dim, backend = inputs
    ctx.save_for_backward(z, means, logvars, log_weights, band, output)
    ctx.params = (band_offset, per_dim, backend)


def _mixture_backward(ctx, grad_out):
    z, means, logvars, log_weights, band, out = ctx.saved_tensors
    band_offset, per_dim, backend = ctx.params
    gz, gm, glv, gw = gaussian_mixture_bwd(z, means, logvars, log_weights, band, band_offset, per_dim, out, grad_out,
                                           backend)
    return gz, gm, glv, gw, None, None, None, None


gaussian_mixture_fwd.register_autograd(_mixture_backward, setup_context=_mixture_setup_context)
