"""Drop-in coupling layers built on dgmfast.functional."""
import torch
from torch import nn

from dgmfast import functional as F
from dgmfast.ops.common import check_choice
from dgmfast.reference.coupling import ORDERS, SCALE_MAPS

MASKS = ("channel", "checkerboard")


class AffineCoupling(nn.Module):
    """Affine coupling layer (RealNVP / Glow), SPEC §1: ``forward(x, reverse=False) -> (y, logdet)``.

    The input splits into a conditioning part x_a (kept) and a transformed part x_b;
    ``conditioner(x_a)`` returns ``[B, 2*C_b, ...]`` whose two halves along dim 1 are the raw
    log-scale and the shift of x_b.

    mask="channel": x_a, x_b are the two channel halves of ``[B, C, ...]`` (``parity=1`` swaps them).
        The conditioner's halves are read in place (no copy).
    mask="checkerboard": x_a = x * m with m the spatial checkerboard of ``[B, C, H, W]`` (or the
        alternating mask of ``[B, D]``); the conditioner maps ``[B, C, ...] -> [B, 2C, ...]`` and only the
        entries where m = 0 are transformed (gathered, coupled, scattered back).

    Example::

        net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 6, 3, padding=1))
        layer = AffineCoupling(net, mask="channel", scale_map="sigmoid", order="shift_scale")  # x: [B, 6, H, W]
        y, logdet = layer(x); x_back, _ = layer(y, reverse=True)
    """

    def __init__(self, conditioner: nn.Module, mask="channel", *, parity=0, scale_map="exp", clamp=1.0, eps=0.0,
                 order="scale_shift"):
        super().__init__()
        check_choice("mask", mask, MASKS)
        check_choice("scale_map", scale_map, SCALE_MAPS)
        check_choice("order", order, ORDERS)
        check_choice("parity", parity, (0, 1))
        self.conditioner = conditioner
        self.mask, self.parity = mask, parity
        self.coupling_kwargs = dict(scale_map=scale_map, clamp=clamp, eps=eps, order=order)

    def extra_repr(self):
        return f"mask={self.mask!r}, parity={self.parity}, " + ", ".join(
            f"{k}={v!r}" for k, v in self.coupling_kwargs.items())

    def _condition(self, x_a, context):
        return self.conditioner(x_a) if context is None else self.conditioner(x_a, context)

    def _coupling(self, x_b, h, reverse):
        log_scale, shift = h.chunk(2, dim=1)
        return F.affine_coupling(x_b, log_scale, shift, reverse=reverse, **self.coupling_kwargs)

    def forward(self, x, reverse=False, context=None):
        """``(y, logdet)``; with ``context`` the conditioner is called as ``conditioner(x_a, context)``."""
        if x.dim() < 2:
            raise ValueError(f"x must be [B, C, ...] or [B, D], got shape {tuple(x.shape)}")
        if self.mask == "channel":
            c_a = x.shape[1] // 2 if self.parity == 0 else x.shape[1] - x.shape[1] // 2
            x_a, x_b = (x[:, :c_a], x[:, c_a:]) if self.parity == 0 else (x[:, -c_a:], x[:, :-c_a])
            y_b, logdet = self._coupling(x_b, self._condition(x_a, context), reverse)
            return (torch.cat([x_a, y_b], 1) if self.parity == 0 else torch.cat([y_b, x_a], 1)), logdet
        keep = checkerboard_mask(x.shape, self.parity, x.device)
        idx = (~keep).flatten().nonzero().squeeze(1)
        h = self._condition(x * keep.to(x.dtype), context)
        inner = 1 if x.dim() == 2 else 2  # [B, D]: alternate over D; images: over the spatial dims
        x_flat, h_flat = x.flatten(inner), h.flatten(inner)
        y_b, logdet = self._coupling(x_flat.index_select(-1, idx), h_flat.index_select(-1, idx), reverse)
        return x_flat.index_copy(-1, idx, y_b).view_as(x), logdet


def checkerboard_mask(shape, parity, device):
    """Bool mask of the kept (conditioning) entries: ``[H, W]`` checkerboard for images, alternating
    entries of D for ``[B, D]``; entry (i, j) is kept when (i + j + parity) is even."""
    dims = shape[1:2] if len(shape) == 2 else shape[2:]
    grids = torch.meshgrid(*[torch.arange(n, device=device) for n in dims], indexing="ij")
    return (sum(grids) + parity) % 2 == 0
