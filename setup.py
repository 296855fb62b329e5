"""Build dgmfast and its one extension, dgmfast._C.

C++ CPU kernels (csrc/cpu/*.cpp) are always built when a C++ compiler exists; CUDA kernels
(csrc/cuda/*.cu) too when torch is a CUDA build and nvcc is found, or FORCE_CUDA=1.
Environment variables are documented in the README. Build with `--no-build-isolation`
(the extension compiles against the installed torch).
"""
import glob
import os
import platform
import re
import shutil
import subprocess

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """CUDA_HOME as nvcc itself reports it (nvcc on PATH may be a wrapper script)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if shutil.which("nvcc") is None:
        return None
    out = subprocess.run(["nvcc", "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True).stderr
    m = re.search(r"TOP=(\S+)", out)
    return os.path.normpath(m.group(1)) if m else None


def _cpu_capability():
    """Vector ISA for the CPU kernels: DGMFAST_CPU_CAPABILITY, else the best of the build machine."""
    forced = os.environ.get("DGMFAST_CPU_CAPABILITY", "").lower()
    if forced:
        if forced not in ("avx512", "avx2", "default"):
            raise ValueError(f"DGMFAST_CPU_CAPABILITY must be avx512, avx2 or default, got {forced!r}")
        return forced
    if platform.machine() not in ("x86_64", "AMD64"):
        return "default"
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", open("/proc/cpuinfo").read(), re.M).group(1).split())
    except (OSError, AttributeError):
        return "default"
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return "default"


CAPABILITY_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
    "default": ["-DCPU_CAPABILITY=DEFAULT"],
}


def _extensions():
    if os.environ.get("DGMFAST_SKIP_EXT", "0") == "1":
        return [], {}
    cuda_home = _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    skip_cuda = os.environ.get("DGMFAST_SKIP_CUDA", "0") == "1"
    with_cuda = force_cuda or (not skip_cuda and torch.version.cuda is not None and cuda_home is not None)
    cap = _cpu_capability()
    sources = sorted(glob.glob("csrc/ops.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", *CAPABILITY_FLAGS[cap], f'-DDGM_CPU_CAPABILITY="{cap}"']
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc", "include")])
    if platform.system() == "Linux":
        # at::parallel_for is header code: without OpenMP it runs serially. The libgomp.so.1 that torch
        # loads first serves both, so there is one OpenMP runtime in the process.
        cxx.append("-fopenmp")
        kwargs["extra_link_args"] = ["-fopenmp"]
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"  # A100, H100/H200
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPU")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        cxx += ["-DDGM_WITH_CUDA", f'-DDGM_CUDA_ARCHS="{archs}"']
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        ext = CUDAExtension("dgmfast._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension("dgmfast._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()
setup(
    packages=find_packages(include=["dgmfast", "dgmfast.*"]) + ["dgmfast.kernels"],
    package_dir={"dgmfast": "dgmfast", "dgmfast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
