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


# ---- randomness (SPEC §0): one 64-bit seed per call, drawn from the generator ---------------------

def draw_seed(generator=None) -> torch.Tensor:
    """A CPU int64 scalar tensor holding a seed in [0, 2**63) drawn from `generator` (default: torch's
    global CPU generator, so torch.manual_seed makes runs reproducible). Kernels derive every element's
    noise from (seed, element index) with Philox (csrc/include/dgmfast/philox.h, kernels/_random.py);
    ops take the seed as a tensor so torch.compile does not specialize on its value."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = generator.device if generator is not None else "cpu"
    return torch.randint(0, 2**63 - 1, (), generator=generator, device=device, dtype=torch.int64).cpu()


def philox_reference(n: int, seed: int, stream: int = 0, device="cpu"):
    """The words (4 uint32 as int64, shape [4, n]) Philox4x32-10 gives for elements 0..n-1: a plain
    PyTorch mirror of the kernels' generator, used by references and tests to reproduce in-kernel noise."""
    m32 = 0xFFFFFFFF
    idx = torch.arange(n, dtype=torch.int64, device=device)
    c0, c1 = idx & m32, (idx >> 32) & m32
    c2, c3 = torch.full_like(idx, stream & m32), torch.zeros_like(idx)
    k0, k1 = seed & m32, (seed >> 32) & m32
    for _ in range(10):
        p0, p1 = c0 * 0xD2511F53, c2 * 0xCD9E8D57  # int64 wraps; the low 32 bits stay exact
        p0_hi, p1_hi = _mulhi32(c0, 0xD2511F53), _mulhi32(c2, 0xCD9E8D57)
        n0, n2 = p1_hi ^ c1 ^ k0, p0_hi ^ c3 ^ k1
        c1, c3 = p1 & m32, p0 & m32
        c0, c2 = n0, n2
        k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
    return torch.stack([c0, c1, c2, c3])


def _mulhi32(a: torch.Tensor, b: int) -> torch.Tensor:
    """High 32 bits of the 64-bit product of uint32 values a (int64 tensor) and b, without overflow."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16
    mid = a_hi * b_lo + ((a_lo * b_lo) >> 16)
    mid2 = a_lo * b_hi + (mid & 0xFFFF)
    return a_hi * b_hi + (mid >> 16) + (mid2 >> 16)


def uniform_from_words(words: torch.Tensor) -> torch.Tensor:
    """[0, 1) float32 from Philox words as the kernels form it (top 24 bits)."""
    return (words >> 8).to(torch.float32) * 2.0**-24


def normal_from_words(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Box-Muller as the kernels form it: float32 math on u1 in (0, 1], u2 in [0, 1)."""
    u1 = ((w1 >> 8) + 1).to(torch.float32) * 2.0**-24
    u2 = uniform_from_words(w2)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(6.283185307179586 * u2)
