"""ActNorm benchmark cases (SPEC §12 affine_coupling shapes) and a whole Glow step (`glow_step`):
ActNorm + InvConv1x1 (LU) + affine coupling (sigmoid scale, shift_scale) with a small conv conditioner.
The Glow step's reference is the same step built from the plain references (and F.conv2d); the fused
side is dgmfast.nn.glow_step, whose parameters are the very tensors the reference receives."""
import torch
import torch.nn.functional as TF

from benchmarks.harness import Case
from dgmfast import functional as F
from dgmfast.nn.models import glow_step
from dgmfast.reference import actnorm as ref_actnorm
from dgmfast.reference import coupling as ref_coupling
from dgmfast.reference import invconv as ref_invconv

SHAPES = [(64, 6, 32, 32), (256, 24, 16, 16), (16, 48, 64, 64)]
HIDDEN = 16  # conditioner width of the Glow step


def _make_actnorm(shape, reverse):
    def make(device, dtype):
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_()
        loc, log_scale = (0.1 * torch.randn(shape[1], generator=g, device=device, dtype=dtype) for _ in range(2))
        return (x, loc.requires_grad_(), log_scale.requires_grad_()), dict(reverse=reverse)
    return make


def _actnorm_bytes(mode):
    # fwd reads x and writes y; the backward reads x and grad_y and writes grad_x
    per_elem = {"fwd": 2, "fwd+bwd": 2 + 3, "reverse": 2}[mode]
    return lambda args, kwargs: per_elem * args[0].numel() * args[0].element_size()


def glow_step_reference(x, loc, log_scale, perm, sign_s, lower, upper, log_abs_s, w1, b1, w2, b2, w3, b3):
    """One Glow step from the plain references: actnorm -> 1x1 conv (LU weight) -> affine coupling whose
    conditioner is conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3 on the first channel half."""
    y, logdet = ref_actnorm.actnorm(x, loc, log_scale)
    y = ref_invconv.channel_matmul(y, ref_invconv.lu_weight(perm, lower, upper, sign_s, log_abs_s))
    logdet = logdet + ref_invconv.invconv_logdet(y, log_abs_s.sum())
    x_a, x_b = y.chunk(2, dim=1)
    h = TF.conv2d(TF.relu(TF.conv2d(TF.relu(TF.conv2d(x_a, w1, b1, padding=1)), w2, b2)), w3, b3, padding=1)
    log_scale_b, shift_b = h.chunk(2, dim=1)
    y_b, ld = ref_coupling.affine_coupling(x_b, log_scale_b, shift_b, scale_map="sigmoid", order="shift_scale")
    return torch.cat([x_a, y_b], 1), logdet + ld


def _glow_case(shape, mode):
    state = {}

    def make(device, dtype):
        torch.manual_seed(0)
        step = glow_step(shape[1], HIDDEN, generator=torch.Generator().manual_seed(0)).to(device, dtype)
        actnorm, invconv, coupling = step
        with torch.no_grad():  # an initialized ActNorm and a conditioner away from its zero init
            actnorm.loc.normal_(0, 0.1)
            actnorm.log_scale.normal_(0, 0.1)
            actnorm.initialized.fill_(True)
            actnorm._sync_initialized()
            coupling.conditioner[-1].weight.normal_(0, 0.01)
        state["step"] = step
        cond = coupling.conditioner
        params = (actnorm.loc, actnorm.log_scale, invconv.perm, invconv.sign_s, invconv.lower, invconv.upper,
                  invconv.log_abs_s, cond[0].weight, cond[0].bias, cond[2].weight, cond[2].bias, cond[4].weight,
                  cond[4].bias)
        x = torch.randn(shape, generator=torch.Generator(device=device).manual_seed(1), device=device, dtype=dtype)
        return (x.requires_grad_(), *params), {}

    def fused(x, *params):
        return state["step"](x)

    def flops(args, kwargs):
        b, c, h, w = shape
        c_a, c_b = c // 2, c - c // 2
        macs = b * h * w * (c * c + 9 * c_a * HIDDEN + HIDDEN * HIDDEN + 9 * HIDDEN * 2 * c_b)
        return 2 * macs * (3 if mode == "fwd+bwd" else 1)

    bytes_per_elem = 2 if mode == "fwd" else 5  # x in, y out (+ x, grad_y in, grad_x out)
    return Case("glow_step", str(list(shape)), mode, make, glow_step_reference, fused,
                lambda args, kwargs: bytes_per_elem * args[0].numel() * args[0].element_size(), flops=flops)


def cases(device, quick=False):
    out = []
    for shape in SHAPES[:1] if quick else SHAPES:
        for mode in ("fwd", "fwd+bwd", "reverse"):
            out.append(Case("actnorm", str(list(shape)), mode, _make_actnorm(shape, mode == "reverse"),
                            ref_actnorm.actnorm, F.actnorm, _actnorm_bytes(mode)))
    for shape in SHAPES[:1] if quick else SHAPES:
        for mode in ("fwd", "fwd+bwd"):
            out.append(_glow_case(shape, mode))
    return out
