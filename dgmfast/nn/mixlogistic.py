"""Flow++ mixture-of-logistics coupling layer built on dgmfast.functional."""
from torch import nn

from dgmfast import functional as F
from dgmfast.nn.masked import MaskedCoupling
from dgmfast.ops.common import check_choice
from dgmfast.reference.mixlogistic import ORDERS, SCALE_MAPS


class MixLogisticCoupling(MaskedCoupling):
    """Flow++ coupling layer, SPEC §2: ``forward(x, reverse=False, context=None) -> (y, logdet)``.

    ``conditioner(x_a)`` returns ``[B, C_b*(3K+2), ...]``: for each transformed channel c, the 3K+2 channels
    ``c*(3K+2) + j`` hold j = 0: raw log-scale, 1: shift, 2..K+1: logits, K+2..2K+1: means,
    2K+2..3K+1: log-scales of its K components. They are passed as strided views
    (``h.unflatten(1, (C_b, 3K+2)).movedim(2, -1)`` sliced), which the kernels read in place.
    Masks as :class:`~dgmfast.nn.masked.MaskedCoupling` (checkerboard: ``[B, C, ...] -> [B, C*(3K+2), ...]``).

    Example::

        K = 8
        net = nn.Sequential(nn.Conv2d(2, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 2 * (3 * K + 2), 3, padding=1))
        layer = MixLogisticCoupling(net, K)              # x: [B, 4, H, W]
        y, logdet = layer(x); x_back, _ = layer(y, reverse=True)
    """

    def __init__(self, conditioner: nn.Module, num_components: int, mask="channel", *, parity=0, scale_map="tanh",
                 clamp=1.0, min_log_scale=-7.0, order="scale_shift"):
        super().__init__(conditioner, mask, parity)
        if not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"num_components must be a positive int, got {num_components!r}")
        check_choice("scale_map", scale_map, SCALE_MAPS)
        check_choice("order", order, ORDERS)
        self.num_components = num_components
        self.coupling_kwargs = dict(scale_map=scale_map, clamp=clamp, min_log_scale=min_log_scale, order=order)

    def extra_repr(self):
        return f"num_components={self.num_components}, mask={self.mask!r}, parity={self.parity}, " + ", ".join(
            f"{k}={v!r}" for k, v in self.coupling_kwargs.items())

    def _coupling(self, x_b, h, reverse):
        k, c_b = self.num_components, x_b.shape[1]
        if h.dim() != x_b.dim() or h.shape[1] != c_b * (3 * k + 2) or h.shape[2:] != x_b.shape[2:]:
            raise ValueError(f"conditioner output must have shape {(x_b.shape[0], c_b * (3 * k + 2), *x_b.shape[2:])} "
                             f"(C_b*(3K+2) channels, K={k}), got {tuple(h.shape)}")
        hv = h.unflatten(1, (c_b, 3 * k + 2)).movedim(2, -1)
        return F.mixlogistic_coupling(x_b, hv[..., 2:k + 2], hv[..., k + 2:2 * k + 2], hv[..., 2 * k + 2:],
                                      hv[..., 0], hv[..., 1], reverse=reverse, **self.coupling_kwargs)
