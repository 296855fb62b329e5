"""Dequantization (SPEC §6), Triton kernels. Grid: (B * num_chunks,), one partial log-det per program
(see kernels/coupling.py); noise is Philox from kernels/_random.py, bit-identical to the C++ kernels.

    q = (x + u) / n;  unit: y = q;  centered: y = q - 1/2;
    logit: p = alpha + (1 - 2 alpha) q, y = log p - log(1 - p), per-element log-det -log p - log(1 - p)
Per-sample constants (D*(log(1-2 alpha) - log n)) are added by the launchers.
"""
import triton
import triton.language as tl

from dgmfast.kernels._math import sigmoid, softplus
from dgmfast.kernels._random import philox_normal, philox_uniform

MODE_UNIT, MODE_CENTERED, MODE_LOGIT = 0, 1, 2


@triton.jit
def _dequant_map(q, alpha, MODE: tl.constexpr):
    """(y, per-element log-det) of the mode at q."""
    if MODE == 2:
        p = alpha + (1.0 - 2.0 * alpha) * q
        lp = tl.log(p)
        l1p = tl.log(1.0 - p)
        return lp - l1p, -(lp + l1p)
    elif MODE == 1:
        return q - 0.5, q * 0.0
    else:
        return q, q * 0.0


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    """A runtime scalar passed as two float32 parts (Triton passes Python floats as float32): exact to
    about 2^-48 relative in float64 math."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def _cube_point(x, u, ACC: tl.constexpr):
    """x + u kept below x + 1 (see cube_point in csrc/include/dgmfast/dequant.h)."""
    if ACC == tl.float64:
        return x + u  # exact (a 24-bit u plus an integer below 2^16): never reaches x + 1
    else:
        return tl.minimum(x + u, (x + 1.0) * 0.99999994039535522)  # 1 - 2^-24: the float32 below 1


@triton.jit
def _row_chunk(N, num_chunks, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_chunks
    offs = (pid % num_chunks) * BLOCK + tl.arange(0, BLOCK)
    return pid, row, offs, offs < N


@triton.jit
def _uniform_dequantize_fwd_kernel(
    x_ptr,                  # integer input, row-contiguous, read at its own width
    y_ptr,                  # [B, N] output (float dtype)
    partial_ptr,            # [B, num_chunks] partial log-det sums
    N, num_chunks, x_row,   # elements per sample, chunks per sample, batch stride of x
    seed, shift, inv_n, alpha_hi, alpha_lo,   # alpha = alpha_hi + alpha_lo (see _scalar)
    MODE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid, row, offs, mask = _row_chunk(N, num_chunks, BLOCK)
    alpha = _scalar(alpha_hi, alpha_lo, ACC)
    x = tl.load(x_ptr + row * x_row + offs, mask=mask, other=0)
    u = philox_uniform(row * N + offs, 0, seed)
    q = _cube_point((x >> shift).to(ACC), u.to(ACC), ACC) * inv_n
    y, ld = _dequant_map(q, alpha, MODE)
    tl.store(y_ptr + row * N + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(tl.where(mask, ld, 0.0), axis=0))


@triton.jit
def _uniform_dequantize_rev_kernel(
    y_ptr, x_ptr, partial_ptr,   # float input (row-contiguous), integer output [B, N], partial log-dets
    N, num_chunks, y_row, n, alpha_hi, alpha_lo,
    MODE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid, row, offs, mask = _row_chunk(N, num_chunks, BLOCK)
    alpha = _scalar(alpha_hi, alpha_lo, ACC)
    y = tl.load(y_ptr + row * y_row + offs, mask=mask, other=0.0).to(ACC)
    if MODE == 2:
        q = (sigmoid(y) - alpha) / (1.0 - 2.0 * alpha)
        ld = softplus(y) + softplus(-y)
    elif MODE == 1:
        q = y + 0.5
        ld = y * 0.0
    else:
        q = y
        ld = y * 0.0
    k = tl.minimum(tl.maximum(tl.floor(n * q), 0.0), n - 1.0)
    tl.store(x_ptr + row * N + offs, k.to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, -tl.sum(tl.where(mask, ld, 0.0), axis=0))


@triton.jit
def _gaussian_sample_log_prob_kernel(
    eps_ptr, partial_ptr,        # [B, N] output noise, [B, num_chunks] partial sums of -eps^2/2
    N, num_chunks, seed,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid, row, offs, mask = _row_chunk(N, num_chunks, BLOCK)
    z = philox_normal(row * N + offs, 0, seed).to(eps_ptr.dtype.element_ty)
    tl.store(eps_ptr + row * N + offs, z, mask=mask)
    za = z.to(ACC)  # the log-density is of the returned (rounded) eps
    tl.store(partial_ptr + pid, tl.sum(tl.where(mask, -0.5 * za * za, 0.0), axis=0))


@triton.jit
def _sigmoid_tail_fwd_kernel(
    x_ptr, v_ptr, y_ptr, partial_ptr,   # integer x, pre-sigmoid v (row-contiguous), y [B, N], partials
    N, num_chunks, x_row, v_row, inv_n, alpha_hi, alpha_lo,
    MODE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid, row, offs, mask = _row_chunk(N, num_chunks, BLOCK)
    alpha = _scalar(alpha_hi, alpha_lo, ACC)
    x = tl.load(x_ptr + row * x_row + offs, mask=mask, other=0).to(ACC)
    v = tl.load(v_ptr + row * v_row + offs, mask=mask, other=0.0).to(ACC)
    y, ld = _dequant_map((x + sigmoid(v)) * inv_n, alpha, MODE)
    ld = ld - softplus(v) - softplus(-v)
    tl.store(y_ptr + row * N + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(tl.where(mask, ld, 0.0), axis=0))


@triton.jit
def _sigmoid_tail_bwd_kernel(
    x_ptr, v_ptr, gy_ptr, gld_ptr, gv_ptr,   # inputs, grad of y, grad of logdet [B], grad of v [B, N]
    N, num_chunks, x_row, v_row, gy_row, inv_n, alpha_hi, alpha_lo,
    MODE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    _, row, offs, mask = _row_chunk(N, num_chunks, BLOCK)
    alpha = _scalar(alpha_hi, alpha_lo, ACC)
    x = tl.load(x_ptr + row * x_row + offs, mask=mask, other=0).to(ACC)
    v = tl.load(v_ptr + row * v_row + offs, mask=mask, other=0.0).to(ACC)
    gy = tl.load(gy_ptr + row * gy_row + offs, mask=mask, other=0.0).to(ACC)
    gld = tl.load(gld_ptr + row).to(ACC)
    sg = sigmoid(v)
    q = (x + sg) * inv_n
    if MODE == 2:
        p = alpha + (1.0 - 2.0 * alpha) * q
        k = (1.0 - 2.0 * alpha) / (p * (1.0 - p))
        g_q = gy * k + gld * k * (2.0 * p - 1.0)
    else:
        g_q = gy
    gv = g_q * sg * (1.0 - sg) * inv_n + gld * (1.0 - 2.0 * sg)
    tl.store(gv_ptr + row * N + offs, gv.to(gv_ptr.dtype.element_ty), mask=mask)
