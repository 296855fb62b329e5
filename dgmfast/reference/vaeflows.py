"""Planar flows and IAF steps (SPEC §5), plain PyTorch: the executable contract the kernels must equal."""
import torch
import torch.nn.functional as F

from dgmfast.reference.common import acc_dtype, per_sample_sum


def planar_uhat(u, w):
    """``(u_hat, w.u_hat)`` with ``u_hat = u + (m(w.u) - w.u) w / |w|^2``, ``m(a) = -1 + softplus(a)``.

    ``w.u_hat = m(w.u) > -1`` keeps every step invertible. Where ``w = 0`` the step is the identity
    map in z's Jacobian: ``u_hat = u`` and ``w.u_hat = 0`` (the SPEC's 0/0 made explicit).
    """
    wu = (w * u).sum(-1, keepdim=True)
    ww = (w * w).sum(-1, keepdim=True)
    nonzero = ww > 0
    m = -1.0 + F.softplus(wu)
    coef = torch.where(nonzero, (m - wu) / torch.where(nonzero, ww, torch.ones_like(ww)), torch.zeros_like(ww))
    return u + coef * w, torch.where(nonzero, m, torch.zeros_like(m)).squeeze(-1)


def planar_flows(z, u, w, b):
    """L planar steps: ``a = w.z + b``, ``z <- z + u_hat tanh(a)``, ``logdet += log(1 + (1 - tanh(a)^2) w.u_hat)``.

    ``z`` ``[B, D]``; ``u``, ``w`` ``[L, D]`` (shared) or ``[B, L, D]`` (amortized); ``b`` ``[L]`` or ``[B, L]``.
    Returns ``(z_L, logdet)``: z_L like z, logdet ``[B]`` float32 (float64 for float64 input).
    """
    acc = acc_dtype(z.dtype)
    zc = z.to(acc)
    u_hat, wuh = planar_uhat(u.to(acc), w.to(acc))
    wa, ba = w.to(acc), b.to(acc)
    logdet = zc.new_zeros(z.shape[0])
    for step in range(w.shape[-2]):
        w_l, uh_l = wa[..., step, :], u_hat[..., step, :]
        h = torch.tanh((zc * w_l).sum(-1) + ba[..., step])
        zc = zc + uh_l * h[:, None]
        logdet = logdet + torch.log1p((1 - h * h) * wuh[..., step])
    return zc.to(z.dtype), logdet


def iaf_step(z, mean, log_scale_raw, *, sigmoid_bias=2.0, reverse=False):
    """Stable IAF step: ``g = sigmoid(r + sigmoid_bias)``, ``z' = g z + (1 - g) mean``, ``logdet = sum log g``.

    Reverse: ``z = (z' - (1 - g) mean) / g``, logdet ``-sum log g``. All tensors ``[B, ...]`` of one shape.
    """
    acc = acc_dtype(z.dtype)
    za, m, v = z.to(acc), mean.to(acc), log_scale_raw.to(acc) + sigmoid_bias
    log_g = -F.softplus(-v)
    if not reverse:
        out = torch.sigmoid(v) * za + torch.sigmoid(-v) * m
        logdet = per_sample_sum(log_g)
    else:
        out = (za - torch.sigmoid(-v) * m) / torch.sigmoid(v)
        logdet = -per_sample_sum(log_g)
    return out.to(z.dtype), logdet
