"""Launcher helpers shared by every op family (layouts, Triton launch configs, validation)."""
import torch

from dgmfast.reference.common import acc_dtype

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_row_contiguous(t: torch.Tensor) -> bool:
    """Each sample t[b] is contiguous (any batch stride), as the kernels read it."""
    expected = 1
    for d in range(t.dim() - 1, 0, -1):
        if t.shape[d] != 1 and t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def row_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if is_row_contiguous(t) else t.contiguous()


def row_numel(t: torch.Tensor) -> int:
    return t[0].numel() if t.dim() > 0 and t.shape[0] > 0 else 0


def row_stride(t: torch.Tensor) -> int:
    return t.stride(0) if t.dim() > 0 else 0


def logdet_like(x: torch.Tensor) -> torch.Tensor:
    """An empty [B] log-det in the accumulation dtype (float32, float64 for float64 input)."""
    return x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


def triton_acc(dtype: torch.dtype):
    import triton.language as tl
    return tl.float64 if dtype == torch.float64 else tl.float32


def triton_row_config(n: int, device: torch.device):
    """(BLOCK, num_warps) for element-wise row-chunk kernels.

    On a GPU, 2048 elements per program with 8 warps keeps enough bytes in flight for the
    bandwidth-bound kernels; the interpreter (CPU tensors) runs faster with larger blocks.
    """
    import triton
    block = triton.next_power_of_2(max(n, 1))
    if device.type == "cuda":
        block = min(max(block, 128), 2048)
        return block, (8 if block >= 2048 else 4)
    return min(max(block, 16), 8192), 4


# ---- validation: errors name the argument, the expected and the received value -------------------

def check_tensor(name, t, *, dtypes=FLOAT_DTYPES, min_dim=1):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have a floating dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dim(s) (the first is the batch), "
                         f"got shape {tuple(t.shape)}")


def check_like(name, t, ref_name, ref, *, shape=None):
    """`t` matches `ref` in dtype, device and (unless shape is given) shape."""
    check_tensor(name, t, dtypes=None, min_dim=0)
    want = tuple(ref.shape) if shape is None else tuple(shape)
    if tuple(t.shape) != want:
        raise ValueError(f"{name} must have shape {want} (as {ref_name}), got {tuple(t.shape)}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have dtype {ref.dtype} (as {ref_name}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on device {ref.device} (as {ref_name}), got {t.device}")


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
