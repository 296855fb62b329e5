"""dgmfast: fused GPU and CPU kernels for deep generative models, behind drop-in PyTorch modules.

    import dgmfast
    y, logdet = dgmfast.functional.affine_coupling(x, log_scale, shift)
    layer = dgmfast.nn.AffineCoupling(conditioner)
    with dgmfast.use_backend("torch"): ...   # the plain-PyTorch reference

Importing dgmfast compiles nothing and does not initialize CUDA.
"""
from dgmfast import functional, nn, ops, reference  # noqa: F401  (ops registers torch.ops.dgmfast.*)
from dgmfast._ext import DgmfastWarning, build_info, has_extension
from dgmfast.backends import BACKENDS, forced_backend, select_backend, use_backend

__version__ = "0.1.0"
__all__ = ["functional", "nn", "reference", "use_backend", "forced_backend", "select_backend", "has_extension",
           "build_info", "BACKENDS", "DgmfastWarning"]
