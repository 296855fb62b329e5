"""Invertible 1x1 convolution (SPEC §4), plain PyTorch: the reference of the fused LU-form op
(dgmfast/ops/invconv.py, :func:`invconv_lu`) and what dgmfast.nn.InvConv1x1 runs for the dense form. The
channel mixing is oneDNN/cuBLAS's (F.conv2d / F.linear / matmul)."""
import math

import torch
import torch.nn.functional as F

from dgmfast.reference.common import acc_dtype


def lu_weight(perm, lower, upper, sign_s, log_abs_s):
    """W = P L (U + diag(sign_s * exp(log_abs_s))) with L the unit lower triangle of `lower` and U the
    strict upper triangle of `upper` (the other entries of both are ignored); log|det W| = sum log_abs_s."""
    eye = torch.eye(perm.shape[0], dtype=lower.dtype, device=lower.device)
    return perm @ (torch.tril(lower, -1) + eye) @ (torch.triu(upper, 1) + torch.diag(sign_s * torch.exp(log_abs_s)))


def lu_inverse(perm, lower, upper, sign_s, log_abs_s):
    """W^-1 = (U + diag(s))^-1 L^-1 P^T by two triangular solves in float64 (differentiable), in the
    parameters' dtype."""
    eye = torch.eye(perm.shape[0], dtype=torch.float64, device=lower.device)
    l64 = torch.tril(lower.double(), -1) + eye
    u64 = torch.triu(upper.double(), 1) + torch.diag(sign_s.double() * torch.exp(log_abs_s.double()))
    l_inv_pt = torch.linalg.solve_triangular(l64, perm.double().T, upper=False, unitriangular=True)
    return torch.linalg.solve_triangular(u64, l_inv_pt, upper=True).to(lower.dtype)


def channel_matmul(x, weight):
    """y[b, :, ...] = weight @ x[b, :, ...] for x [B, C, ...]: a 1x1 F.conv2d for images, F.linear for
    [B, C] vectors, a batched matmul otherwise."""
    if x.dim() == 4:
        return F.conv2d(x, weight[:, :, None, None])
    if x.dim() == 2:
        return F.linear(x, weight)
    return torch.matmul(weight, x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))).view(x.shape)


def invconv_logdet(x, log_abs_det, reverse=False):
    """[B] log-det of the channel map on x [B, C, ...]: S * log|det W| (negated in reverse), S = the
    product of the dims after 1, in x's accumulation dtype."""
    plane = math.prod(x.shape[2:])
    ld = log_abs_det.to(acc_dtype(x.dtype)) * (-plane if reverse else plane)
    return ld.expand(x.shape[0]).contiguous()



def invconv_lu(x, perm, lower, upper, sign_s, log_abs_s, reverse=False):
    """(y, logdet) of the LU-form 1x1 conv on x [B, C, ...]: y = W x (W^-1 x in reverse) over dim 1, W from
    :func:`lu_weight` (:func:`lu_inverse`) cast to x's dtype; logdet = S * sum(log_abs_s) (negated in reverse)."""
    params = (perm, lower, upper, sign_s, log_abs_s)
    weight = lu_inverse(*params) if reverse else lu_weight(*params)
    log_abs_det = log_abs_s.sum(dtype=acc_dtype(log_abs_s.dtype))
    return channel_matmul(x, weight.to(x.dtype)), invconv_logdet(x, log_abs_det, reverse)
