"""Dequantization (SPEC §6), plain PyTorch: the executable contract the kernels must equal.

The noise is an argument here: dgmfast's "torch" backend passes the same Philox noise the kernels draw
(dgmfast.ops.common.philox_uniform / philox_normal), and the benchmarks pass torch.rand / torch.randn,
which is what a user would write.
"""
import math

import torch
import torch.nn.functional as F

from dgmfast.reference.common import acc_dtype, per_sample_sum

MODES = ("unit", "centered", "logit")


def dequant_map(q, mode, alpha):
    """(y, per-element log-det term) of the mode at q in [0, 1) (constants excluded)."""
    if mode == "unit":
        return q, torch.zeros_like(q)
    if mode == "centered":
        return q - 0.5, torch.zeros_like(q)
    p = alpha + (1 - 2 * alpha) * q
    lp, l1p = torch.log(p), torch.log1p(-p)
    return lp - l1p, -(lp + l1p)


def cube_point(x, u):
    """x + u kept below x + 1 in x's float dtype: in float32, x + u rounds up to x + 1 when u is within
    half an ulp of 1, which would move the point into the next cube."""
    return torch.minimum(x + u, (x + 1) * (1 - torch.finfo(x.dtype).eps / 2))


def row_constant(num_dims, mode, alpha, n_bits):
    """D * (log(1 - 2 alpha) [logit] - log n): the part of every sample's log-det that is constant."""
    return num_dims * ((math.log1p(-2 * alpha) if mode == "logit" else 0.0) - n_bits * math.log(2.0))


def uniform_dequantize(x, noise, *, n_bits=8, in_bits=8, mode="logit", alpha=0.05, dtype=torch.float32):
    """y = mode((floor(x / 2**(in_bits - n_bits)) + noise) / 2**n_bits) (the sum kept below the next integer,
    see cube_point); logdet = log|det dy/d(x+u)| per sample."""
    acc = acc_dtype(dtype)
    xr = torch.div(x, 2 ** (in_bits - n_bits), rounding_mode="floor").to(acc)
    y, ld = dequant_map(cube_point(xr, noise.to(acc)) * 2.0**-n_bits, mode, alpha)
    num_dims = math.prod(x.shape[1:])
    return y.to(dtype), per_sample_sum(ld) + row_constant(num_dims, mode, alpha, n_bits)


def uniform_dequantize_reverse(y, *, n_bits=8, mode="logit", alpha=0.05):
    """Back to integers: x = clamp(floor(n q), 0, n - 1) with q recovered per mode (uint8 for n_bits <= 8,
    else int32); logdet = minus the forward log-det at y."""
    acc = acc_dtype(y.dtype)
    ya = y.to(acc)
    if mode == "unit":
        q, ld = ya, torch.zeros_like(ya)
    elif mode == "centered":
        q, ld = ya + 0.5, torch.zeros_like(ya)
    else:
        q, ld = (torch.sigmoid(ya) - alpha) / (1 - 2 * alpha), F.softplus(ya) + F.softplus(-ya)
    n = 2**n_bits
    x = torch.clamp(torch.floor(n * q), 0, n - 1).to(torch.uint8 if n_bits <= 8 else torch.int32)
    num_dims = math.prod(y.shape[1:])
    return x, -(per_sample_sum(ld) + row_constant(num_dims, mode, alpha, n_bits))


def gaussian_log_prob(eps):
    """log N(eps; 0, I) per sample: sum(-eps^2/2 - log(2 pi)/2)."""
    e = eps.to(acc_dtype(eps.dtype))
    return per_sample_sum(-0.5 * e * e - 0.5 * math.log(2 * math.pi))


def dequantize_sigmoid_tail(x, v, *, n_bits=8, mode="logit", alpha=0.05):
    """Flow++ tail: u = sigmoid(v), q = (x + u)/2**n_bits, y per mode;
    logdet = sum(log sigmoid'(v)) + the mode's log-det, log sigmoid'(v) = -softplus(v) - softplus(-v)."""
    acc = acc_dtype(v.dtype)
    va = v.to(acc)
    y, ld = dequant_map((x.to(acc) + torch.sigmoid(va)) * 2.0**-n_bits, mode, alpha)
    ld = ld - F.softplus(va) - F.softplus(-va)
    num_dims = math.prod(x.shape[1:])
    return y.to(v.dtype), per_sample_sum(ld) + row_constant(num_dims, mode, alpha, n_bits)


def bits_per_dim(log_prob, log_weight, num_dims):
    """-(log p(y) + log_weight) / (D ln 2): the dequantization bound on the discrete NLL in bits/dim."""
    return -(log_prob + log_weight) / (num_dims * math.log(2.0))
