"""Helpers shared by the op tests: backend cases, dtype tolerances, brute-force log-dets."""
import contextlib

import pytest
import torch

import dgmfast

HALF_DTYPES = (torch.float16, torch.bfloat16)


def backend_cases():
    """(device, backend) pairs to run: every backend on CPU tensors (triton in the interpreter),
    and on CUDA tensors (marked gpu)."""
    cases = [pytest.param("cpu", b, id=f"cpu-{b}") for b in ("torch", "cpu", "triton")]
    cases += [pytest.param("cuda", b, id=f"cuda-{b}", marks=pytest.mark.gpu) for b in ("torch", "triton", "cuda")]
    return cases


# Tests that call the "cpu" backend's ops (dgmfast_C) directly, not through a functional; evaluating the mark loads
# the extension.
needs_extension = pytest.mark.skipif(not dgmfast.has_extension(),
                                     reason="calls the cpu backend's C++ ops directly; this build has no compiled "
                                            "extension dgmfast._C (DGMFAST_SKIP_EXT=1 or a failed build)")


@contextlib.contextmanager
def backend(name):
    with dgmfast.use_backend(name):
        yield


def compile_fullgraph(fn, be):
    """torch.compile(fn, fullgraph=True) for backend `be` (inductor; aot_eager for triton, whose CPU tensors run in
    the interpreter)."""
    return torch.compile(fn, fullgraph=True, backend="aot_eager" if be == "triton" else "inductor")


def assert_compiled_matches_eager(step, inputs, be, wrt=None, **tol):
    """The compiled step (compile_fullgraph) on backend `be` gives the eager step's value and gradients (with respect
    to `wrt`, default the inputs), to torch.testing.assert_close's tolerances or `tol`."""
    wrt = tuple(inputs) if wrt is None else tuple(wrt)
    with backend(be):
        eager = step(*inputs)
        g_eager = torch.autograd.grad(eager, wrt)
        torch._dynamo.reset()
        out = compile_fullgraph(step, be)(*inputs)
        g_comp = torch.autograd.grad(out, wrt)
    torch.testing.assert_close(out, eager, **tol)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, **tol)


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close(out, ref64, *, low_ref=None, rtol=None, atol=None, name="output"):
    """Compare `out` with a float64 reference.

    float32/float64: |out - ref| <= atol + rtol*|ref|. float16/bfloat16 (SPEC/DESIGN rule):
    err(out) <= 2 * err(low_ref) + atol, where low_ref is the reference run in the low dtype.
    """
    assert out.shape == ref64.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    if out.dtype in HALF_DTYPES:
        assert low_ref is not None
        err, ref_err = max_err(out, ref64), max_err(low_ref, ref64)
        bound = 2 * ref_err + (atol if atol is not None else 1e-2)
        assert err <= bound, f"{name}: {out.dtype} error {err:.3g} > 2*reference error {ref_err:.3g} + atol"
        return
    if rtol is None:
        rtol = 1e-10 if out.dtype == torch.float64 else 2e-5
    if atol is None:
        atol = 1e-10 if out.dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double(), ref64.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def brute_force_logdet(fn, x):
    """log|det J| per sample of a per-sample map fn: [B, ...] -> [B, ...], float64, tiny shapes."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b:b + 1].double()
        jac = torch.autograd.functional.jacobian(lambda v: fn(v).reshape(-1), xb).reshape(xb.numel(), xb.numel())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)
