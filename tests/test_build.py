"""The extension's build: what the README promises is really compiled."""
import shutil

import pytest
import torch

import dgmfast


def test_extension_built_with_cpu_kernels():
    assert dgmfast.has_extension(), "dgmfast._C did not load; the test command builds it"
    info = dgmfast.build_info()
    assert info["cpu_capability"] in ("avx512", "avx2", "default")


@pytest.mark.skipif(torch.version.cuda is None or shutil.which("nvcc") is None,
                    reason="a CPU build of torch or no nvcc: the CUDA kernels are not built here")
def test_cuda_kernels_compiled_when_nvcc_and_cuda_torch_exist():
    # CI has nvcc and a CUDA build of torch: a .cu that silently stopped compiling must fail here
    assert dgmfast.build_info()["cuda"] is True
    for op in ("affine_coupling_fwd", "affine_coupling_bwd"):
        handle = getattr(torch.ops.dgmfast_C, op).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(handle.name(), "CUDA"), op
