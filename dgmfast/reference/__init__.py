"""Plain-PyTorch implementations of SPEC.md, one module per op family: the executable contract
used by tests, benchmarks and as the "torch" backend."""
from dgmfast.reference import actnorm  # noqa: F401
from dgmfast.reference import coupling  # noqa: F401
from dgmfast.reference import dequant  # noqa: F401
from dgmfast.reference import dip  # noqa: F401
from dgmfast.reference import vaeflows  # noqa: F401
