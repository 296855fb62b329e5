"""Affine coupling benchmark cases (SPEC §12): Glow's configuration (sigmoid scale, shift_scale order)."""
import torch

from benchmarks.harness import Case
from dgmfast import functional as F
from dgmfast.reference import coupling as ref

SHAPES = [(64, 6, 32, 32), (256, 24, 16, 16), (16, 48, 64, 64)]
KW = dict(scale_map="sigmoid", order="shift_scale")


def _make(shape):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        x, r, t = (torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_() for _ in range(3))
        return (x, r, t), dict(KW)
    return make


def _bytes(mode):
    # fwd reads x, r, t and writes y; the backward reads x, r, t, grad_y and writes grad_x, grad_r
    # (grad_shift of shift_scale is grad_x itself)
    per_elem = {"fwd": 4, "fwd+bwd": 4 + 6, "reverse": 4}[mode]
    return lambda args, kwargs: per_elem * args[0].numel() * args[0].element_size()


def cases(device, quick=False):
    out = []
    for shape in SHAPES[:1] if quick else SHAPES:
        for mode in ("fwd", "fwd+bwd"):
            out.append(Case("affine_coupling", str(list(shape)), mode, _make(shape), ref.affine_coupling,
                            F.affine_coupling, _bytes(mode)))
    return out

