"""Flow modules for VAE posteriors and priors (SPEC §5): planar flows, IAF with MADE conditioners, and a
flow prior. Direction (SPEC §0): ``forward(z)`` is the density direction, returning ``(z', logdet)``."""
import math

import torch
from torch import nn

from dgmfast import functional as F


class PlanarFlow(nn.Module):
    """``num_layers`` planar steps applied in one kernel: ``forward(z, params=None) -> (z_L, logdet)``.

    ``amortized=False``: trainable ``u``, ``w`` ``[L, D]`` and ``b`` ``[L]``. ``amortized=True``: the
    parameters come per sample from an encoder head with ``num_params`` outputs, passed as ``params``
    ``[B, num_params]`` and read in place (:meth:`split_params` views, no copies).
    Planar flows have no closed-form inverse; ``reverse=True`` raises.

    Example::

        flow = dgmfast.nn.PlanarFlow(dim=64, num_layers=16)
        z_k, logdet = flow(z0)          # log q(z_k) = log q(z0) - logdet
    """

    def __init__(self, dim, num_layers, amortized=False):
        super().__init__()
        self.dim, self.num_layers, self.amortized = int(dim), int(num_layers), bool(amortized)
        if not self.amortized:
            bound = 1.0 / math.sqrt(self.dim)
            self.u = nn.Parameter(torch.empty(num_layers, dim).uniform_(-bound, bound))
            self.w = nn.Parameter(torch.empty(num_layers, dim).uniform_(-bound, bound))
            self.b = nn.Parameter(torch.zeros(num_layers))

    @property
    def num_params(self):
        """Encoder outputs per sample in amortized mode: L*D (u) + L*D (w) + L (b)."""
        return self.num_layers * (2 * self.dim + 1)

    @staticmethod
    def split_params(h, num_layers, dim):
        """Views ``(u [B, L, D], w [B, L, D], b [B, L])`` of an encoder output ``h`` ``[B, L*(2D+1)]``."""
        B, L, D = h.shape[0], num_layers, dim
        if h.dim() != 2 or h.shape[1] != L * (2 * D + 1):
            raise ValueError(f"params must be [B, {L * (2 * D + 1)}] (L*(2D+1)), got shape {tuple(h.shape)}")
        return h[:, :L * D].view(B, L, D), h[:, L * D:2 * L * D].view(B, L, D), h[:, 2 * L * D:]

    def extra_repr(self):
        return f"dim={self.dim}, num_layers={self.num_layers}, amortized={self.amortized}"

    def forward(self, z, params=None, reverse=False):
        if reverse:
            raise NotImplementedError("planar flows have no closed-form inverse; use IAF where sampling needs one")
        if self.amortized:
            if params is None:
                raise ValueError("an amortized PlanarFlow needs params [B, num_params] from the encoder, got None")
            u, w, b = self.split_params(params, self.num_layers, self.dim)
        else:
            if params is not None:
                raise ValueError("params are only taken by an amortized PlanarFlow (amortized=True)")
            u, w, b = self.u, self.w, self.b
        return F.planar_flows(z, u, w, b)


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask ``[out, in]``."""

    def __init__(self, in_features, out_features, mask):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x):
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder (Germain et al. 2015) with outputs ``(mean, log_scale_raw)``, each ``[B, D]``.

    ``order`` is a permutation of ``range(dim)``: output ``order[k]`` depends only on inputs ``order[:k]``
    (the Jacobian is strictly lower-triangular in that ordering). Hidden units get degrees
    ``1 + (j mod (D - 1))`` deterministically. An optional ``context`` ``[B, context_dim]`` feeds the first
    hidden layer without a mask. The output layer starts at zero, so each IAF step starts near
    ``z' = sigmoid(bias) z``.
    """

    def __init__(self, dim, hidden, order=None, context_dim=0):
        super().__init__()
        order = torch.arange(dim) if order is None else torch.as_tensor(order)
        if sorted(order.tolist()) != list(range(dim)):
            raise ValueError(f"order must be a permutation of range({dim}), got {order.tolist()}")
        self.register_buffer("order", order)
        deg_in = torch.empty(dim, dtype=torch.long)
        deg_in[order] = torch.arange(1, dim + 1)
        deg_h = 1 + torch.arange(hidden) % max(dim - 1, 1)
        self.inp = MaskedLinear(dim, hidden, deg_h[:, None] >= deg_in[None, :])
        self.hid = MaskedLinear(hidden, hidden, deg_h[:, None] >= deg_h[None, :])
        out_mask = (deg_in[:, None] > deg_h[None, :]).repeat(2, 1)
        self.out = MaskedLinear(hidden, 2 * dim, out_mask)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.context = nn.Linear(context_dim, hidden, bias=False) if context_dim else None

    def forward(self, z, context=None):
        h = self.inp(z)
        if self.context is not None:
            if context is None:
                raise ValueError("this MADE was built with context_dim > 0 and needs a context")
            h = h + self.context(context)
        h = self.out(torch.relu(self.hid(torch.relu(h))))
        return h.chunk(2, dim=-1)


class IAF(nn.Module):
    """Inverse autoregressive flow (Kingma et al. 2016): ``num_steps`` stable IAF steps, each with a MADE
    conditioner, the variable ordering reversed between steps. ``forward(z, context=None, reverse=False)
    -> (z', logdet)``; each forward step is one MADE pass plus one fused :func:`dgmfast.functional.iaf_step`.
    ``reverse=True`` inverts each step with D sequential passes (dimension ``order[k]`` is exact after pass k).

    Example::

        iaf = dgmfast.nn.IAF(dim=32, num_steps=4, hidden=128, context_dim=64)
        z_t, logdet = iaf(z0, context=h)        # log q(z_t|x) = log q(z0|x) - logdet
    """

    def __init__(self, dim, num_steps, hidden, context_dim=0, sigmoid_bias=2.0):
        super().__init__()
        self.dim, self.sigmoid_bias = int(dim), float(sigmoid_bias)
        orders = [torch.arange(dim) if k % 2 == 0 else torch.arange(dim).flip(0) for k in range(num_steps)]
        self.steps = nn.ModuleList(MADE(dim, hidden, order, context_dim) for order in orders)

    def forward(self, z, context=None, reverse=False):
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be [B, {self.dim}], got shape {tuple(z.shape)}")
        logdet = z.new_zeros(z.shape[0], dtype=torch.float64 if z.dtype == torch.float64 else torch.float32)
        if not reverse:
            for made in self.steps:
                mean, r = made(z, context)
                z, ld = F.iaf_step(z, mean, r, sigmoid_bias=self.sigmoid_bias)
                logdet = logdet + ld
            return z, logdet
        for made in reversed(self.steps):
            y, x = z, torch.zeros_like(z)
            for _ in range(self.dim):
                mean, r = made(x, context)
                x, ld = F.iaf_step_unchecked(y, mean, r, self.sigmoid_bias, True)
            z, logdet = x, logdet + ld
        return z, logdet


class FlowPrior(nn.Module):
    """A flow prior ``p(z) = N(f(z); 0, I) |det df/dz|`` for a VAE: ``log_prob(z) -> [B]``, ``sample(n)``.

    ``flow(z) -> (e, logdet)`` maps latents to the standard-normal base (the density direction) and
    ``flow(e, reverse=True)`` back (e.g. :class:`IAF`; density evaluation is then one parallel pass,
    sampling D sequential ones).

    Example::

        prior = dgmfast.nn.FlowPrior(dgmfast.nn.IAF(16, num_steps=2, hidden=64), dim=16)
        kl_mc = log_q_z - prior.log_prob(z)
    """

    def __init__(self, flow, dim):
        super().__init__()
        self.flow, self.dim = flow, int(dim)

    def log_prob(self, z):
        e, logdet = self.flow(z)
        return -0.5 * (e.to(logdet.dtype).square() + math.log(2 * math.pi)).sum(-1) + logdet

    def sample(self, n, generator=None):
        p = next(self.parameters(), None)
        kw = dict(device=p.device, dtype=p.dtype) if p is not None else {}
        e = torch.randn(n, self.dim, generator=generator, **kw)
        return self.flow(e, reverse=True)[0]
