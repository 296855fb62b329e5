"""dgmfast: fused GPU and CPU kernels for deep generative models, behind drop-in PyTorch modules.

    import dgmfast
    y, logdet = dgmfast.functional.affine_coupling(x, log_scale, shift)
    layer = dgmfast.nn.AffineCoupling(conditioner)
    with dgmfast.use_backend("torch"): ...   # the plain-PyTorch reference

Importing dgmfast compiles nothing and does not initialize CUDA.
"""
import importlib.util as _ilu
import os as _os
import sys as _sys

# In a source checkout used without installing (PYTHONPATH=<checkout>, e.g. on a GPU machine or in a
# worktree), bind dgmfast.kernels to the checkout's own kernels/ (an install maps it via package_dir).
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "setup.py")) and _os.path.isfile(_os.path.join(_root, "kernels", "__init__.py")):
    _spec = _ilu.spec_from_file_location("dgmfast.kernels", _os.path.join(_root, "kernels", "__init__.py"),
                                         submodule_search_locations=[_os.path.join(_root, "kernels")])
    _sys.modules["dgmfast.kernels"] = _ilu.module_from_spec(_spec)
    _spec.loader.exec_module(_sys.modules["dgmfast.kernels"])

from dgmfast import functional, nn, ops, reference  # noqa: E402,F401  (ops registers torch.ops.dgmfast.*)
from dgmfast._ext import DgmfastWarning, build_info, has_extension  # noqa: E402
from dgmfast.backends import BACKENDS, forced_backend, select_backend, use_backend  # noqa: E402
from dgmfast.runtime import tune_cpu_allocator  # noqa: E402

__version__ = "0.1.0"
del _ilu, _os, _sys, _root
__all__ = ["functional", "nn", "reference", "use_backend", "forced_backend", "select_backend", "has_extension",
           "build_info", "BACKENDS", "DgmfastWarning", "tune_cpu_allocator"]
