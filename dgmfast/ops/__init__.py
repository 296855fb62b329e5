"""torch.library custom ops (one module per family), their fakes, autograd and launchers."""
from dgmfast.ops import coupling  # noqa: F401
from dgmfast.ops import dequant  # noqa: F401
from dgmfast.ops import mixlogistic  # noqa: F401
