"""Invertible 1x1 convolution (Glow), SPEC §4. The LU form runs the fused op dgmfast.functional.invconv_lu
(W assembled, mixed in and differentiated inside one op); the dense form mixes with the fused
dgmfast.functional.channel_mix and caches its float64 log-determinant and inverse per weight version."""
import torch
from torch import nn

from dgmfast import functional as F
from dgmfast.ops.common import check_first_order
from dgmfast.reference import invconv as ref
from dgmfast.reference.common import acc_dtype


class _CachedLogAbsDet(torch.autograd.Function):
    """log|det W| from a cached float64 value, with gradient W^-T (the cached inverse)."""

    @staticmethod
    def forward(ctx, weight, log_abs_det64, inverse64):
        ctx.save_for_backward(inverse64)
        ctx.dtype = weight.dtype
        return log_abs_det64.to(acc_dtype(weight.dtype), copy=True)

    @staticmethod
    def backward(ctx, grad):
        (inverse64,) = ctx.saved_tensors
        check_first_order("InvConv1x1's cached log-determinant", ctx.needs_input_grad)  # the cache is constant
        return (grad.double() * inverse64.mT).to(ctx.dtype), None, None


class _CachedInverse(torch.autograd.Function):
    """W^-1 from a cached float64 inverse, with gradient -W^-T G W^-T."""

    @staticmethod
    def forward(ctx, weight, inverse64):
        ctx.save_for_backward(inverse64)
        ctx.dtype = weight.dtype
        return inverse64.to(weight.dtype, copy=True)

    @staticmethod
    def backward(ctx, grad):
        (inverse64,) = ctx.saved_tensors
        check_first_order("InvConv1x1's cached inverse", ctx.needs_input_grad)
        return (-(inverse64.mT @ grad.double() @ inverse64.mT)).to(ctx.dtype), None


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution, SPEC §4: ``forward(x, reverse=False) -> (y, logdet)`` with
    ``y[b, :, ...] = W x[b, :, ...]`` on ``[B, C, H, W]`` (or ``[B, C]``, ``[B, C, ...]``) and
    ``logdet[b] = S * log|det W|`` (S = product of the dims after 1).

    ``lu=True`` (Glow's LU form): ``W = P L (U + diag(sign * exp(log_abs_s)))`` with P a fixed permutation,
    L unit lower and U strictly upper triangular; ``log|det W| = sum(log_abs_s)``, no determinant is ever
    computed, and reverse applies ``W^-1`` from two triangular solves in float64. The layer is one call of
    :func:`dgmfast.functional.invconv_lu` (the parameters cast to x's accumulation dtype).
    ``lu=False``: a dense ``weight``; ``log|det W|`` and ``W^-1`` come from one LU factorization in float64
    on the weight's device, cached per weight version (``weight._version`` and storage), so they are
    recomputed only after the weight changes (e.g. an optimizer step). Gradients flow through both. The mixing is
    :func:`dgmfast.functional.channel_mix`.

    The initial W is a random orthogonal matrix (QR of a Gaussian matrix drawn from ``generator``, or
    from torch's global generator when None).

    Example::

        layer = dgmfast.nn.InvConv1x1(16, generator=torch.Generator().manual_seed(0))
        y, logdet = layer(x); x_back, _ = layer(y, reverse=True)
    """

    def __init__(self, num_channels: int, lu: bool = True, generator=None):
        super().__init__()
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        self.num_channels, self.lu = num_channels, bool(lu)
        dtype = torch.get_default_dtype()
        w = torch.linalg.qr(torch.randn(num_channels, num_channels, generator=generator, dtype=torch.float64))[0]
        if self.lu:
            perm, lower, upper = torch.linalg.lu(w)
            s = upper.diagonal()
            self.register_buffer("perm", perm.to(dtype))
            self.register_buffer("sign_s", torch.sign(s).to(dtype))
            self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
            self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
            self.log_abs_s = nn.Parameter(torch.log(s.abs()).to(dtype))
        else:
            self.weight = nn.Parameter(w.to(dtype))
            self._cache = (None, None, None)  # (weight version key, log|det W| float64, W^-1 float64)

    def extra_repr(self):
        return f"{self.num_channels}, lu={self.lu}"

    def _lu_params(self):
        return self.perm, self.lower, self.upper, self.sign_s, self.log_abs_s

    def _factorization(self):
        """(log|det W|, W^-1) in float64 for the current weight version (lu=False)."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if self._cache[0] != key:
            with torch.no_grad():
                lu_mat, pivots, _ = torch.linalg.lu_factor_ex(w.detach().double())
                diag = lu_mat.diagonal()
                if not bool(torch.isfinite(diag).all() & (diag != 0).all()):
                    raise ValueError("InvConv1x1: the weight is singular or not finite (an LU pivot is "
                                     f"{diag.tolist()}); it must be invertible")
                eye = torch.eye(w.shape[0], dtype=torch.float64, device=w.device)
                self._cache = (key, diag.abs().log().sum(), torch.linalg.lu_solve(lu_mat, pivots, eye))
        return self._cache[1], self._cache[2]

    def _traced_factorization(self):
        """(log|det W|, W^-1) under torch.compile (lu=False): differentiable float64 slogdet and inverse, recomputed
        per call, since the per-version cache keys on the weight's data pointer, which a graph cannot hold. At run
        time a singular weight raises in inv, a non-finite one fails the graph's assert."""
        w64 = self.weight.double()
        sign, log_abs = torch.linalg.slogdet(w64)
        torch._assert_async(torch.isfinite(log_abs) & (sign != 0),
                            "InvConv1x1: the weight is singular or not finite; it must be invertible")
        return log_abs.to(acc_dtype(self.weight.dtype)), torch.linalg.inv(w64).to(self.weight.dtype)

    def weight_matrix(self):
        """W (differentiable)."""
        return ref.lu_weight(*self._lu_params()) if self.lu else self.weight

    def log_abs_det(self):
        """log|det W| (differentiable), float32 or float64 like the parameters' accumulation dtype."""
        if self.lu:
            return self.log_abs_s.sum(dtype=acc_dtype(self.log_abs_s.dtype))
        if torch.compiler.is_compiling():
            return self._traced_factorization()[0]
        log_abs_det64, inverse64 = self._factorization()
        return _CachedLogAbsDet.apply(self.weight, log_abs_det64, inverse64)

    def inverse_matrix(self):
        """W^-1 (differentiable), computed in float64."""
        if self.lu:
            return ref.lu_inverse(*self._lu_params())
        if torch.compiler.is_compiling():
            return self._traced_factorization()[1]
        return _CachedInverse.apply(self.weight, self._factorization()[1])

    def forward(self, x, reverse=False):
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"x must be [B, {self.num_channels}, ...], got shape {tuple(x.shape)}")
        if self.lu:
            params = self._lu_params()
            if params[0].device != x.device:
                raise ValueError(f"x must be on the layer's device {params[0].device}, got {x.device}")
            acc = acc_dtype(x.dtype)
            if any(p.dtype != acc for p in params):
                params = [p.to(acc) for p in params]
            return F.invconv_lu_unchecked(x, *params, reverse)
        weight = self.inverse_matrix() if reverse else self.weight
        return F.channel_mix(x, weight.to(acc_dtype(x.dtype))), ref.invconv_logdet(x, self.log_abs_det(), reverse)
