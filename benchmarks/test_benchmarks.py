"""pytest-benchmark view of the same cases as run.py: ``pytest benchmarks/ --benchmark-only``.

Each (case, implementation) pair is one benchmark; CUDA steps synchronize inside the timed call.
"""
import contextlib
import time

import pytest
import torch

import dgmfast
from benchmarks.harness import all_cases, dgmfast_backends, make_step, run_case, time_steps_ms

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


def test_time_steps_ms_interleaves():
    """Every step is timed, each block of calls runs inside the step's own context, and the rounds
    alternate the order of the steps."""
    log = []

    def context(name):
        @contextlib.contextmanager
        def enter():
            log.append(name)
            yield
        return enter

    def slow():
        time.sleep(2e-3)

    times = time_steps_ms({"fast": (lambda: None, context("fast")), "slow": (slow, context("slow"))},
                          torch.device("cpu"), quick=True)
    assert set(times) == {"fast", "slow"} and 0 < times["fast"] < times["slow"]
    blocks = log[2:]  # after one warm-up entry per step
    assert blocks[:4] == ["fast", "slow", "slow", "fast"] and blocks.count("fast") == blocks.count("slow") >= 5


def test_run_case_row():
    case = next(c for c in all_cases(torch.device("cpu"), quick=True, ops={"actnorm"}) if c.mode == "reverse")
    row = run_case(case, torch.device("cpu"), torch.float32, quick=True, compile_reference=False)
    assert row["eager_ms"] > 0 and row["compile_ms"] is None
    assert set(row["backends"]) == set(dgmfast_backends(torch.device("cpu"))) and all(
        t > 0 for t in row["backends"].values())
