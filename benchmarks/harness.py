"""Benchmark cases and timing shared by benchmarks/run.py and the pytest-benchmark tests.

A family's file benchmarks/bench_<family>.py defines ``cases(device, quick) -> list[Case]``.
Each case times the eager reference, torch.compile of the reference and every available dgmfast
backend on the same inputs, and reports bytes moved against the device's measured copy bandwidth.
"""
import contextlib
import dataclasses
import functools
import importlib
import pkgutil
import statistics
import time
import warnings
from typing import Callable, Optional

import torch

import dgmfast
from dgmfast.backends import backend_refusals

MODES = ("fwd", "fwd+bwd", "reverse")


@dataclasses.dataclass
class Case:
    op: str                      # functional name, e.g. "affine_coupling"
    shape: str                   # human-readable shape, e.g. "[64, 6, 32, 32]"
    mode: str                    # "fwd", "fwd+bwd" or "reverse" (forward only)
    make: Callable               # make(device, dtype) -> (args, kwargs); tensors needing grads have requires_grad
    reference: Callable          # plain-PyTorch reference(*args, **kwargs)
    fused: Callable              # dgmfast functional(*args, **kwargs); the backend comes from use_backend
    bytes: Callable              # bytes(args, kwargs) -> minimal bytes a fused kernel moves in this mode
    flops: Optional[Callable] = None  # flops(args, kwargs) -> FLOPs, for compute-bound ops
    dtypes: tuple = (torch.float32,)
    gpu_dtypes: tuple = (torch.float32, torch.bfloat16)
    # Why the eager reference is not timed for this case (e.g. it would materialize more memory than the
    # machine has), or None. The row then shows "-" for eager and its speed-up, and keeps the reason
    # (row["eager_skipped"]); torch.compile(reference) and dgmfast are still timed.
    skip_eager: Optional[str] = None


def all_cases(device: torch.device, quick: bool = False, ops=None):
    """Cases from every benchmarks/bench_<family>.py, filtered by op name."""
    import benchmarks
    out = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")):
        for case in importlib.import_module(f"benchmarks.{mod}").cases(device, quick):
            if ops is None or case.op in ops:
                out.append(case)
    return out


def dgmfast_backends(device: torch.device):
    """dgmfast backends that can run on `device` (triton only on GPUs: the interpreter is no benchmark)."""
    names = ("triton", "cuda") if device.type == "cuda" else ("cpu",)
    return [n for n in names if not backend_refusals(n, device)]


def _outputs(out):
    return [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]


def make_step(fn, args, kwargs, mode):
    """A zero-argument callable running one step: forward, or forward + backward into the inputs."""
    if mode != "fwd+bwd":
        def step():
            with torch.no_grad():
                return fn(*args, **kwargs)
        return step
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    first = _outputs(fn(*args, **kwargs))
    grads = [torch.randn_like(o) for o in first if o.requires_grad]

    def step():
        outs = [o for o in _outputs(fn(*args, **kwargs)) if o.requires_grad]
        return torch.autograd.grad(outs, inputs, grads)
    return step


def time_ms(step, device: torch.device, quick: bool = False) -> float:
    """Median milliseconds of one step (see time_steps_ms)."""
    return time_steps_ms({"step": (step, contextlib.nullcontext)}, device, quick)["step"]


def _seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def time_steps_ms(steps, device: torch.device, quick: bool = False) -> dict:
    """Median milliseconds per step of each entry of `steps` (name -> (step, context factory), every call
    of a step runs inside its context, e.g. a forced dgmfast backend).

    GPUs: triton's do_bench, one step after the other. CPUs: the steps are timed interleaved, one block of
    calls (about 2 ms, after one untimed call) of every step per round, rounds in alternating order, and
    each step's median over its individually timed calls is reported. On a shared machine, load that comes
    and goes (and the stalls of an OpenMP thread that lost its core) then hits every implementation alike,
    instead of whichever was being timed during the burst; and a call that stalls is one sample, so a
    faster step (more calls per block) is not penalized as it is by a median of block means, where a
    block is spoiled by any stalled call in it.
    """
    times = {}
    if device.type == "cuda":
        import triton.testing
        for name, (step, context) in steps.items():
            with context():
                step()
                times[name] = triton.testing.do_bench(step, warmup=10 if quick else 25, rep=40 if quick else 200,
                                                      return_mode="median")
        return times
    calls, samples = {}, {name: [] for name in steps}
    for name, (step, context) in steps.items():  # warm-up, then calls per block of about 2 ms
        with context():
            step()
            calls[name] = max(1, int(2e-3 / max(min(_seconds(step) for _ in range(3)), 1e-7)))
    budget = (0.2 if quick else 1.0) * len(steps)
    order, rounds, start = list(steps), 0, time.perf_counter()
    while rounds < 5 or time.perf_counter() - start < budget:
        for name in order if rounds % 2 == 0 else reversed(order):
            step, context = steps[name]
            with context():
                step()  # untimed: the block starts from this step's own warm caches, not the previous step's
                samples[name] += [_seconds(step) for _ in range(calls[name])]
        rounds += 1
    return {name: statistics.median(s) * 1e3 for name, s in samples.items()}


def saved_bytes(fn, args, kwargs) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return sum(seen.values())


def copy_bandwidth_gbps(device: torch.device) -> float:
    """Measured ceiling: GB/s of a large device copy (read + write)."""
    n = (1 << 28) if device.type == "cuda" else (1 << 26)  # 1 GiB / 256 MiB of float32
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.nbytes / (ms * 1e-3) / 1e9


@contextlib.contextmanager
def _quiet_backend(name):
    """dgmfast's backend `name` forced, its warnings silenced."""
    with dgmfast.use_backend(name), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def run_case(case: Case, device: torch.device, dtype: torch.dtype, quick=False, compile_reference=True):
    """Times one case; returns a result row (dict)."""
    args, kwargs = case.make(device, dtype)
    row = dict(op=case.op, shape=case.shape, dtype=str(dtype).replace("torch.", ""), device=device.type,
               mode=case.mode, bytes=case.bytes(args, kwargs), flops=case.flops(args, kwargs) if case.flops else None)
    steps = {}
    if case.skip_eager:
        row["eager_skipped"] = case.skip_eager
    else:
        steps["eager"] = (make_step(case.reference, args, kwargs, case.mode), contextlib.nullcontext)
    if compile_reference:
        torch._dynamo.reset()
        compiled = torch.compile(case.reference, dynamic=False)
        steps["compile"] = (make_step(compiled, args, kwargs, case.mode), contextlib.nullcontext)
    for name in dgmfast_backends(device):
        with _quiet_backend(name):
            steps[name] = (make_step(case.fused, args, kwargs, case.mode), functools.partial(_quiet_backend, name))
    times = time_steps_ms(steps, device, quick)
    row["eager_ms"], row["compile_ms"] = times.pop("eager", None), times.pop("compile", None)
    row["backends"] = times
    if case.mode == "fwd+bwd":
        row["saved_eager"] = None if case.skip_eager else saved_bytes(case.reference, args, kwargs)
        best = min(row["backends"], key=row["backends"].get) if row["backends"] else None
        if best:
            with dgmfast.use_backend(best):
                row["saved_dgmfast"] = saved_bytes(case.fused, args, kwargs)
    if device.type == "cuda" and row["backends"]:
        best = min(row["backends"], key=row["backends"].get)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with dgmfast.use_backend(best):
            make_step(case.fused, args, kwargs, case.mode)()
        torch.cuda.synchronize()
        row["peak_dgmfast"] = torch.cuda.max_memory_allocated() - base
        if not case.skip_eager:
            torch.cuda.reset_peak_memory_stats()
            make_step(case.reference, args, kwargs, case.mode)()
            torch.cuda.synchronize()
            row["peak_eager"] = torch.cuda.max_memory_allocated() - base
    if row["backends"]:
        best_ms = min(row["backends"].values())
        row["best_backend"] = min(row["backends"], key=row["backends"].get)
        row["speedup_vs_eager"] = row["eager_ms"] / best_ms if row["eager_ms"] else None
        row["speedup_vs_compile"] = row["compile_ms"] / best_ms if row["compile_ms"] else None
        row["gbps"] = row["bytes"] / (best_ms * 1e-3) / 1e9
        row["gflops"] = row["flops"] / (best_ms * 1e-3) / 1e9 if row["flops"] else None
    return row
