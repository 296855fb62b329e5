"""Invertible 1x1 convolution (SPEC §4), Triton kernels: the channel mixing of x viewed as [B, C, S].

A program handles BLOCK_O output channels x BLOCK_S consecutive plane elements of one sample. Grid:
(B * no * ns,), program pid -> sample pid // (no*ns), output-channel block (pid // ns) % no, plane block
pid % ns. Math (csrc/cpu/invconv.cpp, the same):
    out[b, o, s] = sum_c a[o, c] in[b, c, s]          (a = W, W^-1, or its transpose for grad_x)
    partial[pid_bs, o, c] = sum_{s in tile} g[b, o, s] x[b, c, s]      (grad of a, reduced by the launcher)
The sum over c is a loop of rank-1 updates, so C is not limited by the block sizes.
"""
import triton
import triton.language as tl


@triton.jit
def _invconv_mix_kernel(
    in_ptr,                  # [B, C, S] input, planes contiguous
    a_ptr,                   # [C, C] mixing matrix, entry (o, c) at a_o * o + a_c * c
    out_ptr,                 # [B, C, S] contiguous output
    C, S, no, ns,            # sizes; output-channel and plane blocks
    in_b, in_c, a_o, a_c,    # strides
    ACC: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // (no * ns)
    o = ((pid // ns) % no) * BLOCK_O + tl.arange(0, BLOCK_O)
    s = (pid % ns) * BLOCK_S + tl.arange(0, BLOCK_S)
    o_mask, s_mask = o < C, s < S
    acc = tl.zeros((BLOCK_O, BLOCK_S), dtype=ACC)
    for c in range(0, C):
        a_col = tl.load(a_ptr + o * a_o + c * a_c, mask=o_mask, other=0.0).to(ACC)
        x_row = tl.load(in_ptr + b * in_b + c * in_c + s, mask=s_mask, other=0.0).to(ACC)
        acc += a_col[:, None] * x_row[None, :]
    out = out_ptr + (b * C + o[:, None]) * S + s[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=o_mask[:, None] & s_mask[None, :])


@triton.jit
def _invconv_grad_kernel(
    g_ptr, x_ptr,            # [B, C, S] grad of the output and the op's input, planes contiguous
    partial_ptr,             # [B * ns, C, C] tile sums of g x^T
    C, S, ns,                # sizes; plane blocks
    g_b, g_c, x_b, x_c,      # strides
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # (sample, plane block)
    b = pid // ns
    s = (pid % ns) * BLOCK_S + tl.arange(0, BLOCK_S)
    c = tl.arange(0, BLOCK_C)
    mask = (c[:, None] < C) & (s[None, :] < S)
    x = tl.load(x_ptr + b * x_b + c[:, None] * x_c + s[None, :], mask=mask, other=0.0).to(ACC)
    for o in range(0, C):
        g_row = tl.load(g_ptr + b * g_b + o * g_c + s, mask=s < S, other=0.0).to(ACC)
        tl.store(partial_ptr + (pid * C + o) * C + c, tl.sum(x * g_row[None, :], axis=1), mask=c < C)
