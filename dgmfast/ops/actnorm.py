"""ActNorm (SPEC §3) as torch.library custom ops.

``dgmfast::actnorm_fwd`` maps x [B, C, ...] in either direction and returns (y, logdet);
``dgmfast::actnorm_bwd`` is its fused backward: one pass over x and grad_y writes grad_x and per-tile
channel sums, reduced over tiles in a fixed order into grad_loc and grad_log_scale (deterministic).
Backward saves only the three inputs. Backends: "cpu"/"cuda" call dgmfast._C (csrc/cpu/actnorm.cpp,
csrc/cuda/actnorm.cu), "triton" launches kernels/actnorm.py.
"""
import math

import torch
from torch import Tensor

from dgmfast.backends import register_op
from dgmfast.ops.common import custom_op, logdet_like, plane_contiguous, triton_acc
from dgmfast.reference.common import acc_dtype

register_op("actnorm")  # every backend takes float16/bfloat16/float32/float64


def _triton_tiles(B, S, device):
    """(BLOCK_B, BLOCK_S, nb, ns): tiles of about 2048 elements on a GPU (8192 in the interpreter)."""
    import triton
    target = 2048 if device.type == "cuda" else 8192
    block_s = min(triton.next_power_of_2(max(S, 1)), target)
    block_b = min(max(target // block_s, 1), triton.next_power_of_2(max(B, 1)))
    return block_b, block_s, -(-B // block_b), -(-S // block_s)


def _logdet(x, log_scale, reverse):
    plane = math.prod(x.shape[2:])
    ld = log_scale.sum(dtype=acc_dtype(x.dtype)) * (-plane if reverse else plane)
    return ld.expand(x.shape[0]).contiguous()


def _fwd_triton(x, loc, log_scale, reverse):
    from dgmfast.kernels.actnorm import _actnorm_fwd_kernel

    x = plane_contiguous(x)
    B, C, S = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    block_b, block_s, nb, ns = _triton_tiles(B, S, x.device)
    y = x.new_empty(x.shape)
    if C * nb * ns > 0:
        _actnorm_fwd_kernel[(C * nb * ns,)](
            x, loc.contiguous(), log_scale.contiguous(), y, B, C, S, nb, ns, x.stride(0), x.stride(1),
            REVERSE=reverse, ACC=triton_acc(x.dtype), BLOCK_B=block_b, BLOCK_S=block_s,
            num_warps=8 if block_b * block_s >= 2048 else 4)
    return y, _logdet(x, log_scale, reverse)


def _bwd_triton(x, loc, log_scale, gy, gld, reverse):
    from dgmfast.kernels.actnorm import _actnorm_bwd_kernel

    x, gy = plane_contiguous(x), plane_contiguous(gy)
    B, C, S = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    block_b, block_s, nb, ns = _triton_tiles(B, S, x.device)
    acc = acc_dtype(x.dtype)
    gx = x.new_empty(x.shape)
    partial = torch.empty((C, nb * ns, 2), dtype=acc, device=x.device)  # every slot written
    if C * nb * ns > 0:
        _actnorm_bwd_kernel[(C * nb * ns,)](
            x, loc.contiguous(), log_scale.contiguous(), gy, gx, partial, B, C, S, nb, ns,
            x.stride(0), x.stride(1), gy.stride(0), gy.stride(1),
            REVERSE=reverse, ACC=triton_acc(x.dtype), BLOCK_B=block_b, BLOCK_S=block_s,
            num_warps=8 if block_b * block_s >= 2048 else 4)
    sum_g, sum_gz = partial.sum(1).unbind(1)
    sign = -1.0 if reverse else 1.0
    scale = torch.exp(sign * log_scale.to(acc))
    g_loc = -sum_g if reverse else scale * sum_g
    g_log_scale = sign * (scale * sum_gz + S * gld.sum(dtype=acc))
    return gx, g_loc.to(x.dtype), g_log_scale.to(x.dtype)


@custom_op("dgmfast::actnorm_fwd", native_autograd=("cpu", "cuda"))
def actnorm_fwd(x: Tensor, loc: Tensor, log_scale: Tensor, reverse: bool, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _fwd_triton(x, loc, log_scale, reverse)
    return torch.ops.dgmfast_C.actnorm_fwd(x, loc, log_scale, reverse)


@actnorm_fwd.register_fake
def _(x, loc, log_scale, reverse, backend):
    return x.new_empty(x.shape), logdet_like(x)


@custom_op("dgmfast::actnorm_bwd")
def actnorm_bwd(x: Tensor, loc: Tensor, log_scale: Tensor, grad_y: Tensor, grad_logdet: Tensor, reverse: bool,
                backend: str) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _bwd_triton(x, loc, log_scale, grad_y, grad_logdet, reverse)
    return torch.ops.dgmfast_C.actnorm_bwd(x, loc, log_scale, grad_y, grad_logdet, reverse)


@actnorm_bwd.register_fake
def _(x, loc, log_scale, grad_y, grad_logdet, reverse, backend):
    return x.new_empty(x.shape), loc.new_empty(loc.shape), log_scale.new_empty(log_scale.shape)


def _setup_context(ctx, inputs, output):
    x, loc, log_scale, reverse, backend = inputs
    ctx.save_for_backward(x, loc, log_scale)
    ctx.params = (reverse, backend)


def _backward(ctx, grad_y, grad_logdet):
    x, loc, log_scale = ctx.saved_tensors
    gx, g_loc, g_log_scale = actnorm_bwd(x, loc, log_scale, grad_y, grad_logdet, *ctx.params)
    return gx, g_loc, g_log_scale, None, None


actnorm_fwd.register_autograd(_backward, setup_context=_setup_context)
