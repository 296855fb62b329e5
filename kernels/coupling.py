"""Affine coupling (SPEC §1), Triton kernels.

Grid: (B * num_chunks,), program pid maps chunk pid % num_chunks (BLOCK elements) of sample
pid // num_chunks and writes one partial log-det sum to partial[pid] ([B, num_chunks]); the launcher sums the [B, chunks] partials
(deterministic, no atomics). Math (see csrc/include/dgmfast/coupling.h, the same formulas):
    s   = sign * scale_map(r)      e = exp(s)
    out = (x + sign*t) * e  if SHIFT_FIRST else  x*e + sign*t
    grad_x = g*e,  grad_r = sign * s'(r) * (g*out_scaled + g_logdet),  grad_t = sign*(SHIFT_FIRST ? grad_x : g)
"""
import triton
import triton.language as tl

from dgmfast.kernels._math import sigmoid, softplus, tanh

SCALE_EXP, SCALE_TANH, SCALE_SIGMOID = 0, 1, 2


@triton.jit
def _affine_log_scale(r, clamp, eps, SCALE_MAP: tl.constexpr, EPS_ZERO: tl.constexpr):
    """(s, ds/dr) of the scale map."""
    if SCALE_MAP == 0:
        return r, tl.full(r.shape, 1.0, r.dtype)
    elif SCALE_MAP == 1:
        th = tanh(r / clamp)
        return clamp * th, 1.0 - th * th
    else:
        v = r + 2.0
        if EPS_ZERO:
            return -softplus(-v), sigmoid(-v)
        else:
            sg = sigmoid(v)
            d = sg + eps
            return tl.log(d), sg * (1.0 - sg) / d


@triton.jit
def _affine_coupling_fwd_kernel(
    x_ptr, r_ptr, t_ptr,        # inputs, each row-contiguous with its own batch stride
    y_ptr,                      # output [B, N] contiguous
    partial_ptr,                # [B, num_chunks] partial log-det sums
    N, num_chunks,              # elements per sample, chunks per sample
    x_row, r_row, t_row,        # batch strides
    clamp, eps, sign,           # runtime scalars; sign = -1 in reverse
    SCALE_MAP: tl.constexpr, EPS_ZERO: tl.constexpr, SHIFT_FIRST: tl.constexpr,
    ACC: tl.constexpr,          # math dtype: float32, or float64 for float64 inputs
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_chunks
    chunk = pid % num_chunks
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + row * x_row + offs, mask=mask, other=0.0).to(ACC)
    r = tl.load(r_ptr + row * r_row + offs, mask=mask, other=0.0).to(ACC)
    t = tl.load(t_ptr + row * t_row + offs, mask=mask, other=0.0).to(ACC)
    s, _ = _affine_log_scale(r, clamp, eps, SCALE_MAP, EPS_ZERO)
    s = sign * s
    e = tl.exp(s)
    if SHIFT_FIRST:
        y = (x + sign * t) * e
    else:
        y = x * e + sign * t
    tl.store(y_ptr + row * N + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(tl.where(mask, s, 0.0), axis=0))


@triton.jit
def _affine_coupling_bwd_kernel(
    x_ptr, r_ptr, t_ptr, gy_ptr,    # inputs and grad of the output, row-contiguous
    gld_ptr,                        # [B] grad of the log-det
    gx_ptr, gr_ptr, gt_ptr,         # outputs [B, N] contiguous; gt only when WRITE_GT
    N, num_chunks, x_row, r_row, t_row, gy_row,
    clamp, eps, sign,
    SCALE_MAP: tl.constexpr, EPS_ZERO: tl.constexpr, SHIFT_FIRST: tl.constexpr,
    WRITE_GT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_chunks
    chunk = pid % num_chunks
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + row * x_row + offs, mask=mask, other=0.0).to(ACC)
    r = tl.load(r_ptr + row * r_row + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(gy_ptr + row * gy_row + offs, mask=mask, other=0.0).to(ACC)
    gld = tl.load(gld_ptr + row).to(ACC)
    s, ds = _affine_log_scale(r, clamp, eps, SCALE_MAP, EPS_ZERO)
    e = tl.exp(sign * s)
    if SHIFT_FIRST:
        t = tl.load(t_ptr + row * t_row + offs, mask=mask, other=0.0).to(ACC)
        out_scaled = (x + sign * t) * e
    else:
        out_scaled = x * e
    gx = g * e
    gr = sign * ds * (g * out_scaled + gld)
    tl.store(gx_ptr + row * N + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(gr_ptr + row * N + offs, gr.to(gr_ptr.dtype.element_ty), mask=mask)
    if WRITE_GT:
        if SHIFT_FIRST:
            gt = sign * gx
        else:
            gt = sign * g
        tl.store(gt_ptr + row * N + offs, gt.to(gt_ptr.dtype.element_ty), mask=mask)
