"""Gaussian posterior, mixture log-density and ELBO surgery (SPEC §7, §9, §10), plain PyTorch:
the executable contract the kernels must equal. The mixture reference materializes [N, K, D]."""
import math
from typing import NamedTuple

import torch

from dgmfast.ops.common import philox_normal
from dgmfast.reference.common import acc_dtype

LOG_2PI = math.log(2.0 * math.pi)
ESTIMATORS = ("mws", "mss")


def philox_normal_like(mu: torch.Tensor, seed) -> torch.Tensor:
    """The N(0, 1) noise the kernels draw for a [B, D] tensor: element (b, d) is Philox normal number
    b*D + d, stream 0, under `seed` (dgmfast.ops.common.philox_normal), returned in mu's math dtype."""
    return philox_normal(mu.numel(), int(seed), device=mu.device).view(mu.shape).to(acc_dtype(mu.dtype))


def reparameterize(mu, logvar, *, eps=None, seed=None):
    """z = mu + exp(logvar/2)*eps, kl[b] = 0.5*sum(mu^2 + exp(logvar) - logvar - 1),
    log_q[b] = sum(-0.5*(log 2pi + logvar + eps^2)).

    eps (the noise) is given, or drawn from `seed` as the kernels draw it (philox_normal_like).
    z has mu's dtype; kl and log_q are float32 (float64 for float64 input).
    """
    acc = acc_dtype(mu.dtype)
    m, lv = mu.to(acc), logvar.to(acc)
    e = philox_normal_like(mu, seed) if eps is None else eps.to(acc)
    z = m + torch.exp(0.5 * lv) * e
    kl = 0.5 * (m * m + torch.exp(lv) - lv - 1.0).sum(1)
    log_q = (-0.5 * (LOG_2PI + lv + e * e)).sum(1)
    return z.to(mu.dtype), kl, log_q


def gaussian_log_density(z, mean, logvar):
    """Element-wise log N(z; mean, exp(logvar)) = -0.5*(log 2pi + logvar + (z - mean)^2 * exp(-logvar))."""
    return -0.5 * (LOG_2PI + logvar + (z - mean) ** 2 * torch.exp(-logvar))


def gaussian_mixture_log_prob(z, means, logvars, log_weights=None, *, per_dim=False, pair_log_weights=None):
    """out[n] = logsumexp_k(w_k + sum_d log N(z_nd; m_kd, lv_kd)) (per_dim=False, [N]) or
    out[n, d] = logsumexp_k(w_k + log N(z_nd; m_kd, lv_kd)) (per_dim=True, [N, D]).

    z [N, D]; means, logvars [K, D]; log_weights [K] (default -log K). `pair_log_weights` [N, K]
    replaces w by per-pair weights (used by the MSS estimator). Materializes [N, K, D].
    Output: float32 (float64 for float64 inputs).
    """
    acc = acc_dtype(z.dtype)
    K = means.shape[0]
    zz, m, lv = z.to(acc), means.to(acc), logvars.to(acc)
    if pair_log_weights is not None:
        w = pair_log_weights.to(acc)
    elif log_weights is None:
        w = torch.full((1, K), -math.log(K) if K else 0.0, dtype=acc, device=z.device)
    else:
        w = log_weights.to(acc)[None, :]
    terms = gaussian_log_density(zz[:, None, :], m[None], lv[None])  # [N, K, D]
    if per_dim:
        out = torch.logsumexp(w[:, :, None] + terms, dim=1)
    else:
        out = torch.logsumexp(w + terms.sum(2), dim=1)
    return out


def mss_log_weights(batch_size: int, dataset_size: int, *, dtype=torch.float64, device="cpu"):
    """log W [M, M] of minibatch stratified sampling (SPEC §10): W_ii = 1/N,
    W_i,(i+1 mod M) = (N - M + 1)/(N (M - 1)), all others 1/(M - 1); each row sums to 1."""
    M, N = batch_size, dataset_size
    W = torch.full((M, M), 1.0 / (M - 1), dtype=dtype, device=device)
    idx = torch.arange(M, device=device)
    W[idx, (idx + 1) % M] = (N - M + 1) / (N * (M - 1))
    W[idx, idx] = 1.0 / N
    return W.log()


class ElboSurgery(NamedTuple):
    """ELBO-surgery terms (SPEC §10): per-sample [M] log-densities and batch means (scalars)."""
    log_q_zx: torch.Tensor       # log q(z_i | x_i)
    log_q_z: torch.Tensor        # log q(z_i), the aggregate posterior, estimated on the batch
    log_prod_q_zd: torch.Tensor  # sum_d log q(z_id)
    log_p_z: torch.Tensor        # log N(z_i; 0, I)
    mi: torch.Tensor             # E[log q(z|x) - log q(z)]
    marginal_kl: torch.Tensor    # E[log q(z) - log p(z)]
    tc: torch.Tensor             # E[log q(z) - log prod_d q(z_d)]
    dimwise_kl: torch.Tensor     # E[log prod_d q(z_d) - log p(z)]


def elbo_surgery_from_terms(log_q_zx, log_q_z, log_prod_q_zd, log_p_z, mean=torch.mean) -> ElboSurgery:
    """The named tuple from the per-sample terms; `mean` averages over the (global) batch."""
    return ElboSurgery(log_q_zx, log_q_z, log_prod_q_zd, log_p_z, mean(log_q_zx - log_q_z),
                       mean(log_q_z - log_p_z), mean(log_q_z - log_prod_q_zd), mean(log_prod_q_zd - log_p_z))


def elbo_surgery(z, mu, logvar, *, dataset_size, estimator="mws"):
    """ELBO surgery on a batch (SPEC §10): z, mu, logvar [M, D]; pairs (i, j) over the batch with
    log q(z_i|x_j) = sum_d log N(z_id; mu_jd, logvar_jd). "mws": weights 1/(N M); "mss": the
    stratified weights of mss_log_weights. Per-sample outputs in float32 (float64 for float64)."""
    acc = acc_dtype(z.dtype)
    zz, m, lv = z.to(acc), mu.to(acc), logvar.to(acc)
    M = z.shape[0]
    terms = gaussian_log_density(zz[:, None, :], m[None], lv[None])  # [M, M, D]
    if estimator == "mws":
        log_w = torch.full((M, M), -math.log(dataset_size * M), dtype=acc, device=z.device)
    else:
        log_w = mss_log_weights(M, dataset_size, dtype=acc, device=z.device)
    log_q_zx = gaussian_log_density(zz, m, lv).sum(1)
    log_q_z = torch.logsumexp(log_w + terms.sum(2), dim=1)
    log_prod_q_zd = torch.logsumexp(log_w[:, :, None] + terms, dim=1).sum(1)
    log_p_z = (-0.5 * (LOG_2PI + zz * zz)).sum(1)
    return elbo_surgery_from_terms(log_q_zx, log_q_z, log_prod_q_zd, log_p_z)
