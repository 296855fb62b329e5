"""Public functional ops. Each validates its inputs, picks a backend (dgmfast.backends) and
calls the torch.library custom op, or the plain-PyTorch reference for the "torch" backend."""
import math

import torch

from dgmfast import reference
from dgmfast.backends import select_backend
from dgmfast.ops import coupling as _coupling
from dgmfast.ops import gaussian as _gaussian
from dgmfast.ops.common import check_choice, check_like, check_tensor, draw_seed
from dgmfast.reference.common import acc_dtype
from dgmfast.reference.coupling import ORDERS, SCALE_MAPS
from dgmfast.reference.gaussian import ESTIMATORS, LOG_2PI, ElboSurgery, elbo_surgery_from_terms

__all__ = ["affine_coupling", "reparameterize", "gaussian_mixture_log_prob", "elbo_surgery", "ElboSurgery"]


def affine_coupling(x, log_scale, shift, *, scale_map="exp", clamp=1.0, eps=0.0, order="scale_shift",
                    reverse=False):
    """Affine coupling transform (RealNVP / Glow), SPEC §1.

    ``s = scale_map(log_scale)`` with scale_map ``"exp"`` (s = r), ``"tanh"`` (clamp*tanh(r/clamp)) or
    ``"sigmoid"`` (log(sigmoid(r + 2) + eps), Glow). ``order="scale_shift"``: ``y = x*exp(s) + shift``;
    ``"shift_scale"``: ``y = (x + shift)*exp(s)``. ``reverse=True`` applies the inverse.

    Args:
        x, log_scale, shift: ``[B, ...]`` tensors of one shape, dtype (float16/bfloat16/float32/float64)
            and device. ``log_scale`` is the raw conditioner output r. Any batch stride is read in
            place (e.g. ``h.chunk(2, dim=1)``); other layouts are copied.
    Returns:
        ``(y, logdet)``: y like x; logdet ``[B]`` = ``log|det dy/dx|`` (float32, float64 for float64 x).

    Example::

        log_scale, shift = conditioner(x_a).chunk(2, dim=1)
        y_b, logdet = dgmfast.functional.affine_coupling(x_b, log_scale, shift, scale_map="sigmoid",
                                                         order="shift_scale")
    """
    check_tensor("x", x)
    check_like("log_scale", log_scale, "x", x)
    check_like("shift", shift, "x", x)
    check_choice("scale_map", scale_map, SCALE_MAPS)
    check_choice("order", order, ORDERS)
    if scale_map == "tanh" and not clamp > 0:
        raise ValueError(f"clamp must be > 0 for scale_map='tanh', got {clamp!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    backend = select_backend("affine_coupling", x.device, x.dtype)
    if backend == "torch":
        return reference.coupling.affine_coupling(x, log_scale, shift, scale_map=scale_map, clamp=clamp, eps=eps,
                                                  order=order, reverse=reverse)
    shift_first = (order == "shift_scale") != bool(reverse)
    return _coupling.affine_coupling_fwd(x, log_scale, shift, _coupling.SCALE_MAP_IDS[scale_map], float(clamp),
                                         float(eps), shift_first, bool(reverse), backend)


# ---- Gaussian posterior, mixture log-density, ELBO surgery (SPEC §7, §9, §10) ---------------------

def _check_matrix(name, t):
    check_tensor(name, t)
    if t.dim() != 2:
        raise ValueError(f"{name} must be [N, D] (2-D), got shape {tuple(t.shape)}")


def reparameterize(mu, logvar, *, eps=None, generator=None):
    """Reparameterized sample of N(mu, exp(logvar)), its KL to N(0, I) and log q(z|x), SPEC §7.

    ``z = mu + exp(logvar/2) * eps``; ``kl[b] = 0.5*sum(mu^2 + exp(logvar) - logvar - 1)``;
    ``log_q[b] = sum(-0.5*(log 2pi + logvar + eps^2))``. eps is drawn in-kernel (Philox; one 64-bit
    seed per call from `generator`, default torch's global generator, so torch.manual_seed reproduces
    runs) unless given; backward recomputes it from the seed instead of storing it. Gradients flow to
    mu and logvar through all three outputs (and to a given eps).

    Args:
        mu, logvar: ``[B, D]``, one dtype (float16/bfloat16/float32/float64) and device; any batch stride.
        eps: optional ``[B, D]`` noise like mu (then `generator` is unused).
    Returns:
        ``(z, kl, log_q)``: z like mu; kl, log_q ``[B]`` float32 (float64 for float64 input).

    Example::

        mu, logvar = encoder(x).chunk(2, dim=1)
        z, kl, log_q = dgmfast.functional.reparameterize(mu, logvar)
        loss = recon_loss(decoder(z), x) + kl.mean()
    """
    _check_matrix("mu", mu)
    check_like("logvar", logvar, "mu", mu)
    if eps is not None:
        check_like("eps", eps, "mu", mu)
    backend = select_backend("reparameterize", mu.device, mu.dtype)
    seed = draw_seed(generator) if eps is None else torch.zeros((), dtype=torch.int64)
    if backend == "torch":
        return reference.gaussian.reparameterize(mu, logvar, eps=eps, seed=seed)
    return _gaussian.reparameterize_fwd(mu, logvar, eps, seed, backend)


def _check_mixture(z, means, logvars, log_weights):
    _check_matrix("z", z)
    _check_matrix("means", means)
    if means.shape[1] != z.shape[1]:
        raise ValueError(f"means must be [K, D] with D = {z.shape[1]} (as z), got shape {tuple(means.shape)}")
    if means.shape[0] == 0:
        raise ValueError("means must have at least one component (K >= 1), got K = 0")
    check_like("means", means, "z", z, shape=means.shape)
    check_like("logvars", logvars, "means", means)
    if log_weights is not None:
        check_like("log_weights", log_weights, "means", means, shape=(means.shape[0],))


def _mixture(z, means, logvars, log_weights, per_dim, backend, band=None, band_offset=0):
    """The mixture op on `backend` ("torch": the reference, with band weights as an [N, K] matrix)."""
    K = means.shape[0]
    if backend == "torch":
        pair = None if band is None else _band_matrix(z.shape[0], K, log_weights, band, band_offset)
        return reference.gaussian.gaussian_mixture_log_prob(z, means, logvars, log_weights, per_dim=per_dim,
                                                            pair_log_weights=pair)
    if log_weights is None:
        log_weights = means.new_full((K,), -math.log(K))
    if band is None:
        band = z.new_empty((0,), dtype=acc_dtype(z.dtype))
    return _gaussian.gaussian_mixture_fwd(z, means, logvars, log_weights, band, int(band_offset), bool(per_dim),
                                          backend)


def _band_matrix(n, K, log_weights, band, band_offset):
    """[n, K] pair log weights: band[o] where o = (k - i - band_offset) mod K < len(band), else log_weights[k]."""
    rows = torch.arange(n, device=band.device)[:, None]
    o = (torch.arange(K, device=band.device)[None, :] - rows - band_offset) % K
    full = log_weights.to(band.dtype)[None, :].expand(n, K)
    return torch.where(o < band.numel(), band[o.clamp(max=band.numel() - 1)], full)


def gaussian_mixture_log_prob(z, means, logvars, log_weights=None, *, per_dim=False):
    """Log-density of a diagonal-Gaussian mixture (VampPrior, aggregate posterior), SPEC §9.

    ``per_dim=False``: ``out[n] = logsumexp_k(log_weights_k + sum_d log N(z_nd; m_kd, lv_kd))``;
    ``per_dim=True``: ``out[n, d] = logsumexp_k(log_weights_k + log N(z_nd; m_kd, lv_kd))``, with
    ``log N(z; m, lv) = -0.5*(log 2pi + lv + (z - m)^2 exp(-lv))``. Fused: an online logsumexp over
    component tiles, never an [N, K, D] tensor; backward recomputes from the saved output.

    Args:
        z: ``[N, D]``; means, logvars: ``[K, D]`` (K >= 1); log_weights: ``[K]`` (default ``-log K``,
            not normalized for you). One dtype (float16/bfloat16/float32/float64) and device; strided
            views are read in place.
    Returns:
        ``[N]`` (or ``[N, D]``), float32 (float64 for float64 input). Gradients flow to all four inputs.

    Example::

        log_p = dgmfast.functional.gaussian_mixture_log_prob(z, prior_means, prior_logvars)
    """
    _check_mixture(z, means, logvars, log_weights)
    backend = select_backend("gaussian_mixture_log_prob", z.device, z.dtype)
    return _mixture(z, means, logvars, log_weights, per_dim, backend)


def _global_posteriors(mu, logvar, process_group):
    """(mu, logvar of the global batch, global batch size, offset of this rank's rows): all-gathered with
    gradients flowing back to the owning rank."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group was given but torch.distributed is not initialized")
    world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
    sizes = [torch.zeros(1, dtype=torch.int64, device=mu.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([mu.shape[0]], dtype=torch.int64, device=mu.device), group=process_group)
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) != 1:
        raise ValueError(f"elbo_surgery with process_group needs the same batch size on every rank, got {sizes}")
    mu_all = torch.cat(all_gather(mu, group=process_group))
    lv_all = torch.cat(all_gather(logvar, group=process_group))
    return mu_all, lv_all, sum(sizes), rank * mu.shape[0]


def _global_mean(v, total, process_group):
    """Mean over the global batch of per-sample v: the value is global, the gradient is this rank's share
    (each rank differentiates its own samples; the all-gather carries the cross-rank terms)."""
    s = v.sum()
    if process_group is None:
        return s / total
    import torch.distributed as dist
    g = s.detach().clone()
    dist.all_reduce(g, group=process_group)
    return (s + (g - s.detach())) / total


def elbo_surgery(z, mu, logvar, *, dataset_size, estimator="mws", process_group=None):
    """ELBO surgery (Hoffman & Johnson; Chen et al. 2018), SPEC §10: the KL term of the ELBO split into
    mutual information, total correlation and dimension-wise KL, estimated on the batch.

    Pairs (i, j) over the batch: ``log q(z_i|x_j) = sum_d log N(z_id; mu_jd, logvar_jd)``.
    ``"mws"``: ``log q(z_i) = logsumexp_j log q(z_i|x_j) - log(dataset_size*M)``; ``"mss"``: weights
    ``W_ii = 1/N``, ``W_i,i+1 = (N-M+1)/(N(M-1))``, others ``1/(M-1)`` (on the diagonal, not in columns 0
    and 1 as the widely copied matrix has it). ``log prod_d q(z_id)`` likewise per dimension. Runs on the
    fused mixture kernel (the MSS weights are its band option); never an [M, M, D] tensor.

    Args:
        z, mu, logvar: ``[M, D]``: samples z_i ~ q(z|x_i) and the posteriors of the batch.
        dataset_size: N >= the (global) batch size M. estimator: "mws" or "mss" (needs M >= 2).
        process_group: with torch.distributed initialized, use the global batch: posteriors are
            all-gathered (gradients flow back to their rank), z stays local. Every rank must call it
            with the same local batch size and run backward. Per-sample outputs are this rank's rows;
            the batch means are global means whose gradient on each rank is that of its own samples.
    Returns:
        :class:`ElboSurgery` (per-sample ``[M]`` log_q_zx, log_q_z, log_prod_q_zd, log_p_z; scalars mi,
        marginal_kl, tc, dimwise_kl), float32 (float64 for float64 input), with
        ``mi + marginal_kl = E[log q(z|x) - log p(z)]`` and ``marginal_kl = tc + dimwise_kl``.

    Example::

        z, kl, _ = dgmfast.functional.reparameterize(mu, logvar)
        s = dgmfast.functional.elbo_surgery(z, mu, logvar, dataset_size=len(dataset), estimator="mss")
        loss = recon + s.mi + beta * s.tc + s.dimwise_kl   # beta-TCVAE
    """
    _check_matrix("z", z)
    check_like("mu", mu, "z", z)
    check_like("logvar", logvar, "z", z)
    check_choice("estimator", estimator, ESTIMATORS)
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size <= 0:
        raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
    m = z.shape[0]
    if process_group is not None:
        mu_all, lv_all, M, offset = _global_posteriors(mu, logvar, process_group)
    else:
        mu_all, lv_all, M, offset = mu, logvar, m, 0
    if dataset_size < M:
        raise ValueError(f"dataset_size must be >= the batch size {M}, got {dataset_size}")
    if M == 0:
        raise ValueError("elbo_surgery needs a non-empty batch, got M = 0")
    if estimator == "mss" and M < 2:
        raise ValueError(f"estimator='mss' needs a batch of at least 2 samples, got M = {M}")
    acc = acc_dtype(z.dtype)
    N = dataset_size
    if estimator == "mws":
        log_w, band = z.new_full((M,), -math.log(N * M)), None
    else:
        log_w = z.new_full((M,), -math.log(M - 1))
        band = torch.tensor([-math.log(N), math.log((N - M + 1) / (N * (M - 1)))], dtype=acc, device=z.device)
    backend = select_backend("gaussian_mixture_log_prob", z.device, z.dtype)
    log_q_z = _mixture(z, mu_all, lv_all, log_w, False, backend, band, offset)
    log_prod_q_zd = _mixture(z, mu_all, lv_all, log_w, True, backend, band, offset).sum(1)
    za, ma, la = z.to(acc), mu.to(acc), logvar.to(acc)
    log_q_zx = reference.gaussian.gaussian_log_density(za, ma, la).sum(1)
    log_p_z = (-0.5 * (LOG_2PI + za * za)).sum(1)
    return elbo_surgery_from_terms(log_q_zx, log_q_z, log_prod_q_zd, log_p_z,
                                   mean=lambda v: _global_mean(v, M, process_group))
