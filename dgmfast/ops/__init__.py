"""torch.library custom ops (one module per family), their fakes, autograd and launchers."""
from dgmfast.ops import actnorm  # noqa: F401
from dgmfast.ops import coupling  # noqa: F401
from dgmfast.ops import dequant  # noqa: F401
from dgmfast.ops import dip  # noqa: F401
from dgmfast.ops import vaeflows  # noqa: F401
