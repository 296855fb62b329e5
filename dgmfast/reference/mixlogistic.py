"""Flow++ mixture-of-logistics coupling (SPEC §2), plain PyTorch: the executable contract the kernels must equal.

Parameters carry the component dim K last: ``logits``, ``means``, ``log_scales`` are ``[B, ..., K]``.
"""
import torch
import torch.nn.functional as F

from dgmfast.reference.common import acc_dtype, per_sample_sum
from dgmfast.reference.coupling import ORDERS, SCALE_MAPS, affine_log_scale  # noqa: F401  (re-exported)


def bisection_iters(dtype: torch.dtype) -> int:
    """Fixed bisection count of the reverse (no data-dependent exit): 40 steps shrink a float32 bracket of
    width up to 2**16 * max(1, |x|) to one float32 ulp of x, 80 steps a float64 one up to 2**27 * max(1, |x|)."""
    return 80 if dtype == torch.float64 else 40


def mixture_log_cdf_sf_pdf(x, logits, means, log_scales, min_log_scale=-7.0):
    """(log u, log(1 - u), log f) of the logistic mixture at x ([B, ...]; parameters [B, ..., K]).

    log u = logsumexp_k(w_k + logsigmoid(z_k)), log(1-u) = logsumexp_k(w_k + logsigmoid(-z_k)),
    log f = logsumexp_k(w_k + z_k - l_k - 2 softplus(z_k)), with w = log_softmax(logits),
    l = max(log_scales, min_log_scale), z_k = (x - mu_k) exp(-l_k).
    """
    l = torch.clamp(log_scales, min=min_log_scale)
    w = torch.log_softmax(logits, dim=-1)
    z = (x.unsqueeze(-1) - means) * torch.exp(-l)
    log_u = torch.logsumexp(w + F.logsigmoid(z), dim=-1)
    log_sf = torch.logsumexp(w + F.logsigmoid(-z), dim=-1)
    log_f = torch.logsumexp(w + z - l - 2 * F.softplus(z), dim=-1)
    return log_u, log_sf, log_f


def mixture_logit_cdf(x, logits, means, log_scales, min_log_scale=-7.0):
    """v(x) = logit(F(x)) = log u - log(1 - u), from the two stable log-sums."""
    log_u, log_sf, _ = mixture_log_cdf_sf_pdf(x, logits, means, log_scales, min_log_scale)
    return log_u - log_sf


def inverse_bracket(v, means, log_scales, min_log_scale=-7.0):
    """[lo, hi] holding the root of logit(F(x)) = v: min mu - B, max mu + B with B = s_max (|v| + 1),
    s_max = max_k exp(l_k). Beyond max mu every sigmoid(z_k) >= 1/2, so v(x) >= (x - max mu)/s_max - log 2,
    and symmetrically below min mu: the root lies inside. This bracket lies inside the SPEC's
    (B_w = 200 sum_k exp(l_k) plus widening), so bisection needs fewer steps."""
    s_max = torch.exp(torch.clamp(log_scales, min=min_log_scale).amax(dim=-1))
    width = s_max * (v.abs() + 1.0)
    return means.amin(dim=-1) - width, means.amax(dim=-1) + width


def mixlogistic_inverse_bisection(v, logits, means, log_scales, *, min_log_scale=-7.0, num_iters=100):
    """x with logit(F(x)) = v by ``num_iters`` bisection steps in logit space (no gradient); returns the
    midpoint of the last bracket. The plain-PyTorch baseline of the benchmarks (100 steps)."""
    with torch.no_grad():
        lo, hi = inverse_bracket(v, means, log_scales, min_log_scale)
        for _ in range(num_iters):
            mid = 0.5 * (lo + hi)
            below = mixture_logit_cdf(mid, logits, means, log_scales, min_log_scale) < v
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return 0.5 * (lo + hi)


def _implicit_inverse(v, logits, means, log_scales, min_log_scale, num_iters):
    """The bisection root x0 as a value, with the implicit gradient dx/dtheta = -(dF/dtheta)/(dF/dx)
    (F(x, theta) = v(x) - v, in logit space): x = x0 + (c - c.detach()), c = -F(x0, theta)/F'(x0)."""
    x0 = mixlogistic_inverse_bisection(v.detach(), logits.detach(), means.detach(), log_scales.detach(),
                                       min_log_scale=min_log_scale, num_iters=num_iters)
    log_u, log_sf, log_f = mixture_log_cdf_sf_pdf(x0, logits, means, log_scales, min_log_scale)
    dv_dx = torch.exp(log_f - log_u - log_sf).detach()  # f / (u (1 - u)) > 0
    c = -(log_u - log_sf - v) / dv_dx
    return x0 + (c - c.detach())


def mixlogistic_coupling(x, logits, means, log_scales, log_scale, shift, *, scale_map="tanh", clamp=1.0,
                         min_log_scale=-7.0, order="scale_shift", reverse=False):
    """Forward: v = logit(F(x)) (two stable log-sums), y = exp(s) v + t ("scale_shift") or (v + t) exp(s)
    ("shift_scale"), s = scale_map(log_scale); logdet[b] = sum(log f - log u - log(1-u) + s).

    Reverse: v = (y - t) exp(-s) or y exp(-s) - t, x = F^-1(sigmoid(v)) by fixed-count bisection, logdet =
    minus the forward logdet at x; gradients by implicit differentiation. Half inputs are computed in
    float32; the output has x's dtype, logdet is float32 (float64 for float64 input).
    """
    acc = acc_dtype(x.dtype)
    xa, pi, mu, ls, r, t = (a.to(acc) for a in (x, logits, means, log_scales, log_scale, shift))
    s = affine_log_scale(r, scale_map, clamp)
    if not reverse:
        log_u, log_sf, log_f = mixture_log_cdf_sf_pdf(xa, pi, mu, ls, min_log_scale)
        v = log_u - log_sf
        out = torch.exp(s) * v + t if order == "scale_shift" else (v + t) * torch.exp(s)
        return out.to(x.dtype), per_sample_sum(log_f - log_u - log_sf + s)
    v = (xa - t) * torch.exp(-s) if order == "scale_shift" else xa * torch.exp(-s) - t
    out = _implicit_inverse(v, pi, mu, ls, min_log_scale, bisection_iters(x.dtype))
    log_u, log_sf, log_f = mixture_log_cdf_sf_pdf(out, pi, mu, ls, min_log_scale)
    return out.to(x.dtype), -per_sample_sum(log_f - log_u - log_sf + s)
