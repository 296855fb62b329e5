"""Drop-in nn.Modules built on dgmfast.functional (one module per op family)."""
from dgmfast.nn.actnorm import ActNorm
from dgmfast.nn.coupling import AffineCoupling
from dgmfast.nn.dequant import DequantNoiseFlow, UniformDequantization, VariationalDequantization
from dgmfast.nn.dip import DIPVAELoss
from dgmfast.nn.flow import FlowSequential, Split, Squeeze2d, channel_merge, channel_split, checkerboard_mask
from dgmfast.nn.gaussian import BetaVAELoss, ElboSurgery, VampPrior
from dgmfast.nn.invconv import InvConv1x1
from dgmfast.nn.mixlogistic import MixLogisticCoupling
from dgmfast.nn.models import FlowPlusPlus, Glow, GlowConditioner, flowpp_step, glow_step
from dgmfast.nn.vaeflows import IAF, MADE, FlowPrior, MaskedLinear, PlanarFlow

__all__ = ["ActNorm", "AffineCoupling", "BetaVAELoss", "DIPVAELoss", "DequantNoiseFlow", "ElboSurgery", "FlowPrior",
           "FlowPlusPlus", "FlowSequential", "Glow", "GlowConditioner", "IAF", "InvConv1x1", "MADE", "MaskedLinear",
           "MixLogisticCoupling", "PlanarFlow", "Split", "Squeeze2d", "UniformDequantization", "VampPrior",
           "VariationalDequantization", "channel_merge", "channel_split", "checkerboard_mask", "flowpp_step", "glow_step"]
