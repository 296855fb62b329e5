"""Backend registry and selection.

Backends: ``torch`` (the plain-PyTorch reference), ``cpu`` (C++ in dgmfast._C), ``cuda``
(CUDA C++ in dgmfast._C) and ``triton``. For each call the dispatcher walks a priority list
(CUDA tensors: triton, cuda, torch; CPU tensors: cpu, torch) and takes the first backend that
accepts the input. A backend that refuses says why; when the user forces a backend
(``DGMFAST_BACKEND`` or :func:`use_backend`) and it refuses, the call raises with every reason.
When auto-selection skips the preferred backend, dgmfast warns once with the reason.
"""
import contextlib
import contextvars
import functools
import importlib.util
import os

import torch

from dgmfast._ext import build_info, cpu_supports, extension_error, has_extension, warn

BACKENDS = ("triton", "cuda", "cpu", "torch")
PRIORITY = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}

OPS = {}  # op name -> op_refusals(backend, device, dtype) -> list[str] | None (registered by ops/<family>.py)

_forced = contextvars.ContextVar("dgmfast_backend", default=None)
_warned = set()


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"dgmfast: backend must be one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name):
    """Force one backend inside the block: ``with dgmfast.use_backend("torch"): ...``.

    ``None`` restores automatic selection. Overrides ``DGMFAST_BACKEND``.
    """
    token = _forced.set(_check_name(name) if name is not None else "auto")
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend():
    """The backend forced by use_backend() or DGMFAST_BACKEND, or None for automatic."""
    name = _forced.get()
    if name is None:
        name = os.environ.get("DGMFAST_BACKEND", "auto") or "auto"
    return None if name == "auto" else _check_name(name)


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_missing():
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    return None


def backend_refusals(name: str, device: torch.device) -> list:
    """Reasons why backend `name` cannot run on `device` (empty when it can)."""
    reasons = []
    if name == "torch":
        return reasons
    if name == "triton":
        if _triton_missing():
            reasons.append(_triton_missing())
        if device.type == "cpu" and not triton_interpret():
            reasons.append("triton runs CPU tensors only under TRITON_INTERPRET=1 (set before importing triton)")
        elif device.type not in ("cpu", "cuda"):
            reasons.append(f"triton needs CUDA tensors, got device {device}")
        return reasons
    if not has_extension():
        reasons.append(f"dgmfast._C is not available ({extension_error()})")
        return reasons
    info = build_info()
    if name == "cpu":
        if device.type != "cpu":
            reasons.append(f"the cpu backend runs CPU tensors, got device {device}")
        elif not cpu_supports(info["cpu_capability"]):
            reasons.append(f"dgmfast._C was built for {info['cpu_capability']}, which this CPU lacks "
                           "(rebuild with DGMFAST_CPU_CAPABILITY=avx2 or default)")
    elif name == "cuda":
        if device.type != "cuda":
            reasons.append(f"the cuda backend runs CUDA tensors, got device {device}")
        elif not info["cuda"]:
            reasons.append("dgmfast._C was built without CUDA kernels (no nvcc or a CPU build of torch at build time)")
    return reasons


def register_op(op: str, op_refusals=None):
    """Declare an op; `op_refusals(backend, device, dtype) -> list[str]` states its own limits."""
    OPS[op] = op_refusals


_choices = {}  # (op, device, dtype, forced backend, TRITON_INTERPRET) -> backend auto-selection chose


@torch._dynamo.assume_constant_result
def select_backend(op: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The backend that runs `op` on `device` for inputs of `dtype`.

    Under torch.compile the choice is made once, while tracing, and baked into the graph. In eager
    mode a choice is remembered per (op, device, dtype, forced backend, TRITON_INTERPRET): the
    registry and the extension do not change while a process runs.
    """
    key = (op, device, dtype, forced_backend(), triton_interpret())
    name = _choices.get(key)
    if name is None:
        name = _choices[key] = _select_backend(op, device, dtype, key[3])
    return name


def _select_backend(op, device, dtype, forced):
    op_refusals = OPS[op]

    def refusals(name):
        reasons = backend_refusals(name, device)
        if not reasons and op_refusals is not None:
            reasons = list(op_refusals(name, device, dtype))
        return reasons

    if forced is not None:
        reasons = refusals(forced)
        if reasons:
            raise RuntimeError(f"dgmfast: backend {forced!r} was forced for {op} on {device} but refuses: "
                               + "; ".join(reasons))
        return forced
    order = PRIORITY.get(device.type, ("torch",))
    skipped = []
    for name in order:
        reasons = refusals(name)
        if not reasons:
            # a missing extension was already reported once, when dgmfast tried to load it
            ext_missing = skipped and skipped[0][0] in ("cpu", "cuda") and not has_extension()
            if skipped and not ext_missing and (op, device.type, skipped[0][0]) not in _warned:
                _warned.add((op, device.type, skipped[0][0]))
                warn(f"dgmfast: {op} on {device.type} runs on the {name} backend because "
                     + "; ".join(f"{n} refused: {', '.join(r)}" for n, r in skipped))
            return name
        skipped.append((name, reasons))
    raise AssertionError("unreachable: the torch backend accepts every input")
