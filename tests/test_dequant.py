"""Dequantization (SPEC §6): every backend against the reference given the same (Philox) noise."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

import dgmfast
from dgmfast import functional as F
from dgmfast.ops.common import philox_normal, philox_uniform
from dgmfast.reference import dequant as ref
from tests.utils import assert_close, backend, backend_cases

MODES = ["unit", "centered", "logit"]
KERNEL_CASES = [c for c in backend_cases() if c.values[1] != "torch"]


def pixels(shape, bits=8, dtype=torch.uint8, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, shape, generator=g).to(device, dtype)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_bits,in_bits,int_dtype", [(8, 8, torch.uint8), (5, 8, torch.uint8), (3, 12, torch.int16),
                                                      (16, 16, torch.int32)])
def test_uniform_dequantize_matches_reference_given_the_noise(dev, be, mode, n_bits, in_bits, int_dtype):
    x = pixels((3, 2, 5, 7), in_bits, int_dtype, dev)
    seed = 1234567
    with backend(be):
        y, ld = F.uniform_dequantize(x, n_bits=n_bits, in_bits=in_bits, mode=mode,
                                     generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(0)
    drawn = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(seed)))
    noise = philox_uniform(x.numel(), drawn, device=dev).view(x.shape).double()
    y64, ld64 = ref.uniform_dequantize(x, noise, n_bits=n_bits, in_bits=in_bits, mode=mode, dtype=torch.float64)
    assert y.dtype == torch.float32 and ld.dtype == torch.float32
    assert_close(y, y64, rtol=1e-5, atol=1e-5, name="y")
    assert_close(ld, ld64, rtol=1e-5, atol=1e-3, name="logdet")
    # reverse: back to the (bit-reduced) integers, log-det of the inverse
    with backend(be):
        x_back, ld_back = F.uniform_dequantize(y, n_bits=n_bits, mode=mode, reverse=True)
    assert x_back.dtype == (torch.uint8 if n_bits <= 8 else torch.int32)
    torch.testing.assert_close(x_back.long(), torch.div(x.long(), 2 ** (in_bits - n_bits), rounding_mode="floor"))
    assert_close(ld_back, -ld64, rtol=1e-4, atol=1e-2, name="reverse logdet")


@pytest.mark.parametrize("dev,be", KERNEL_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_uniform_dequantize_output_dtypes(dev, be, dtype):
    x = pixels((2, 3, 4, 9), device=dev)
    with backend(be):
        y, ld = F.uniform_dequantize(x, dtype=dtype, generator=torch.Generator().manual_seed(0))
    with backend("torch"):
        y_ref, ld_ref = F.uniform_dequantize(x, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert y.dtype == dtype and ld.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-10 if dtype == torch.float64 else 2e-2
    torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(ld.double(), ld_ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_same_noise_on_every_backend_and_noncontiguous_input(dev, be):
    base = pixels((4, 6, 5, 3), device=dev)
    x = base.permute(0, 3, 2, 1)  # not row-contiguous: the noise follows the logical element index
    with backend(be):
        y, _ = F.uniform_dequantize(x, mode="unit", generator=torch.Generator().manual_seed(9))
    with backend("torch"):
        y_ref, _ = F.uniform_dequantize(x.contiguous(), mode="unit", generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_gaussian_sample_log_prob(dev, be):
    with backend(be):
        eps, lp = F.gaussian_sample_log_prob((5, 3, 7), generator=torch.Generator().manual_seed(2), device=dev)
    seed = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(2)))
    torch.testing.assert_close(eps.flatten(), philox_normal(eps.numel(), seed, device=dev), rtol=0, atol=2e-6)
    torch.testing.assert_close(lp, ref.gaussian_log_prob(eps.double()).float(), rtol=1e-5, atol=1e-4)
    with backend(be):
        eps0, lp0 = F.gaussian_sample_log_prob((0, 3), device=dev)
    assert eps0.shape == (0, 3) and lp0.shape == (0,)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("mode", MODES)
def test_sigmoid_tail_forward_backward(dev, be, mode):
    x = pixels((3, 2, 5, 7), bits=5, device=dev)
    v = (3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).to(dev).requires_grad_()
    w = torch.randn(x.shape, dtype=torch.float64, device=dev)
    c = torch.randn(3, dtype=torch.float64, device=dev)
    with backend(be):
        y, ld = F.dequantize_sigmoid_tail(x, v, n_bits=5, mode=mode)
    ((y.double() * w).sum() + (ld.double() * c).sum()).backward()
    v64 = v.detach().double().requires_grad_()
    y64, ld64 = ref.dequantize_sigmoid_tail(x, v64, n_bits=5, mode=mode)
    ((y64 * w).sum() + (ld64 * c).sum()).backward()
    assert_close(y, y64, name="y")
    assert_close(ld, ld64, rtol=1e-5, atol=1e-3, name="logdet")
    assert_close(v.grad, v64.grad, rtol=1e-4, atol=1e-5, name="grad_v")


@pytest.mark.parametrize("mode", MODES)
def test_sigmoid_tail_gradcheck_reference_and_cpu(mode):
    x = pixels((2, 3, 4), bits=4)
    v = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ref.dequantize_sigmoid_tail(x, v, n_bits=4, mode=mode), (v,))
    with backend("cpu"):
        assert torch.autograd.gradcheck(lambda v: F.dequantize_sigmoid_tail(x, v, n_bits=4, mode=mode), (v,))


@pytest.mark.parametrize("dev,be", KERNEL_CASES)
def test_opcheck(dev, be):
    x = pixels((2, 3, 5), device=dev)
    seed = torch.tensor(77, dtype=torch.int64)
    torch.library.opcheck(torch.ops.dgmfast.uniform_dequantize, (x, seed, 8, 8, 2, 0.05, torch.float32, be))
    y = torch.randn(2, 3, 5, device=dev)
    torch.library.opcheck(torch.ops.dgmfast.uniform_dequantize_reverse, (y, 8, 2, 0.05, be))
    torch.library.opcheck(torch.ops.dgmfast.gaussian_sample_log_prob, ([2, 3, 5], seed, torch.float32,
                                                                        torch.device(dev), be))
    v = torch.randn(2, 3, 5, device=dev, requires_grad=True)
    torch.library.opcheck(torch.ops.dgmfast.dequantize_sigmoid_tail_fwd, (x, v, 8, 2, 0.05, be))
    torch.library.opcheck(torch.ops.dgmfast.dequantize_sigmoid_tail_bwd,
                          (x, v.detach(), torch.randn_like(y), torch.randn(2, device=dev), 8, 2, 0.05, be))


def test_torch_compile_fullgraph():
    x = pixels((4, 3, 8, 8), bits=5)
    v = torch.randn(4, 3, 8, 8, requires_grad=True)

    def step(x, v):
        y, ld = F.dequantize_sigmoid_tail(x, v, n_bits=5)
        yu, ldu = F.uniform_dequantize(x, n_bits=5, in_bits=5)
        return (y * y).sum() - ld.sum() + ldu.sum() * 0 + yu.sum() * 0

    with backend("cpu"):
        eager = step(x, v)
        (g_eager,) = torch.autograd.grad(eager, v)
        torch._dynamo.reset()
        compiled = torch.compile(step, fullgraph=True)
        out = compiled(x, v)
        (g_comp,) = torch.autograd.grad(out, v)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g_comp, g_eager)


# ---- noise quality --------------------------------------------------------------------------------

def _noise(be, n, seed, kind):
    with backend(be):
        g = torch.Generator().manual_seed(seed)
        if kind == "uniform":
            y, _ = F.uniform_dequantize(torch.zeros(1, n, dtype=torch.uint8), mode="unit", n_bits=8, generator=g)
            return (y * 256).flatten().double()  # = u exactly (x = 0)
        eps, _ = F.gaussian_sample_log_prob((1, n), generator=g)
        return eps.flatten().double()


@pytest.mark.parametrize("be,n", [("cpu", 1_000_000), ("triton", 20_000)])
def test_noise_quality(be, n):
    """KS against U[0,1) and N(0,1): p > 1e-3 (a fixed seed; a correct generator fails this 0.1% of seeds).
    Neighbour and call-to-call correlations |r| < 5/sqrt(n) (5 sigma)."""
    u1, u2 = _noise(be, n, 1, "uniform"), _noise(be, n, 2, "uniform")
    assert 0 <= u1.min() and u1.max() < 1
    assert scipy.stats.kstest(u1.numpy(), "uniform").pvalue > 1e-3
    z = _noise(be, n, 3, "normal")
    assert scipy.stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    bound = 5 / math.sqrt(n)
    for a, b in ((u1[:-1], u1[1:]), (u1[:-4], u1[4:]), (u1, u2), (z[:-1], z[1:]), (z[:-2], z[2:])):
        assert abs(np.corrcoef(a.numpy(), b.numpy())[0, 1]) < bound


def test_seeds_and_manual_seed_reproduce():
    x = pixels((2, 3, 8, 8))
    with backend("cpu"):
        a = F.uniform_dequantize(x, generator=torch.Generator().manual_seed(5))[0]
        b = F.uniform_dequantize(x, generator=torch.Generator().manual_seed(5))[0]
        c = F.uniform_dequantize(x, generator=torch.Generator().manual_seed(6))[0]
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert (a != c).float().mean() > 0.99
        d, e = F.uniform_dequantize(x)[0], F.uniform_dequantize(x)[0]  # consecutive calls differ
        assert (d != e).float().mean() > 0.99

    def training_step():
        torch.manual_seed(11)
        model = dgmfast.nn.VariationalDequantization(channels=3, n_bits=8, hidden=8, context_channels=4)
        y, lw = model(x)
        loss = (0.5 * y.square().sum((1, 2, 3)) - lw).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    with backend("cpu"):
        (l1, g1), (l2, g2) = training_step(), training_step()
    torch.testing.assert_close(l1, l2, rtol=0, atol=0)
    for p, q in zip(g1, g2):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# ---- bits/dim ------------------------------------------------------------------------------------

def test_bits_per_dim_by_hand():
    """A fixed affine flow z = a*y + b with a standard-normal prior on 4 integer pixels."""
    x = torch.tensor([[3, 0, 7, 5], [1, 2, 6, 4]], dtype=torch.uint8)
    a, b = 1.7, -0.3
    with backend("cpu"):
        y, log_weight = F.uniform_dequantize(x, n_bits=3, in_bits=3, mode="logit",
                                             generator=torch.Generator().manual_seed(0))
    z = a * y.double() + b
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(1) + 4 * math.log(a)
    bpd = F.bits_per_dim(log_p, log_weight.double(), 4)
    yn = y.double().numpy()
    p = 1 / (1 + np.exp(-yn))  # logit mode: y = logit(p), p = alpha + (1 - 2 alpha) (x + u)/8
    hand_ld = (np.log(1 - 2 * 0.05) - np.log(p) - np.log(1 - p)).sum(1) - 4 * math.log(8)
    hand_log_p = (-0.5 * (a * yn + b) ** 2 - 0.5 * math.log(2 * math.pi)).sum(1) + 4 * math.log(a)
    np.testing.assert_allclose(log_weight.numpy(), hand_ld, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(bpd.numpy(), -(hand_log_p + hand_ld) / (4 * math.log(2)), rtol=1e-6)


@pytest.mark.parametrize("dims", [1, 2])
def test_uniform_bound_upper_bounds_discrete_nll(dims):
    """p(y) = N(0, I) in logit space; the discrete model puts P(x) = prod_d [Phi(y_hi) - Phi(y_lo)] on each
    unit cube (exact integral). E_u[-(log p(y) + logdet)] (5000 noise draws, std error < 2% of the gap)
    must be >= -log P(x): the dequantization bound."""
    n_bits, alpha, n = 3, 0.05, 8
    levels = torch.arange(n, dtype=torch.uint8)
    grid = torch.cartesian_prod(*[levels] * dims).reshape(-1, dims) if dims > 1 else levels[:, None]
    reps = 5000
    x = grid.repeat(reps, 1)
    with backend("cpu"):
        y, ld = F.uniform_dequantize(x, n_bits=n_bits, in_bits=n_bits, mode="logit",
                                     generator=torch.Generator().manual_seed(1))
    log_p = (-0.5 * y.double() ** 2 - 0.5 * math.log(2 * math.pi)).sum(1)
    bound = -(log_p + ld.double()).view(reps, -1).mean(0)  # per cube, nats
    q_edges = torch.arange(n + 1, dtype=torch.float64) / n
    p_edges = alpha + (1 - 2 * alpha) * q_edges
    cdf = torch.tensor(scipy.stats.norm.cdf(torch.log(p_edges / (1 - p_edges)).numpy()))
    mass = cdf[1:] - cdf[:-1]
    nll = -torch.log(mass[grid.long()]).sum(1)
    assert torch.all(bound >= nll - 1e-3), (bound - nll).min()
    assert torch.isfinite(bound).all()


# ---- modules, errors, edges ---------------------------------------------------------------------

def test_variational_dequantization_backends_agree_and_train():
    x = pixels((3, 1, 6, 6), bits=5)
    torch.manual_seed(0)
    model = dgmfast.nn.VariationalDequantization(channels=1, n_bits=5, hidden=8, context_channels=4)
    for p in model.parameters():  # leave the zero init so the flow is not the identity
        p.data.add_(0.05 * torch.randn_like(p))
    out = {}
    for be in ("torch", "cpu"):
        model.zero_grad()
        with backend(be):
            y, lw = model(x, generator=torch.Generator().manual_seed(4))
        lw.sum().backward()
        out[be] = (y, lw, [p.grad.clone() for p in model.parameters()])
        assert torch.isfinite(lw).all()
        assert ((y > -4) & (y < 4)).all()
    torch.testing.assert_close(out["cpu"][0], out["torch"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["cpu"][1], out["torch"][1], rtol=1e-5, atol=1e-3)
    for a, b in zip(out["cpu"][2], out["torch"][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    uq = dgmfast.nn.UniformDequantization(n_bits=5, in_bits=5)
    y, lw = uq(x)
    torch.testing.assert_close(uq.reverse(y), x)


def test_uniform_module_drops_bits_like_the_functional():
    """Defaults match the functional (in_bits=8): n_bits=5 on 8-bit images keeps the top 5 bits (Glow);
    positional arguments follow the issue's signature (n_bits, mode, alpha)."""
    x = pixels((2, 3, 4, 4))
    uq = dgmfast.nn.UniformDequantization(5, "centered", 0.1)
    assert (uq.n_bits, uq.mode, uq.alpha, uq.in_bits) == (5, "centered", 0.1, 8)
    with backend("cpu"):
        y, lw = uq(x, generator=torch.Generator().manual_seed(3))
        y_f, ld_f = F.uniform_dequantize(x, n_bits=5, mode="centered", generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(y, y_f, rtol=0, atol=0)
        torch.testing.assert_close(lw, ld_f, rtol=0, atol=0)
        torch.testing.assert_close(uq.reverse(y), x >> 3)


def test_bad_inputs_name_the_argument():
    x = pixels((2, 3))
    with pytest.raises(TypeError, match=r"x must be an integer tensor .*round\(\)\.to\(torch.uint8\)"):
        F.uniform_dequantize(torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"x must have values in \[0, 256\).*\[-1, "):
        F.uniform_dequantize(torch.tensor([[-1, 3]], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"values in \[0, 32\) for 5 bits, got values in \[0, 40\]"):
        F.uniform_dequantize(torch.tensor([[0, 40]], dtype=torch.uint8), n_bits=5, in_bits=5)
    for bad in (0, 17):
        with pytest.raises(ValueError, match="n_bits must be an integer in 1..16"):
            F.uniform_dequantize(x, n_bits=bad)
    with pytest.raises(ValueError, match="n_bits must be <= in_bits"):
        F.uniform_dequantize(x, n_bits=9, in_bits=8)
    for bad in (0.0, 0.5, -0.1):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 0.5\)"):
            F.uniform_dequantize(x, alpha=bad)
    with pytest.raises(ValueError, match="mode must be one of"):
        F.uniform_dequantize(x, mode="sigmoid")
    with pytest.raises(TypeError, match="dtype must be one of"):
        F.uniform_dequantize(x, dtype=torch.int32)
    with pytest.raises(ValueError, match="v must have shape"):
        F.dequantize_sigmoid_tail(x, torch.randn(2, 4))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        F.uniform_dequantize(x, generator=3)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_empty_batch(dev, be):
    x = torch.zeros(0, 3, 4, dtype=torch.uint8, device=dev)
    v = torch.zeros(0, 3, 4, device=dev, requires_grad=True)
    with backend(be):
        y, ld = F.uniform_dequantize(x)
        yt, ldt = F.dequantize_sigmoid_tail(x, v)
    assert y.shape == (0, 3, 4) and ld.shape == (0,) and yt.shape == (0, 3, 4) and ldt.shape == (0,)
    (yt.sum() + ldt.sum()).backward()
    assert v.grad.shape == v.shape


@pytest.mark.parametrize("dev,be", backend_cases())
def test_out_of_range_pixels_raise_on_every_backend(dev, be):
    """Nothing is clamped: the C++ kernels check while reading x, the other backends in the functional."""
    x = torch.tensor([[3, 300, 7]], dtype=torch.int16, device=dev)
    v = torch.zeros(1, 3, device=dev)
    with backend(be):
        with pytest.raises(ValueError, match=r"x must have values in \[0, 256\) for 8 bits, got values in \[3, 300\]"):
            F.uniform_dequantize(x)
        with pytest.raises(ValueError, match=r"x must have values in \[0, 8\) for 3 bits, got values in \[-2, 7\]"):
            F.uniform_dequantize(torch.tensor([[-2, 7]], dtype=torch.int8, device=dev), n_bits=2, in_bits=3)
        with pytest.raises(ValueError, match=r"x must have values in \[0, 32\) for 5 bits, got values in \[3, 300\]"):
            F.dequantize_sigmoid_tail(x, v, n_bits=5)
        with pytest.raises(ValueError, match="must not contain NaN"):
            F.uniform_dequantize(torch.tensor([[0.3, float("nan")]], device=dev), reverse=True)


@pytest.mark.parametrize("int_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("where", [5, 99])  # in a whole vector of the C++ map loop / in its element-wise tail
@pytest.mark.parametrize("bad", [-1, 8])
def test_out_of_range_pixel_in_a_long_row_raises(int_dtype, where, bad):
    """The C++ kernel reads 8- and 32-bit pixels as int32 vectors and the others lane by lane; rows of 100
    elements put `where` in a vector (5) or in the tail (99), and the check must see it in both."""
    if bad < 0 and int_dtype == torch.uint8:
        bad = 200
    x = pixels((2, 100), bits=3, dtype=int_dtype)
    x[1, where] = bad
    with backend("cpu"), pytest.raises(ValueError, match=r"x must have values in \[0, 8\) for 3 bits"):
        F.uniform_dequantize(x, n_bits=2, in_bits=3)
    x[1, where] = 7
    with backend("cpu"):
        y, ld = F.uniform_dequantize(x, n_bits=2, in_bits=3, generator=torch.Generator().manual_seed(3))
    with backend("torch"):
        y_ref, ld_ref = F.uniform_dequantize(x, n_bits=2, in_bits=3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld, ld_ref, rtol=1e-5, atol=1e-3)


def test_out_of_range_pixels_raise_under_torch_compile():
    """Under torch.compile the functional's eager check is skipped; the C++ kernel still refuses."""
    bad = torch.tensor([[1, 2], [40, 3]], dtype=torch.uint8)
    v = torch.zeros(2, 2)
    with backend("cpu"):
        torch._dynamo.reset()
        dequant = torch.compile(lambda x: F.uniform_dequantize(x, n_bits=5, in_bits=5)[0], fullgraph=True)
        tail = torch.compile(lambda x, v: F.dequantize_sigmoid_tail(x, v, n_bits=5)[0], fullgraph=True)
        assert dequant(bad % 32).shape == (2, 2)
        with pytest.raises(ValueError, match=r"x must have values in \[0, 32\) for 5 bits, got values in \[1, 40\]"):
            dequant(bad)
        with pytest.raises(ValueError, match=r"x must have values in \[0, 32\) for 5 bits"):
            tail(bad, v)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_gaussian_log_prob_is_of_the_returned_eps(dev, be, dtype):
    """log_prob is the density of the eps actually returned (rounded to dtype), as the noise flow sees it."""
    with backend(be):
        eps, lp = F.gaussian_sample_log_prob((3, 2, 50), generator=torch.Generator().manual_seed(8), dtype=dtype,
                                             device=dev)
    assert eps.dtype == dtype and lp.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-6  # float32 sums of 100 terms, |log_prob| ~ 140
    torch.testing.assert_close(lp.double(), ref.gaussian_log_prob(eps.double()), rtol=tol, atol=tol)


def test_consecutive_calls_of_one_generator_are_uncorrelated():
    """One generator, two calls: fresh seeds, |r| < 5/sqrt(n) (5 sigma) at n = 1e6; the cube of x stays put."""
    g = torch.Generator().manual_seed(21)
    x = torch.zeros(1, 1_000_000, dtype=torch.uint8)
    with backend("cpu"):
        u1, u2 = (F.uniform_dequantize(x, mode="unit", generator=g)[0].double().flatten() * 256 for _ in range(2))
        e1, e2 = (F.gaussian_sample_log_prob((1, 1_000_000), generator=g)[0].double().flatten() for _ in range(2))
    bound = 5 / math.sqrt(x.numel())
    assert abs(np.corrcoef(u1.numpy(), u2.numpy())[0, 1]) < bound
    assert abs(np.corrcoef(e1.numpy(), e2.numpy())[0, 1]) < bound
    assert abs(np.corrcoef(u1.numpy(), e1.numpy())[0, 1]) < bound


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # interpreter: sigmoid's exp(-v) -> inf -> 0
@pytest.mark.parametrize("dev,be", backend_cases())
def test_sigmoid_tail_noncontiguous_zero_stride_grads_and_extreme_v(dev, be):
    x = pixels((4, 6, 3), bits=4, device=dev).transpose(1, 2)          # not row-contiguous
    v = torch.linspace(-1e4, 1e4, 72, dtype=torch.float64).view(4, 6, 3).transpose(1, 2).to(dev)
    v = v.float().requires_grad_()
    with backend(be):
        y, ld = F.dequantize_sigmoid_tail(x, v, n_bits=4)
    (y.sum() + ld.sum()).backward()                                     # zero-stride incoming grads
    v64 = v.detach().double().requires_grad_()
    y64, ld64 = ref.dequantize_sigmoid_tail(x, v64, n_bits=4)
    (y64.sum() + ld64.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(ld).all() and torch.isfinite(v.grad).all()
    assert_close(y, y64, name="y")
    assert_close(ld, ld64, rtol=1e-6, atol=1e-2, name="logdet")       # |ld| ~ 1e5: float32 sums
    assert_close(v.grad, v64.grad, rtol=1e-4, atol=1e-5, name="grad_v")


def test_uniform_dequantize_output_has_no_gradient_and_bits_per_dim_checks_num_dims():
    """x is data: y and logdet are constants for autograd (integer x cannot require grad)."""
    y, ld = F.uniform_dequantize(pixels((2, 3)))
    assert not y.requires_grad and not ld.requires_grad and y.grad_fn is None
    with pytest.raises(ValueError, match="num_dims must be a positive integer"):
        F.bits_per_dim(torch.zeros(2), torch.zeros(2), 0)


@pytest.mark.parametrize("dev,be", KERNEL_CASES)
@pytest.mark.parametrize("alpha", [1e-39, 1e-12, 1e-5, 0.05, 0.499])  # 1e-39: subnormal in float32
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logit_logdet_long_rows_and_extreme_alpha(dev, be, alpha, dtype):
    """Rows longer than a chunk (the CPU loop multiplies p(1-p) factors before one log) with pixels at both
    ends of the range, so p reaches alpha and 1 - alpha."""
    x = pixels((3, 2100), device=dev)
    x[:, :300], x[:, 300:600] = 0, 255
    with backend(be):
        y, ld = F.uniform_dequantize(x, alpha=alpha, dtype=dtype, generator=torch.Generator().manual_seed(12))
    seed = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(12)))
    noise = philox_uniform(x.numel(), seed, device=dev).view(x.shape).double()
    y64, ld64 = ref.uniform_dequantize(x, noise, alpha=alpha, dtype=torch.float64)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    if dtype == torch.float64:
        assert_close(y, y64, rtol=1e-10, atol=1e-10, name="y")
        assert_close(ld, ld64, rtol=1e-10, atol=1e-8, name="logdet")
        return
    # float32: near p = 1 - alpha with tiny alpha, y = logit(p) amplifies the rounding of q by 1/(1-p);
    # the bound is the error of the reference run in float32 itself
    y32, ld32 = ref.uniform_dequantize(x, noise.float(), alpha=alpha, dtype=torch.float32)
    for name, out, exact, low in (("y", y, y64, y32), ("logdet", ld, ld64, ld32)):
        err, ref_err = (out.double() - exact).abs(), (low.double() - exact).abs()
        assert (err <= 2 * ref_err + 1e-5 * (1 + exact.abs())).all(), f"{name}: {err.max():.3g} vs {ref_err.max():.3g}"


@pytest.mark.parametrize("dev,be", [c for c in backend_cases() if c.id != "cpu-triton"])  # 1e6 elements: not
def test_unit_mode_stays_inside_the_cube(dev, be):                                         # for the interpreter
    """x + u must stay below x + 1: in float32, 255 + u rounds up to 256 for u > 1 - 2^-17, which would move the
    point into the next cube. With 1e6 draws about 7 such u occur (asserted); unit mode must round-trip exactly."""
    n, seed = 1_000_000, 31
    x = torch.full((1, n), 255, dtype=torch.uint8, device=dev)
    drawn = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(seed)))
    assert (philox_uniform(n, drawn) > 1 - 2.0**-17).sum() >= 1
    with backend(be):
        y, _ = F.uniform_dequantize(x, mode="unit", generator=torch.Generator().manual_seed(seed))
        x_back, _ = F.uniform_dequantize(y, mode="unit", reverse=True)
    assert y.max() < 1
    torch.testing.assert_close(x_back, x, rtol=0, atol=0)
