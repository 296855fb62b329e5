"""DIP-VAE covariance penalty (SPEC §8), Triton kernels.

Sums pass, grid (row chunks, D tiles, D tiles): program (c, i, j) takes the ROWS rows of mu of chunk c,
first computes the chunk's mean m_c of the columns of tiles i and j, then accumulates the [TILE, TILE] block
(i, j) of s2 = sum (mu_n - m_c)(mu_n - m_c)^T with tl.dot (IEEE fp32 / fp64, never TF32): each chunk is centred
on its own mean, so neither a large mean nor an outlying row cancels digits. The programs with j == 0 also
write m_c, the residual s1 = sum (mu_n - m_c) and sum exp(logvar) of tile i. Each program writes its own
partial slot; the launcher merges the chunks in a fixed order with Chan et al.'s update (deterministic, no
atomics).

Gradient pass, grid (row blocks, D tiles): grad_mu[n, j] = sum_i x[n, i] coef2[i, j] with
x = (mu_n - mu_0) - offset (offset = mean - mu_0) and coef2 = 2*G*grad/N, and
grad_logvar[n, j] = coef[j, j] exp(logvar[n, j]).
"""
import triton
import triton.language as tl


@triton.jit
def _dip_sums_kernel(
    mu_ptr, lv_ptr,              # [N, D] rows contiguous (lv_ptr unused without HAS_LOGVAR)
    m_ptr, s1_ptr, s2_ptr, se_ptr,  # partials [chunks, PAD] (centre, residual sum), [chunks, PAD, PAD], [chunks, PAD]
    N, D, mu_row, lv_row,        # sizes and batch strides
    ROWS,                        # rows per chunk (a multiple of BLOCK_N)
    PAD: tl.constexpr,           # D rounded up to whole tiles
    HAS_LOGVAR: tl.constexpr, ACC: tl.constexpr, TILE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    ti = tl.program_id(1)
    tj = tl.program_id(2)
    offs_i = ti * TILE + tl.arange(0, TILE)
    offs_j = tj * TILE + tl.arange(0, TILE)
    mi = offs_i < D
    mj = offs_j < D
    sum_i = tl.zeros((TILE,), dtype=ACC)
    sum_j = tl.zeros((TILE,), dtype=ACC)
    for start in range(0, ROWS, BLOCK_N):  # the chunk's mean, the centre of its sums
        rows = chunk * ROWS + start + tl.arange(0, BLOCK_N)
        mr = rows < N
        sum_i += tl.sum(tl.load(mu_ptr + rows[:, None] * mu_row + offs_i[None, :], mask=mr[:, None] & mi[None, :],
                                other=0.0).to(ACC), axis=0)
        sum_j += tl.sum(tl.load(mu_ptr + rows[:, None] * mu_row + offs_j[None, :], mask=mr[:, None] & mj[None, :],
                                other=0.0).to(ACC), axis=0)
    count = tl.minimum(N - chunk * ROWS, ROWS).to(ACC)
    c_i = sum_i / count
    c_j = sum_j / count
    acc2 = tl.zeros((TILE, TILE), dtype=ACC)
    acc1 = tl.zeros((TILE,), dtype=ACC)
    acce = tl.zeros((TILE,), dtype=ACC)
    for start in range(0, ROWS, BLOCK_N):
        rows = chunk * ROWS + start + tl.arange(0, BLOCK_N)
        mr = rows < N
        m_i = mr[:, None] & mi[None, :]
        xi = tl.load(mu_ptr + rows[:, None] * mu_row + offs_i[None, :], mask=m_i, other=0.0).to(ACC)
        xi = tl.where(m_i, xi - c_i[None, :], 0.0)
        m_j = mr[:, None] & mj[None, :]
        xj = tl.load(mu_ptr + rows[:, None] * mu_row + offs_j[None, :], mask=m_j, other=0.0).to(ACC)
        xj = tl.where(m_j, xj - c_j[None, :], 0.0)
        acc2 += tl.dot(tl.trans(xi), xj, input_precision="ieee", out_dtype=ACC)
        if tj == 0:
            acc1 += tl.sum(xi, axis=0)
            if HAS_LOGVAR:
                lv = tl.load(lv_ptr + rows[:, None] * lv_row + offs_i[None, :], mask=m_i, other=0.0).to(ACC)
                acce += tl.sum(tl.where(m_i, tl.exp(lv), 0.0), axis=0)
    tl.store(s2_ptr + chunk * PAD * PAD + offs_i[:, None] * PAD + offs_j[None, :], acc2)
    if tj == 0:
        tl.store(m_ptr + chunk * PAD + offs_i, c_i)
        tl.store(s1_ptr + chunk * PAD + offs_i, acc1)
        if HAS_LOGVAR:
            tl.store(se_ptr + chunk * PAD + offs_i, acce)


@triton.jit
def _dip_grad_kernel(
    mu_ptr, lv_ptr,              # [N, D] rows contiguous
    off_ptr,                     # [D] offset = mean - mu[0]
    coef_ptr,                    # [D, D] contiguous: G * grad / N
    gmu_ptr, glv_ptr,            # outputs [N, D] contiguous
    N, D, mu_row, lv_row,
    HAS_LOGVAR: tl.constexpr, ACC: tl.constexpr, TILE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    tj = tl.program_id(1)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mr = rows < N
    offs_j = tj * TILE + tl.arange(0, TILE)
    mj = offs_j < D
    acc = tl.zeros((BLOCK_N, TILE), dtype=ACC)
    for i0 in range(0, D, TILE):
        offs_i = i0 + tl.arange(0, TILE)
        mi = offs_i < D
        m_i = mr[:, None] & mi[None, :]
        shift = tl.load(mu_ptr + offs_i, mask=mi, other=0.0).to(ACC)
        off = tl.load(off_ptr + offs_i, mask=mi, other=0.0).to(ACC)
        x = tl.load(mu_ptr + rows[:, None] * mu_row + offs_i[None, :], mask=m_i, other=0.0).to(ACC)
        x = tl.where(m_i, (x - shift[None, :]) - off[None, :], 0.0)
        c = tl.load(coef_ptr + offs_i[:, None] * D + offs_j[None, :], mask=mi[:, None] & mj[None, :], other=0.0)
        acc += tl.dot(x, c.to(ACC), input_precision="ieee", out_dtype=ACC)
    m_j = mr[:, None] & mj[None, :]
    out = rows[:, None] * D + offs_j[None, :]
    tl.store(gmu_ptr + out, (2.0 * acc).to(gmu_ptr.dtype.element_ty), mask=m_j)
    if HAS_LOGVAR:
        diag = tl.load(coef_ptr + offs_j * (D + 1), mask=mj, other=0.0).to(ACC)
        lv = tl.load(lv_ptr + rows[:, None] * lv_row + offs_j[None, :], mask=m_j, other=0.0).to(ACC)
        tl.store(glv_ptr + out, (diag[None, :] * tl.exp(lv)).to(glv_ptr.dtype.element_ty), mask=m_j)
