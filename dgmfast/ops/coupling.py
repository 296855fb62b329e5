"""Affine coupling (SPEC §1) as torch.library custom ops.

``dgmfast::affine_coupling_fwd`` maps x (either direction) and returns (y, logdet);
``dgmfast::affine_coupling_bwd`` is its fused backward. Backward saves only the three inputs
and recomputes s, exp(s) and s'(r). In the forward direction grad_shift is grad_y
("scale_shift") or grad_x ("shift_scale") itself, so no kernel writes it.
Backends: "cpu"/"cuda" call dgmfast._C (csrc/cpu/coupling.cpp, csrc/cuda/coupling.cu),
"triton" launches kernels/coupling.py.
"""
import torch
from torch import Tensor

from dgmfast.backends import register_op
from dgmfast.ops.common import (
    custom_op, logdet_like, row_contiguous, row_numel, row_stride, triton_acc, triton_row_config)

SCALE_MAP_IDS = {"exp": 0, "tanh": 1, "sigmoid": 2}

register_op("affine_coupling")  # every backend takes float16/bfloat16/float32/float64


def _fwd_triton(x, r, t, scale_map, clamp, eps, shift_first, reverse):
    from dgmfast.kernels.coupling import _affine_coupling_fwd_kernel

    x, r, t = row_contiguous(x), row_contiguous(r), row_contiguous(t)
    B, N = x.shape[0], row_numel(x)
    block, warps = triton_row_config(N, x.device)
    chunks = -(-N // block)
    y = x.new_empty(x.shape)
    partial = torch.empty((B, chunks), dtype=logdet_like(x).dtype, device=x.device)  # every slot written
    if B * chunks > 0:
        _affine_coupling_fwd_kernel[(B * chunks,)](
            x, r, t, y, partial, N, chunks, row_stride(x), row_stride(r), row_stride(t),
            clamp, eps, -1.0 if reverse else 1.0,
            SCALE_MAP=scale_map, EPS_ZERO=eps == 0.0, SHIFT_FIRST=shift_first, ACC=triton_acc(x.dtype),
            BLOCK=block, num_warps=warps)
    return y, partial.sum(1)


def _bwd_triton(x, r, t, gy, gld, scale_map, clamp, eps, shift_first, reverse):
    from dgmfast.kernels.coupling import _affine_coupling_bwd_kernel

    x, r, t, gy = row_contiguous(x), row_contiguous(r), row_contiguous(t), row_contiguous(gy)
    B, N = x.shape[0], row_numel(x)
    block, warps = triton_row_config(N, x.device)
    chunks = -(-N // block)
    gx, gr = x.new_empty(x.shape), x.new_empty(x.shape)
    gt = x.new_empty(x.shape if reverse else (0,))
    if B * chunks > 0:
        _affine_coupling_bwd_kernel[(B * chunks,)](
            x, r, t, gy, gld.contiguous(), gx, gr, gt, N, chunks,
            row_stride(x), row_stride(r), row_stride(t), row_stride(gy),
            clamp, eps, -1.0 if reverse else 1.0,
            SCALE_MAP=scale_map, EPS_ZERO=eps == 0.0, SHIFT_FIRST=shift_first, WRITE_GT=reverse,
            ACC=triton_acc(x.dtype), BLOCK=block, num_warps=warps)
    return gx, gr, gt


@custom_op("dgmfast::affine_coupling_fwd", native_autograd=("cpu", "cuda"))
def affine_coupling_fwd(x: Tensor, log_scale: Tensor, shift: Tensor, scale_map: int, clamp: float, eps: float,
                        shift_first: bool, reverse: bool, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _fwd_triton(x, log_scale, shift, scale_map, clamp, eps, shift_first, reverse)
    return torch.ops.dgmfast_C.affine_coupling_fwd(x, log_scale, shift, scale_map, clamp, eps, shift_first, reverse)


@affine_coupling_fwd.register_fake
def _(x, log_scale, shift, scale_map, clamp, eps, shift_first, reverse, backend):
    return x.new_empty(x.shape), logdet_like(x)


@custom_op("dgmfast::affine_coupling_bwd")
def affine_coupling_bwd(x: Tensor, log_scale: Tensor, shift: Tensor, grad_y: Tensor, grad_logdet: Tensor,
                        scale_map: int, clamp: float, eps: float, shift_first: bool, reverse: bool,
                        backend: str) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _bwd_triton(x, log_scale, shift, grad_y, grad_logdet, scale_map, clamp, eps, shift_first, reverse)
    return torch.ops.dgmfast_C.affine_coupling_bwd(x, log_scale, shift, grad_y, grad_logdet, scale_map, clamp,
                                                   eps, shift_first, reverse)


@affine_coupling_bwd.register_fake
def _(x, log_scale, shift, grad_y, grad_logdet, scale_map, clamp, eps, shift_first, reverse, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(x.shape if reverse else (0,))


def _setup_context(ctx, inputs, output):
    x, log_scale, shift, *params = inputs
    ctx.save_for_backward(x, log_scale, shift)
    ctx.params = params  # scale_map, clamp, eps, shift_first, reverse, backend


def _backward(ctx, grad_y, grad_logdet):
    x, log_scale, shift = ctx.saved_tensors
    _, _, _, shift_first, reverse, _ = ctx.params
    gx, gr, gt = affine_coupling_bwd(x, log_scale, shift, grad_y, grad_logdet, *ctx.params)
    if not reverse:
        gt = gx if shift_first else grad_y
    return gx, gr, gt, None, None, None, None, None, None


affine_coupling_fwd.register_autograd(_backward, setup_context=_setup_context)
