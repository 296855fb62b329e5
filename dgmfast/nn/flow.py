"""Flow containers and shape layers: FlowSequential, Squeeze2d, Split (multi-scale factor-out), and the
coupling layers' channel / checkerboard split helpers (re-exported from dgmfast.nn.masked). Every flow
layer has ``forward(x, reverse=False) -> (y, logdet)`` with logdet ``[B]`` = log|det dy/dx| (SPEC §0)."""
import torch
import torch.nn.functional as F
from torch import nn

from dgmfast.nn.coupling import AffineCoupling
from dgmfast.nn.masked import channel_merge, channel_split, checkerboard_mask  # noqa: F401  (re-exported)
from dgmfast.reference.common import acc_dtype

__all__ = ["FlowSequential", "Squeeze2d", "Split", "channel_split", "channel_merge", "checkerboard_mask"]


def zero_logdet(x):
    """A [B] zero log-det in x's accumulation dtype (float32, float64 for float64 x)."""
    return x.new_zeros(x.shape[0], dtype=acc_dtype(x.dtype))


class FlowSequential(nn.Sequential):
    """A chain of flow layers: ``forward(x, reverse=False) -> (y, logdet)`` applies the layers in order
    and sums their log-dets; ``reverse=True`` applies their inverses in reverse order (the log-det of the
    inverse map). Every layer must have ``forward(x, reverse=False) -> (y, logdet)``.

    Example::

        flow = FlowSequential(Squeeze2d(), ActNorm(4), InvConv1x1(4), AffineCoupling(net, scale_map="sigmoid"))
        z, logdet = flow(x); x_back, _ = flow(z, reverse=True)
    """

    def forward(self, x, reverse=False):
        logdet = zero_logdet(x)
        for layer in (reversed(self) if reverse else self):
            x, ld = layer(x, reverse=reverse)
            logdet = logdet + ld
        return x, logdet


class Squeeze2d(nn.Module):
    """Space-to-depth by 2 (Glow's order, = ``F.pixel_unshuffle(x, 2)``): ``[B, C, H, W] -> [B, 4C, H/2, W/2]``
    with output channel ``4c + 2i + j`` holding ``x[:, c, 2h + i, 2w + j]``; a permutation, logdet 0.
    ``reverse=True`` is depth-to-space."""

    def forward(self, x, reverse=False):
        if x.dim() != 4:
            raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
        if reverse:
            if x.shape[1] % 4:
                raise ValueError(f"x must have a multiple of 4 channels to unsqueeze, got shape {tuple(x.shape)}")
            return F.pixel_shuffle(x, 2), zero_logdet(x)
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"x must have even H and W to squeeze, got shape {tuple(x.shape)}")
        return F.pixel_unshuffle(x, 2), zero_logdet(x)


class ZeroConv2d(nn.Conv2d):
    """A 3x3 convolution initialized to zero (Glow's Conv2dZeros): the flow starts as the identity."""

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class Split(nn.Module):
    """Multi-scale factor-out (RealNVP / Glow): ``forward(x) -> (kept, eps, logdet)`` and
    ``reverse(kept, eps) -> (x, logdet)`` on ``[B, C, ...]``; kept is x's first C//2 channels, the
    factored-out z the other C - C//2.

    ``prior="standard"``: z ~ N(0, I); eps = z, logdet 0.
    ``prior="conditional"`` (Glow's learned prior): p(z | kept) = N(mean, exp(log_std)^2) with
    (-log_std, -mean) = ``conditioner(kept)`` (default: a zero-initialized 3x3 conv, images only);
    eps = (z - mean) * exp(-log_std) is an affine coupling (dgmfast's fused op) and logdet = -sum log_std,
    so ``log p(z | kept) = log N(eps; 0, I) + logdet``. The model adds ``log N(eps; 0, I)``.
    """

    def __init__(self, num_channels: int, prior="conditional", conditioner=None):
        super().__init__()
        if prior not in ("standard", "conditional"):
            raise ValueError(f"prior must be one of ('standard', 'conditional'), got {prior!r}")
        if not isinstance(num_channels, int) or num_channels < 2:
            raise ValueError(f"num_channels must be an int >= 2 to split, got {num_channels!r}")
        self.num_channels, self.prior = num_channels, prior
        self.kept_channels = num_channels // 2
        self.coupling = None
        if prior == "conditional":
            net = conditioner if conditioner is not None else ZeroConv2d(self.kept_channels,
                                                                          2 * (num_channels - self.kept_channels))
            self.coupling = AffineCoupling(net, mask="channel", scale_map="exp", order="shift_scale")

    def extra_repr(self):
        return f"{self.num_channels}, prior={self.prior!r}"

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"x must be [B, {self.num_channels}, ...], got shape {tuple(x.shape)}")
        y, logdet = (x, zero_logdet(x)) if self.coupling is None else self.coupling(x)
        kept, eps = channel_split(y)
        return kept, eps, logdet

    def reverse(self, kept, eps):
        y = channel_merge(kept, eps)
        return (y, zero_logdet(y)) if self.coupling is None else self.coupling(y, reverse=True)
