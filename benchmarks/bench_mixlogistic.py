"""Mixture-of-logistics coupling benchmark cases (SPEC §12): Flow++'s configuration (tanh scale, scale_shift).

The parameters are strided views of one conditioner output ``h: [B, C*(3K+2), H, W]``, as a Flow++ layer
passes them. Reverse: the baseline is ``mixlogistic_inverse_bisection`` (100 bisection steps in plain
PyTorch) plus the log-det at the root; dgmfast runs its fixed-count bisection (40 steps in float32).
"""
import torch

from benchmarks.harness import Case
from dgmfast import functional as F
from dgmfast.reference import mixlogistic as ref

SHAPES = [((64, 3, 32, 32), 32), ((64, 6, 16, 16), 32), ((16, 3, 64, 64), 4)]


def _make(shape, k):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        B, C, H, W = shape
        h = torch.randn(B, C * (3 * k + 2), H, W, generator=g, device=device, dtype=dtype).requires_grad_()
        x = torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_()
        hv = h.unflatten(1, (C, 3 * k + 2)).movedim(2, -1)
        params = (hv[..., 2:k + 2], hv[..., k + 2:2 * k + 2], hv[..., 2 * k + 2:], hv[..., 0], hv[..., 1])
        return (x, *params), {}
    return make


def reference_reverse(y, logits, means, log_scales, log_scale, shift):
    """The plain-PyTorch inverse: 100-step bisection, then the log-det at the root."""
    s = ref.affine_log_scale(log_scale, "tanh")
    v = (y - shift) * torch.exp(-s)
    x = ref.mixlogistic_inverse_bisection(v, logits, means, log_scales, num_iters=100)
    log_u, log_sf, log_f = ref.mixture_log_cdf_sf_pdf(x, logits, means, log_scales)
    return x, -(log_f - log_u - log_sf + s).flatten(1).sum(1)


def fused_reverse(*args):
    return F.mixlogistic_coupling(*args, reverse=True)


def _bytes(mode, k):
    # element-wise tensors (x, r, t, y) and 3K parameters per element; the backward also reads grad_y and
    # writes grads of x, r, t and the 3K parameters
    per_elem = {"fwd": 4 + 3 * k, "fwd+bwd": (4 + 3 * k) + (4 + 3 * k) + (3 + 3 * k), "reverse": 4 + 3 * k}[mode]
    return lambda args, kwargs: per_elem * args[0].numel() * args[0].element_size()


def cases(device, quick=False):
    out = []
    for shape, k in SHAPES[:1] if quick else SHAPES:
        name = f"{list(shape)} K={k}"
        for mode in ("fwd", "fwd+bwd"):
            out.append(Case("mixlogistic_coupling", name, mode, _make(shape, k), ref.mixlogistic_coupling,
                            F.mixlogistic_coupling, _bytes(mode, k)))
        out.append(Case("mixlogistic_coupling", name, "reverse", _make(shape, k), reference_reverse, fused_reverse,
                        _bytes("reverse", k)))
    return out
