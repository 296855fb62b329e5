"""pytest-benchmark view of the same cases as run.py: ``pytest benchmarks/ --benchmark-only``.

Each (case, implementation) pair is one benchmark; CUDA steps synchronize inside the timed call.
"""
import pytest
import torch

import dgmfast
from benchmarks.harness import all_cases, dgmfast_backends, make_step

dgmfast.tune_cpu_allocator()  # as run.py: the same allocator settings for every implementation
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMPLS = ["eager", "compile", *dgmfast_backends(DEVICE)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", all_cases(DEVICE, quick=True), ids=lambda c: f"{c.op}-{c.shape}-{c.mode}")
def test_op(benchmark, case, impl):
    if impl == "eager" and case.skip_eager:
        pytest.skip(case.skip_eager)
    args, kwargs = case.make(DEVICE, torch.float32)
    if impl == "eager":
        fn = case.reference
    elif impl == "compile":
        torch._dynamo.reset()
        fn = torch.compile(case.reference, dynamic=False)
    else:
        fn = case.fused
    with dgmfast.use_backend(impl if impl in dgmfast.BACKENDS else "torch"):
        step = make_step(fn, args, kwargs, case.mode)

        def synced():
            out = step()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            return out

        benchmark(synced)
