"""Dequantization modules (SPEC §6): uniform and Flow++ variational, both returning ``(y, log_weight)``
so that ``log P(x) >= E[log p(y) + log_weight]`` and ``bits_per_dim(log_p, log_weight, D)`` is the bound."""
import torch
from torch import nn

from dgmfast import functional as F
from dgmfast.nn.coupling import AffineCoupling


class UniformDequantization(nn.Module):
    """``forward(x) -> (y, log_weight)``: :func:`dgmfast.functional.uniform_dequantize` with
    ``log_weight = logdet``; ``reverse(y)`` maps back to ``n_bits`` integers. ``in_bits`` (default 8,
    as the functional) is the width of the incoming pixels: ``n_bits=5`` on 8-bit images drops 3 bits.
    ``dtype`` is y's floating dtype (float32 by default; ``module.to(torch.float64)`` also sets it, as it
    would for a module with parameters)."""

    def __init__(self, n_bits=8, mode="logit", alpha=0.05, *, in_bits=8, dtype=torch.float32):
        super().__init__()
        self.n_bits, self.in_bits, self.mode, self.alpha, self.dtype = n_bits, in_bits, mode, alpha, dtype

    def extra_repr(self):
        return (f"n_bits={self.n_bits}, mode={self.mode!r}, alpha={self.alpha}, in_bits={self.in_bits}, "
                f"dtype={self.dtype}")

    def _apply(self, fn, recurse=True):
        self.dtype = fn(torch.empty((), dtype=self.dtype)).dtype  # follows .to(dtype) / .double() / .half()
        return super()._apply(fn, recurse)

    def forward(self, x, generator=None):
        return F.uniform_dequantize(x, n_bits=self.n_bits, in_bits=self.in_bits, mode=self.mode, alpha=self.alpha,
                                    generator=generator, dtype=self.dtype)

    def reverse(self, y):
        return F.uniform_dequantize(y, n_bits=self.n_bits, mode=self.mode, alpha=self.alpha, reverse=True)[0]


class ContextConditioner(nn.Module):
    """Conditioner of a context-aware coupling: ``net(cat([x_a, context], 1))`` -> ``[B, 2 C_out, ...]``."""

    def __init__(self, in_channels, context_channels, out_channels, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels + context_channels, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, 2 * out_channels, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x_a, context):
        return self.net(torch.cat([x_a, context], 1))


class DequantNoiseFlow(nn.Module):
    """The default conditional noise flow h(eps; x) of Flow++ variational dequantization: checkerboard
    affine couplings (tanh scale) whose conditioners see context features of x. ``forward(eps, context)
    -> (v, logdet)`` on ``[B, C, H, W]``."""

    def __init__(self, channels, context_channels=16, hidden=32, num_layers=4):
        super().__init__()
        self.layers = nn.ModuleList(
            AffineCoupling(ContextConditioner(channels, context_channels, channels, hidden), mask="checkerboard",
                           parity=i % 2, scale_map="tanh") for i in range(num_layers))

    def forward(self, eps, context):
        logdet = eps.new_zeros(eps.shape[0], dtype=torch.float64 if eps.dtype == torch.float64 else torch.float32)
        for layer in self.layers:
            eps, ld = layer(eps, context=context)
            logdet = logdet + ld
        return eps, logdet


class VariationalDequantization(nn.Module):
    """Flow++ variational dequantization, SPEC §6: ``forward(x) -> (y, log_weight)`` with

        eps ~ N(0, I) (drawn in the kernel), v, logdet_h = noise_flow(eps, context(x)),
        y, logdet_tail = dequantize_sigmoid_tail(x, v),  log_weight = logdet_tail + logdet_h - log N(eps)

    ``x``: integer ``[B, C, H, W]`` in ``[0, 2**n_bits)``. ``noise_flow(eps, context) -> (v, logdet)``
    defaults to :class:`DequantNoiseFlow`; ``context_net`` maps ``x/2**n_bits - 1/2`` to the context
    (default: a small conv net with 16 output channels).
    """

    def __init__(self, noise_flow=None, context_net=None, n_bits=8, mode="logit", alpha=0.05, *, channels=None,
                 context_channels=16, hidden=32):
        super().__init__()
        if (noise_flow is None or context_net is None) and channels is None:
            raise ValueError("channels (the image channels C) is required to build the default noise_flow / "
                             "context_net, got channels=None")
        self.n_bits, self.mode, self.alpha = n_bits, mode, alpha
        self.context_net = context_net if context_net is not None else nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, context_channels, 3, padding=1))
        self.noise_flow = noise_flow if noise_flow is not None else DequantNoiseFlow(channels, context_channels,
                                                                                     hidden)

    def forward(self, x, generator=None):
        dtype = next(self.parameters()).dtype
        eps, log_p_eps = F.gaussian_sample_log_prob(x.shape, generator=generator, dtype=dtype, device=x.device)
        context = self.context_net(x.to(dtype) * 2.0**-self.n_bits - 0.5)
        v, logdet_h = self.noise_flow(eps, context)
        y, logdet_tail = F.dequantize_sigmoid_tail(x, v, n_bits=self.n_bits, mode=self.mode, alpha=self.alpha)
        return y, logdet_tail + logdet_h - log_p_eps
