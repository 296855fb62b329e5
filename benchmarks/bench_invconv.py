"""Invertible 1x1 convolution benchmark cases: the SPEC §12 Glow shapes (affine_coupling's) and the first-level
shape of the CPU training comparison (benchmarks/train_flow.py, Glow on 8x8 digits). `invconv_lu` (the LU form):
the reference assembles W with torch ops and mixes with oneDNN/cuBLAS's 1x1 convolution (F.conv2d);
`channel_mix` (the dense form's mixing): the reference is that convolution alone."""
import torch

from benchmarks.harness import Case
from dgmfast import functional as F
from dgmfast.nn import InvConv1x1
from dgmfast.reference import invconv as ref

SHAPES = [(64, 4, 4, 4), (64, 6, 32, 32), (256, 24, 16, 16), (16, 48, 64, 64)]


def _make(shape, reverse):
    def make(device, dtype):
        layer = InvConv1x1(shape[1], generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # away from the orthogonal init
            for p in (layer.lower, layer.upper, layer.log_abs_s):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        perm, lower, upper, sign_s, log_abs_s = (p.detach().to(device, acc) for p in layer._lu_params())
        x = torch.randn(shape, generator=torch.Generator(device=device).manual_seed(2), device=device, dtype=dtype)
        return ((x.requires_grad_(), perm, lower.requires_grad_(), upper.requires_grad_(), sign_s,
                 log_abs_s.requires_grad_()), dict(reverse=reverse))
    return make


def _bytes(mode):
    # fwd reads x and writes y; the backward reads grad_y and x and writes grad_x
    per_elem = {"fwd": 2, "fwd+bwd": 2 + 3, "reverse": 2}[mode]
    return lambda args, kwargs: per_elem * args[0].numel() * args[0].element_size()


def _flops(mode):
    # C MACs per element per pass: the mixing (fwd), grad_x and grad_W (bwd)
    passes = 3 if mode == "fwd+bwd" else 1
    return lambda args, kwargs: 2 * passes * args[0].numel() * args[0].shape[1]


def _make_mix(shape):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(3)
        x = torch.randn(shape, generator=g, device=device, dtype=dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        w = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g, device=device, dtype=acc))[0]
        return (x.requires_grad_(), w.requires_grad_()), {}
    return make


def _mix_reference(x, w):
    return ref.channel_matmul(x, w.to(x.dtype))


def cases(device, quick=False):
    out = []
    for shape in SHAPES[:2] if quick else SHAPES:
        for mode in ("fwd", "fwd+bwd", "reverse"):
            out.append(Case("invconv_lu", str(list(shape)), mode, _make(shape, mode == "reverse"), ref.invconv_lu,
                            F.invconv_lu, _bytes(mode), flops=_flops(mode)))
        for mode in ("fwd", "fwd+bwd"):
            out.append(Case("channel_mix", str(list(shape)), mode, _make_mix(shape), _mix_reference, F.channel_mix,
                            _bytes(mode), flops=_flops(mode)))
    return out
