"""Affine coupling (SPEC §1), plain PyTorch: the executable contract the kernels must equal."""
import torch
import torch.nn.functional as F

from dgmfast.reference.common import acc_dtype, per_sample_sum

SCALE_MAPS = ("exp", "tanh", "sigmoid")
ORDERS = ("scale_shift", "shift_scale")


def affine_log_scale(r, scale_map="exp", clamp=1.0, eps=0.0):
    """s = scale_map(r): exp -> r; tanh -> clamp*tanh(r/clamp); sigmoid -> log(sigmoid(r+2) + eps)."""
    if scale_map == "exp":
        return r
    if scale_map == "tanh":
        return clamp * torch.tanh(r / clamp)
    v = r + 2.0
    return -F.softplus(-v) if eps == 0 else torch.log(torch.sigmoid(v) + eps)


def affine_coupling(x, log_scale, shift, *, scale_map="exp", clamp=1.0, eps=0.0, order="scale_shift",
                    reverse=False):
    """y = x*exp(s) + t ("scale_shift") or (x + t)*exp(s) ("shift_scale"), logdet[b] = sum s[b].

    Reverse inverts the map and returns logdet = -sum s. Half inputs are computed in float32;
    y has x's dtype, logdet is float32 (float64 for float64 input).
    """
    acc = acc_dtype(x.dtype)
    xa, r, t = x.to(acc), log_scale.to(acc), shift.to(acc)
    s = affine_log_scale(r, scale_map, clamp, eps)
    if not reverse:
        y = xa * torch.exp(s) + t if order == "scale_shift" else (xa + t) * torch.exp(s)
        logdet = per_sample_sum(s)
    else:
        y = (xa - t) * torch.exp(-s) if order == "scale_shift" else xa * torch.exp(-s) - t
        logdet = -per_sample_sum(s)
    return y.to(x.dtype), logdet
