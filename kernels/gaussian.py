"""Gaussian posterior and diagonal-Gaussian mixture log-density (SPEC §7, §9), Triton kernels.

reparameterize: grid (B * num_chunks,) as the coupling kernels; eps is loaded or drawn with Philox
(element (b, d) uses counter b*D + d, kernels/_random.py), and each program writes partial KL and
log q sums to [B, num_chunks] buffers that the launcher sums (deterministic). Math as
csrc/include/dgmfast/gaussian.h:
    z = mu + exp(lv/2)*eps,  kl = 0.5*(mu^2 + exp(lv) - lv - 1),  log_q = -0.5*(log 2pi + lv + eps^2)

Mixture (log N(z; m, lv) = -0.5*(log 2pi + lv + (z - m)^2 exp(-lv))): tiles of BLOCK_N rows x BLOCK_K
components, a loop over d builds the [BLOCK_N, BLOCK_K] logits and an online logsumexp runs over the
K tiles; nothing of size [N, K, D] exists. Pair (n, k) takes the log weight band[o] instead of
log_weights[k] when o = (k - n - band_offset) mod K < NB (the MSS weights of SPEC §10).
Backward recomputes the logits; r = g * exp(logit - out) with the saved output; programs own rows
(g_z) or components (g_m, g_lv, g_w) and sum in a fixed order.
"""
import triton
import triton.language as tl

from dgmfast.kernels._random import philox_normal

LOG_2PI = 1.8378770664093453


@triton.jit
def _noise(eps_ptr, row, offs, mask, D, e_row, seed, HAS_EPS: tl.constexpr, ACC: tl.constexpr):
    """eps of elements (row, offs): loaded, or Philox counter row*D + offs."""
    if HAS_EPS:
        return tl.load(eps_ptr + row * e_row + offs, mask=mask, other=0.0).to(ACC)
    else:
        return philox_normal(row * D + offs, 0, seed).to(ACC)


@triton.jit
def _reparameterize_fwd_kernel(
    mu_ptr, lv_ptr, eps_ptr,        # [B, D] row-contiguous (own batch strides); eps only if HAS_EPS
    z_ptr,                          # [B, D] contiguous output
    kl_part_ptr, lq_part_ptr,       # [B, num_chunks] partial sums of kl and log q
    D, num_chunks, mu_row, lv_row, e_row,
    seed,                           # 64-bit Philox key (unused with HAS_EPS)
    HAS_EPS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_chunks
    offs = (pid % num_chunks) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    mu = tl.load(mu_ptr + row * mu_row + offs, mask=mask, other=0.0).to(ACC)
    lv = tl.load(lv_ptr + row * lv_row + offs, mask=mask, other=0.0).to(ACC)
    eps = _noise(eps_ptr, row, offs, mask, D, e_row, seed, HAS_EPS, ACC)
    sd = tl.exp(0.5 * lv)
    tl.store(z_ptr + row * D + offs, (mu + sd * eps).to(z_ptr.dtype.element_ty), mask=mask)
    kl = 0.5 * (mu * mu + sd * sd - lv - 1.0)
    lq = -0.5 * (LOG_2PI + lv + eps * eps)
    tl.store(kl_part_ptr + pid, tl.sum(tl.where(mask, kl, 0.0), axis=0))
    tl.store(lq_part_ptr + pid, tl.sum(tl.where(mask, lq, 0.0), axis=0))


@triton.jit
def _reparameterize_bwd_kernel(
    mu_ptr, lv_ptr, eps_ptr, gz_ptr,    # row-contiguous inputs and grad of z
    gkl_ptr, glq_ptr,                   # [B] grads of kl and log q
    gmu_ptr, glv_ptr, geps_ptr,         # [B, D] contiguous outputs; geps only if HAS_EPS
    D, num_chunks, mu_row, lv_row, e_row, gz_row, seed,
    HAS_EPS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_chunks
    offs = (pid % num_chunks) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    mu = tl.load(mu_ptr + row * mu_row + offs, mask=mask, other=0.0).to(ACC)
    lv = tl.load(lv_ptr + row * lv_row + offs, mask=mask, other=0.0).to(ACC)
    gz = tl.load(gz_ptr + row * gz_row + offs, mask=mask, other=0.0).to(ACC)
    gkl = tl.load(gkl_ptr + row).to(ACC)
    glq = tl.load(glq_ptr + row).to(ACC)
    eps = _noise(eps_ptr, row, offs, mask, D, e_row, seed, HAS_EPS, ACC)
    sd = tl.exp(0.5 * lv)
    tl.store(gmu_ptr + row * D + offs, (gz + gkl * mu).to(gmu_ptr.dtype.element_ty), mask=mask)
    glv = 0.5 * (gz * sd * eps + gkl * (sd * sd - 1.0) - glq)
    tl.store(glv_ptr + row * D + offs, glv.to(glv_ptr.dtype.element_ty), mask=mask)
    if HAS_EPS:
        tl.store(geps_ptr + row * D + offs, (gz * sd - glq * eps).to(geps_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pair_log_weights(w_ptr, w_stride, band_ptr, rows, ks, kmask, K, band_offset,
                      NB: tl.constexpr, ACC: tl.constexpr):
    """([BLOCK_N, BLOCK_K] log weights of pairs (rows, ks), mask of the pairs that use log_weights)."""
    w = tl.load(w_ptr + ks * w_stride, mask=kmask, other=0.0).to(ACC)
    lw = w[None, :] + tl.zeros((rows.shape[0], 1), ACC)
    if NB > 0:
        o = ((ks[None, :] - rows[:, None] - band_offset) % K + K) % K
        in_band = o < NB
        lw = tl.where(in_band, tl.load(band_ptr + o, mask=in_band, other=0.0).to(ACC), lw)
        return lw, (~in_band) & kmask[None, :]
    return lw, (lw == lw) & kmask[None, :]


@triton.jit
def _joint_logits(z_ptr, z_s0, z_s1, m_ptr, m_s0, m_s1, l_ptr, l_s0, l_s1, w_ptr, w_s, band_ptr,
                  rows, ks, rmask, kmask, K, D, band_offset, NB: tl.constexpr, ACC: tl.constexpr):
    """[BLOCK_N, BLOCK_K] logits w_nk + sum_d log N(z_nd; m_kd, lv_kd) (-inf past K), and the log_weights mask."""
    acc = tl.zeros((rows.shape[0], ks.shape[0]), ACC)
    lv_sum = tl.zeros((ks.shape[0],), ACC)
    for d in range(0, D):
        zc = tl.load(z_ptr + rows * z_s0 + d * z_s1, mask=rmask, other=0.0).to(ACC)
        mc = tl.load(m_ptr + ks * m_s0 + d * m_s1, mask=kmask, other=0.0).to(ACC)
        lc = tl.load(l_ptr + ks * l_s0 + d * l_s1, mask=kmask, other=0.0).to(ACC)
        diff = zc[:, None] - mc[None, :]
        acc += diff * diff * tl.exp(-lc)[None, :]
        lv_sum += lc
    lw, keep = _pair_log_weights(w_ptr, w_s, band_ptr, rows, ks, kmask, K, band_offset, NB, ACC)
    logit = lw - 0.5 * (D.to(ACC) * LOG_2PI + lv_sum)[None, :] - 0.5 * acc
    return tl.where(kmask[None, :], logit, float("-inf")), keep


@triton.jit
def _mixture_fwd_kernel(
    z_ptr, m_ptr, l_ptr, w_ptr, band_ptr,   # z [N, D], means/logvars [K, D], log_weights [K], band [NB]
    out_ptr,                                # [N] output
    N, K, D, band_offset,
    z_s0, z_s1, m_s0, m_s1, l_s0, l_s1, w_s,  # strides (read in place)
    NB: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    run_max = tl.full((BLOCK_N,), float("-inf"), ACC)
    run_sum = tl.zeros((BLOCK_N,), ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        logit, _ = _joint_logits(z_ptr, z_s0, z_s1, m_ptr, m_s0, m_s1, l_ptr, l_s0, l_s1, w_ptr, w_s, band_ptr,
                                 rows, ks, rmask, kmask, K, D, band_offset, NB, ACC)
        new_max = tl.maximum(run_max, tl.max(logit, axis=1))
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - safe) + tl.sum(tl.exp(logit - safe[:, None]), axis=1)
        run_max = new_max
    tl.store(out_ptr + rows, run_max + tl.log(run_sum), mask=rmask)


@triton.jit
def _row_scale(out_ptr, g_ptr, idx, mask):
    """(g, out) of the given outputs, (0, 0) where out = -inf (no density: no gradient)."""
    o = tl.load(out_ptr + idx, mask=mask, other=0.0)
    g = tl.load(g_ptr + idx, mask=mask, other=0.0)
    dead = o == float("-inf")
    return tl.where(dead, 0.0, g), tl.where(dead, 0.0, o)


@triton.jit
def _mixture_bwd_z_kernel(
    z_ptr, m_ptr, l_ptr, w_ptr, band_ptr, out_ptr, g_ptr,   # out, g: [N] saved output and its grad
    gz_ptr,                                                # [N, D] contiguous, zero-filled: sum over K tiles
    N, K, D, band_offset, z_s0, z_s1, m_s0, m_s1, l_s0, l_s1, w_s,
    NB: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    g, o = _row_scale(out_ptr, g_ptr, rows, rmask)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        logit, _ = _joint_logits(z_ptr, z_s0, z_s1, m_ptr, m_s0, m_s1, l_ptr, l_s0, l_s1, w_ptr, w_s, band_ptr,
                                 rows, ks, rmask, kmask, K, D, band_offset, NB, ACC)
        r = g[:, None] * tl.exp(logit - o[:, None])
        for d in range(0, D):
            zc = tl.load(z_ptr + rows * z_s0 + d * z_s1, mask=rmask, other=0.0).to(ACC)
            mc = tl.load(m_ptr + ks * m_s0 + d * m_s1, mask=kmask, other=0.0).to(ACC)
            p = tl.exp(-tl.load(l_ptr + ks * l_s0 + d * l_s1, mask=kmask, other=0.0).to(ACC))
            col = tl.sum(r * (zc[:, None] - mc[None, :]) * p[None, :], axis=1)
            prev = tl.load(gz_ptr + rows * D + d, mask=rmask, other=0.0)
            tl.store(gz_ptr + rows * D + d, prev - col, mask=rmask)


@triton.jit
def _mixture_bwd_params_kernel(
    z_ptr, m_ptr, l_ptr, w_ptr, band_ptr, out_ptr, g_ptr,
    gm_ptr, glv_ptr,                 # [K, D] contiguous, zero-filled: sums over N tiles
    gw_ptr,                          # [K]
    N, K, D, band_offset, z_s0, z_s1, m_s0, m_s1, l_s0, l_s1, w_s,
    NB: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ks = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    gw = tl.zeros((BLOCK_K,), ACC)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        g, o = _row_scale(out_ptr, g_ptr, rows, rmask)
        logit, keep = _joint_logits(z_ptr, z_s0, z_s1, m_ptr, m_s0, m_s1, l_ptr, l_s0, l_s1, w_ptr, w_s, band_ptr,
                                    rows, ks, rmask, kmask, K, D, band_offset, NB, ACC)
        r = g[:, None] * tl.exp(logit - o[:, None])
        gw += tl.sum(tl.where(keep, r, 0.0), axis=0)
        r_sum = tl.sum(r, axis=0)
        for d in range(0, D):
            zc = tl.load(z_ptr + rows * z_s0 + d * z_s1, mask=rmask, other=0.0).to(ACC)
            mc = tl.load(m_ptr + ks * m_s0 + d * m_s1, mask=kmask, other=0.0).to(ACC)
            p = tl.exp(-tl.load(l_ptr + ks * l_s0 + d * l_s1, mask=kmask, other=0.0).to(ACC))
            diff = zc[:, None] - mc[None, :]
            t = r * diff * p[None, :]
            gm = tl.load(gm_ptr + ks * D + d, mask=kmask, other=0.0) + tl.sum(t, axis=0)
            glv = tl.load(glv_ptr + ks * D + d, mask=kmask, other=0.0) + 0.5 * (tl.sum(t * diff, axis=0) - r_sum)
            tl.store(gm_ptr + ks * D + d, gm, mask=kmask)
            tl.store(glv_ptr + ks * D + d, glv, mask=kmask)
    tl.store(gw_ptr + ks, gw, mask=kmask)


@triton.jit
def _per_dim_term(z, m_ptr, l_ptr, k, cols, cmask, m_s0, m_s1, l_s0, l_s1, lw, ACC: tl.constexpr):
    """(lw + log N(z; m_k, lv_k), z - m_k, exp(-lv_k)) on a [BLOCK_N, BLOCK_D] tile, lw [BLOCK_N]."""
    m = tl.load(m_ptr + k * m_s0 + cols * m_s1, mask=cmask, other=0.0).to(ACC)
    lv = tl.load(l_ptr + k * l_s0 + cols * l_s1, mask=cmask, other=0.0).to(ACC)
    p = tl.exp(-lv)
    diff = z - m[None, :]
    return lw[:, None] - 0.5 * (LOG_2PI + lv[None, :] + diff * diff * p[None, :]), diff, p[None, :]


@triton.jit
def _row_log_weight(w_ptr, w_s, band_ptr, rows, k, K, band_offset, NB: tl.constexpr, ACC: tl.constexpr):
    """([BLOCK_N] log weight of pairs (rows, k), mask of the pairs that use log_weights[k])."""
    w = tl.load(w_ptr + k * w_s).to(ACC) + tl.zeros((rows.shape[0],), ACC)
    if NB > 0:
        o = ((k - rows - band_offset) % K + K) % K
        in_band = o < NB
        return tl.where(in_band, tl.load(band_ptr + o, mask=in_band, other=0.0).to(ACC), w), ~in_band
    return w, w == w


@triton.jit
def _mixture_per_dim_fwd_kernel(
    z_ptr, m_ptr, l_ptr, w_ptr, band_ptr,
    out_ptr,                                # [N, D] contiguous output
    N, K, D, band_offset, z_s0, z_s1, m_s0, m_s1, l_s0, l_s1, w_s,
    NB: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask, cmask = rows < N, cols < D
    mask = rmask[:, None] & cmask[None, :]
    z = tl.load(z_ptr + rows[:, None] * z_s0 + cols[None, :] * z_s1, mask=mask, other=0.0).to(ACC)
    run_max = tl.full((BLOCK_N, BLOCK_D), float("-inf"), ACC)
    run_sum = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    for k in range(0, K):
        lw, _ = _row_log_weight(w_ptr, w_s, band_ptr, rows, k, K, band_offset, NB, ACC)
        v, _, _ = _per_dim_term(z, m_ptr, l_ptr, k, cols, cmask, m_s0, m_s1, l_s0, l_s1, lw, ACC)
        new_max = tl.maximum(run_max, v)
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - safe) + tl.exp(v - safe)
        run_max = new_max
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], run_max + tl.log(run_sum), mask=mask)


@triton.jit
def _mixture_per_dim_bwd_z_kernel(
    z_ptr, m_ptr, l_ptr, w_ptr, band_ptr, out_ptr, g_ptr,   # out, g: [N, D] contiguous
    gz_ptr,                                                # [N, D] contiguous output
    N, K, D, band_offset, z_s0, z_s1, m_s0, m_s1, l_s0, l_s1, w_s,
    NB: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask, cmask = rows < N, cols < D
    mask = rmask[:, None] & cmask[None, :]
    z = tl.load(z_ptr + rows[:, None] * z_s0 + cols[None, :] * z_s1, mask=mask, other=0.0).to(ACC)
    g, o = _row_scale(out_ptr, g_ptr, rows[:, None] * D + cols[None, :], mask)
    gz = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    for k in range(0, K):
        lw, _ = _row_log_weight(w_ptr, w_s, band_ptr, rows, k, K, band_offset, NB, ACC)
        v, diff, p = _per_dim_term(z, m_ptr, l_ptr, k, cols, cmask, m_s0, m_s1, l_s0, l_s1, lw, ACC)
        gz -= g * tl.exp(v - o) * diff * p
    tl.store(gz_ptr + rows[:, None] * D + cols[None, :], gz, mask=mask)


@triton.jit
def _mixture_per_dim_bwd_params_kernel(
    z_ptr, m_ptr, l_ptr, w_ptr, band_ptr, out_ptr, g_ptr,
    gm_ptr, glv_ptr,                 # [K, D] contiguous outputs
    gw_part_ptr,                     # [K, num_dblocks] partial sums of g_w
    N, K, D, band_offset, z_s0, z_s1, m_s0, m_s1, l_s0, l_s1, w_s, num_dblocks,
    NB: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    gm = tl.zeros((BLOCK_D,), ACC)
    glv = tl.zeros((BLOCK_D,), ACC)
    gw = tl.zeros((BLOCK_D,), ACC)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        mask = rmask[:, None] & cmask[None, :]
        z = tl.load(z_ptr + rows[:, None] * z_s0 + cols[None, :] * z_s1, mask=mask, other=0.0).to(ACC)
        g, o = _row_scale(out_ptr, g_ptr, rows[:, None] * D + cols[None, :], mask)
        lw, keep = _row_log_weight(w_ptr, w_s, band_ptr, rows, k, K, band_offset, NB, ACC)
        v, diff, p = _per_dim_term(z, m_ptr, l_ptr, k, cols, cmask, m_s0, m_s1, l_s0, l_s1, lw, ACC)
        r = g * tl.exp(v - o)
        t = r * diff * p
        gm += tl.sum(t, axis=0)
        glv += 0.5 * tl.sum(t * diff - r, axis=0)
        gw += tl.sum(tl.where(keep[:, None], r, 0.0), axis=0)
    tl.store(gm_ptr + k * D + cols, gm, mask=cmask)
    tl.store(glv_ptr + k * D + cols, glv, mask=cmask)
    tl.store(gw_part_ptr + k * num_dblocks + tl.program_id(1), tl.sum(gw, axis=0))
