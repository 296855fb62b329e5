"""Drop-in nn.Modules built on dgmfast.functional (one module per op family)."""
from dgmfast.nn.actnorm import ActNorm
from dgmfast.nn.coupling import AffineCoupling
from dgmfast.nn.dequant import DequantNoiseFlow, UniformDequantization, VariationalDequantization
from dgmfast.nn.dip import DIPVAELoss
from dgmfast.nn.vaeflows import IAF, MADE, FlowPrior, MaskedLinear, PlanarFlow
from dgmfast.nn.flow import FlowSequential, Split, Squeeze2d, channel_merge, channel_split, checkerboard_mask
from dgmfast.nn.invconv import InvConv1x1
from dgmfast.nn.models import Glow, GlowConditioner, glow_step

__all__ = ["AffineCoupling", "UniformDequantization", "VariationalDequantization", "DequantNoiseFlow", "DIPVAELoss", "PlanarFlow", "MADE", "MaskedLinear", "IAF", "FlowPrior", "ActNorm", "InvConv1x1", "FlowSequential", "Squeeze2d", "Split", "channel_split", "channel_merge", "checkerboard_mask", "Glow", "GlowConditioner", "glow_step"]
