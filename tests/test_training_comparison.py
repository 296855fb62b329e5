"""The end-to-end training comparison (benchmarks/train_common.py, train_flow.py) on a few steps: the
fused-op time it reports comes from dgmfast's ops only, and the two runs train the same model."""
import pytest
import torch

import dgmfast
from benchmarks import train_flow
from benchmarks.train_common import fused_op_ms, max_rel_diff
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
