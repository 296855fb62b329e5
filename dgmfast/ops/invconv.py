"""Invertible 1x1 convolution (SPEC §4) as torch.library custom ops.

LU form: ``dgmfast::invconv_lu_fwd`` maps x [B, C, ...] to ``y = A x`` over the channels, ``A = W`` (forward) or
``W^-1`` (reverse) with ``W = P L (U + diag(sign_s * exp(log_abs_s)))``, and returns (y, logdet);
``dgmfast::invconv_lu_bwd`` is its backward: ``grad_x = A^T grad_y`` and the LU parameters' gradients through
``grad_A = sum_{b,s} grad_y x^T``. Dense form: ``dgmfast::channel_mix_fwd(x, weight)`` is ``y = weight x`` alone
(InvConv1x1(lu=False) adds its cached log-det) and ``dgmfast::channel_mix_bwd`` returns ``(grad_x, grad_weight)``.
Backward saves only the inputs.

Backends: "cpu" calls dgmfast._C (csrc/cpu/invconv.cpp), which assembles W (or W^-1, float64 triangular
solves) inside the op and records a C++ graph node in eager calls; "triton" streams x through
kernels/invconv.py and does the [C, C] algebra with torch (the reference's lu_weight / lu_inverse, and the chain
rule through W = P L M in float64 for the parameter gradients). The cuda backend refuses: CUDA tensors take the
triton backend.
"""
import math

import torch
from torch import Tensor

from dgmfast.backends import register_op
from dgmfast.ops.common import custom_op, logdet_like, plane_contiguous, triton_acc
from dgmfast.reference import invconv as ref
from dgmfast.reference.common import acc_dtype

CUDA_REFUSAL = ("the cuda backend has no invertible 1x1 conv kernel: the triton backend's channel-mixing kernel "
                "covers CUDA tensors (see dgmfast/ops/invconv.py); use triton")


def _refusals(backend, device, dtype):
    return [CUDA_REFUSAL] if backend == "cuda" else []


register_op("invconv_lu", _refusals)
register_op("channel_mix", _refusals)


def _mix_triton(x, a):
    """out = a @ x over the channels of x [B, C, ...] (a [C, C], any strides) with the Triton kernel."""
    import triton
    from dgmfast.kernels.invconv import _invconv_mix_kernel

    x = plane_contiguous(x)
    B, C, S = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    out = x.new_empty(x.shape)
    cuda = x.device.type == "cuda"
    block_o = min(triton.next_power_of_2(max(C, 1)), 32 if cuda else 256)
    block_s = min(triton.next_power_of_2(max(S, 1)), max((2048 if cuda else 8192) // block_o, 16))
    no, ns = -(-C // block_o), -(-S // block_s)
    if B * no * ns > 0:
        _invconv_mix_kernel[(B * no * ns,)](x, a, out, C, S, no, ns, x.stride(0), x.stride(1), a.stride(0),
                                            a.stride(1), ACC=triton_acc(x.dtype), BLOCK_O=block_o, BLOCK_S=block_s,
                                            num_warps=4)
    return out


def _mixing_grad_triton(g, x):
    """sum_{b, s} g[b, :, s] x[b, :, s]^T [C, C] in the accumulation dtype: Triton tile sums, reduced in order."""
    import triton
    from dgmfast.kernels.invconv import _invconv_grad_kernel

    g, x = plane_contiguous(g), plane_contiguous(x)
    B, C, S = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    block_c = triton.next_power_of_2(max(C, 1))
    block_s = min(triton.next_power_of_2(max(S, 1)), max((4096 if x.device.type == "cuda" else 16384) // block_c, 16))
    ns = -(-S // block_s)
    partial = torch.empty((B * ns, C, C), dtype=acc_dtype(x.dtype), device=x.device)  # every slot written
    if B * ns > 0 and C > 0:
        _invconv_grad_kernel[(B * ns,)](g, x, partial, C, S, ns, g.stride(0), g.stride(1), x.stride(0), x.stride(1),
                                        ACC=triton_acc(x.dtype), BLOCK_C=block_c, BLOCK_S=block_s, num_warps=4)
    return partial.sum(0)


def _mixing_matrix(params, reverse):
    """W (in the parameters' dtype) or W^-1 (float64 solves, cast back), as the reference."""
    with torch.no_grad():
        return ref.lu_inverse(*params) if reverse else ref.lu_weight(*params)


def _fwd_triton(x, params, reverse):
    a = _mixing_matrix(params, reverse)
    return _mix_triton(x, a.to(x.dtype)), ref.invconv_logdet(x, params[4].sum(dtype=acc_dtype(x.dtype)), reverse)


def _bwd_triton(x, params, grad_y, grad_logdet, reverse):
    perm, lower, upper, sign_s, log_abs_s = params
    a = _mixing_matrix(params, reverse)
    gx = _mix_triton(grad_y, a.to(x.dtype).T)
    g_a = _mixing_grad_triton(grad_y, x).double()
    if reverse:  # A = W^-1: grad_W = -A^T grad_A A^T
        a64 = a.double()
        g_a = -(a64.T @ g_a @ a64.T)
    g_lower, g_upper, g_ls = _lu_param_grads(params, g_a)
    plane = math.prod(x.shape[2:])
    g_ls = g_ls + (-plane if reverse else plane) * grad_logdet.sum(dtype=torch.float64)
    return gx, g_lower.to(lower.dtype), g_upper.to(upper.dtype), g_ls.to(log_abs_s.dtype)


def _lu_param_grads(params, g_w):
    """Gradients of lower, upper, log_abs_s (float64) from grad_W of W = P L M (M = U + diag(sign_s e^log_abs_s)):
    grad_L = P^T grad_W M^T (strict lower part), grad_M = L^T P^T grad_W (strict upper part; diagonal times
    the diagonal of M), as csrc/cpu/invconv.cpp."""
    perm, lower, upper, sign_s, log_abs_s = (p.double() for p in params)
    eye = torch.eye(perm.shape[0], dtype=torch.float64, device=perm.device)
    diag = sign_s * torch.exp(log_abs_s)
    g_lm = perm.T @ g_w
    g_m = (torch.tril(lower, -1) + eye).T @ g_lm
    g_lower = torch.tril(g_lm @ (torch.triu(upper, 1) + torch.diag(diag)).T, -1)
    return g_lower, torch.triu(g_m, 1), g_m.diagonal() * diag


@custom_op("dgmfast::invconv_lu_fwd", native_autograd=("cpu",))
def invconv_lu_fwd(x: Tensor, perm: Tensor, lower: Tensor, upper: Tensor, sign_s: Tensor, log_abs_s: Tensor,
                   reverse: bool, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _fwd_triton(x, (perm, lower, upper, sign_s, log_abs_s), reverse)
    return torch.ops.dgmfast_C.invconv_lu_fwd(x, perm, lower, upper, sign_s, log_abs_s, reverse)


@invconv_lu_fwd.register_fake
def _(x, perm, lower, upper, sign_s, log_abs_s, reverse, backend):
    return x.new_empty(x.shape), logdet_like(x)


@custom_op("dgmfast::invconv_lu_bwd")
def invconv_lu_bwd(x: Tensor, perm: Tensor, lower: Tensor, upper: Tensor, sign_s: Tensor, log_abs_s: Tensor,
                   grad_y: Tensor, grad_logdet: Tensor, reverse: bool,
                   backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _bwd_triton(x, (perm, lower, upper, sign_s, log_abs_s), grad_y, grad_logdet, reverse)
    return torch.ops.dgmfast_C.invconv_lu_bwd(x, perm, lower, upper, sign_s, log_abs_s, grad_y, grad_logdet, reverse)


@invconv_lu_bwd.register_fake
def _(x, perm, lower, upper, sign_s, log_abs_s, grad_y, grad_logdet, reverse, backend):
    return x.new_empty(x.shape), lower.new_empty(lower.shape), upper.new_empty(upper.shape), log_abs_s.new_empty(
        log_abs_s.shape)  # contiguous, as every backend returns them


def _setup_context(ctx, inputs, output):
    *tensors, reverse, backend = inputs
    ctx.save_for_backward(*tensors)  # x (the input in either direction: the map is linear in it) and the parameters
    ctx.params = (reverse, backend)


def _backward(ctx, grad_y, grad_logdet):
    gx, g_lower, g_upper, g_ls = invconv_lu_bwd(*ctx.saved_tensors, grad_y, grad_logdet, *ctx.params)
    return gx, None, g_lower, g_upper, None, g_ls, None, None


invconv_lu_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---- the dense form: y = weight x ----------------------------------------------------------------------------

@custom_op("dgmfast::channel_mix_fwd", native_autograd=("cpu",))
def channel_mix_fwd(x: Tensor, weight: Tensor, backend: str) -> Tensor:
    if backend == "triton":
        return _mix_triton(x, weight.to(x.dtype))
    return torch.ops.dgmfast_C.channel_mix_fwd(x, weight)


@channel_mix_fwd.register_fake
def _(x, weight, backend):
    return x.new_empty(x.shape)


@custom_op("dgmfast::channel_mix_bwd")
def channel_mix_bwd(x: Tensor, weight: Tensor, grad_y: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _mix_triton(grad_y, weight.to(x.dtype).T), _mixing_grad_triton(grad_y, x).to(weight.dtype)
    return torch.ops.dgmfast_C.channel_mix_bwd(x, weight, grad_y)


@channel_mix_bwd.register_fake
def _(x, weight, grad_y, backend):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)  # contiguous, as every backend returns it


def _mix_setup_context(ctx, inputs, output):
    x, weight, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.backend = backend


def _mix_backward(ctx, grad_y):
    gx, gw = channel_mix_bwd(*ctx.saved_tensors, grad_y, ctx.backend)
    return gx, gw, None


channel_mix_fwd.register_autograd(_mix_backward, setup_context=_mix_setup_context)
