"""Gaussian family benchmark cases (SPEC §12): mixture log-density, reparameterize, ELBO surgery.

The mixture is compute-bound: FLOPs count 4 per (n, k, d) term and logit pass ((z - m), square, times
exp(-lv), add); fwd+bwd counts the forward, one recomputation of the logits and the gradient terms
(10 per term), i.e. 18 per term. The reference materializes [N, K, D] tensors. reparameterize's eager
reference is the plain PyTorch users write (torch.randn_like noise, then the formulas); the dgmfast
kernels draw Philox noise in-kernel instead.
"""
import math

import torch

from benchmarks.harness import Case
from dgmfast import functional as F
from dgmfast.reference import gaussian as ref

MIXTURE_SHAPES = [(256, 500, 40), (1024, 1024, 64), (4096, 4096, 32)]
REPARAM_SHAPES = [(256, 10), (4096, 512)]
ELBO_SHAPES = [(256, 10)]
EAGER_MIXTURE_LIMIT = 2**28  # elements of one [N, K, D] intermediate the eager reference may create on a CPU


def _randn(g, shape, device, dtype, scale=1.0):
    return (scale * torch.randn(shape, generator=g, device=device)).to(dtype).requires_grad_()


def _mixture_make(N, K, D):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        z, m, lv = _randn(g, (N, D), device, dtype), _randn(g, (K, D), device, dtype), _randn(g, (K, D), device, dtype, 0.5)
        w = torch.full((K,), -math.log(K), device=device, dtype=dtype, requires_grad=True)
        return (z, m, lv, w), {}
    return make


def _mixture_bytes(mode):
    def count(args, kwargs):
        z, m, lv, w = args
        N, D = z.shape
        K = m.shape[0]
        fwd = z.numel() + 2 * m.numel() + K + N
        return z.element_size() * (fwd if mode == "fwd" else fwd + (fwd + N) + (N * D + 2 * K * D + K))
    return count


def _mixture_flops(mode):
    return lambda args, kwargs: (4 if mode == "fwd" else 18) * args[0].shape[0] * args[1].shape[0] * args[0].shape[1]


def _reparameterize_eager(mu, logvar):
    """What users write: torch.randn_like noise, then z, the analytic KL and log q(z|x)."""
    eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = 0.5 * (mu * mu + torch.exp(logvar) - logvar - 1.0).sum(1)
    log_q = (-0.5 * (ref.LOG_2PI + logvar + eps * eps)).sum(1)
    return z, kl, log_q


def _posterior_make(B, D, with_z=False):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        mu, lv = _randn(g, (B, D), device, dtype), _randn(g, (B, D), device, dtype, 0.5)
        if not with_z:
            return (mu, lv), {}
        z = _randn(g, (B, D), device, dtype)
        return (z, mu, lv), dict(dataset_size=60000, estimator="mss")
    return make


def cases(device, quick=False):
    out = []
    for N, K, D in MIXTURE_SHAPES[:1] if quick else MIXTURE_SHAPES:
        skip = None
        if device.type == "cpu" and N * K * D > EAGER_MIXTURE_LIMIT:
            skip = (f"the eager reference materializes [{N}, {K}, {D}] float32 intermediates "
                    f"({N * K * D * 4 / 2**30:.0f} GiB each; run once: 4 GiB saved for backward, ~45 s per step): "
                    "too heavy for this shared 2-core machine; torch.compile(reference) fuses them and is timed")
        for mode in ("fwd", "fwd+bwd"):
            out.append(Case("gaussian_mixture_log_prob", f"N,K,D={N},{K},{D}", mode, _mixture_make(N, K, D),
                            ref.gaussian_mixture_log_prob, F.gaussian_mixture_log_prob, _mixture_bytes(mode),
                            flops=_mixture_flops(mode), skip_eager=skip))
    for B, D in REPARAM_SHAPES[:1] if quick else REPARAM_SHAPES:
        for mode in ("fwd", "fwd+bwd"):
            # fwd reads mu, logvar and writes z (+ 2 per-row sums); the backward reads mu, logvar, grad_z and
            # writes grad_mu, grad_logvar
            per_elem = 3 if mode == "fwd" else 8
            out.append(Case("reparameterize", str([B, D]), mode, _posterior_make(B, D), _reparameterize_eager,
                            F.reparameterize, lambda a, k, n=per_elem: n * a[0].numel() * a[0].element_size()))
    for B, D in ELBO_SHAPES:
        for mode in ("fwd", "fwd+bwd"):
            out.append(Case("elbo_surgery", f"{[B, D]} mss", mode, _posterior_make(B, D, with_z=True),
                            ref.elbo_surgery, F.elbo_surgery,
                            lambda a, k: 3 * a[0].numel() * a[0].element_size(),
                            flops=lambda a, k, m=mode: (8 if m == "fwd" else 36) * a[0].shape[0] ** 2 * a[0].shape[1]))
    return out
