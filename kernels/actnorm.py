"""ActNorm (SPEC §3), Triton kernels.

A program handles one tile of one channel: BLOCK_B samples x BLOCK_S consecutive plane elements of
x viewed as [B, C, S] (planes contiguous, any batch/channel strides). Grid: (C * nb * ns,), program
pid -> channel pid // (nb*ns), tile pid % (nb*ns). Math (csrc/include/dgmfast/actnorm.h, the same):
    scale = exp(sign*log_scale[c]), shift = sign*loc[c]       sign = -1 in reverse
    out   = in*scale + shift  if REVERSE else  (in + shift)*scale
    grad_in = g*scale;  per tile: sum g, sum g*z with z = in (reverse) or in + shift (forward)
The backward writes the two tile sums to partial[pid, 0:2]; the launcher reduces them over tiles.
"""
import triton
import triton.language as tl


@triton.jit
def _actnorm_tile(pid, nb, ns, B, S, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr):
    """(channel, sample indices [BLOCK_B, 1], plane indices [1, BLOCK_S], mask) of tile pid."""
    per_channel = nb * ns
    c = pid // per_channel
    t = pid % per_channel
    b = ((t // ns) * BLOCK_B + tl.arange(0, BLOCK_B))[:, None]
    s = ((t % ns) * BLOCK_S + tl.arange(0, BLOCK_S))[None, :]
    return c, b, s, (b < B) & (s < S)


@triton.jit
def _actnorm_channel(loc_ptr, ls_ptr, c, REVERSE: tl.constexpr, ACC: tl.constexpr):
    loc = tl.load(loc_ptr + c).to(ACC)
    ls = tl.load(ls_ptr + c).to(ACC)
    if REVERSE:
        return tl.exp(-ls), -loc
    return tl.exp(ls), loc


@triton.jit
def _actnorm_fwd_kernel(
    x_ptr,                  # [B, C, S] input, planes contiguous
    loc_ptr, ls_ptr,        # [C] parameters
    y_ptr,                  # [B, C, S] contiguous output
    B, C, S, nb, ns,        # sizes; tiles per channel along B and S
    x_b, x_c,               # batch and channel strides of x
    REVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    c, b, s, mask = _actnorm_tile(pid, nb, ns, B, S, BLOCK_B, BLOCK_S)
    scale, shift = _actnorm_channel(loc_ptr, ls_ptr, c, REVERSE, ACC)
    x = tl.load(x_ptr + b * x_b + c * x_c + s, mask=mask, other=0.0).to(ACC)
    if REVERSE:
        y = x * scale + shift
    else:
        y = (x + shift) * scale
    tl.store(y_ptr + (b * C + c) * S + s, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _actnorm_bwd_kernel(
    x_ptr, loc_ptr, ls_ptr,  # inputs of the forward
    gy_ptr,                  # grad of the output, planes contiguous
    gx_ptr,                  # [B, C, S] contiguous grad of the input
    partial_ptr,             # [C * nb * ns, 2] tile sums (sum g, sum g*z)
    B, C, S, nb, ns, x_b, x_c, gy_b, gy_c,
    REVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    c, b, s, mask = _actnorm_tile(pid, nb, ns, B, S, BLOCK_B, BLOCK_S)
    scale, shift = _actnorm_channel(loc_ptr, ls_ptr, c, REVERSE, ACC)
    x = tl.load(x_ptr + b * x_b + c * x_c + s, mask=mask, other=0.0).to(ACC)
    g = tl.load(gy_ptr + b * gy_b + c * gy_c + s, mask=mask, other=0.0).to(ACC)
    tl.store(gx_ptr + (b * C + c) * S + s, (g * scale).to(gx_ptr.dtype.element_ty), mask=mask)
    if REVERSE:
        z = x
    else:
        z = x + shift
    # masked entries load g = 0 and add nothing
    tl.store(partial_ptr + 2 * pid, tl.sum(tl.sum(g, axis=1), axis=0))
    tl.store(partial_ptr + 2 * pid + 1, tl.sum(tl.sum(g * z, axis=1), axis=0))
