"""Drop-in nn.Modules built on dgmfast.functional (one module per op family)."""
from dgmfast.nn.coupling import AffineCoupling
from dgmfast.nn.dequant import DequantNoiseFlow, UniformDequantization, VariationalDequantization
from dgmfast.nn.dip import DIPVAELoss
from dgmfast.nn.vaeflows import IAF, MADE, FlowPrior, MaskedLinear, PlanarFlow

__all__ = ["AffineCoupling", "UniformDequantization", "VariationalDequantization", "DequantNoiseFlow", "DIPVAELoss",
           "PlanarFlow", "MADE", "MaskedLinear", "IAF", "FlowPrior"]
