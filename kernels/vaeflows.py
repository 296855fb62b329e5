"""Planar flows and IAF steps (SPEC §5), Triton kernels. Math: csrc/include/dgmfast/vaeflows.h.

Planar: grid (cdiv(B, BLOCK_B),); a program holds BLOCK_B rows of z [BLOCK_B, BLOCK_D] and applies all
L steps. u, w ([.., L, D]) and b ([.., L]) are read through strides (batch stride 0 when shared). The
forward saves the pre-activations a [B, L]; the backward recomputes z_L from them, then walks the steps
backwards recovering z_l = z_{l+1} - u_hat_l tanh(a_l). Shared parameters: each program writes its
per-step sums (sum g_uhat, sum g_a z_l [L, BLOCK_D], sum g_wuh, sum g_a [L]) to its own partial slot; the
launcher reduces them and applies the u_hat chain rule (linear in those sums).

IAF: grid (B * num_chunks,) element-wise over row chunks, one partial log-det sum per program.
"""
import triton
import triton.language as tl

from dgmfast.kernels._math import sigmoid, softplus, tanh


@triton.jit
def _planar_coef(s, q):
    """(c, w.u_hat, dc/ds, dc/dq, d(w.u_hat)/ds) from s = w.u, q = w.w; all zero where q == 0."""
    nz = q > 0
    q_safe = tl.where(nz, q, 1.0)
    m = softplus(s) - 1.0
    c = tl.where(nz, (m - s) / q_safe, 0.0)
    wuh = tl.where(nz, m, 0.0)
    dc_ds = tl.where(nz, -sigmoid(-s) / q_safe, 0.0)
    dc_dq = -c / q_safe
    dm_ds = tl.where(nz, sigmoid(s), 0.0)
    return c, wuh, dc_ds, dc_dq, dm_ds


@triton.jit
def _planar_step_params(u_ptr, w_ptr, rows, offs_d, mask2, l, u_b, u_l, w_b, w_l, ACC: tl.constexpr):
    """u_l, w_l [BLOCK_B, BLOCK_D] and the u_hat coefficients of step l."""
    u = tl.load(u_ptr + rows[:, None] * u_b + l * u_l + offs_d[None, :], mask=mask2, other=0.0).to(ACC)
    w = tl.load(w_ptr + rows[:, None] * w_b + l * w_l + offs_d[None, :], mask=mask2, other=0.0).to(ACC)
    c, wuh, dc_ds, dc_dq, dm_ds = _planar_coef(tl.sum(w * u, axis=1), tl.sum(w * w, axis=1))
    return u, w, c, wuh, dc_ds, dc_dq, dm_ds


@triton.jit
def _planar_fwd_kernel(
    z_ptr, u_ptr, w_ptr, b_ptr,          # z [B, D] rows contiguous; u, w [.., L, D]; b [.., L]
    out_ptr, ld_ptr, pre_ptr,            # z_L [B, D], logdet [B], pre-activations [B, L]
    B, D, L, z_row,
    u_b, u_l, w_b, w_l, b_b, b_l,        # parameter strides (batch stride 0 when shared)
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    mr = rows < B
    mask2 = mr[:, None] & (offs_d < D)[None, :]
    z = tl.load(z_ptr + rows[:, None] * z_row + offs_d[None, :], mask=mask2, other=0.0).to(ACC)
    ld = tl.zeros((BLOCK_B,), dtype=ACC)
    for l in range(L):
        u, w, c, wuh, _, _, _ = _planar_step_params(u_ptr, w_ptr, rows, offs_d, mask2, l, u_b, u_l, w_b, w_l, ACC)
        a = tl.sum(w * z, axis=1) + tl.load(b_ptr + rows * b_b + l * b_l, mask=mr, other=0.0).to(ACC)
        h = tanh(a)
        z += (u + c[:, None] * w) * h[:, None]
        ld += tl.log(1.0 + (1.0 - h * h) * wuh)
        tl.store(pre_ptr + rows * L + l, a, mask=mr)
    tl.store(out_ptr + rows[:, None] * D + offs_d[None, :], z.to(out_ptr.dtype.element_ty), mask=mask2)
    tl.store(ld_ptr + rows, ld, mask=mr)


@triton.jit
def _planar_bwd_kernel(
    z_ptr, u_ptr, w_ptr, pre_ptr,        # inputs (b enters only through the saved pre-activations)
    gy_ptr, gld_ptr,                     # grad of z_L [B, D] (rows contiguous), grad of logdet [B]
    gz_ptr, gu_ptr, gw_ptr, gb_ptr,      # grad_z [B, D]; per-sample grad_u, grad_w [B, L, D], grad_b [B, L]
    pa_ptr, pz_ptr, pm_ptr, pb_ptr,      # partial sums per program: [P, L, BLOCK_D] x2, [P, L] x2
    B, D, L, z_row, gy_row,
    u_b, u_l, w_b, w_l,
    SHARED_UW: tl.constexpr, SHARED_B: tl.constexpr,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    mr = rows < B
    mask2 = mr[:, None] & (offs_d < D)[None, :]
    z = tl.load(z_ptr + rows[:, None] * z_row + offs_d[None, :], mask=mask2, other=0.0).to(ACC)
    for l in range(L):
        u, w, c, _, _, _, _ = _planar_step_params(u_ptr, w_ptr, rows, offs_d, mask2, l, u_b, u_l, w_b, w_l, ACC)
        h = tanh(tl.load(pre_ptr + rows * L + l, mask=mr, other=0.0))
        z += (u + c[:, None] * w) * h[:, None]
    gz = tl.load(gy_ptr + rows[:, None] * gy_row + offs_d[None, :], mask=mask2, other=0.0).to(ACC)
    gld = tl.load(gld_ptr + rows, mask=mr, other=0.0).to(ACC)
    for i in range(L):
        l = L - 1 - i
        u, w, c, wuh, dc_ds, dc_dq, dm_ds = _planar_step_params(u_ptr, w_ptr, rows, offs_d, mask2, l,
                                                                u_b, u_l, w_b, w_l, ACC)
        uh = u + c[:, None] * w
        h = tanh(tl.load(pre_ptr + rows * L + l, mask=mr, other=0.0))
        z -= uh * h[:, None]  # z_l
        k = 1.0 - h * h
        inv = 1.0 / (1.0 + k * wuh)
        g_a = tl.where(mr, k * (tl.sum(gz * uh, axis=1) - gld * wuh * 2.0 * h * inv), 0.0)
        g_wuh = tl.where(mr, gld * k * inv, 0.0)
        g_uh = gz * h[:, None]
        if SHARED_UW:
            tl.store(pa_ptr + (pid * L + l) * BLOCK_D + offs_d, tl.sum(g_uh, axis=0))
            tl.store(pz_ptr + (pid * L + l) * BLOCK_D + offs_d, tl.sum(g_a[:, None] * z, axis=0))
            tl.store(pm_ptr + pid * L + l, tl.sum(g_wuh, axis=0))
        else:
            gc = tl.sum(g_uh * w, axis=1)
            g_s = gc * dc_ds + g_wuh * dm_ds
            g_q = gc * dc_dq
            gu = g_uh + g_s[:, None] * w
            gw = c[:, None] * g_uh + g_s[:, None] * u + 2.0 * g_q[:, None] * w + g_a[:, None] * z
            out = (rows[:, None] * L + l) * D + offs_d[None, :]
            tl.store(gu_ptr + out, gu.to(gu_ptr.dtype.element_ty), mask=mask2)
            tl.store(gw_ptr + out, gw.to(gw_ptr.dtype.element_ty), mask=mask2)
        if SHARED_B:
            tl.store(pb_ptr + pid * L + l, tl.sum(g_a, axis=0))
        else:
            tl.store(gb_ptr + rows * L + l, g_a.to(gb_ptr.dtype.element_ty), mask=mr)
        gz += g_a[:, None] * w
    tl.store(gz_ptr + rows[:, None] * D + offs_d[None, :], gz.to(gz_ptr.dtype.element_ty), mask=mask2)


@triton.jit
def _iaf_gates(r, bias):
    """v = r + bias -> (v, sigmoid(v), sigmoid(-v), log sigmoid(v))."""
    v = r + bias
    e = tl.exp(-tl.abs(v))
    g = tl.where(v >= 0, 1.0, e) / (1.0 + e)
    gm = tl.where(v >= 0, e, 1.0) / (1.0 + e)
    return v, g, gm, tl.minimum(v, 0.0) - tl.log(1.0 + e)


@triton.jit
def _iaf_fwd_kernel(
    z_ptr, m_ptr, r_ptr,         # [B, N] rows contiguous, own batch strides
    out_ptr, partial_ptr,        # out [B, N] contiguous, partial log-dets [B, num_chunks]
    N, num_chunks, z_row, m_row, r_row,
    bias,                        # sigmoid_bias
    REVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_chunks
    offs = (pid % num_chunks) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    z = tl.load(z_ptr + row * z_row + offs, mask=mask, other=0.0).to(ACC)
    m = tl.load(m_ptr + row * m_row + offs, mask=mask, other=0.0).to(ACC)
    r = tl.load(r_ptr + row * r_row + offs, mask=mask, other=0.0).to(ACC)
    v, g, _, log_g = _iaf_gates(r, bias)
    if REVERSE:
        out = m + (z - m) * (1.0 + tl.exp(-v))
        log_g = -log_g
    else:
        out = m + g * (z - m)
    tl.store(out_ptr + row * N + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(tl.where(mask, log_g, 0.0), axis=0))


@triton.jit
def _iaf_bwd_kernel(
    z_ptr, m_ptr, r_ptr, gy_ptr,     # inputs and grad of the output, rows contiguous
    gld_ptr,                         # [B] grad of the log-det
    gz_ptr, gm_ptr, gr_ptr,          # outputs [B, N] contiguous
    N, num_chunks, z_row, m_row, r_row, gy_row,
    bias,
    REVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_chunks
    offs = (pid % num_chunks) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    z = tl.load(z_ptr + row * z_row + offs, mask=mask, other=0.0).to(ACC)
    m = tl.load(m_ptr + row * m_row + offs, mask=mask, other=0.0).to(ACC)
    r = tl.load(r_ptr + row * r_row + offs, mask=mask, other=0.0).to(ACC)
    g_out = tl.load(gy_ptr + row * gy_row + offs, mask=mask, other=0.0).to(ACC)
    g_ld = tl.load(gld_ptr + row).to(ACC)
    v, g, gm, _ = _iaf_gates(r, bias)
    if REVERSE:
        inv_e = tl.exp(-v)
        gz = g_out * (1.0 + inv_e)
        gmean = -g_out * inv_e
        gr = -(z - m) * inv_e * g_out - gm * g_ld
    else:
        gz = g_out * g
        gmean = g_out * gm
        gr = gm * (g * (z - m) * g_out + g_ld)
    tl.store(gz_ptr + row * N + offs, gz.to(gz_ptr.dtype.element_ty), mask=mask)
    tl.store(gm_ptr + row * N + offs, gmean.to(gm_ptr.dtype.element_ty), mask=mask)
    tl.store(gr_ptr + row * N + offs, gr.to(gr_ptr.dtype.element_ty), mask=mask)
