"""Loading of the compiled extension dgmfast._C (C++ CPU and CUDA kernels).

Importing dgmfast never compiles anything and never touches CUDA. If the extension is absent
(built with DGMFAST_SKIP_EXT=1) or fails to load, dgmfast warns once and every op runs on the
backends that need no extension (triton, torch).
"""
import importlib
import os
import platform
import sys
import warnings

import torch


class DgmfastWarning(UserWarning):
    """Warnings about backends dgmfast could not use."""


_state = {"module": None, "error": None, "loaded": False}
_INTERNAL_DIRS = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.__file__)))


def warn(message: str):
    """A DgmfastWarning attributed to the first caller outside dgmfast (and torch's wrappers)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DgmfastWarning, stacklevel=level)


def _load():
    if not _state["loaded"]:
        _state["loaded"] = True
        try:
            _state["module"] = importlib.import_module("dgmfast._C")
        except (ImportError, OSError) as e:  # absent, or built against another torch
            _state["error"] = f"{type(e).__name__}: {e}"
            warn("dgmfast: the compiled extension dgmfast._C is not available "
                 f"({_state['error']}); the cpu and cuda backends are disabled and ops run on "
                 "triton (CUDA tensors) or the torch reference. Rebuild with "
                 "`pip install --no-build-isolation -e .` to enable them.")
    return _state["module"]


def has_extension() -> bool:
    """True when dgmfast._C loaded (C++ CPU kernels, and CUDA kernels if built with them)."""
    return _load() is not None


def extension_error():
    """Why the extension did not load, or None."""
    _load()
    return _state["error"]


def build_info() -> dict:
    """{'cpu_capability': 'avx512'|'avx2'|'default', 'cuda': bool, 'cuda_archs': str}, or {}."""
    mod = _load()
    return dict(mod.build_info()) if mod is not None else {}


def cpu_supports(capability: str) -> bool:
    """Whether this CPU runs code built for `capability` (as torch detects it)."""
    if capability == "default" or platform.machine() not in ("x86_64", "AMD64"):
        return True
    have = torch.backends.cpu.get_cpu_capability().lower()
    order = ["default", "avx2", "avx512"]
    return have in order and order.index(have) >= order.index(capability)
