"""Test environment: without a GPU, Triton kernels run on CPU tensors in the interpreter.

TRITON_INTERPRET must be set before anything imports triton. Markers: `gpu` (needs CUDA, skipped
without it), `slow` (deselect with -m "not slow").
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (runs in the GPU session: benchmarks/gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
