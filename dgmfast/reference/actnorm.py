"""ActNorm (SPEC §3), plain PyTorch: the executable contract the kernels must equal."""
import math

import torch

from dgmfast.reference.common import acc_dtype


def actnorm(x, loc, log_scale, *, reverse=False):
    """y = (x + loc[c]) * exp(log_scale[c]) on dim 1 of x [B, C, ...]; logdet[b] = S * sum_c log_scale[c]
    with S the product of the dims after 1. Reverse: x = y * exp(-log_scale[c]) - loc[c], logdet negated.
    Half inputs are computed in float32; logdet is float32 (float64 for float64 input)."""
    acc = acc_dtype(x.dtype)
    view = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    l, s = loc.to(acc).view(view), log_scale.to(acc).view(view)
    xa = x.to(acc)
    y = (xa + l) * torch.exp(s) if not reverse else xa * torch.exp(-s) - l
    plane = math.prod(x.shape[2:])
    logdet = (plane if not reverse else -plane) * log_scale.to(acc).sum()
    return y.to(x.dtype), logdet.expand(x.shape[0]).contiguous()


def actnorm_data_init(x, eps=1e-6):
    """ActNorm's data-dependent initialization from a batch x [B, C, ...], in float64:
    loc = -mean_c, log_scale = -log(std_c + eps) over the batch and spatial dims (std with 1/N), and
    std_c itself (zero where a channel has zero variance)."""
    xc = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
    mean = xc.mean(1)
    std = (xc - mean[:, None]).square().mean(1).sqrt()
    return -mean, -torch.log(std + eps), std
