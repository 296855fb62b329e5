"""Flow++ mixture-of-logistics coupling (SPEC §2): every backend against the float64 reference."""
import pytest
import torch

import dgmfast
from dgmfast import functional as F
from dgmfast.ops import mixlogistic as ops
from dgmfast.reference import mixlogistic as ref
from tests.utils import (HALF_DTYPES, assert_close, assert_compiled_matches_eager, backend, backend_cases,
                         brute_force_logdet, max_err)

ORDERS = ["scale_shift", "shift_scale"]
# (shape, K): odd sizes, K = 1, a row longer than one CPU chunk (16384) and one interpreter block
SHAPES = [((3, 5, 7), 4), ((2, 3, 4, 5), 3), ((1, 1), 1), ((1, 2, 130, 70), 2)]
NAMES = ["out", "logdet", "grad_in", "grad_logits", "grad_means", "grad_log_scales", "grad_log_scale", "grad_shift"]


def make_inputs(shape, k, dtype=torch.float32, device="cpu", seed=0, x_scale=1.0, narrow=True):
    """(x, logits, means, log_scales, log_scale, shift); with `narrow`, log_scales partly below the -7 clamp."""
    g = torch.Generator().manual_seed(seed)
    x = x_scale * torch.randn(shape, generator=g, dtype=torch.float64)
    logits = 2 * torch.randn(*shape, k, generator=g, dtype=torch.float64)
    means = 2 * torch.randn(*shape, k, generator=g, dtype=torch.float64)
    log_scales = (torch.randn(*shape, k, generator=g, dtype=torch.float64) - 0.5) * (1.0 if narrow else 0.5)
    if narrow:
        log_scales[..., 0] = torch.where(torch.rand(shape, generator=g) < 0.2, -8.0, log_scales[..., 0])
    r, t = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    return [a.to(device, dtype) for a in (x, logits, means, log_scales, r, t)]


def run(args, be, **kw):
    with backend(be):
        return F.mixlogistic_coupling(*args, **kw)


def outputs_and_grads(args, be, seed=1, **kw):
    """(out, logdet, grads of the six inputs) of a random linear loss; float64 copies when be == 'ref64'."""
    args = [a.detach().clone().requires_grad_() for a in args]
    out, ld = ref.mixlogistic_coupling(*args, **kw) if be == "ref64" else run(args, be, **kw)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device)
    v = torch.randn(ld.shape, generator=g, dtype=torch.float64).to(out.device)
    ((out.double() * w).sum() + (ld.double() * v).sum()).backward()
    return [out, ld] + [a.grad for a in args]


def logit_cdf64(x, args):
    """v(x) = logit(F(x)) in float64 with the reference's stable forms."""
    return ref.mixture_logit_cdf(x.double(), *(a.double() for a in args[1:4]))


def inverse_error(x_r, x_true, v_true, args):
    """SPEC §2: min(|x_r - x| / max(1, |x|), |v(x_r) - v| / max(1, |v|)) per element."""
    ex = (x_r.double() - x_true.double()).abs() / x_true.double().abs().clamp(min=1)
    ev = (logit_cdf64(x_r, args) - v_true).abs() / v_true.abs().clamp(min=1)
    return torch.minimum(ex, ev)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_backward_match_reference(dev, be, order, reverse):
    kw = dict(order=order, reverse=reverse, scale_map="tanh", clamp=1.5)
    for shape, k in SHAPES[:3] if reverse else SHAPES:
        # Reverse gradients carry second derivatives of log F: next to a component of scale s they move by
        # ~eps32/s^2 relative (1e-1 at the clamp e^-7) in float32 math, so the reverse runs on scales >= e^-3
        # here; the clamp is checked in float64 (gradcheck), its finiteness in the extreme sweep.
        args = make_inputs(shape, k, device=dev, x_scale=3.0 if reverse else 1.0, narrow=not reverse)
        got = outputs_and_grads(args, be, **kw)
        params64 = [a.double() for a in args[1:]]
        if reverse:
            # x solves y to SPEC accuracy; everything else equals the float64 reference at the returned x
            # (at y' = forward64(x), whose root is x), apart from x's own rounding.
            v = ref.mixlogistic_coupling(args[0].double(), *params64, **{**kw, "reverse": True})[0]
            assert (inverse_error(got[0], v, logit_cdf64(v, args), args) <= 1e-4).all()
            y_at = ref.mixlogistic_coupling(got[0].detach().double(), *params64, **{**kw, "reverse": False})[0]
            want = outputs_and_grads([y_at, *params64], "ref64", **kw)
        else:
            want = outputs_and_grads([args[0].double(), *params64], "ref64", **kw)
        assert got[1].dtype == torch.float32
        for a, b, name in zip(got, want, NAMES):
            tol = (1e-4 if reverse else 2e-5) * (shape[-1] ** 0.5 * 4 if name == "logdet" else 1)
            assert_close(a, b, rtol=tol, atol=tol, name=f"{name} {shape} K={k}")


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("scale_map", ["exp", "sigmoid"])
@pytest.mark.parametrize("reverse", [False, True])
def test_scale_maps(dev, be, scale_map, reverse):
    args = make_inputs((2, 3, 5), 3, device=dev, seed=3, narrow=not reverse)  # see the first test
    kw = dict(order="shift_scale", reverse=reverse, scale_map=scale_map)
    got = outputs_and_grads(args, be, **kw)
    want = outputs_and_grads([a.double() for a in args], "ref64", **kw)
    for a, b, name in zip(got, want, NAMES):
        assert_close(a, b, rtol=1e-4, atol=1e-4, name=name)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_dtypes(dev, be, dtype, reverse):
    # reverse: the backward runs at the returned x rounded to the dtype, so no components at the clamp
    args = make_inputs((2, 3, 4, 5), 3, dtype=dtype, device=dev, seed=4, narrow=not reverse)
    got = outputs_and_grads(args, be, reverse=reverse)
    low = outputs_and_grads(args, "torch", reverse=reverse)
    want = outputs_and_grads([a.double() for a in args], "ref64", reverse=reverse)
    assert got[0].dtype == dtype
    assert got[1].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for a, l, b, name in zip(got, low, want, NAMES):
        if dtype == torch.float64:
            assert_close(a, b, rtol=1e-9, atol=1e-9, name=name)
        else:
            a, l = (a.to(dtype), l.to(dtype)) if name == "logdet" else (a, l)
            atol = 0.5 if name == "logdet" else 5e-2
            if be == "triton" and dtype == torch.bfloat16 and dev == "cpu":  # the interpreter truncates: 1 ulp
                atol = max(atol, b.abs().max().item() * 2.0**-7)
            assert_close(a, b, low_ref=l, atol=atol, name=name)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("order", ORDERS)
def test_logdet_equals_bruteforce_jacobian(dev, be, order):
    x, pi, mu, ls, r, t = make_inputs((2, 3, 2), 3, dtype=torch.float64, device=dev, seed=5)
    with backend(be):
        for reverse in (False, True):
            inp = x if not reverse else run([x, pi, mu, ls, r, t], be, order=order)[0]
            _, ld = F.mixlogistic_coupling(inp, pi, mu, ls, r, t, order=order, reverse=reverse)
            per = []
            for b in range(2):
                par = [a[b:b + 1] for a in (pi, mu, ls, r, t)]
                fn = lambda v, par=par: F.mixlogistic_coupling(v, *par, order=order, reverse=reverse)[0]
                per.append(brute_force_logdet(fn, inp[b:b + 1]))
            torch.testing.assert_close(ld, torch.cat(per).to(ld.device), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("order", ORDERS)
def test_inverse_roundtrip_and_determinism(dev, be, order):
    args = make_inputs((3, 4, 5, 6), 5, device=dev, seed=6, x_scale=2.0)
    y, ld = run(args, be, order=order)
    x_back, ld_back = run([y, *args[1:]], be, order=order, reverse=True)
    x_again, _ = run([y, *args[1:]], be, order=order, reverse=True)
    assert torch.equal(x_back, x_again)  # fixed iteration count: deterministic
    v = logit_cdf64(args[0], args)
    assert (inverse_error(x_back, args[0], v, args) <= 1e-4).all()
    torch.testing.assert_close(ld_back, -ld, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_reference_and_kernels(order, reverse):
    """Finite differences against autograd; for the reverse this checks the implicit gradients."""
    args = [a.requires_grad_() for a in make_inputs((2, 3), 2, dtype=torch.float64, seed=7, x_scale=2.0)]
    kw = dict(order=order, reverse=reverse)
    assert torch.autograd.gradcheck(lambda *a: ref.mixlogistic_coupling(*a, **kw), args)
    for be in ("cpu", "triton"):
        with backend(be):
            assert torch.autograd.gradcheck(lambda *a: F.mixlogistic_coupling(*a, **kw), args, fast_mode=be == "triton")


@pytest.mark.parametrize("dev,be", [c for c in backend_cases() if c.values[1] != "torch"])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck(dev, be, reverse):
    x, pi, mu, ls, r, t = (a.requires_grad_() for a in make_inputs((2, 3, 5), 3, device=dev, seed=8))
    torch.library.opcheck(torch.ops.dgmfast.mixlogistic_coupling_fwd,
                          (x, pi, mu, ls, r, t, 1, 1.0, -7.0, reverse, reverse, be))
    detached = [a.detach() for a in (x, pi, mu, ls, r, t)]
    torch.library.opcheck(torch.ops.dgmfast.mixlogistic_coupling_bwd,
                          (*detached, torch.randn_like(x), torch.randn(2, device=dev), 1, 1.0, -7.0, reverse, reverse, be))


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_torch_compile_fullgraph(be):
    args = [a.requires_grad_() for a in make_inputs((2, 3, 4, 4), 4, seed=9)]

    def step(*a):
        y, ld = F.mixlogistic_coupling(*a, order="shift_scale")
        x_back, ld_back = F.mixlogistic_coupling(y, *a[1:], order="shift_scale", reverse=True)
        return (y * y).sum() - ld.sum() + (x_back * x_back).sum() + ld_back.sum()

    assert_compiled_matches_eager(step, args, be)


def conditioner_views(h, k):
    """(logits, means, log_scales, log_scale, shift) as strided views of h: [B, C*(3K+2), H, W]."""
    hv = h.unflatten(1, (h.shape[1] // (3 * k + 2), 3 * k + 2)).movedim(2, -1)
    return hv[..., 2:k + 2], hv[..., k + 2:2 * k + 2], hv[..., 2 * k + 2:], hv[..., 0], hv[..., 1]


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("reverse", [False, True])
def test_permuted_views_equal_contiguous_and_zero_stride_grads(dev, be, reverse):
    k, B, C, H, W = 3, 2, 3, 5, 3  # H*W = 15: blocks of lanes straddle rows of the split
    g = torch.Generator().manual_seed(10)
    h = torch.randn(B, C * (3 * k + 2), H, W, generator=g).to(dev)
    h[:, 4::3 * k + 2] -= 0.5  # a wider spread of log-scales
    x = (2 * torch.randn(B, C, H, W, generator=g)).to(dev)
    views = conditioner_views(h, k)
    assert all(ops.elem_layout(v, 3, H * W, True) is not None for v in views[:3])  # read in place
    contig = [v.contiguous() for v in views]

    def go(params):
        xs = [x.clone().requires_grad_()] + [p.detach().clone().requires_grad_() for p in params]
        out, ld = run(xs, be, reverse=reverse)
        (out.sum() + ld.sum()).backward()  # zero-stride incoming gradients
        return [out, ld] + [a.grad for a in xs]

    got, want = go(views), go(contig)
    for a, b, name in zip(got, want, NAMES):
        assert torch.isfinite(a).all(), name
        if be == "torch" or name == "logdet":  # row sums: another grouping of the elements
            torch.testing.assert_close(a, b, msg=name)
        else:  # the same math per element whatever the layout
            assert torch.equal(a, b), name


def test_cpu_kernel_reads_strided_parameters_without_copies():
    k = 4
    h = torch.randn(2, 2 * (3 * k + 2), 6, 5)
    params = conditioner_views(h, k)
    x = torch.randn(2, 2, 6, 5)
    for reverse in (False, True):
        args = [x.requires_grad_()] + [p.detach().requires_grad_() for p in params]
        with backend("cpu"), torch.profiler.profile() as prof:
            out, ld = F.mixlogistic_coupling(*args, reverse=reverse)
            (out.sum() + (ld * torch.tensor([1.0, 2.0])).sum()).backward()  # expanded grad_out, read in place
        events = prof.events()
        assert "dgmfast_C::mixlogistic_coupling_bwd" in {e.name for e in events}

        def inside_op(e):  # (autograd's AccumulateGrad copies gradients of non-dense leaves: not ours)
            while e is not None:
                if e.name.startswith("dgmfast"):
                    return True
                e = e.cpu_parent
            return False

        copies = [e.name for e in events if e.name in ("aten::contiguous", "aten::clone", "aten::copy_")
                  and inside_op(e)]
        assert not copies, copies
    # the kernel writes the parameter gradients in the conditioner's dim order
    grads = torch.ops.dgmfast.mixlogistic_coupling_bwd(x.detach(), *params, torch.ones_like(x), torch.ones(2), 1, 1.0,
                                                       -7.0, False, False, "cpu")
    assert grads[2].stride() == torch.empty_like(params[1]).stride() != grads[2].contiguous().stride()


@pytest.mark.parametrize("dev,be", backend_cases())
def test_other_layouts_are_copied_correctly(dev, be):
    base = make_inputs((2, 3, 4, 5), 3, device=dev, seed=11)
    # parameters [B, C, H, W, K] stored as [K, W, B, H, C]: three runs, not readable in place
    weird = [p.permute(4, 3, 0, 2, 1).contiguous().permute(2, 4, 3, 1, 0) for p in base[1:4]]
    assert ops.elem_layout(weird[0], 3, 20, True) is None
    got = run([base[0], *weird, *base[4:]], be)
    want = run(base, be)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 0), (0,)])
def test_empty(dev, be, shape):
    args = [a.requires_grad_() for a in make_inputs(shape, 2, device=dev)]
    for reverse in (False, True):
        out, ld = run(args, be, reverse=reverse)
        assert out.shape == args[0].shape and ld.shape == (shape[0],) and (ld == 0).all()
        (out.sum() + ld.sum()).backward()
        assert args[1].grad.shape == args[1].shape


def extreme_sweep(k, peaked, device, dtype=torch.float32, n=256, seed=12):
    """Points x = mu_j + z s_j with |z| up to 30 for a random component j, log-scales at and below the -7
    clamp, means spread over +-20, logits peaked (one component 20 nats above the rest) or flat."""
    g = torch.Generator().manual_seed(seed + k)
    shape = (2, n)
    means = 20 * (2 * torch.rand(*shape, k, generator=g, dtype=torch.float64) - 1)
    log_scales = torch.randint(0, 4, (*shape, k), generator=g).to(torch.float64).mul(3.0).sub(9.0)  # -9, -6, -3, 0
    log_scales[..., 0] = -7.0
    logits = torch.zeros(*shape, k, dtype=torch.float64)
    if peaked:
        logits[..., 0] = 20.0
    j = torch.randint(0, k, shape, generator=g)
    z = 60 * torch.rand(shape, generator=g, dtype=torch.float64) - 30
    z[:, :7] = torch.tensor([-30.0, -10.0, -1.0, 0.0, 1.0, 10.0, 30.0])
    pick = lambda p: p.gather(-1, j[..., None]).squeeze(-1)
    x = pick(means) + z * torch.exp(pick(log_scales).clamp(min=-7.0))
    r = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    return [a.to(device, dtype) for a in (x, logits, means, log_scales, r, t)]


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("k", [1, 4, 32])
@pytest.mark.parametrize("peaked", [False, True])
def test_extreme_sweep_roundtrip_and_finite(dev, be, k, peaked):
    args = extreme_sweep(k, peaked, dev)
    xs = [a.clone().requires_grad_() for a in args]
    with backend(be):
        y, ld = F.mixlogistic_coupling(*xs)
        (y.sum() + ld.sum()).backward()
        for v in (y, ld, *[a.grad for a in xs]):
            assert torch.isfinite(v).all()
        ys = [y.detach().clone().requires_grad_()] + [a.clone().requires_grad_() for a in args[1:]]
        x_r, ld_r = F.mixlogistic_coupling(*ys, reverse=True)
        (x_r.sum() + ld_r.sum()).backward()
        for v in (x_r, ld_r, *[a.grad for a in ys]):
            assert torch.isfinite(v).all()
    v_true = logit_cdf64(args[0], args)
    err = inverse_error(x_r, args[0], v_true, args)
    assert (err[v_true.abs() <= 15] <= 1e-4).all(), err.max()
    # beyond |v| = 15 (no SPEC bound) the solver stays accurate: the log-domain comparison takes over
    assert (err <= 1e-3).all(), err.max()


@pytest.mark.parametrize("dev,be", backend_cases())
def test_reverse_far_tails_use_the_log_domain(dev, be):
    """Targets v = +-80, +-200: the linear-domain sums of the bisection underflow there."""
    args = extreme_sweep(4, False, dev, n=8)
    v = torch.tensor([-200.0, -80.0, -40.0, 0.0, 40.0, 80.0, 200.0, 5.0], device=dev).expand(2, 8)
    zeros = torch.zeros_like(args[0])
    x_r, ld = run([v.contiguous(), *args[1:4], zeros, zeros], be, scale_map="exp", reverse=True)  # s = 0: y = v
    assert torch.isfinite(x_r).all() and torch.isfinite(ld).all()
    x_true = ref.mixlogistic_inverse_bisection(v.double(), *(a.double() for a in args[1:4]), num_iters=200)
    assert (inverse_error(x_r, x_true, v.double(), args) <= 1e-4).all()


def mixed_tail_inputs(device, n=64, k=4, seed=13):
    """Rows whose odd elements lie so far in a tail that a float32 linear-domain sum of the kernels underflows,
    next to even elements near their components: e = 1 (mod 4) right of every component (S_sf), e = 3
    (mod 8) between narrow components (S_pdf), e = 7 (mod 8) left of every component (S_cdf). Chosen
    well-conditioned in float32 (no cancellation between components in d log f/dx)."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, n)
    means = torch.randn(*shape, k, generator=g, dtype=torch.float64)
    log_scales = 0.2 * torch.rand(*shape, k, generator=g, dtype=torch.float64) - 0.1
    logits = 2 * torch.randn(*shape, k, generator=g, dtype=torch.float64)
    x = 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    reach = 80 * log_scales.amax(-1).exp()  # 80 scales of the widest component: 80 <= |z_k| < 110
    x[:, 1::4] = means[:, 1::4].amax(-1) + reach[:, 1::4]
    x[:, 7::8] = means[:, 7::8].amin(-1) - reach[:, 7::8]
    means[:, 3::8] = torch.tensor([-1.0, 10.0, 12.0, 14.0][:k], dtype=torch.float64)
    log_scales[:, 3::8] = -3.0
    x[:, 3::8] = 3.0  # z = 80, -140, -180, -220
    r, t = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    return [a.to(device, torch.float32) for a in (x, logits, means, log_scales, r, t)]


def smallest_linear_sum32(x, logits, means, log_scales, min_log_scale=-7.0):
    """min(S_cdf, S_sf, S_pdf) of the kernels' linear-domain fast path, in float32."""
    x, logits, means, log_scales = (a.float().cpu() for a in (x, logits, means, log_scales))
    E = torch.exp(logits - logits.amax(-1, keepdim=True))
    q = torch.exp(-log_scales.clamp(min=min_log_scale))
    z = (x[..., None] - means) * q
    s_cdf, s_sf = (E * torch.sigmoid(z)).sum(-1), (E * torch.sigmoid(-z)).sum(-1)
    s_pdf = (E * q * torch.sigmoid(z) * torch.sigmoid(-z)).sum(-1)
    return torch.minimum(torch.minimum(s_cdf, s_sf), s_pdf)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_underflowing_lanes_next_to_fast_lanes(dev, be):
    """Vectors of lanes where the linear-domain sums underflow (exact log-domain path) and lanes where they
    do not (fast path): both equal the float64 reference, forward, backward and inverse."""
    args = mixed_tail_inputs(dev)
    small = smallest_linear_sum32(*args[:4])
    assert (small[:, 1::2] < 1e-30).all() and (small[:, 0::2] > 1e-30).all()
    got = outputs_and_grads(args, be)
    low = outputs_and_grads(args, "torch")
    want = outputs_and_grads([a.double() for a in args], "ref64")
    for a, l, b, name in zip(got, low, want, NAMES):
        assert torch.isfinite(a).all(), name
        if name == "logdet":  # row sums over both kinds of lanes
            assert max_err(a, b) <= 2 * max_err(l, b) + 1e-3, name
            continue
        assert_close(a[:, 0::2], b[:, 0::2], name=f"{name} (fast lanes)")
        # far in the tails the log-det's gradients cancel terms of size |z| ~ 100: float32 math itself
        # (the float32 reference, `low`) is off by ~1e-3 relative there, so the bound is relative to it
        assert max_err(a[:, 1::2], b[:, 1::2]) <= 2 * max_err(l[:, 1::2], b[:, 1::2]) + 2e-5, name
    x_r, ld_r = run([got[0].detach(), *args[1:]], be, reverse=True)
    assert (inverse_error(x_r, args[0], logit_cdf64(args[0], args), args) <= 1e-4).all()
    # in a gap between components only v(x_r) is close (SPEC): the log-det is that of the returned x_r
    ld_at = ref.mixlogistic_coupling(x_r.double(), *(a.double() for a in args[1:]))[1]
    torch.testing.assert_close(ld_r.double(), -ld_at, rtol=1e-5, atol=1e-3)


def test_bad_inputs_name_the_argument():
    x = torch.randn(2, 3)
    p = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"means must have shape \(2, 3, 4\) \(as x plus K=4 of logits\)"):
        F.mixlogistic_coupling(x, p, torch.randn(2, 3, 5), p, x, x)
    with pytest.raises(ValueError, match="log_scales must have shape"):
        F.mixlogistic_coupling(x, p, p, torch.randn(2, 3, 3), x, x)
    with pytest.raises(ValueError, match="logits must have shape"):
        F.mixlogistic_coupling(x, torch.randn(2, 4, 4), p, p, x, x)
    with pytest.raises(ValueError, match="log_scale must have shape"):
        F.mixlogistic_coupling(x, p, p, p, torch.randn(2, 4), x)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        F.mixlogistic_coupling(torch.ones(2, 3, dtype=torch.int64), p, p, p, x, x)
    with pytest.raises(TypeError, match="means must have dtype"):
        F.mixlogistic_coupling(x, p, p.double(), p, x, x)
    with pytest.raises(ValueError, match="shift must be on device"):
        F.mixlogistic_coupling(x, p, p, p, x, x.to("meta"))
    with pytest.raises(ValueError, match="K >= 1"):
        F.mixlogistic_coupling(x, torch.randn(2, 3, 0), p, p, x, x)
    with pytest.raises(ValueError, match="scale_map must be one of"):
        F.mixlogistic_coupling(x, p, p, p, x, x, scale_map="softplus")
    with pytest.raises(ValueError, match="order must be one of"):
        F.mixlogistic_coupling(x, p, p, p, x, x, order="both")
    with pytest.raises(ValueError, match="min_log_scale must be a finite number"):
        F.mixlogistic_coupling(x, p, p, p, x, x, min_log_scale=float("-inf"))
    with pytest.raises(ValueError, match="num_components must be a positive int"):
        dgmfast.nn.MixLogisticCoupling(torch.nn.Identity(), 0)
    layer = dgmfast.nn.MixLogisticCoupling(torch.nn.Linear(2, 5), 2)
    with pytest.raises(ValueError, match=r"conditioner output must have shape \(3, 16\)"):
        layer(torch.randn(3, 4))


# ---- module --------------------------------------------------------------------------------------

def _conv_conditioner(c_in, c_out, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(c_in, 8, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv2d(8, c_out, 3, padding=1))


@pytest.mark.parametrize("mask,parity", [("channel", 0), ("channel", 1), ("checkerboard", 0), ("checkerboard", 1)])
@pytest.mark.parametrize("be", ["torch", "cpu", "triton"])
def test_module_inverse_and_logdet(mask, parity, be):
    C, K = 3, 2
    c_b = C - C // 2 if parity == 0 else C // 2
    c_in = C // 2 if parity == 0 else C - C // 2
    cond = _conv_conditioner(C, C * (3 * K + 2)) if mask == "checkerboard" else _conv_conditioner(c_in, c_b * (3 * K + 2))
    layer = dgmfast.nn.MixLogisticCoupling(cond, K, mask=mask, parity=parity, order="shift_scale").double()
    x = torch.randn(2, C, 3, 4, dtype=torch.float64)
    with backend(be):
        y, ld = layer(x)
        x_back, ld_back = layer(y, reverse=True)
        expected = torch.cat([brute_force_logdet(lambda v: layer(v)[0], x[b:b + 1]) for b in range(2)])
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ld_back, -ld)
    torch.testing.assert_close(ld, expected)
    with backend("torch"):
        y_ref, ld_ref = layer(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ld, ld_ref)


def test_module_vector_data_and_training_step_matches_reference():
    torch.manual_seed(0)
    K = 4
    cond = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3 * (3 * K + 2)))
    layer = dgmfast.nn.MixLogisticCoupling(cond, K)
    x = torch.randn(5, 6)
    grads = {}
    for be in ("torch", "cpu"):
        layer.zero_grad()
        with backend(be):
            y, ld = layer(x)
            x_back, _ = layer(y, reverse=True)
        (0.5 * y.square().sum() - ld.sum() + x_back.square().sum()).backward()
        grads[be] = [p.grad.clone() for p in layer.parameters()]
    for a, b in zip(grads["cpu"], grads["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_dispatch_and_info():
    assert dgmfast.select_backend("mixlogistic_coupling", torch.device("cpu")) == "cpu"
    from dgmfast.info import report
    assert "mixlogistic_coupling" in report()
