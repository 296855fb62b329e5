"""Planar flows and IAF steps (SPEC §5) as torch.library custom ops.

``dgmfast::planar_flows_fwd(z, u, w, b)`` -> ``(z_L, logdet, pre_act)`` applies all L steps in one kernel;
``pre_act`` ([B, L] pre-activations a_l, accumulation dtype) is its only saved intermediate: with it
``dgmfast::planar_flows_bwd`` recomputes z_L = z_0 + sum_l u_hat_l tanh(a_l) and walks the steps backwards,
recovering z_l = z_{l+1} - u_hat_l tanh(a_l) (saved: the inputs plus B*L scalars, never [B, L, D]).
``dgmfast::iaf_step_fwd/_bwd``: the stable IAF step, element-wise, backward saves the three inputs.
Backends: "cpu" and "cuda" call dgmfast._C (csrc/cpu/vaeflows.cpp, csrc/cuda/vaeflows.cu: one warp per row
for planar flows), "triton" launches kernels/vaeflows.py.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from dgmfast.backends import register_op
from dgmfast.ops.common import (
    custom_op, logdet_like, row_contiguous, row_numel, row_stride, triton_acc, triton_row_config)
from dgmfast.reference.common import acc_dtype

register_op("planar_flows")
register_op("iaf_step")


def _last_contiguous(t):
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _param_strides(u, w, b):
    return ((u.stride(0) if u.dim() == 3 else 0), u.stride(-2), (w.stride(0) if w.dim() == 3 else 0), w.stride(-2),
            (b.stride(0) if b.dim() == 2 else 0), b.stride(-1))


def planar_coef(s, q):
    """(c, w.u_hat, dc/ds, dc/dq, d(w.u_hat)/ds) from s = w.u and q = w.w (csrc/include/dgmfast/vaeflows.h)."""
    nz = q > 0
    q_safe = torch.where(nz, q, torch.ones_like(q))
    m = F.softplus(s) - 1.0
    c = torch.where(nz, (m - s) / q_safe, torch.zeros_like(s))
    zero = torch.zeros_like(s)
    return (c, torch.where(nz, m, zero), torch.where(nz, -torch.sigmoid(-s) / q_safe, zero), -c / q_safe,
            torch.where(nz, torch.sigmoid(s), zero))


def _planar_blocks(B, D, device):
    import triton
    block_d = triton.next_power_of_2(max(D, 1))
    cap = 4096 if device.type == "cuda" else 16384
    block_b = max(1, min(triton.next_power_of_2(max(B, 1)), cap // block_d, 64))
    return block_b, block_d, triton.cdiv(B, block_b)


def _planar_fwd_triton(z, u, w, b):
    from dgmfast.kernels.vaeflows import _planar_fwd_kernel

    z, u, w = row_contiguous(z), _last_contiguous(u), _last_contiguous(w)
    B, D = z.shape
    L = w.shape[-2]
    acc = acc_dtype(z.dtype)
    out = z.new_empty(z.shape)
    logdet = z.new_empty((B,), dtype=acc)
    pre = z.new_empty((B, L), dtype=acc)
    block_b, block_d, programs = _planar_blocks(B, D, z.device)
    if B > 0:
        _planar_fwd_kernel[(programs,)](z, u, w, b, out, logdet, pre, B, D, L, row_stride(z), *_param_strides(u, w, b),
                                        ACC=triton_acc(z.dtype), BLOCK_B=block_b, BLOCK_D=block_d, num_warps=4)
    return out, logdet, pre


def _planar_bwd_triton(z, u, w, b, pre, gy, gld):
    from dgmfast.kernels.vaeflows import _planar_bwd_kernel

    z, u, w, gy = row_contiguous(z), _last_contiguous(u), _last_contiguous(w), row_contiguous(gy)
    B, D = z.shape
    L = w.shape[-2]
    shared_uw, shared_b = w.dim() == 2, b.dim() == 1
    block_b, block_d, programs = _planar_blocks(B, D, z.device)
    acc = acc_dtype(z.dtype)
    gz = z.new_empty(z.shape)
    gu = z.new_empty(u.shape if not shared_uw else (0,))
    gw = z.new_empty(w.shape if not shared_uw else (0,))
    gb = z.new_empty(b.shape if not shared_b else (0,))
    n_uw = programs if shared_uw else 0
    pa = torch.empty((n_uw, L, block_d), dtype=acc, device=z.device)  # every slot written
    pz = torch.empty_like(pa)
    pm = torch.empty((n_uw, L), dtype=acc, device=z.device)
    pb = torch.empty((programs if shared_b else 0, L), dtype=acc, device=z.device)
    if B > 0:
        _planar_bwd_kernel[(programs,)](
            z, u, w, pre.contiguous(), gy, gld.contiguous(), gz, gu, gw, gb, pa, pz, pm, pb, B, D, L,
            row_stride(z), row_stride(gy), *_param_strides(u, w, b)[:4],
            SHARED_UW=shared_uw, SHARED_B=shared_b, ACC=triton_acc(z.dtype), BLOCK_B=block_b, BLOCK_D=block_d,
            num_warps=4)
    if shared_uw:
        A, Zs, Gm = pa.sum(0)[:, :D], pz.sum(0)[:, :D], pm.sum(0)
        ua, wa = u.to(acc), w.to(acc)
        c, _, dc_ds, dc_dq, dm_ds = planar_coef((wa * ua).sum(-1), (wa * wa).sum(-1))
        gc = (A * wa).sum(-1)
        g_s, g_q = gc * dc_ds + Gm * dm_ds, gc * dc_dq
        gu = (A + g_s[:, None] * wa).to(u.dtype)
        gw = (c[:, None] * A + g_s[:, None] * ua + 2.0 * g_q[:, None] * wa + Zs).to(w.dtype)
    if shared_b:
        gb = pb.sum(0).to(b.dtype)
    return gz, gu, gw, gb


# cpu/cuda eager calls record the C++ node of dgmfast_C::planar_flows_fwd (csrc/cpu/vaeflows.cpp), whose backward
# is _planar_backward's call of dgmfast_C::planar_flows_bwd
@custom_op("dgmfast::planar_flows_fwd", native_autograd=("cpu", "cuda"))
def planar_flows_fwd(z: Tensor, u: Tensor, w: Tensor, b: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _planar_fwd_triton(z, u, w, b)
    return torch.ops.dgmfast_C.planar_flows_fwd(z, u, w, b)


@planar_flows_fwd.register_fake
def _(z, u, w, b, backend):
    return z.new_empty(z.shape), logdet_like(z), z.new_empty((z.shape[0], w.shape[-2]), dtype=acc_dtype(z.dtype))


@custom_op("dgmfast::planar_flows_bwd")
def planar_flows_bwd(z: Tensor, u: Tensor, w: Tensor, b: Tensor, pre_act: Tensor, grad_z: Tensor,
                     grad_logdet: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _planar_bwd_triton(z, u, w, b, pre_act, grad_z, grad_logdet)
    return torch.ops.dgmfast_C.planar_flows_bwd(z, u, w, b, pre_act, grad_z, grad_logdet)


@planar_flows_bwd.register_fake
def _(z, u, w, b, pre_act, grad_z, grad_logdet, backend):
    return z.new_empty(z.shape), u.new_empty(u.shape), w.new_empty(w.shape), b.new_empty(b.shape)


def _planar_setup(ctx, inputs, output):
    z, u, w, b, backend = inputs
    ctx.save_for_backward(z, u, w, b, output[2])
    ctx.backend = backend


def _planar_backward(ctx, grad_z, grad_logdet, _grad_pre):
    z, u, w, b, pre = ctx.saved_tensors
    gz, gu, gw, gb = planar_flows_bwd(z, u, w, b, pre, grad_z, grad_logdet, ctx.backend)
    return gz, gu, gw, gb, None


planar_flows_fwd.register_autograd(_planar_backward, setup_context=_planar_setup)


# ---- IAF step ----------------------------------------------------------------------------------------

def _iaf_fwd_triton(z, m, r, bias, reverse):
    from dgmfast.kernels.vaeflows import _iaf_fwd_kernel

    z, m, r = row_contiguous(z), row_contiguous(m), row_contiguous(r)
    B, N = z.shape[0], row_numel(z)
    block, warps = triton_row_config(N, z.device)
    chunks = -(-N // block)
    out = z.new_empty(z.shape)
    partial = torch.empty((B, chunks), dtype=acc_dtype(z.dtype), device=z.device)  # every slot written
    if B * chunks > 0:
        _iaf_fwd_kernel[(B * chunks,)](z, m, r, out, partial, N, chunks, row_stride(z), row_stride(m), row_stride(r),
                                       bias, REVERSE=reverse, ACC=triton_acc(z.dtype), BLOCK=block, num_warps=warps)
    return out, partial.sum(1)


def _iaf_bwd_triton(z, m, r, gy, gld, bias, reverse):
    from dgmfast.kernels.vaeflows import _iaf_bwd_kernel

    z, m, r, gy = row_contiguous(z), row_contiguous(m), row_contiguous(r), row_contiguous(gy)
    B, N = z.shape[0], row_numel(z)
    block, warps = triton_row_config(N, z.device)
    chunks = -(-N // block)
    gz, gm, gr = z.new_empty(z.shape), z.new_empty(z.shape), z.new_empty(z.shape)
    if B * chunks > 0:
        _iaf_bwd_kernel[(B * chunks,)](z, m, r, gy, gld.contiguous(), gz, gm, gr, N, chunks, row_stride(z),
                                       row_stride(m), row_stride(r), row_stride(gy), bias, REVERSE=reverse,
                                       ACC=triton_acc(z.dtype), BLOCK=block, num_warps=warps)
    return gz, gm, gr


@custom_op("dgmfast::iaf_step_fwd")
def iaf_step_fwd(z: Tensor, mean: Tensor, log_scale_raw: Tensor, sigmoid_bias: float, reverse: bool,
                 backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _iaf_fwd_triton(z, mean, log_scale_raw, sigmoid_bias, reverse)
    return torch.ops.dgmfast_C.iaf_step_fwd(z, mean, log_scale_raw, sigmoid_bias, reverse)


@iaf_step_fwd.register_fake
def _(z, mean, log_scale_raw, sigmoid_bias, reverse, backend):
    return z.new_empty(z.shape), logdet_like(z)


@custom_op("dgmfast::iaf_step_bwd")
def iaf_step_bwd(z: Tensor, mean: Tensor, log_scale_raw: Tensor, grad_out: Tensor, grad_logdet: Tensor,
                 sigmoid_bias: float, reverse: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _iaf_bwd_triton(z, mean, log_scale_raw, grad_out, grad_logdet, sigmoid_bias, reverse)
    return torch.ops.dgmfast_C.iaf_step_bwd(z, mean, log_scale_raw, grad_out, grad_logdet, sigmoid_bias, reverse)


@iaf_step_bwd.register_fake
def _(z, mean, log_scale_raw, grad_out, grad_logdet, sigmoid_bias, reverse, backend):
    return z.new_empty(z.shape), z.new_empty(z.shape), z.new_empty(z.shape)


def _iaf_setup(ctx, inputs, output):
    z, mean, r, bias, reverse, backend = inputs
    ctx.save_for_backward(z, mean, r)
    ctx.params = (bias, reverse, backend)


def _iaf_backward(ctx, grad_out, grad_logdet):
    z, mean, r = ctx.saved_tensors
    gz, gm, gr = iaf_step_bwd(z, mean, r, grad_out, grad_logdet, *ctx.params)
    return gz, gm, gr, None, None, None


iaf_step_fwd.register_autograd(_iaf_backward, setup_context=_iaf_setup)
