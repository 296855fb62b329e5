"""Dequantization benchmark cases (SPEC §12): uint8 images, logit mode.

The eager / compiled reference draws torch.rand and runs the map (what a user writes); dgmfast draws
the noise inside the kernel. The Flow++ tail is timed forward+backward at the same shapes.
"""
import torch

from benchmarks.harness import Case
from dgmfast import functional as F
from dgmfast.reference import dequant as ref

SHAPES = [(256, 3, 32, 32), (64, 3, 64, 64)]


def reference_uniform_dequantize(x):
    return ref.uniform_dequantize(x, torch.rand(x.shape, device=x.device), n_bits=8, mode="logit")


def fused_uniform_dequantize(x):
    return F.uniform_dequantize(x, n_bits=8, mode="logit")


def _make_pixels(shape):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        return (torch.randint(0, 256, shape, generator=g, device=device, dtype=torch.uint8),), {}
    return make


def _make_tail(shape):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randint(0, 256, shape, generator=g, device=device, dtype=torch.uint8)
        v = torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_()
        return (x, v), {}
    return make


def cases(device, quick=False):
    out = []
    for shape in SHAPES[:1] if quick else SHAPES:
        # 1 byte read, 4 bytes written per element
        out.append(Case("uniform_dequantize", str(list(shape)), "fwd", _make_pixels(shape),
                        reference_uniform_dequantize, fused_uniform_dequantize,
                        lambda a, k: a[0].numel() * 5, gpu_dtypes=(torch.float32,)))
        # forward reads x (1 B) and v, writes y; backward reads x, v, grad_y and writes grad_v
        out.append(Case("dequantize_sigmoid_tail", str(list(shape)), "fwd+bwd", _make_tail(shape),
                        ref.dequantize_sigmoid_tail, F.dequantize_sigmoid_tail,
                        lambda a, k: a[0].numel() * (1 + 2 * a[1].element_size() + 1 + 3 * a[1].element_size())))
    return out
