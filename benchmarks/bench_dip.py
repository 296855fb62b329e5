"""DIP-VAE penalty benchmark cases (SPEC §12): variant "i" (mu only), FLOP-based throughput."""
import torch

from benchmarks.harness import Case
from dgmfast import functional as F
from dgmfast.reference import dip as ref

SHAPES = [(256, 10), (4096, 64), (65536, 32)]
KW = dict(lambda_od=10.0, lambda_d=100.0)


def _make(shape):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        mu = torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_()
        return (mu,), dict(KW)
    return make


def _bytes(mode):
    # fwd reads mu once; the backward reads mu again and writes grad_mu
    per_elem = {"fwd": 1, "fwd+bwd": 3}[mode]
    return lambda args, kwargs: per_elem * args[0].numel() * args[0].element_size()


def _flops(mode):
    # the [D, D] Gram of N rows (2 N D^2), and for the backward the [N, D] x [D, D] product (2 N D^2)
    passes = {"fwd": 1, "fwd+bwd": 2}[mode]
    return lambda args, kwargs: passes * 2 * args[0].shape[0] * args[0].shape[1] ** 2


def cases(device, quick=False):
    out = []
    for shape in SHAPES[:1] if quick else SHAPES:
        for mode in ("fwd", "fwd+bwd"):
            out.append(Case("dip_vae_penalty", str(list(shape)), mode, _make(shape), ref.dip_vae_penalty,
                            F.dip_vae_penalty, _bytes(mode), _flops(mode)))
    return out
