"""Launcher helpers shared by every op family (the custom-op wrapper, layouts, Triton launch configs,
validation)."""
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


def is_plane_contiguous(t: torch.Tensor) -> bool:
    """Each plane t[b, c] (the dims after 1) is contiguous (any batch and channel strides), as the
    kernels of per-channel ops read it; every [B, C] layout qualifies."""
    expected = 1
    for d in range(t.dim() - 1, 1, -1):
        if t.shape[d] != 1 and t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def row_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if is_row_contiguous(t) else t.contiguous()


def plane_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if is_plane_contiguous(t) else t.contiguous()


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


# ---- custom ops with an eager fast path ----------------------------------------------------------

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _eager_args(args) -> bool:
    """True outside any tracer: no compiler is tracing and every tensor argument is a plain tensor or
    parameter (not the fake, functional or proxy subclass tensors of torch.compile, make_fx or opcheck)."""
    return not torch.compiler.is_compiling() and all(type(a) in _PLAIN_TENSORS for a in args
                                                     if isinstance(a, torch.Tensor))


def check_first_order(name: str, needs_input_grad) -> None:
    """Raises inside a backward run with create_graph=True (the engine enables grad mode in a backward only
    then) when an input takes a gradient: dgmfast's backward passes record no graph, so a second derivative
    through them would silently be 0."""
    if torch.is_grad_enabled() and any(needs_input_grad):
        raise RuntimeError(f"dgmfast: {name} has no double backward (create_graph=True through it): its backward "
                           "is a fused kernel that records no graph; for higher-order gradients run the reference "
                           "backend (dgmfast.use_backend('torch'))")


class FusedOp:
    """A `torch.library.custom_op` (``.op``) that eager calls reach without torch.library's Python
    dispatch, which costs tens of microseconds per call (as much as a small fused kernel): in eager
    mode the implementation runs directly, inside a `torch.autograd.Function` built from the same
    setup_context/backward when autograd needs it (or, on `native_autograd` backends, recording the C++
    graph node of the dgmfast_C op it calls, which skips Python in both directions). Under tracing (torch.compile, make_fx, fake
    tensors) every call goes to the custom op, so graphs hold it as one opaque node with its fake."""

    def __init__(self, op, impl, name, native_autograd=()):
        self.op = op
        self.name = name  # "dgmfast::<op>"
        self._impl = impl  # the function the custom op was made from
        self._function = None
        # backends (the op's last argument) whose implementation records autograd itself: a C++ Autograd
        # kernel of the dgmfast_C op it calls, with the same formula as register_autograd's
        self._native_autograd = frozenset(native_autograd)

    def register_fake(self, fn):
        return self.op.register_fake(fn)

    def register_autograd(self, backward, *, setup_context):
        name = self.name

        def first_order_backward(ctx, *grads):
            check_first_order(name, ctx.needs_input_grad)
            return backward(ctx, *grads)

        self.op.register_autograd(first_order_backward, setup_context=setup_context)
        impl = self._impl

        def forward(ctx, *args):  # ctx-style forward: a separate setup_context costs an inspect.signature per call
            out = impl(*args)
            setup_context(ctx, args, out)
            return out

        self._function = type(f"{impl.__name__}_function", (torch.autograd.Function,), dict(
            forward=staticmethod(forward), backward=staticmethod(first_order_backward)))

    def __call__(self, *args):
        if not _eager_args(args):
            return self.op(*args)
        if self._function is not None and args[-1] not in self._native_autograd and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self._function.apply(*args)
        return self._impl(*args)


def custom_op(name: str, native_autograd=()):
    """Decorator: `torch.library.custom_op(name, mutates_args=())` wrapped in a `FusedOp`; the op's last
    argument is its backend. `native_autograd`: the backends whose implementation records its own graph
    node in eager calls (see FusedOp)."""
    def wrap(fn):
        return FusedOp(torch.library.custom_op(name, mutates_args=())(fn), fn, name, native_autograd)
    return wrap


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


def philox_words(counters: torch.Tensor, seed: int, stream: int = 0) -> torch.Tensor:
    """Philox4x32-10 words (uint32 values as int64, shape [4, n]) for int64 `counters`: the plain
    PyTorch mirror of csrc/include/dgmfast/philox.h and kernels/_random.py."""
    m32 = 0xFFFFFFFF
    c0, c1 = counters & m32, (counters >> 32) & m32
    c2, c3 = torch.full_like(counters, stream & m32), torch.zeros_like(counters)
    k0, k1 = seed & m32, (seed >> 32) & m32
    for _ in range(10):
        p0, p1 = c0 * 0xD2511F53, c2 * 0xCD9E8D57  # int64 wraps; the low 32 bits stay exact
        p0_hi, p1_hi = _mulhi32(c0, 0xD2511F53), _mulhi32(c2, 0xCD9E8D57)
        n0, n2 = p1_hi ^ c1 ^ k0, p0_hi ^ c3 ^ k1
        c1, c3 = p1 & m32, p0 & m32
        c0, c2 = n0, n2
        k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
    return torch.stack([c0, c1, c2, c3])


def philox_uniform(n: int, seed: int, stream: int = 0, device="cpu") -> torch.Tensor:
    """The float32 uniforms the kernels draw for elements 0..n-1 (word i % 4 of counter i // 4)."""
    idx = torch.arange(n, dtype=torch.int64, device=device)
    words = philox_words(idx >> 2, seed, stream)
    return uniform_from_words(words.gather(0, (idx & 3)[None]).squeeze(0))


def philox_normal(n: int, seed: int, stream: int = 0, device="cpu") -> torch.Tensor:
    """The float32 standard normals the kernels draw for elements 0..n-1 (Box-Muller, see philox.h)."""
    idx = torch.arange(n, dtype=torch.int64, device=device)
    words = philox_words(idx >> 2, seed, stream)
    k = idx & 3
    pair = (k & 2)[None]
    b1 = words.gather(0, pair).squeeze(0)
    b2 = words.gather(0, pair + 1).squeeze(0)
    u1 = ((b1 >> 8) + 1).to(torch.float32) * 2.0**-24
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = 6.283185307179586 * uniform_from_words(b2)
    return radius * torch.where((k & 1) == 1, torch.sin(angle), torch.cos(angle))


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
