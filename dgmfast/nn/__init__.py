"""Drop-in nn.Modules built on dgmfast.functional (one module per op family)."""
from dgmfast.nn.coupling import AffineCoupling
from dgmfast.nn.dequant import DequantNoiseFlow, UniformDequantization, VariationalDequantization
from dgmfast.nn.mixlogistic import MixLogisticCoupling

__all__ = ["AffineCoupling", "UniformDequantization", "VariationalDequantization", "DequantNoiseFlow",
           "MixLogisticCoupling"]
