"""Process-level settings that matter for CPU speed."""
import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_cpu_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Keep freed large blocks in the process (glibc malloc) instead of returning them to the OS.

    By default glibc serves large tensors with fresh pages and trims them away on free, so every large
    temporary of every op (reference, compiled or fused) page-faults again: on this project's 2-core
    machine that cost a fused backward 3x its kernel time. PyTorch's CPU tuning guide recommends
    jemalloc/tcmalloc for the same reason; this sets glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD
    to `threshold_bytes` instead. It affects the whole process (all implementations alike); the
    benchmarks call it first. Returns False where glibc's mallopt is not available.
    """
    if platform.system() != "Linux":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                          threshold_bytes))
