"""Gaussian posterior, mixture log-density and ELBO surgery (SPEC §7, §9, §10): every backend against
the float64 reference, closed forms, randomness, distributed ELBO surgery."""
import math
import socket

import pytest
import torch

import dgmfast
from dgmfast import functional as F
from dgmfast.ops.common import draw_seed
from dgmfast.reference import gaussian as ref
from tests.utils import (HALF_DTYPES, assert_close, assert_compiled_matches_eager, backend, backend_cases,
                         compile_fullgraph)

NOISE_BACKENDS = ["torch", "cpu", "triton"]


def randn(*shape, seed=0, scale=1.0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(device, dtype)


def posterior(B, D, seed=0, **kw):
    return randn(B, D, seed=seed, **kw), randn(B, D, seed=seed + 1, scale=0.7, **kw), randn(B, D, seed=seed + 2, **kw)


def mixture_inputs(N, K, D, seed=0, dtype=torch.float32, device="cpu"):
    z = randn(N, D, seed=seed, scale=1.5, dtype=dtype, device=device)
    m = randn(K, D, seed=seed + 1, dtype=dtype, device=device)
    lv = randn(K, D, seed=seed + 2, scale=0.5, dtype=dtype, device=device)
    w = torch.log_softmax(randn(K, seed=seed + 3, dtype=torch.float64), 0).to(device, dtype)
    return z, m, lv, w


def run(fn, inputs, dtype, be, weights):
    """fn(*inputs) on backend be with inputs cast to dtype: outputs and input grads of sum(out * weight)."""
    xs = [a.detach().to(dtype).requires_grad_() for a in inputs]
    with backend(be):
        out = fn(*xs)
    outs = out if isinstance(out, tuple) else (out,)
    sum((o.double() * w).sum() for o, w in zip(outs, weights)).backward()
    return outs, [a.grad for a in xs]


# ---- reparameterize -------------------------------------------------------------------------------

@pytest.mark.parametrize("dev,be", backend_cases())
# (70, 10): short rows in three tiles of whole rows, the last partial; (2, 9000), (17, 300): long rows in segments
@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (70, 10), (2, 9000), (17, 300)])
def test_reparameterize_given_eps_matches_reference(dev, be, shape):
    mu, lv, eps = posterior(*shape, device=dev)
    ws = [randn(*shape, seed=7, dtype=torch.float64, device=dev), randn(shape[0], seed=8, dtype=torch.float64, device=dev),
          randn(shape[0], seed=9, dtype=torch.float64, device=dev)]
    fn = lambda m, l, e: F.reparameterize(m, l, eps=e)  # noqa: E731
    outs, grads = run(fn, (mu, lv, eps), torch.float32, be, ws)
    outs64, grads64 = run(fn, (mu, lv, eps), torch.float64, "torch", ws)
    assert outs[1].dtype == outs[2].dtype == torch.float32 and outs[0].dtype == torch.float32
    red = 4 * shape[1] ** 0.5
    for o, r, nm in zip(outs, outs64, ["z", "kl", "log_q"]):
        assert_close(o, r, atol=2e-5 * (red if nm != "z" else 1), name=nm)
    for g, r, nm in zip(grads, grads64, ["mu", "logvar", "eps"]):
        assert_close(g, r, name=f"grad_{nm}")


@pytest.mark.parametrize("be", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reparameterize_given_eps_equals_reference_to_the_ulp(be, dtype):
    # exact up to rounding: the kernels contract mu + std*eps into one FMA, so z may differ from the
    # reference's separate multiply and add by a unit in the last place of the terms (two allowed);
    # kl and log_q are sums in another order
    mu, lv, eps = posterior(6, 37, dtype=dtype)
    with backend(be):
        z, kl, log_q = F.reparameterize(mu, lv, eps=eps)
    z_ref, kl_ref, log_q_ref = ref.reparameterize(mu, lv, eps=eps)
    ulp = torch.finfo(dtype).eps * (mu.abs() + (torch.exp(0.5 * lv) * eps).abs())
    assert ((z - z_ref).abs() <= 2 * ulp).all(), ((z - z_ref).abs() / ulp).max()
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(kl, kl_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(log_q, log_q_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7, 300), (70, 10)])  # long rows; short rows in tiles
def test_reparameterize_same_seed_same_z_on_every_backend(dtype, shape):
    mu, lv, _ = posterior(*shape, dtype=dtype)
    zs = {}
    for be in NOISE_BACKENDS:
        with backend(be):
            zs[be] = F.reparameterize(mu, lv, generator=torch.Generator().manual_seed(11))
    # the Philox words are identical; the float32 Box-Muller transform (log, cos) agrees to a few ulp
    for be in NOISE_BACKENDS[1:]:
        for a, b in zip(zs[be], zs["torch"]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    eps = ref.philox_normal_like(mu, draw_seed(torch.Generator().manual_seed(11)))
    torch.testing.assert_close(zs["cpu"][0], (mu + torch.exp(0.5 * lv) * eps).to(dtype), rtol=1e-6, atol=1e-6)
    with backend("cpu"):  # the global generator: torch.manual_seed reproduces
        torch.manual_seed(5)
        a = F.reparameterize(mu, lv)[0]
        torch.manual_seed(5)
        b = F.reparameterize(mu, lv)[0]
        c = F.reparameterize(mu, lv)[0]
    assert torch.equal(a, b) and not torch.equal(b, c)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_reparameterize_drawn_eps_gradients_recompute_noise(dev, be):
    mu, lv, _ = posterior(5, 33, seed=3, device=dev)
    seed = draw_seed(torch.Generator().manual_seed(2))
    eps = ref.philox_normal_like(mu, seed)
    ws = [randn(5, 33, seed=4, dtype=torch.float64, device=dev), randn(5, seed=5, dtype=torch.float64, device=dev),
          randn(5, seed=6, dtype=torch.float64, device=dev)]
    outs, grads = run(lambda m, l: F.reparameterize(m, l, generator=torch.Generator().manual_seed(2)), (mu, lv),
                      torch.float32, be, ws)
    outs64, grads64 = run(lambda m, l: ref.reparameterize(m, l, eps=eps.double()), (mu, lv), torch.float64, "torch", ws)
    for o, r, nm in zip(outs, outs64, ["z", "kl", "log_q"]):
        assert_close(o, r, atol=1e-4, name=nm)
    for g, r, nm in zip(grads, grads64, ["mu", "logvar"]):
        assert_close(g, r, atol=1e-5, name=f"grad_{nm}")


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_reparameterize_saves_no_noise(be):
    mu, lv, _ = (a.requires_grad_() for a in posterior(64, 32))
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with backend(be), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.reparameterize(mu, lv)
    # mu, logvar and the seed: an int in the C++ node of cpu eager calls, an int64 tensor otherwise
    assert sum(seen.values()) == mu.nbytes + lv.nbytes + (0 if be == "cpu" else 8)


def test_reparameterize_noise_statistics():
    # 2**17 draws: mean within 5 sigma of 0, variance within 0.02 of 1 (sd of the variance estimate ~0.004)
    mu, lv = torch.zeros(256, 512), torch.zeros(256, 512)
    with backend("cpu"):
        z, _, _ = F.reparameterize(mu, lv, generator=torch.Generator().manual_seed(0))
    assert abs(z.mean().item()) < 5 / z.numel() ** 0.5 and abs(z.var().item() - 1) < 0.02
    assert abs(z[:, 0].mean().item()) < 5 / 256 ** 0.5  # columns are not correlated copies of each other
    assert abs(torch.corrcoef(z[:, :2].T)[0, 1].item()) < 5 / 256 ** 0.5


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float64])
def test_reparameterize_dtypes(dev, be, dtype):
    mu, lv, eps = posterior(4, 19, seed=9, device=dev)
    ws = [torch.ones(4, 19, dtype=torch.float64, device=dev), torch.ones(4, dtype=torch.float64, device=dev),
          torch.ones(4, dtype=torch.float64, device=dev)]
    fn = lambda m, l, e: F.reparameterize(m, l, eps=e)  # noqa: E731
    outs, grads = run(fn, (mu, lv, eps), dtype, be, ws)
    low, low_grads = run(fn, (mu, lv, eps), dtype, "torch", ws)
    outs64, grads64 = run(fn, (mu, lv, eps), torch.float64, "torch", ws)
    assert outs[0].dtype == dtype and outs[1].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(outs[0], outs64[0], low_ref=low[0], name="z")
    for i, nm in ((1, "kl"), (2, "log_q")):
        o = outs[i].to(dtype) if dtype in HALF_DTYPES else outs[i]
        assert_close(o, outs64[i], low_ref=low[i].to(dtype), atol=0.5, name=nm)
    for g, r, lo, nm in zip(grads, grads64, low_grads, ["mu", "logvar", "eps"]):
        assert_close(g, r, low_ref=lo, atol=5e-2, name=f"grad_{nm}")


@pytest.mark.parametrize("dev,be", backend_cases())
def test_reparameterize_noncontiguous_zero_stride_empty_extreme(dev, be):
    h = randn(6, 20, device=dev)
    mu, lv = h.chunk(2, dim=1)  # batch-strided views
    eps = randn(10, 6, seed=3, device=dev).T  # not row-contiguous
    xs = [a.clone().requires_grad_() if i == 2 else a.detach().requires_grad_() for i, a in enumerate((mu, lv, eps))]
    with backend(be):
        z, kl, lq = F.reparameterize(*xs[:2], eps=xs[2])
    (z.sum() + kl.sum() + lq.sum()).backward()  # zero-stride incoming gradients
    x64 = [a.detach().double().requires_grad_() for a in (mu, lv, eps)]
    z64, kl64, lq64 = ref.reparameterize(*x64[:2], eps=x64[2])
    (z64.sum() + kl64.sum() + lq64.sum()).backward()
    assert_close(z, z64, name="z")
    for a, b in zip(xs, x64):
        assert_close(a.grad, b.grad, name="grad")
    empty = torch.zeros(0, 4, device=dev, requires_grad=True)
    with backend(be):
        z, kl, lq = F.reparameterize(empty, empty)
    assert z.shape == (0, 4) and kl.shape == (0,)
    (z.sum() + kl.sum()).backward()
    lv = torch.tensor([[-30.0, -10.0, 0.0, 10.0, 30.0]], device=dev).repeat(2, 1).requires_grad_()
    mu = torch.tensor([[1e4, -1e4, 0.0, 3.0, -3.0]], device=dev).repeat(2, 1).requires_grad_()
    with backend(be):
        z, kl, lq = F.reparameterize(mu, lv, generator=torch.Generator().manual_seed(0))
    (z.sum() + kl.sum() + lq.sum()).backward()
    for v in (z, kl, lq, mu.grad, lv.grad):
        assert torch.isfinite(v).all()


# ---- mixture log-density --------------------------------------------------------------------------

MIXTURE_SHAPES = [(13, 21, 7), (1, 1, 1), (5, 150, 3), (20, 3, 70)]  # odd; K over one Triton tile; D over BLOCK_D


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("per_dim", [False, True])
def test_mixture_matches_reference(dev, be, per_dim):
    for N, K, D in MIXTURE_SHAPES:
        inputs = mixture_inputs(N, K, D, device=dev)
        w = randn(*((N, D) if per_dim else (N,)), seed=5, dtype=torch.float64, device=dev)
        fn = lambda *a: F.gaussian_mixture_log_prob(*a, per_dim=per_dim)  # noqa: E731
        (out,), grads = run(fn, inputs, torch.float32, be, [w])
        (out64,), grads64 = run(fn, inputs, torch.float64, "torch", [w])
        assert out.dtype == torch.float32
        for g, r, nm in zip((out, *grads), (out64, *grads64), ["out", "z", "means", "logvars", "log_weights"]):
            assert_close(g, r, rtol=2e-5, atol=2e-5 * D ** 0.5 * 4, name=f"{nm} {N, K, D}")


def test_mixture_cpu_above_one_tile():
    # more rows than one register tile (8) and components than one logsumexp tile (512), with band weights
    inputs = mixture_inputs(19, 1100, 5, seed=3)
    for per_dim in (False, True):
        w = randn(*((19, 5) if per_dim else (19,)), seed=5, dtype=torch.float64)
        fn = lambda *a: F.gaussian_mixture_log_prob(*a, per_dim=per_dim)  # noqa: E731
        (out,), grads = run(fn, inputs, torch.float32, "cpu", [w])
        (out64,), grads64 = run(fn, inputs, torch.float64, "torch", [w])
        for g, r, nm in zip((out, *grads), (out64, *grads64), ["out", "z", "means", "logvars", "log_weights"]):
            assert_close(g, r, rtol=2e-5, atol=1e-4, name=f"{nm} per_dim={per_dim}")


@pytest.mark.parametrize("dev,be", backend_cases())
def test_mixture_k1_is_the_gaussian_log_density(dev, be):
    z, m, lv, _ = mixture_inputs(9, 1, 6, device=dev, dtype=torch.float64)
    with backend(be):
        out = F.gaussian_mixture_log_prob(z, m, lv)
        per = F.gaussian_mixture_log_prob(z, m, lv, per_dim=True)
    expect = torch.distributions.Normal(m[0], torch.exp(0.5 * lv[0])).log_prob(z)
    torch.testing.assert_close(per, expect)
    torch.testing.assert_close(out, expect.sum(1))


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float64])
def test_mixture_dtypes(dev, be, dtype):
    inputs = mixture_inputs(6, 11, 5, seed=4, device=dev)
    for per_dim in (False, True):
        ws = [torch.ones((6, 5) if per_dim else (6,), dtype=torch.float64, device=dev)]
        fn = lambda *a: F.gaussian_mixture_log_prob(*a, per_dim=per_dim)  # noqa: E731
        (out,), grads = run(fn, inputs, dtype, be, ws)
        (low,), low_grads = run(fn, inputs, dtype, "torch", ws)
        (out64,), grads64 = run(fn, inputs, torch.float64, "torch", ws)
        assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        if dtype == torch.float64:
            assert_close(out, out64, atol=1e-9, name="out")
        else:  # the inputs are rounded to the low dtype; out is float32 like the reference's
            assert_close(out.to(dtype), out64, low_ref=low.to(dtype), name="out")
            torch.testing.assert_close(out, low, rtol=1e-5, atol=1e-4)
        for g, r, lo, nm in zip(grads, grads64, low_grads, ["z", "means", "logvars", "log_weights"]):
            assert_close(g, r, low_ref=lo, atol=5e-2, name=f"grad_{nm}")


@pytest.mark.parametrize("dev,be", backend_cases())
def test_mixture_strided_zero_stride_empty(dev, be):
    z = randn(12, 4, seed=1, device=dev)[::2]                # row stride 8
    m = randn(4, 9, seed=2, device=dev).T                    # [9, 4], K-stride 1 (a conditioner's [D, K] output)
    lv = randn(9, 8, seed=3, scale=0.5, device=dev)[:, ::2]  # column stride 2
    w = randn(18, seed=4, device=dev)[::2]
    xs = [a.detach().requires_grad_() for a in (z, m, lv, w)]
    with backend(be):
        out = F.gaussian_mixture_log_prob(*xs)
    out.sum().backward()  # zero-stride gradient
    x64 = [a.detach().double().requires_grad_() for a in (z, m, lv, w)]
    ref.gaussian_mixture_log_prob(*x64).sum().backward()
    assert_close(out, ref.gaussian_mixture_log_prob(*[a.detach() for a in x64]), atol=1e-4, name="out")
    for a, b in zip(xs, x64):
        assert_close(a.grad, b.grad, atol=1e-5, name="grad")
    z0 = torch.zeros(0, 4, device=dev, requires_grad=True)
    for per_dim in (False, True):
        with backend(be):
            out = F.gaussian_mixture_log_prob(z0, xs[1], xs[2], per_dim=per_dim)
        assert out.shape == ((0, 4) if per_dim else (0,))
        out.sum().backward()
        assert z0.grad.shape == (0, 4)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("per_dim", [False, True])
def test_mixture_extreme_values_stay_finite(dev, be, per_dim):
    # logvars over [-30, 30], z far from every component: the logsumexp must not underflow to -inf
    lv = torch.linspace(-30, 30, 7, dtype=torch.float64, device=dev)[:, None].repeat(1, 3)
    m = torch.linspace(-5, 5, 7, dtype=torch.float64, device=dev)[:, None].repeat(1, 3)
    z = torch.tensor([[1e3, -1e3, 50.0], [0.0, 1e-3, -2.0], [-5.0, 5.0, 5.0]], dtype=torch.float64, device=dev)
    xs = [a.float().requires_grad_() for a in (z, m, lv)]
    with backend(be):
        out = F.gaussian_mixture_log_prob(*xs, per_dim=per_dim)
    out.sum().backward()
    expect = ref.gaussian_mixture_log_prob(z, m, lv, per_dim=per_dim)
    assert torch.isfinite(out).all() and all(torch.isfinite(a.grad).all() for a in xs)
    torch.testing.assert_close(out.double(), expect, rtol=1e-5, atol=1e-3)


def offset_inputs(N, K, D, dtype=torch.float64):
    """z and the means 1e3 from the origin, with ordinary variances and with variances e^-20 and z next to
    the means (where expanding (z - m)^2 would cancel catastrophically); float32-representable values."""
    z, m, lv, w = mixture_inputs(N, K, D, seed=1, dtype=torch.float64)
    near = m[torch.arange(N) % K] + 1e-4 * randn(N, D, seed=9, dtype=torch.float64)
    cases = {"offset": (z + 1e3, m + 1e3, lv, w),
             "tiny variances": (near + 1e3, m + 1e3, torch.full_like(lv, -20.0), w)}
    return {k: tuple(a.float().to(dtype) for a in v) for k, v in cases.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_cpu_offset_and_tiny_variances(dtype):
    for case, inputs in offset_inputs(70, 30, 6, dtype).items():
        w = randn(70, seed=5, dtype=torch.float64)
        fn = F.gaussian_mixture_log_prob
        (out,), grads = run(fn, inputs, dtype, "cpu", [w])
        (out64,), grads64 = run(fn, inputs, torch.float64, "torch", [w])
        tol = dict(rtol=2e-5, atol=2e-5 * 6 ** 0.5 * 4) if dtype == torch.float32 else {}
        for g, r, nm in zip((out, *grads), (out64, *grads64), ["out", "z", "means", "logvars", "log_weights"]):
            assert_close(g, r, **tol, name=f"{nm} {case}")


@pytest.mark.parametrize("per_dim", [False, True])
def test_mixture_cpu_backward_slots_skipped_blocks_padding(per_dim):
    # the fused CPU backward splits the rows into one slot per thread: 1, 2 and 3 threads agree with the float64
    # reference, and each is bitwise reproducible. Components 16..31 lie 50 away with variance e^-4, so their
    # responsibilities are exactly 0 (whole 16-lane vectors skipped) next to live ones; component 47 sits at the
    # origin with variance e^-30, so a zero padding row of the last 8-row tile (N = 13) gives it a logit near
    # +100 (exp overflows): padding rows must add exactly 0, not 0 * inf.
    N, K, D = 13, 48, 8
    z, m, lv, w = mixture_inputs(N, K, D, seed=11, dtype=torch.float64)
    m[16:32] += 50.0
    lv[16:32] = -4.0
    m[47], lv[47] = 0.0, -30.0
    inputs = tuple(a.float().double() for a in (z, m, lv, w))
    ws = [randn(*((N, D) if per_dim else (N,)), seed=5, dtype=torch.float64)]
    fn = lambda *a: F.gaussian_mixture_log_prob(*a, per_dim=per_dim)  # noqa: E731
    (out64,), grads64 = run(fn, inputs, torch.float64, "torch", ws)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            (out,), grads = run(fn, inputs, torch.float32, "cpu", ws)
            (_,), again = run(fn, inputs, torch.float32, "cpu", ws)
            for g, r, g2, nm in zip(grads, grads64, again, ["z", "means", "logvars", "log_weights"]):
                assert_close(g, r, rtol=2e-5, atol=1e-4, name=f"grad_{nm} threads={n}")
                assert torch.equal(g, g2), f"grad_{nm} differs run to run with {n} threads"
            assert_close(out, out64, rtol=2e-5, atol=1e-4, name="out")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_elbo_surgery_cpu_concentrated_posteriors(estimator):
    # the batch's own posteriors as the mixture (MSS: band weights), ordinary and with variances e^-20
    M, D = 40, 4
    mu, lv = randn(M, D, seed=2, dtype=torch.float64), randn(M, D, seed=3, scale=0.5, dtype=torch.float64)
    cases = {"ordinary": (randn(M, D, seed=1, dtype=torch.float64), mu, lv),
             "concentrated": (mu + 1e-5 * randn(M, D, seed=1, dtype=torch.float64), mu, torch.full_like(lv, -20.0))}
    for case, inputs in cases.items():
        inputs = tuple(a.float().double() for a in inputs)  # float32-representable: the reference sees these too
        ws = [randn(M, seed=i, dtype=torch.float64) for i in range(4)] + [torch.tensor(1.0 + i, dtype=torch.float64)
                                                                           for i in range(4)]
        fn = lambda a, impl: tuple(impl(*a, dataset_size=100, estimator=estimator))  # noqa: E731
        outs, grads = run(lambda *a: fn(a, F.elbo_surgery), inputs, torch.float32, "cpu", ws)
        outs64, grads64 = run(lambda *a: fn(a, ref.elbo_surgery), inputs, torch.float64, "torch", ws)
        for o, r, nm in zip((*outs, *grads), (*outs64, *grads64), [*ref.ElboSurgery._fields, "z", "mu", "logvar"]):
            assert_close(o, r, rtol=2e-5, atol=1e-4, name=f"{nm} {case}")


def test_mixture_gradcheck_reference_and_cpu_kernel():
    inputs = [a.requires_grad_() for a in mixture_inputs(4, 5, 3, dtype=torch.float64, seed=6)]
    for per_dim in (False, True):
        fn = lambda *a: F.gaussian_mixture_log_prob(*a, per_dim=per_dim)  # noqa: E731
        assert torch.autograd.gradcheck(lambda *a: ref.gaussian_mixture_log_prob(*a, per_dim=per_dim), inputs)
        with backend("cpu"):
            assert torch.autograd.gradcheck(fn, inputs)
    mu, lv, eps = (a.requires_grad_() for a in posterior(3, 4, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda *a: ref.reparameterize(a[0], a[1], eps=a[2]), (mu, lv, eps))
    with backend("cpu"):
        assert torch.autograd.gradcheck(lambda *a: F.reparameterize(a[0], a[1], eps=a[2]), (mu, lv, eps))
        assert torch.autograd.gradcheck(
            lambda m, l: F.reparameterize(m, l, generator=torch.Generator().manual_seed(0)), (mu, lv))
        z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
        m5, l5 = (torch.randn(5, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
        assert torch.autograd.gradcheck(
            lambda *a: F.elbo_surgery(*a, dataset_size=50, estimator="mss")[4:], (z, m5, l5))


@pytest.mark.parametrize("dev,be", [c for c in backend_cases() if c.values[1] != "torch"])
def test_opcheck(dev, be):
    z, m, lv, w = (a.requires_grad_() for a in mixture_inputs(4, 5, 3, device=dev))
    band = torch.tensor([-3.0, -0.5], device=dev)
    for per_dim in (False, True):
        for b, off in ((band[:0], 0), (band, 1)):
            args = (z, m, lv, w, b, off, per_dim, be)
            torch.library.opcheck(torch.ops.dgmfast.gaussian_mixture_fwd, args)
            out = torch.ops.dgmfast.gaussian_mixture_fwd(*[a.detach() if torch.is_tensor(a) else a for a in args])
            torch.library.opcheck(torch.ops.dgmfast.gaussian_mixture_bwd,
                                  (z.detach(), m.detach(), lv.detach(), w.detach(), b, off, per_dim, out,
                                   torch.randn_like(out), be))
    mu, lv, eps = (a.requires_grad_() for a in posterior(3, 5, device=dev))
    seed = torch.tensor(123, dtype=torch.int64)
    for e in (eps, None):
        torch.library.opcheck(torch.ops.dgmfast.reparameterize_fwd, (mu, lv, e, seed, be))
        torch.library.opcheck(torch.ops.dgmfast.reparameterize_bwd,
                              (mu.detach(), lv.detach(), None if e is None else e.detach(), seed,
                               torch.randn(3, 5, device=dev), torch.randn(3, device=dev), torch.randn(3, device=dev), be))


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_torch_compile_fullgraph(be):
    z, m, lv, w = (a.requires_grad_() for a in mixture_inputs(6, 7, 4, seed=8))
    mu, logvar, eps = (a.requires_grad_() for a in posterior(6, 4, seed=9))

    def step(z, m, lv, w, mu, logvar, eps):
        zz, kl, log_q = F.reparameterize(mu, logvar, eps=eps)
        s = F.elbo_surgery(zz, mu, logvar, dataset_size=100, estimator="mss")
        return (F.gaussian_mixture_log_prob(z, m, lv, w).sum() + F.gaussian_mixture_log_prob(z, m, lv, per_dim=True).sum()
                + kl.sum() - log_q.sum() + s.tc + s.mi)

    assert_compiled_matches_eager(step, (z, m, lv, w, mu, logvar, eps), be, rtol=1e-5, atol=1e-4)

    def drawn(mu, logvar):
        return F.reparameterize(mu, logvar)

    with backend(be):
        z_d, kl_d, lq_d = compile_fullgraph(drawn, be)(mu, logvar)
    # drawn noise under compile: the seed is a graph input; z, kl and log_q agree with one eps
    e = (z_d - mu) / torch.exp(0.5 * logvar)
    torch.testing.assert_close(lq_d, (-0.5 * (ref.LOG_2PI + logvar + e * e)).sum(1), rtol=1e-4, atol=1e-4)


def test_bad_inputs_name_the_argument():
    z, m, lv, w = mixture_inputs(4, 5, 3)
    with pytest.raises(ValueError, match=r"means must be \[K, D\] with D = 3"):
        F.gaussian_mixture_log_prob(z, torch.randn(5, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="logvars must have shape"):
        F.gaussian_mixture_log_prob(z, m, torch.randn(5, 2))
    with pytest.raises(ValueError, match="log_weights must have shape"):
        F.gaussian_mixture_log_prob(z, m, lv, torch.randn(4))
    with pytest.raises(TypeError, match="means must have dtype"):
        F.gaussian_mixture_log_prob(z, m.double(), lv.double())
    with pytest.raises(ValueError, match="at least one component"):
        F.gaussian_mixture_log_prob(z, m[:0], lv[:0])
    with pytest.raises(ValueError, match=r"z must be \[N, D\]"):
        F.gaussian_mixture_log_prob(z[0], m, lv)
    mu, lv2, eps = posterior(4, 3)
    with pytest.raises(ValueError, match="logvar must have shape"):
        F.reparameterize(mu, lv2[:, :2])
    with pytest.raises(ValueError, match="eps must have shape"):
        F.reparameterize(mu, lv2, eps=eps[:2])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        F.reparameterize(mu, lv2, generator=3)
    with pytest.raises(ValueError, match="dataset_size must be >= the batch size 4, got 3"):
        F.elbo_surgery(mu, mu, lv2, dataset_size=3)
    with pytest.raises(ValueError, match="dataset_size must be a positive int"):
        F.elbo_surgery(mu, mu, lv2, dataset_size=0)
    with pytest.raises(ValueError, match="estimator='mss' needs a batch of at least 2"):
        F.elbo_surgery(mu[:1], mu[:1], lv2[:1], dataset_size=10, estimator="mss")
    with pytest.raises(ValueError, match="estimator must be one of"):
        F.elbo_surgery(mu, mu, lv2, dataset_size=10, estimator="iw")
    with pytest.raises(ValueError, match="torch.distributed is not initialized"):
        F.elbo_surgery(mu, mu, lv2, dataset_size=10, process_group=object())


def test_dispatch_cuda_refuses_the_mixture_with_its_reason():
    reasons = dgmfast.backends.OPS["gaussian_mixture_log_prob"]("cuda", torch.device("cuda"), torch.float32)
    assert reasons and "triton" in reasons[0]
    assert dgmfast.select_backend("gaussian_mixture_log_prob", torch.device("cpu")) == "cpu"
    with dgmfast.use_backend("cuda"), pytest.raises(RuntimeError, match="cuda backend runs CUDA tensors"):
        F.gaussian_mixture_log_prob(*mixture_inputs(2, 3, 2)[:3])


# ---- ELBO surgery ---------------------------------------------------------------------------------

def test_mss_weights_sum_to_one_and_sit_on_the_diagonal():
    for M, N in ((2, 2), (5, 5), (7, 1000)):
        W = ref.mss_log_weights(M, N).exp()
        torch.testing.assert_close(W.sum(1), torch.ones(M, dtype=torch.float64))
        idx = torch.arange(M)
        assert torch.allclose(W[idx, idx], torch.full((M,), 1.0 / N, dtype=torch.float64))
        assert torch.allclose(W[idx, (idx + 1) % M], torch.full((M,), (N - M + 1) / (N * (M - 1)), dtype=torch.float64))
    # the kernels' band form of the weights is this matrix
    M, N = 6, 40
    band = torch.tensor([-math.log(N), math.log((N - M + 1) / (N * (M - 1)))], dtype=torch.float64)
    full = F._band_matrix(M, M, torch.full((M,), -math.log(M - 1), dtype=torch.float64), band, 0)
    torch.testing.assert_close(full, ref.mss_log_weights(M, N))


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_elbo_surgery_matches_reference(dev, be, estimator):
    for M, D in ((9, 3), (2, 5), (33, 4)):
        z, mu, lv = randn(M, D, seed=1, device=dev), randn(M, D, seed=2, device=dev), randn(M, D, seed=3, scale=0.5,
                                                                                              device=dev)
        ws = [randn(M, seed=i, dtype=torch.float64, device=dev) for i in range(4)] + [
            torch.tensor(1.0 + i, dtype=torch.float64, device=dev) for i in range(4)]
        outs, grads = run(lambda *a: tuple(F.elbo_surgery(*a, dataset_size=100, estimator=estimator)), (z, mu, lv),
                          torch.float32, be, ws)
        outs64, grads64 = run(lambda *a: tuple(ref.elbo_surgery(*a, dataset_size=100, estimator=estimator)),
                              (z, mu, lv), torch.float64, "torch", ws)
        for o, r, nm in zip(outs, outs64, ref.ElboSurgery._fields):
            assert_close(o, r, atol=1e-4, name=f"{nm} M={M}")
        for g, r, nm in zip(grads, grads64, ["z", "mu", "logvar"]):
            assert_close(g, r, atol=1e-4, name=f"grad_{nm} M={M}")


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_elbo_surgery_identities(estimator):
    z, mu, lv = randn(50, 4, seed=1), randn(50, 4, seed=2), randn(50, 4, seed=3, scale=0.5)
    with backend("cpu"):
        s = F.elbo_surgery(z, mu, lv, dataset_size=500, estimator=estimator)
    expected_kl = (s.log_q_zx - s.log_p_z).mean()
    torch.testing.assert_close(s.mi + s.marginal_kl, expected_kl, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(s.marginal_kl, s.tc + s.dimwise_kl, rtol=1e-6, atol=1e-5)


def test_elbo_surgery_linear_gaussian_mutual_information():
    # x ~ N(0, 1), q(z|x) = N(a x, s^2) per dim: I(x; z) = 0.5 log(1 + a^2/s^2) per dim. MSS estimates log q(z)
    # consistently, so its mi converges to I as the batch grows: |error| < 0.2 at M = 256 and < 0.06 at
    # M = 4096 (Monte Carlo sd ~0.02 there; fixed seed). MWS's log q(z) (SPEC: minus log(N M)) carries an
    # extra -log N, so its mi converges to I + log N.
    a, s, D, N = 1.0, 0.5, 2, 10**6
    mi = D * 0.5 * math.log(1 + a * a / (s * s))
    g = torch.Generator().manual_seed(0)
    for M, tol in ((256, 0.2), (4096, 0.06)):
        x = torch.randn(M, D, generator=g)
        mu, lv = a * x, torch.full((M, D), 2 * math.log(s))
        z = mu + s * torch.randn(M, D, generator=g)
        with backend("cpu"):
            mss = F.elbo_surgery(z, mu, lv, dataset_size=N, estimator="mss")
            mws = F.elbo_surgery(z, mu, lv, dataset_size=N, estimator="mws")
        assert abs(mss.mi.item() - mi) < tol, (M, mss.mi.item(), mi)
        assert abs(mws.mi.item() - (mi + math.log(N))) < tol, (M, mws.mi.item(), mi + math.log(N))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank, world, port, estimator, result):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        M, D = 8, 3
        z, mu, lv = randn(M, D, seed=1), randn(M, D, seed=2), randn(M, D, seed=3, scale=0.5)
        rows = slice(rank * M // world, (rank + 1) * M // world)
        xs = [a[rows].clone().requires_grad_() for a in (z, mu, lv)]
        with backend("cpu"):
            s = F.elbo_surgery(*xs, dataset_size=40, estimator=estimator, process_group=dist.group.WORLD)
        (s.mi + 2 * s.tc + 3 * s.dimwise_kl + 0.5 * s.marginal_kl + s.log_q_z.sum()).backward()
        result[rank] = [t.detach() for t in s] + [a.grad for a in xs]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_elbo_surgery_distributed_equals_concatenated_batch(estimator):
    import torch.multiprocessing as mp
    world = 2
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_distributed_worker, args=(world, _free_port(), estimator, result), nprocs=world, join=True)
        result = dict(result)
    M, D = 8, 3
    xs = [a.clone().requires_grad_() for a in (randn(M, D, seed=1), randn(M, D, seed=2), randn(M, D, seed=3, scale=0.5))]
    with backend("cpu"):
        s = F.elbo_surgery(*xs, dataset_size=40, estimator=estimator)
    (s.mi + 2 * s.tc + 3 * s.dimwise_kl + 0.5 * s.marginal_kl + s.log_q_z.sum()).backward()
    for rank in range(world):
        rows = slice(rank * M // world, (rank + 1) * M // world)
        got = result[rank]
        for i, nm in enumerate(ref.ElboSurgery._fields):
            want = s[i].detach()[rows] if s[i].dim() else s[i].detach()
            torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5, msg=lambda m: f"rank {rank} {nm}: {m}")
        for j, a in enumerate(xs):
            torch.testing.assert_close(got[8 + j], a.grad[rows], rtol=1e-5, atol=1e-5,
                                       msg=lambda m: f"rank {rank} grad {j}: {m}")


# ---- modules --------------------------------------------------------------------------------------

def test_beta_vae_loss():
    recon, kl = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 4.0])
    torch.testing.assert_close(dgmfast.nn.BetaVAELoss(beta=4.0)(recon, kl), torch.tensor(2.0 + 4.0 * 3.0))
    loss = dgmfast.nn.BetaVAELoss(capacity=(10.0, 100), gamma=2.0)
    torch.testing.assert_close(loss(recon, kl), torch.tensor(2.0 + 2.0 * 3.0))        # step 0: C = 0
    torch.testing.assert_close(loss(recon, kl), torch.tensor(2.0 + 2.0 * (3.0 - 0.1)))  # step 1: C = 0.1
    torch.testing.assert_close(loss(recon, kl, step=1000), torch.tensor(2.0 + 2.0 * 7.0))  # C capped at 10
    assert int(loss.step) == 2 and "step" in loss.state_dict()
    loss.eval()
    loss(recon, kl)
    assert int(loss.step) == 2
    with pytest.raises(ValueError, match="capacity must be None or"):
        dgmfast.nn.BetaVAELoss(capacity=5.0)


@pytest.mark.parametrize("be", ["torch", "cpu", "triton"])
def test_vamp_prior(be):
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8))  # [K, 2, 6] -> [K, 2*4]
    prior = dgmfast.nn.VampPrior(encoder, input_shape=(2, 6), num_pseudo=7)
    z = torch.randn(5, 4, requires_grad=True)
    with backend(be):
        log_p = prior(z)
    log_p.sum().backward()
    mu, lv = encoder(prior.pseudo_inputs).detach().chunk(2, dim=1)
    comps = torch.distributions.Normal(mu.double(), torch.exp(0.5 * lv.double()))
    expect = torch.logsumexp(comps.log_prob(z.detach().double()[:, None]).sum(2), 1) - math.log(7)  # with log 2pi
    torch.testing.assert_close(log_p.double(), expect, rtol=1e-5, atol=1e-5)
    assert prior.pseudo_inputs.grad is not None and torch.isfinite(prior.pseudo_inputs.grad).all()
    assert encoder[1].weight.grad is not None


def test_elbo_surgery_module():
    z, mu, lv = randn(6, 3, seed=1), randn(6, 3, seed=2), randn(6, 3, seed=3)
    mod = dgmfast.nn.ElboSurgery(dataset_size=60, estimator="mss")
    torch.testing.assert_close(tuple(mod(z, mu, lv)), tuple(F.elbo_surgery(z, mu, lv, dataset_size=60, estimator="mss")))
    with pytest.raises(ValueError, match="estimator must be one of"):
        dgmfast.nn.ElboSurgery(10, estimator="x")
