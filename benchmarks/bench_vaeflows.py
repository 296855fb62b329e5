"""Planar-flow benchmark cases (SPEC §12): B=256, L=16, D=64 with shared parameters, FLOP-based throughput."""
import torch

from benchmarks.harness import Case
from dgmfast import functional as F
from dgmfast.reference import vaeflows as ref

B, L, D = 256, 16, 64


def _make(device, dtype):
    g = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(B, D, generator=g, device=device, dtype=dtype).requires_grad_()
    u = (torch.randn(L, D, generator=g, device=device, dtype=dtype) * 0.1).requires_grad_()
    w = (torch.randn(L, D, generator=g, device=device, dtype=dtype) * 0.1).requires_grad_()
    b = torch.zeros(L, device=device, dtype=dtype).requires_grad_()
    return (z, u, w, b), {}


def _bytes(mode):
    # fwd reads z and writes z_L; the backward reads z and grad_z_L and writes grad_z (parameters are tiny)
    per_elem = {"fwd": 2, "fwd+bwd": 5}[mode]
    return lambda args, kwargs: per_elem * args[0].numel() * args[0].element_size()


def _flops(mode):
    # per row and step: w.z (2D) and the update (2D) forward; the backward recomputes the update, undoes it
    # and forms g.u_hat, g_z += g_a w, g_uhat and g_a z sums (about 12D)
    per = {"fwd": 4, "fwd+bwd": 4 + 12}[mode]
    return lambda args, kwargs: per * B * L * D


def cases(device, quick=False):
    return [Case("planar_flows", f"B={B}, L={L}, D={D}", mode, _make, ref.planar_flows, F.planar_flows,
                 _bytes(mode), _flops(mode)) for mode in ("fwd", "fwd+bwd")]
