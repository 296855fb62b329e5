"""Ready-made flow models built only from dgmfast modules."""
import torch
from torch import nn

from dgmfast.nn.actnorm import ActNorm
from dgmfast.nn.coupling import AffineCoupling
from dgmfast.nn.flow import FlowSequential, Split, Squeeze2d, ZeroConv2d
from dgmfast.nn.invconv import InvConv1x1
from dgmfast.nn.mixlogistic import MixLogisticCoupling
from dgmfast.reference.dequant import gaussian_log_prob

__all__ = ["GlowConditioner", "glow_step", "Glow", "flowpp_step", "FlowPlusPlus"]


class GlowConditioner(nn.Sequential):
    """Glow's coupling network: 3x3 conv -> ReLU -> 1x1 conv -> ReLU -> zero-initialized 3x3 conv."""

    def __init__(self, in_channels, out_channels, hidden=32):
        super().__init__(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1),
                         nn.ReLU(), ZeroConv2d(hidden, out_channels))


def glow_step(channels, hidden=32, generator=None):
    """One Glow step of flow on ``[B, channels, H, W]``: ActNorm -> InvConv1x1 (LU) -> affine coupling
    (channel halves, ``scale_map="sigmoid"``, ``order="shift_scale"``)."""
    c_a = channels // 2
    return FlowSequential(
        ActNorm(channels), InvConv1x1(channels, lu=True, generator=generator),
        AffineCoupling(GlowConditioner(c_a, 2 * (channels - c_a), hidden), mask="channel", scale_map="sigmoid",
                       order="shift_scale"))


def flowpp_step(channels, hidden=32, num_components=8, generator=None):
    """One Flow++-style step on ``[B, channels, H, W]``: ActNorm -> InvConv1x1 (LU) -> mixture-of-logistics
    coupling (channel halves, K components, ``scale_map="tanh"``)."""
    c_a = channels // 2
    return FlowSequential(
        ActNorm(channels), InvConv1x1(channels, lu=True, generator=generator),
        MixLogisticCoupling(GlowConditioner(c_a, (channels - c_a) * (3 * num_components + 2), hidden),
                            num_components, mask="channel", scale_map="tanh"))


class Glow(nn.Module):
    """Multi-scale Glow (Kingma & Dhariwal 2018) on ``[B, in_channels, image_size, image_size]``.

    Each of ``levels`` levels: Squeeze2d, then ``steps`` :func:`glow_step`; every level but the last ends
    with a :class:`Split` (learned conditional Gaussian prior by default, ``split_prior="standard"`` for
    N(0, I)) that factors out half the channels. The last level's output has a standard-normal prior.
    The defaults are small enough to train on a CPU.

    ``log_prob(x)`` (also ``forward``): per-sample log-density in nats of the continuous x, including
    every log-det and prior term (add your dequantization term for discrete data). ``encode(x) ->
    (latents, logdet)`` returns the standard-normal latents (one per level, the whitened factor-outs
    and the top), ``decode(latents) -> (x, logdet)`` inverts it, ``sample(n, temperature=1.0,
    generator=None)`` decodes latents drawn with standard deviation ``temperature``.

    Example::

        model = dgmfast.nn.Glow(in_channels=1, image_size=8)
        loss = -model.log_prob(x).mean()        # the first training-mode call initializes the ActNorms
        images = model.sample(16, temperature=0.7)
    """

    def __init__(self, in_channels=1, image_size=8, levels=2, steps=2, hidden=32, split_prior="conditional",
                 generator=None):
        super().__init__()
        if levels < 1 or steps < 1:
            raise ValueError(f"levels and steps must be >= 1, got levels={levels}, steps={steps}")
        if image_size % (2 ** levels):
            raise ValueError(f"image_size must be divisible by 2**levels = {2 ** levels}, got {image_size}")
        self.in_channels, self.image_size = in_channels, image_size
        self.levels, self.splits = nn.ModuleList(), nn.ModuleList()
        self.latent_shapes = []
        channels, size = in_channels, image_size
        for level in range(levels):
            channels, size = channels * 4, size // 2
            self.levels.append(FlowSequential(Squeeze2d(), *[self.make_step(channels, hidden, generator)
                                                             for _ in range(steps)]))
            if level < levels - 1:
                self.splits.append(Split(channels, prior=split_prior))
                self.latent_shapes.append((channels - channels // 2, size, size))
                channels //= 2
        self.latent_shapes.append((channels, size, size))

    def make_step(self, channels, hidden, generator):
        """One step of flow of a level with `channels` channels (after its squeeze)."""
        return glow_step(channels, hidden, generator)

    def encode(self, x):
        """(latents, logdet): the standard-normal latents of x (list, one per level) and log|det dz/dx| [B]
        (including the conditional priors' scale terms)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"x must be [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                             f"got shape {tuple(x.shape)}")
        latents, logdet = [], 0.0
        for i, level in enumerate(self.levels):
            x, ld = level(x)
            logdet = logdet + ld
            if i < len(self.splits):
                x, eps, ld = self.splits[i](x)
                latents.append(eps)
                logdet = logdet + ld
        latents.append(x)
        return latents, logdet

    def decode(self, latents):
        """(x, logdet): the inverse of :meth:`encode` (logdet = log|det dx/dz|)."""
        if len(latents) != len(self.latent_shapes):
            raise ValueError(f"latents must be a list of {len(self.latent_shapes)} tensors, got {len(latents)}")
        x, logdet = latents[-1], 0.0
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                x, ld = self.splits[i].reverse(x, latents[i])
                logdet = logdet + ld
            x, ld = self.levels[i](x, reverse=True)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x):
        """log p(x) per sample in nats: sum of log N(latent; 0, I) + log|det dz/dx|."""
        latents, logdet = self.encode(x)
        return logdet + sum(gaussian_log_prob(z) for z in latents)

    forward = log_prob

    def sample_latents(self, n, temperature=1.0, generator=None):
        """Latents ~ N(0, temperature^2 I) of every level, drawn from `generator` (torch's global one if None)."""
        p = next(self.parameters())
        return [temperature * torch.randn((n, *shape), generator=generator, dtype=p.dtype, device=p.device)
                for shape in self.latent_shapes]

    @torch.no_grad()
    def sample(self, n, temperature=1.0, generator=None):
        """n samples ``[n, in_channels, image_size, image_size]`` decoded from temperature-scaled latents."""
        return self.decode(self.sample_latents(n, temperature, generator))[0]


class FlowPlusPlus(Glow):
    """A Flow++-style multi-scale flow (Ho et al. 2019): Glow's multi-scale layout with
    :func:`flowpp_step` steps (ActNorm, invertible 1x1 convolution, mixture-of-logistics coupling with
    ``num_components`` components). Pair it with :class:`~dgmfast.nn.VariationalDequantization` for the full
    Flow++ objective. Same interface as :class:`Glow` (``log_prob``, ``encode``, ``decode``, ``sample``).
    """

    def __init__(self, in_channels=1, image_size=8, levels=2, steps=2, hidden=32, num_components=8,
                 split_prior="conditional", generator=None):
        self.num_components = num_components
        super().__init__(in_channels, image_size, levels, steps, hidden, split_prior, generator)

    def make_step(self, channels, hidden, generator):
        return flowpp_step(channels, hidden, self.num_components, generator)
