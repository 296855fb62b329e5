"""Dequantization (SPEC §6) as torch.library custom ops.

``dgmfast::uniform_dequantize`` (integers -> dequantized floats, noise drawn in the kernel from a seed),
``dgmfast::uniform_dequantize_reverse`` (floats -> integers), ``dgmfast::gaussian_sample_log_prob``
and ``dgmfast::dequantize_sigmoid_tail_fwd/_bwd`` (the Flow++ variational-dequantization tail, with
gradient to v). Noise: Philox4x32-10 keyed by a 64-bit seed, counter = element index, identical on the
cpu, cuda and triton backends (and reproduced by the reference through dgmfast.ops.common).
"""
import math

import torch
from torch import Tensor

from dgmfast.backends import register_op
from dgmfast.ops.common import (
    custom_op, logdet_like, row_contiguous, row_numel, row_stride, triton_acc, triton_row_config)
from dgmfast.reference.common import acc_dtype
from dgmfast.reference.dequant import row_constant

MODE_IDS = {"unit": 0, "centered": 1, "logit": 2}
_MODE_NAMES = {v: k for k, v in MODE_IDS.items()}
_LOG_2PI = math.log(2 * math.pi)

for _op in ("uniform_dequantize", "gaussian_sample_log_prob", "dequantize_sigmoid_tail"):
    register_op(_op)


def _grid(x, n):
    block, warps = triton_row_config(n, x.device)
    chunks = -(-n // block)
    return block, warps, chunks


def _f32_parts(v):
    """(hi, lo) float32-representable parts of a float, hi + lo == v to ~2^-48 (see kernels/dequant.py)."""
    hi = float(torch.tensor(v, dtype=torch.float32))
    return hi, v - hi


def _partials(x, B, chunks, dtype):
    return torch.empty((B, chunks), dtype=acc_dtype(dtype), device=x.device)  # every slot written


# ---- uniform dequantization ------------------------------------------------------------------------

def _uniform_fwd_triton(x, seed, n_bits, in_bits, mode, alpha, dtype):
    from dgmfast.kernels.dequant import _uniform_dequantize_fwd_kernel

    x = row_contiguous(x)
    B, N = x.shape[0], row_numel(x)
    block, warps, chunks = _grid(x, N)
    y = torch.empty(x.shape, dtype=dtype, device=x.device)
    partial = _partials(x, B, chunks, dtype)
    if B * chunks > 0:
        _uniform_dequantize_fwd_kernel[(B * chunks,)](
            x, y, partial, N, chunks, row_stride(x), int(seed.item()), in_bits - n_bits, 2.0**-n_bits,
            *_f32_parts(alpha), MODE=mode, ACC=triton_acc(dtype), BLOCK=block, num_warps=warps)
    return y, partial.sum(1) + row_constant(N, _MODE_NAMES[mode], alpha, n_bits)


def _uniform_rev_triton(y, n_bits, mode, alpha):
    from dgmfast.kernels.dequant import _uniform_dequantize_rev_kernel

    y = row_contiguous(y)
    B, N = y.shape[0], row_numel(y)
    block, warps, chunks = _grid(y, N)
    x = torch.empty(y.shape, dtype=torch.uint8 if n_bits <= 8 else torch.int32, device=y.device)
    partial = _partials(y, B, chunks, y.dtype)
    if B * chunks > 0:
        _uniform_dequantize_rev_kernel[(B * chunks,)](
            y, x, partial, N, chunks, row_stride(y), float(2**n_bits), *_f32_parts(alpha),
            MODE=mode, ACC=triton_acc(y.dtype), BLOCK=block, num_warps=warps)
    return x, partial.sum(1) - row_constant(N, _MODE_NAMES[mode], alpha, n_bits)



@custom_op("dgmfast::uniform_dequantize")
def uniform_dequantize(x: Tensor, seed: Tensor, n_bits: int, in_bits: int, mode: int, alpha: float,
                       dtype: torch.dtype, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _uniform_fwd_triton(x, seed, n_bits, in_bits, mode, alpha, dtype)
    return torch.ops.dgmfast_C.uniform_dequantize_fwd(x, seed, n_bits, in_bits, mode, alpha, dtype)


@uniform_dequantize.register_fake
def _(x, seed, n_bits, in_bits, mode, alpha, dtype, backend):
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((x.shape[0],), dtype=acc_dtype(dtype))


@custom_op("dgmfast::uniform_dequantize_reverse")
def uniform_dequantize_reverse(y: Tensor, n_bits: int, mode: int, alpha: float,
                               backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _uniform_rev_triton(y, n_bits, mode, alpha)
    return torch.ops.dgmfast_C.uniform_dequantize_rev(y, n_bits, mode, alpha)


@uniform_dequantize_reverse.register_fake
def _(y, n_bits, mode, alpha, backend):
    return y.new_empty(y.shape, dtype=torch.uint8 if n_bits <= 8 else torch.int32), logdet_like(y)


# ---- Gaussian noise with its log-density ----------------------------------------------------------

def _gaussian_triton(shape, seed, dtype, device):
    from dgmfast.kernels.dequant import _gaussian_sample_log_prob_kernel

    eps = torch.empty(shape, dtype=dtype, device=device)
    B = shape[0]
    N = eps[0].numel() if B > 0 else 0
    block, warps, chunks = _grid(eps, N)
    partial = _partials(eps, B, chunks, dtype)
    if B * chunks > 0:
        _gaussian_sample_log_prob_kernel[(B * chunks,)](eps, partial, N, chunks, int(seed.item()),
                                                        ACC=triton_acc(dtype), BLOCK=block, num_warps=warps)
    return eps, partial.sum(1) - 0.5 * _LOG_2PI * N


@custom_op("dgmfast::gaussian_sample_log_prob")
def gaussian_sample_log_prob(shape: list[int], seed: Tensor, dtype: torch.dtype, device: torch.device,
                             backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _gaussian_triton(shape, seed, dtype, device)
    return torch.ops.dgmfast_C.gaussian_sample_log_prob(torch.empty(0, dtype=dtype, device=device), shape, seed)


@gaussian_sample_log_prob.register_fake
def _(shape, seed, dtype, device, backend):
    eps = torch.empty(shape, dtype=dtype, device=device)
    return eps, logdet_like(eps)


# ---- the Flow++ sigmoid tail ----------------------------------------------------------------------

def _tail_fwd_triton(x, v, n_bits, mode, alpha):
    from dgmfast.kernels.dequant import _sigmoid_tail_fwd_kernel

    x, v = row_contiguous(x), row_contiguous(v)
    B, N = v.shape[0], row_numel(v)
    block, warps, chunks = _grid(v, N)
    y = v.new_empty(v.shape)
    partial = _partials(v, B, chunks, v.dtype)
    if B * chunks > 0:
        _sigmoid_tail_fwd_kernel[(B * chunks,)](x, v, y, partial, N, chunks, row_stride(x), row_stride(v),
                                                2.0**-n_bits, *_f32_parts(alpha), MODE=mode,
                                                ACC=triton_acc(v.dtype),
                                                BLOCK=block, num_warps=warps)
    return y, partial.sum(1) + row_constant(N, _MODE_NAMES[mode], alpha, n_bits)


def _tail_bwd_triton(x, v, gy, gld, n_bits, mode, alpha):
    from dgmfast.kernels.dequant import _sigmoid_tail_bwd_kernel

    x, v, gy = row_contiguous(x), row_contiguous(v), row_contiguous(gy)
    B, N = v.shape[0], row_numel(v)
    block, warps, chunks = _grid(v, N)
    gv = v.new_empty(v.shape)
    if B * chunks > 0:
        _sigmoid_tail_bwd_kernel[(B * chunks,)](x, v, gy, gld.contiguous(), gv, N, chunks, row_stride(x),
                                                row_stride(v), row_stride(gy), 2.0**-n_bits, *_f32_parts(alpha),
                                                MODE=mode, ACC=triton_acc(v.dtype), BLOCK=block, num_warps=warps)
    return gv


@custom_op("dgmfast::dequantize_sigmoid_tail_fwd")
def dequantize_sigmoid_tail_fwd(x: Tensor, v: Tensor, n_bits: int, mode: int, alpha: float,
                                backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _tail_fwd_triton(x, v, n_bits, mode, alpha)
    return torch.ops.dgmfast_C.dequantize_sigmoid_tail_fwd(x, v, n_bits, mode, alpha)


@dequantize_sigmoid_tail_fwd.register_fake
def _(x, v, n_bits, mode, alpha, backend):
    return v.new_empty(v.shape), logdet_like(v)


@custom_op("dgmfast::dequantize_sigmoid_tail_bwd")
def dequantize_sigmoid_tail_bwd(x: Tensor, v: Tensor, grad_y: Tensor, grad_logdet: Tensor, n_bits: int, mode: int,
                                alpha: float, backend: str) -> Tensor:
    if backend == "triton":
        return _tail_bwd_triton(x, v, grad_y, grad_logdet, n_bits, mode, alpha)
    return torch.ops.dgmfast_C.dequantize_sigmoid_tail_bwd(x, v, grad_y, grad_logdet, n_bits, mode, alpha)


@dequantize_sigmoid_tail_bwd.register_fake
def _(x, v, grad_y, grad_logdet, n_bits, mode, alpha, backend):
    return v.new_empty(v.shape)


def _tail_setup_context(ctx, inputs, output):
    x, v, *params = inputs
    ctx.save_for_backward(x, v)
    ctx.params = params  # n_bits, mode, alpha, backend


def _tail_backward(ctx, grad_y, grad_logdet):
    x, v = ctx.saved_tensors
    return None, dequantize_sigmoid_tail_bwd(x, v, grad_y, grad_logdet, *ctx.params), None, None, None, None


dequantize_sigmoid_tail_fwd.register_autograd(_tail_backward, setup_context=_tail_setup_context)
