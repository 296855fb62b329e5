"""Drop-in nn.Modules built on dgmfast.functional (one module per op family)."""
from dgmfast.nn.coupling import AffineCoupling
from dgmfast.nn.gaussian import BetaVAELoss, ElboSurgery, VampPrior

__all__ = ["AffineCoupling", "BetaVAELoss", "ElboSurgery", "VampPrior"]
