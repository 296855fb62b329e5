"""Plain-PyTorch implementations of SPEC.md, one module per op family: the executable contract
used by tests, benchmarks and as the "torch" backend."""
from dgmfast.reference import actnorm, coupling, dequant, dip, gaussian, invconv, mixlogistic, vaeflows  # noqa: F401
