"""Drop-in nn.Modules built on dgmfast.functional (one module per op family)."""
from dgmfast.nn.coupling import AffineCoupling

__all__ = ["AffineCoupling"]
