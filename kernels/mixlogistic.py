"""Flow++ mixture-of-logistics coupling (SPEC §2), Triton kernels.

Grid: (B * num_chunks,); program pid takes BLOCK elements of row pid // num_chunks and the [BLOCK, KP]
tile of their parameters (KP = K padded to a power of two), and writes one partial log-det sum to
partial[pid]. Element e of a row (component k) of any tensor lives at
    row*s_b + (e // M)*s_o + (e % M)*s_i + k*s_k
(the layouts of dgmfast/ops/mixlogistic.py: K-last contiguous, permuted conditioner views, expanded).
Math (the same as csrc/include/dgmfast/mixlogistic.h): with l = max(l, min), q = exp(-l), z = (x - mu) q,
e = exp(-|z|), w = 1/(1 + e),
    log u     = LSE[pi + min(z, 0); w]   - LSE[pi]      log(1-u) = LSE[pi - max(z, 0); w] - LSE[pi]
    log f     = LSE[pi - l - |z|; w^2]   - LSE[pi]      (LSE[a; w] = log sum_k w_k exp(a_k))
Reverse: fixed-count bisection comparing logit(u) in the stable two-sum form (mixlogistic.h, mix_bisect).
"""
import triton
import triton.language as tl

from dgmfast.kernels.coupling import _affine_log_scale


@triton.jit
def _lse(a, w):
    """log sum_k w_k exp(a_k) over axis 1 of [BLOCK, KP]; padded components have a = -inf, w finite."""
    m = tl.max(a, axis=1)
    return m + tl.log(tl.sum(w * tl.exp(a - m[:, None]), axis=1))


@triton.jit
def _terms(x, pi, mu, l_raw, kmask, min_log_scale):
    """Per-component tiles at x: (z, e, w, q, l, a_cdf, a_sf, a_pdf); padded components get a = -inf."""
    l = tl.maximum(l_raw, min_log_scale)
    q = tl.exp(-l)
    z = (x[:, None] - mu) * q
    az = tl.abs(z)
    e = tl.exp(-az)
    w = 1.0 / (1.0 + e)
    a_cdf = tl.where(kmask, pi + tl.minimum(z, 0.0), float("-inf"))
    a_sf = tl.where(kmask, pi - tl.maximum(z, 0.0), float("-inf"))
    a_pdf = tl.where(kmask, pi - l - az, float("-inf"))
    return z, e, w, q, l, a_cdf, a_sf, a_pdf


@triton.jit
def _stats(x, pi, mu, l_raw, kmask, min_log_scale):
    """(LSE[pi], LSE cdf, LSE sf, LSE pdf) at x, unnormalized."""
    z, e, w, q, l, a_cdf, a_sf, a_pdf = _terms(x, pi, mu, l_raw, kmask, min_log_scale)
    one = tl.full(pi.shape, 1.0, pi.dtype)
    return (_lse(tl.where(kmask, pi, float("-inf")), one), _lse(a_cdf, w), _lse(a_sf, w), _lse(a_pdf, w * w))


@triton.jit
def _load_tiles(pi_ptr, mu_ptr, l_ptr, elem_off_pi, elem_off_mu, elem_off_l, emask, kk, kmask,
                pi_k, mu_k, l_k, ACC: tl.constexpr):
    m2 = emask[:, None] & kmask[None, :]
    pi = tl.load(pi_ptr + elem_off_pi[:, None] + kk[None, :] * pi_k, mask=m2, other=0.0).to(ACC)
    mu = tl.load(mu_ptr + elem_off_mu[:, None] + kk[None, :] * mu_k, mask=m2, other=0.0).to(ACC)
    l = tl.load(l_ptr + elem_off_l[:, None] + kk[None, :] * l_k, mask=m2, other=0.0).to(ACC)
    return pi, mu, l


@triton.jit
def _mixlogistic_fwd_kernel(
    x_ptr, pi_ptr, mu_ptr, l_ptr, r_ptr, t_ptr,   # inputs (x is y in reverse), strided
    out_ptr,                                      # [B, N] contiguous output
    partial_ptr,                                  # [B, num_chunks] partial log-det sums
    N, M, K, num_chunks,                          # elements per row, inner split, components, chunks per row
    x_b, x_o, x_i, r_b, r_o, r_i, t_b, t_o, t_i,  # element strides (batch, outer, inner)
    pi_b, pi_o, pi_i, pi_k, mu_b, mu_o, mu_i, mu_k, l_b, l_o, l_i, l_k,
    clamp, min_log_scale, iters,                  # runtime scalars; iters: bisection steps (reverse)
    SCALE_MAP: tl.constexpr, SHIFT_SCALE: tl.constexpr, REVERSE: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_chunks
    offs = (pid % num_chunks) * BLOCK + tl.arange(0, BLOCK)
    emask = offs < N
    o = offs // M
    i = offs - o * M
    kk = tl.arange(0, KP)
    kmask = kk < K
    xin = tl.load(x_ptr + row * x_b + o * x_o + i * x_i, mask=emask, other=0.0).to(ACC)
    r = tl.load(r_ptr + row * r_b + o * r_o + i * r_i, mask=emask, other=0.0).to(ACC)
    t = tl.load(t_ptr + row * t_b + o * t_o + i * t_i, mask=emask, other=0.0).to(ACC)
    pi, mu, l_raw = _load_tiles(pi_ptr, mu_ptr, l_ptr, row * pi_b + o * pi_o + i * pi_i,
                                row * mu_b + o * mu_o + i * mu_i, row * l_b + o * l_o + i * l_i,
                                emask, kk, kmask, pi_k, mu_k, l_k, ACC)
    s, _ = _affine_log_scale(r, clamp, 0.0, SCALE_MAP, True)
    if REVERSE:
        if SHIFT_SCALE:
            v = xin * tl.exp(-s) - t
        else:
            v = (xin - t) * tl.exp(-s)
        pi_m = tl.where(kmask, pi, float("-inf"))
        E = tl.exp(pi_m - tl.max(pi_m, axis=1)[:, None])
        q = tl.exp(-tl.maximum(l_raw, min_log_scale))
        s_max = tl.exp(tl.maximum(tl.max(tl.where(kmask, l_raw, float("-inf")), axis=1), min_log_scale))
        width = s_max * (tl.abs(v) + 1.0)
        lo = tl.min(tl.where(kmask, mu, float("inf")), axis=1) - width
        hi = tl.max(tl.where(kmask, mu, float("-inf")), axis=1) + width
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            z = (mid[:, None] - mu) * q
            e = tl.exp(-tl.abs(z))
            ew = E / (1.0 + e)
            eew = ew * e
            s_pos = tl.sum(tl.where(z >= 0, ew, eew), axis=1)
            s_neg = tl.sum(tl.where(z >= 0, eew, ew), axis=1)
            smallest = tl.minimum(s_pos, s_neg)
            # floored: where a sum is below 1e-30 the log-domain value replaces vm anyway
            vm = tl.log(tl.maximum(s_pos, 1e-30)) - tl.log(tl.maximum(s_neg, 1e-30))
            if tl.min(smallest, axis=0) < 1e-30:  # a sum may have lost terms: log-domain sums there
                _, lc, ls, _ = _stats(mid, pi, mu, l_raw, kmask, min_log_scale)
                vm = tl.where(smallest >= 1e-30, vm, lc - ls)
            keep_lo = vm - v >= 0
            lo = tl.where(keep_lo, lo, mid)
            hi = tl.where(keep_lo, mid, hi)
        out = 0.5 * (lo + hi)
        ln, lc, ls, lf = _stats(out, pi, mu, l_raw, kmask, min_log_scale)
        ld = -((lf - ln) - (lc - ln) - (ls - ln) + s)
    else:
        ln, lc, ls, lf = _stats(xin, pi, mu, l_raw, kmask, min_log_scale)
        v = lc - ls
        ld = (lf - ln) - (lc - ln) - (ls - ln) + s
        if SHIFT_SCALE:
            out = (v + t) * tl.exp(s)
        else:
            out = tl.exp(s) * v + t
    tl.store(out_ptr + row * N + offs, out.to(out_ptr.dtype.element_ty), mask=emask)
    tl.store(partial_ptr + pid, tl.sum(tl.where(emask, ld, 0.0), axis=0))


@triton.jit
def _mixlogistic_bwd_kernel(
    x_ptr, pi_ptr, mu_ptr, l_ptr, r_ptr, t_ptr,   # x: the point in data space (forward input / reverse output)
    gy_ptr, gld_ptr,                              # grad of the op's output (strided), [B] grad of the log-det
    gin_ptr, gr_ptr, gt_ptr,                      # [B, N] contiguous grads of the input, log_scale, shift
    gpi_ptr, gmu_ptr, gl_ptr,                     # strided grads of the parameters
    N, M, K, num_chunks,
    x_b, x_o, x_i, r_b, r_o, r_i, t_b, t_o, t_i, gy_b, gy_o, gy_i,
    pi_b, pi_o, pi_i, pi_k, mu_b, mu_o, mu_i, mu_k, l_b, l_o, l_i, l_k,
    gpi_b, gpi_o, gpi_i, gpi_k, gmu_b, gmu_o, gmu_i, gmu_k, gl_b, gl_o, gl_i, gl_k,
    clamp, min_log_scale,
    SCALE_MAP: tl.constexpr, SHIFT_SCALE: tl.constexpr, REVERSE: tl.constexpr, WRITE_GT: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr,
):
    """Gradients as in mixlogistic.h (mixlogistic_bwd_elem): G = dL/d(log u, log(1-u), log f), then
    g_pi = G_u alpha + G_s beta + G_f gamma - p sum(G), Z = G_u alpha sig(-z) - G_s beta sig(z)
    + G_f gamma (sig(-z) - sig(z)), g_mu = -q Z, g_l = [l > min](-z Z - G_f gamma), dL/dx = sum q Z."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_chunks
    offs = (pid % num_chunks) * BLOCK + tl.arange(0, BLOCK)
    emask = offs < N
    o = offs // M
    i = offs - o * M
    kk = tl.arange(0, KP)
    kmask = kk < K
    x = tl.load(x_ptr + row * x_b + o * x_o + i * x_i, mask=emask, other=0.0).to(ACC)
    r = tl.load(r_ptr + row * r_b + o * r_o + i * r_i, mask=emask, other=0.0).to(ACC)
    t = tl.load(t_ptr + row * t_b + o * t_o + i * t_i, mask=emask, other=0.0).to(ACC)
    g_out = tl.load(gy_ptr + row * gy_b + o * gy_o + i * gy_i, mask=emask, other=0.0).to(ACC)
    g_ld = tl.load(gld_ptr + row).to(ACC)
    pi, mu, l_raw = _load_tiles(pi_ptr, mu_ptr, l_ptr, row * pi_b + o * pi_o + i * pi_i,
                                row * mu_b + o * mu_o + i * mu_i, row * l_b + o * l_o + i * l_i,
                                emask, kk, kmask, pi_k, mu_k, l_k, ACC)
    z, e, w, q, l, a_cdf, a_sf, a_pdf = _terms(x, pi, mu, l_raw, kmask, min_log_scale)
    pi_m = tl.where(kmask, pi, float("-inf"))
    ln = _lse(pi_m, tl.full(pi.shape, 1.0, pi.dtype))
    lc = _lse(a_cdf, w)
    ls = _lse(a_sf, w)
    lf = _lse(a_pdf, w * w)
    alpha = w * tl.exp(a_cdf - lc[:, None])
    beta = w * tl.exp(a_sf - ls[:, None])
    gamma = w * w * tl.exp(a_pdf - lf[:, None])
    p = tl.exp(pi_m - ln[:, None])
    sp = tl.where(z >= 0, w, e * w)
    sn = tl.where(z >= 0, e * w, w)
    lu = lc - ln
    lv = ls - ln
    lpdf = lf - ln
    v = lu - lv
    s, ds = _affine_log_scale(r, clamp, 0.0, SCALE_MAP, True)
    if SHIFT_SCALE:
        v_scaled = v + t
    else:
        v_scaled = v
    if REVERSE:
        ens = tl.exp(-s)
        dlogf_dx = tl.sum(gamma * (sn - sp) * q, axis=1)
        dld_dx = tl.exp(lpdf - lu) - tl.exp(lpdf - lv) - dlogf_dx
        c = (g_out + g_ld * dld_dx) * tl.exp(tl.minimum(lu + lv - lpdf, 80.0))
        g_cdf = g_ld - c
        g_sf = g_ld + c
        g_pdf = -g_ld + tl.zeros_like(c)
        g_in = c * ens
        if SHIFT_SCALE:
            g_t = -c
        else:
            g_t = -c * ens
        g_r = -ds * (c * v_scaled + g_ld)
    else:
        g_v = g_out * tl.exp(s)
        g_cdf = g_v - g_ld
        g_sf = -g_v - g_ld
        g_pdf = g_ld + tl.zeros_like(g_v)
        g_r = ds * (g_v * v_scaled + g_ld)
        if SHIFT_SCALE:
            g_t = g_v
        else:
            g_t = g_out
    Z = g_cdf[:, None] * alpha * sn - g_sf[:, None] * beta * sp + g_pdf[:, None] * gamma * (sn - sp)
    g_pi = g_cdf[:, None] * alpha + g_sf[:, None] * beta + g_pdf[:, None] * gamma \
        - p * (g_cdf + g_sf + g_pdf)[:, None]
    g_mu = -q * Z
    g_l = tl.where(l_raw > min_log_scale, -z * Z - g_pdf[:, None] * gamma, 0.0)
    if not REVERSE:
        g_in = tl.sum(tl.where(kmask, q * Z, 0.0), axis=1)
    m2 = emask[:, None] & kmask[None, :]
    tl.store(gpi_ptr + (row * gpi_b + o * gpi_o + i * gpi_i)[:, None] + kk[None, :] * gpi_k,
             g_pi.to(gpi_ptr.dtype.element_ty), mask=m2)
    tl.store(gmu_ptr + (row * gmu_b + o * gmu_o + i * gmu_i)[:, None] + kk[None, :] * gmu_k,
             g_mu.to(gmu_ptr.dtype.element_ty), mask=m2)
    tl.store(gl_ptr + (row * gl_b + o * gl_o + i * gl_i)[:, None] + kk[None, :] * gl_k,
             g_l.to(gl_ptr.dtype.element_ty), mask=m2)
    tl.store(gin_ptr + row * N + offs, g_in.to(gin_ptr.dtype.element_ty), mask=emask)
    tl.store(gr_ptr + row * N + offs, g_r.to(gr_ptr.dtype.element_ty), mask=emask)
    if WRITE_GT:
        tl.store(gt_ptr + row * N + offs, g_t.to(gt_ptr.dtype.element_ty), mask=emask)
