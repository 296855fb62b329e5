"""Mask handling shared by the coupling layers (affine, mixture of logistics)."""
import torch
from torch import nn

from dgmfast.ops.common import check_choice

MASKS = ("channel", "checkerboard")


class MaskedCoupling(nn.Module):
    """Base of the coupling layers: ``forward(x, reverse=False, context=None) -> (y, logdet)``.

    The input splits into a conditioning part x_a (kept) and a transformed part x_b; ``conditioner(x_a)``
    (or ``conditioner(x_a, context)``) returns ``h`` and the subclass's ``_coupling(x_b, h, reverse)``
    transforms x_b with it.

    mask="channel": x_a, x_b are the two channel halves of ``[B, C, ...]`` (``parity=1`` swaps them);
        ``h`` is ``[B, P*C_b, ...]`` for P parameters per transformed channel.
    mask="checkerboard": x_a = x * m with m the spatial checkerboard of ``[B, C, H, W]`` (or the
        alternating mask of ``[B, D]``); the conditioner maps ``[B, C, ...] -> [B, P*C, ...]`` and only the
        entries where m = 0 are transformed (gathered to ``[B, C, n]`` / ``[B, P*C, n]``, coupled, scattered back).
    """

    def __init__(self, conditioner: nn.Module, mask="channel", parity=0):
        super().__init__()
        check_choice("mask", mask, MASKS)
        check_choice("parity", parity, (0, 1))
        self.conditioner = conditioner
        self.mask, self.parity = mask, parity

    def _coupling(self, x_b, h, reverse):
        raise NotImplementedError

    def _condition(self, x_a, context):
        return self.conditioner(x_a) if context is None else self.conditioner(x_a, context)

    def forward(self, x, reverse=False, context=None):
        """``(y, logdet)``; with ``context`` the conditioner is called as ``conditioner(x_a, context)``."""
        if x.dim() < 2:
            raise ValueError(f"x must be [B, C, ...] or [B, D], got shape {tuple(x.shape)}")
        if self.mask == "channel":
            x_a, x_b = channel_split(x, self.parity)
            y_b, logdet = self._coupling(x_b, self._condition(x_a, context), reverse)
            return channel_merge(x_a, y_b, self.parity), logdet
        keep = checkerboard_mask(x.shape, self.parity, x.device)
        idx = (~keep).flatten().nonzero().squeeze(1)
        h = self._condition(x * keep.to(x.dtype), context)
        inner = 1 if x.dim() == 2 else 2  # [B, D]: alternate over D; images: over the spatial dims
        x_flat, h_flat = x.flatten(inner), h.flatten(inner)
        y_b, logdet = self._coupling(x_flat.index_select(-1, idx), h_flat.index_select(-1, idx), reverse)
        return x_flat.index_copy(-1, idx, y_b).view_as(x), logdet


def channel_split(x, parity=0):
    """(x_a, x_b) of the channel mask along dim 1: parity 0 gives x_a the first C//2 channels, parity 1 the
    last C - C//2; x_b is the rest."""
    c = x.shape[1]
    return (x[:, :c // 2], x[:, c // 2:]) if parity == 0 else (x[:, c // 2:], x[:, :c // 2])


def channel_merge(x_a, x_b, parity=0):
    """Inverse of :func:`channel_split`."""
    return torch.cat([x_a, x_b] if parity == 0 else [x_b, x_a], 1)


def checkerboard_mask(shape, parity, device):
    """Bool mask of the kept (conditioning) entries: ``[H, W]`` checkerboard for images, alternating
    entries of D for ``[B, D]``; entry (i, j) is kept when (i + j + parity) is even."""
    dims = shape[1:2] if len(shape) == 2 else shape[2:]
    grids = torch.meshgrid(*[torch.arange(n, device=device) for n in dims], indexing="ij")
    return (sum(grids) + parity) % 2 == 0
