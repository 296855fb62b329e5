"""The benchmark tools: the harness's interleaved CPU timing and result rows (benchmarks/harness.py), and
the end-to-end training comparison (benchmarks/train_common.py, train_flow.py) on a few steps: the fused-op
time it reports comes from dgmfast's ops only, and the two runs train the same model."""
import contextlib
import time

import pytest
import torch

import dgmfast
from benchmarks import train_flow
from benchmarks.harness import all_cases, dgmfast_backends, run_case, time_steps_ms
from benchmarks.train_common import fused_op_ms, max_rel_diff, train_run, train_runs
from dgmfast import functional as F


def _profile(backend, fn, steps=3):
    with dgmfast.use_backend(backend), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return fused_op_ms(prof, steps)


def test_fused_op_ms_counts_dgmfast_ops_only():
    x = torch.randn(64, 4, 8, 8, requires_grad=True)
    s, t = torch.randn(64, 4, 8, 8), torch.randn(64, 4, 8, 8)

    def step():
        y, ld = F.affine_coupling(x, s, t)
        (y.sum() + ld.sum()).backward()

    def other():
        torch.nn.functional.conv2d(x, torch.randn(4, 4, 3, 3)).sum().backward()

    assert _profile("cpu", step) > 0
    assert _profile("torch", step) == 0  # the reference backend runs plain aten ops
    assert _profile("cpu", other) == 0


def test_max_rel_diff():
    assert max_rel_diff([1.0, 2.0, 4.0], [1.0, 2.2, 4.0]) == pytest.approx(0.1)
    assert max_rel_diff([1.0] * 150, [1.0] * 100 + [2.0] * 50) == 0


def test_train_flow_runs_both_ways(tmp_path):
    summary = train_flow.main(["--model", "glow", "--steps", "8", "--batch", "16", "--device", "cpu",
                               "--out", str(tmp_path)])
    s = summary["glow-uniform"]
    assert s["dgmfast_backend"] == "cpu"
    assert s["fused_op_ms"] > 0 and s["speedup_ceiling"] > 0
    # same model and seed: 8 steps agree to float tolerance in float32 and float64
    assert s["max_rel_loss_diff_first_100"] < 1e-4
    assert s["max_rel_loss_diff_float64"] < 1e-10
    assert (tmp_path / "train_flow-cpu.json").exists() and (tmp_path / "train_flow-cpu.png").exists()


def test_train_runs_interleave_and_keep_each_runs_random_state():
    """Runs taking their steps in turn give the losses each gives alone: every run keeps its own random state
    (here the noise drawn by reparameterize on every step), and the runs alternate which steps first."""
    torch.manual_seed(123)
    data = torch.randn(64, 8)

    def build():
        return torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 8))

    def loss_fn(model, x):
        mu, logvar = model(x).chunk(2, dim=1)
        z, kl, _ = F.reparameterize(mu, logvar)
        return z.square().mean() + kl.mean()

    kw = dict(steps=7, lr=1e-2, seed=5, device=torch.device("cpu"), profile_steps=2)
    batches = lambda step: data[step * 8:(step + 1) * 8]  # noqa: E731
    together = train_runs(build, loss_fn, batches, backends=("torch", "cpu"), **kw)
    for run in together:
        alone = train_run(build, loss_fn, batches, backend=run["backend"], **kw)
        assert run["losses"] == alone["losses"] and len(run["losses"]) == 7
        assert run["saved_bytes"] == alone["saved_bytes"] > 0
    assert together[1]["fused_op_ms"] > 0 and together[0]["fused_op_ms"] == 0
    assert max_rel_diff(together[0]["losses"], together[1]["losses"]) < 1e-5


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
