"""Drop-in coupling layers built on dgmfast.functional."""
from torch import nn

from dgmfast import functional as F
from dgmfast.nn.masked import MASKS, MaskedCoupling, checkerboard_mask  # noqa: F401  (re-exported)
from dgmfast.ops.common import check_choice
from dgmfast.reference.coupling import ORDERS, SCALE_MAPS


class AffineCoupling(MaskedCoupling):
    """Affine coupling layer (RealNVP / Glow), SPEC §1: ``forward(x, reverse=False) -> (y, logdet)``.

    The input splits into a conditioning part x_a (kept) and a transformed part x_b (masks: see
    :class:`~dgmfast.nn.masked.MaskedCoupling`); ``conditioner(x_a)`` returns ``[B, 2*C_b, ...]`` whose two
    halves along dim 1 are the raw log-scale and the shift of x_b (read in place, no copy). With
    mask="checkerboard" the conditioner maps ``[B, C, ...] -> [B, 2C, ...]``.

    Example::

        net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 6, 3, padding=1))
        layer = AffineCoupling(net, mask="channel", scale_map="sigmoid", order="shift_scale")  # x: [B, 6, H, W]
        y, logdet = layer(x); x_back, _ = layer(y, reverse=True)
    """

    def __init__(self, conditioner: nn.Module, mask="channel", *, parity=0, scale_map="exp", clamp=1.0, eps=0.0,
                 order="scale_shift"):
        super().__init__(conditioner, mask, parity)
        check_choice("scale_map", scale_map, SCALE_MAPS)
        check_choice("order", order, ORDERS)
        self.coupling_kwargs = dict(scale_map=scale_map, clamp=clamp, eps=eps, order=order)

    def extra_repr(self):
        return f"mask={self.mask!r}, parity={self.parity}, " + ", ".join(
            f"{k}={v!r}" for k, v in self.coupling_kwargs.items())

    def _coupling(self, x_b, h, reverse):
        log_scale, shift = h.chunk(2, dim=1)
        return F.affine_coupling(x_b, log_scale, shift, reverse=reverse, **self.coupling_kwargs)
