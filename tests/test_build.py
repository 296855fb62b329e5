"""The extension's build: what the README promises is really compiled."""
import shutil

import pytest
import torch

import dgmfast

CPP_OPS = ("affine_coupling_fwd", "affine_coupling_bwd", "mixlogistic_coupling_fwd", "mixlogistic_coupling_bwd",
           "actnorm_fwd", "actnorm_bwd", "uniform_dequantize_fwd", "uniform_dequantize_rev", "gaussian_sample_log_prob",
           "dequantize_sigmoid_tail_fwd", "dequantize_sigmoid_tail_bwd", "reparameterize_fwd", "reparameterize_bwd",
           "iaf_step_fwd", "iaf_step_bwd", "planar_flows_fwd", "planar_flows_bwd", "dip_moments",
           "dip_vae_penalty_fwd", "dip_vae_penalty_bwd", "gaussian_mixture_fwd", "gaussian_mixture_bwd")


def test_extension_built_with_cpu_kernels():
    assert dgmfast.has_extension(), "dgmfast._C did not load; the test command builds it"
    info = dgmfast.build_info()
    assert info["cpu_capability"] in ("avx512", "avx2", "default")


@pytest.mark.skipif(torch.version.cuda is None or shutil.which("nvcc") is None,
                    reason="a CPU build of torch or no nvcc: the CUDA kernels are not built here")
def test_cuda_kernels_compiled_when_nvcc_and_cuda_torch_exist():
    # CI has nvcc and a CUDA build of torch: a .cu that silently stopped compiling must fail here. Every
    # C++ op has a CUDA kernel except the two matrix-shaped families that GPUs run on triton (documented
    # refusals in dgmfast/ops/dip.py and dgmfast/ops/gaussian.py).
    assert dgmfast.has_extension() and dgmfast.build_info()["cuda"] is True
    triton_only = ("dip_moments", "dip_vae_penalty_fwd", "dip_vae_penalty_bwd", "gaussian_mixture_fwd",
                   "gaussian_mixture_bwd")
    ops = [name for name in CPP_OPS if name not in triton_only]
    for op in ops:
        handle = getattr(torch.ops.dgmfast_C, op).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(handle.name(), "CPU"), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(handle.name(), "CUDA"), op
