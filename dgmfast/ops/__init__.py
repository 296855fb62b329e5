"""torch.library custom ops (one module per family), their fakes, autograd and launchers."""
from dgmfast.ops import actnorm, coupling, dequant, dip, gaussian, mixlogistic, vaeflows  # noqa: F401
