"""ActNorm (SPEC §3): every backend against the float64 reference, and the module's data-dependent init."""
import pytest
import torch

import dgmfast
from dgmfast import functional as F
from dgmfast.reference import actnorm as ref
from tests.utils import (HALF_DTYPES, assert_close, assert_compiled_matches_eager, backend, backend_cases,
                         brute_force_logdet)

# [B, C] vectors; odd sizes; planes longer than one CPU tile (16384) and one interpreter block (8192);
# many samples per tile along B
SHAPES = [(5, 7), (3, 5, 7), (2, 3, 130, 131), (1, 1, 1, 1), (300, 2, 3, 3)]


def make_inputs(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    loc, log_scale = (torch.randn(shape[1], generator=g, dtype=torch.float64) for _ in range(2))
    return x.to(device, dtype), loc.to(device, dtype), log_scale.to(device, dtype)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_backward_match_reference(dev, be, reverse):
    for shape in SHAPES:
        x, loc, log_scale = make_inputs(shape, device=dev)
        w = torch.randn(shape, dtype=torch.float64, device=dev)
        v = torch.randn(shape[0], dtype=torch.float64, device=dev)
        outs = {}
        for name, dtype in (("kernel", torch.float32), ("ref", torch.float64)):
            xs = [a.detach().to(dtype).requires_grad_() for a in (x, loc, log_scale)]
            with backend(be if name == "kernel" else "torch"):
                y, ld = F.actnorm(*xs, reverse=reverse)
            ((y.double() * w).sum() + (ld.double() * v).sum()).backward()
            outs[name] = (y, ld, *[a.grad for a in xs])
        assert outs["kernel"][1].dtype == torch.float32
        n = x.numel() / max(x.shape[1], 1)  # elements reduced per channel
        for i, nm in enumerate(["y", "logdet", "grad_x", "grad_loc", "grad_log_scale"]):
            atol = 2e-5 * (1 if nm in ("y", "grad_x") else n ** 0.5 * 4)
            assert_close(outs["kernel"][i], outs["ref"][i], rtol=1e-5, atol=atol, name=f"{nm} {shape}")


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_dtypes(dev, be, dtype, reverse):
    x, loc, log_scale = make_inputs((4, 3, 9, 11), dtype=dtype, device=dev, seed=1)
    xs = [a.clone().requires_grad_() for a in (x, loc, log_scale)]
    with backend(be):
        y, ld = F.actnorm(*xs, reverse=reverse)
    assert y.dtype == dtype and ld.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (y.float().square().sum() + ld.sum()).backward()
    xs64 = [a.detach().double().requires_grad_() for a in (x, loc, log_scale)]
    y64, ld64 = ref.actnorm(*xs64, reverse=reverse)
    (y64.square().sum() + ld64.sum()).backward()
    xsl = [a.detach().clone().requires_grad_() for a in (x, loc, log_scale)]
    with backend("torch"):
        yl, ldl = F.actnorm(*xsl, reverse=reverse)
    (yl.float().square().sum() + ldl.sum()).backward()
    # the Triton interpreter truncates instead of rounding when it stores bfloat16: allow 1 ulp there
    ulp = (lambda t: t.abs().max().item() * 2**-7) if (dtype == torch.bfloat16 and be == "triton") else (lambda t: 0)
    assert_close(y, y64, low_ref=yl, atol=1e-2 + ulp(y64), name="y")
    assert_close(ld.to(dtype) if dtype in HALF_DTYPES else ld, ld64, low_ref=ldl.to(dtype), atol=0.5, name="logdet")
    for a, a64, al, nm in zip(xs, xs64, xsl, ["x", "loc", "log_scale"]):
        # channel sums of 400 products: allow the half-precision rounding of the inputs' products
        atol = 5e-2 if nm == "x" else 2.0
        assert_close(a.grad, a64.grad, low_ref=al.grad, atol=atol + ulp(a64.grad), name=f"grad_{nm}")


@pytest.mark.parametrize("dev,be", backend_cases())
def test_logdet_equals_bruteforce_jacobian(dev, be):
    x, loc, log_scale = make_inputs((2, 3, 2, 2), dtype=torch.float64, device=dev, seed=2)
    with backend(be):
        for reverse in (False, True):
            _, ld = F.actnorm(x, loc, log_scale, reverse=reverse)
            fn = lambda v: F.actnorm(v, loc, log_scale, reverse=reverse)[0]  # noqa: E731
            expected = torch.cat([brute_force_logdet(fn, x[b:b + 1]) for b in range(x.shape[0])])
            torch.testing.assert_close(ld, expected.to(ld.device), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (7, 5)])
def test_inverse_roundtrip(dev, be, shape):
    x, loc, log_scale = make_inputs(shape, device=dev, seed=3)
    with backend(be):
        y, ld = F.actnorm(x, loc, log_scale)
        x_back, ld_back = F.actnorm(y, loc, log_scale, reverse=True)
    torch.testing.assert_close(x_back, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld_back, -ld)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4), (3, 2)])
def test_gradcheck_reference_and_cpu_kernel(reverse, shape):
    xs = [a.requires_grad_() for a in make_inputs(shape, dtype=torch.float64, seed=4)]
    assert torch.autograd.gradcheck(lambda *a: ref.actnorm(*a, reverse=reverse), xs)
    with backend("cpu"):
        assert torch.autograd.gradcheck(lambda *a: F.actnorm(*a, reverse=reverse), xs)


@pytest.mark.parametrize("dev,be", [c for c in backend_cases() if c.values[1] != "torch"])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck(dev, be, reverse):
    x, loc, log_scale = (a.requires_grad_() for a in make_inputs((2, 3, 5), device=dev, seed=5))
    torch.library.opcheck(torch.ops.dgmfast.actnorm_fwd, (x, loc, log_scale, reverse, be))
    gy, gld = torch.randn_like(x), torch.randn(2, device=dev)
    x, loc, log_scale = x.detach(), loc.detach(), log_scale.detach()
    torch.library.opcheck(torch.ops.dgmfast.actnorm_bwd, (x, loc, log_scale, gy, gld, reverse, be))


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_torch_compile_fullgraph(be):
    x, loc, log_scale = (a.requires_grad_() for a in make_inputs((4, 6, 8, 8), seed=6))

    def step(x, loc, log_scale):
        y, ld = F.actnorm(x, loc, log_scale)
        return (y * y).sum() - ld.sum()

    assert_compiled_matches_eager(step, (x, loc, log_scale), be)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_noncontiguous_and_zero_stride_grads(dev, be):
    cases = [
        torch.randn(3, 6, 5, 4, device=dev).permute(0, 3, 2, 1),  # [3, 4, 5, 6], planes not contiguous
        torch.randn(4, 8, 5, 6, device=dev)[:, ::2],              # channel stride 60: planes read in place
        torch.randn(4, 9, device=dev)[:, ::2],                    # [B, C] with a channel stride
        torch.randn(5, 4, device=dev).t(),                        # [4, 5] transposed
    ]
    for base in cases:
        params = torch.randn(2, 2 * base.shape[1], device=dev)
        loc, log_scale = params[0, ::2], params[1, 1::2]  # strided parameter views
        xr = [a.detach().requires_grad_() for a in (base, loc, log_scale)]  # detach keeps the strides
        with backend(be):
            y, ld = F.actnorm(*xr)
        (y.sum() + ld.sum()).backward()  # y.sum() hands the op an expanded (zero-stride) gradient
        x64 = [a.detach().double().requires_grad_() for a in (base, loc, log_scale)]
        y64, ld64 = ref.actnorm(*x64)
        (y64.sum() + ld64.sum()).backward()
        assert_close(y, y64, name=f"y {tuple(base.shape)}")
        assert_close(ld, ld64, atol=1e-4, name="logdet")
        for a, b in zip(xr, x64):
            assert_close(a.grad, b.grad, atol=1e-4, name="grad")


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 2, 0), (0, 2), (2, 0, 3)])
def test_empty(dev, be, shape):
    x, loc, log_scale = (a.requires_grad_() for a in make_inputs(shape, device=dev))
    with backend(be):
        y, ld = F.actnorm(x, loc, log_scale)
    assert y.shape == x.shape and ld.shape == (shape[0],)
    (y.sum() + 2 * ld.sum()).backward()
    assert x.grad.shape == x.shape and (loc.grad == 0).all()
    # logdet = S * sum(log_scale) for every sample: its gradient is 2 * B * S per channel
    expected = 2.0 * shape[0] * (shape[2] if len(shape) > 2 else 1)
    assert (log_scale.grad == expected).all()


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("reverse", [False, True])
def test_extreme_values_stay_finite(dev, be, reverse):
    x = torch.tensor([[1e4, -1e4, 3.0, 0.0], [-1e4, 1e4, 1e-30, 5.0]], device=dev)[:, :, None]
    loc = torch.tensor([-1e4, 1e4, 0.0, 2.0], device=dev)
    log_scale = torch.tensor([-60.0, 10.0, 60.0, -10.0], device=dev)
    xs = [a.clone().requires_grad_() for a in (x, loc, log_scale)]
    with backend(be):
        y, ld = F.actnorm(*xs, reverse=reverse)
    (y.sum() + ld.sum()).backward()
    for v in (y, ld, *[a.grad for a in xs]):  # |x|, |loc| up to 1e4 and exp(+-60): all representable
        assert torch.isfinite(v).all(), v
    y64, ld64 = ref.actnorm(x.double(), loc.double(), log_scale.double(), reverse=reverse)
    assert_close(y, y64, rtol=1e-5, atol=1e-3, name="y")


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_parameter_gradients_are_deterministic(be):
    x, loc, log_scale = make_inputs((32, 4, 40, 50), seed=7)  # 16 CPU tasks
    gy = torch.randn_like(x)
    results = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        xs = [a.detach().requires_grad_() for a in (x, loc, log_scale)]
        with backend(be):
            y, ld = F.actnorm(*xs)
        ((y * gy).sum() + ld.sum()).backward()
        results.append([a.grad.clone() for a in xs])
    torch.set_num_threads(2)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_bad_inputs_name_the_argument():
    x, p = torch.randn(2, 3, 4), torch.zeros(3)
    with pytest.raises(ValueError, match=r"loc must have shape \(3,\)"):
        F.actnorm(x, torch.zeros(4), p)
    with pytest.raises(ValueError, match=r"log_scale must have shape \(3,\)"):
        F.actnorm(x, p, torch.zeros(3, 1))
    with pytest.raises(TypeError, match="log_scale must have dtype"):
        F.actnorm(x, p, p.double())
    with pytest.raises(ValueError, match="loc must be on device"):
        F.actnorm(x, p.to("meta"), p)
    with pytest.raises(ValueError, match="at least 2 dim"):
        F.actnorm(torch.randn(3), p, p)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        F.actnorm(torch.ones(2, 3, dtype=torch.int64), p, p)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        F.actnorm([1.0], p, p)


# ---- module --------------------------------------------------------------------------------------

@pytest.mark.parametrize("be", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("shape", [(16, 3, 5, 6), (64, 4)])
def test_module_data_dependent_init(be, shape):
    torch.manual_seed(0)
    x = 3.0 + 2.5 * torch.randn(shape, dtype=torch.float64)
    layer = dgmfast.nn.ActNorm(shape[1]).double()
    assert not layer.initialized
    with backend(be):
        y, ld = layer(x)
    assert layer.initialized
    dims = [0] + list(range(2, x.dim()))
    torch.testing.assert_close(y.mean(dims), torch.zeros(shape[1], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.std(dims, correction=0), torch.ones(shape[1], dtype=torch.float64), atol=1e-5,
                               rtol=0)
    plane = x[0, 0].numel()
    torch.testing.assert_close(ld, plane * layer.log_scale.sum().expand(shape[0]))
    with backend(be):  # a second batch does not re-initialize
        layer(x + 1.0)
    torch.testing.assert_close(layer.loc.detach(), -x.transpose(0, 1).reshape(shape[1], -1).mean(1))


def test_module_init_only_in_training_forward():
    x = torch.randn(8, 3, 4, 4)
    layer = dgmfast.nn.ActNorm(3).eval()
    y, _ = layer(x)
    assert not layer.initialized and torch.equal(y, x)
    layer.train()
    layer(x, reverse=True)
    assert not layer.initialized
    layer(x)
    assert layer.initialized


def test_module_zero_variance_init_raises_naming_the_channel():
    x = torch.randn(4, 3, 5, 5)
    x[:, 1] = 0.7
    layer = dgmfast.nn.ActNorm(3)
    with pytest.raises(ValueError, match=r"channel\(s\) \[1\].*zero variance"):
        layer(x)
    assert not layer.initialized and (layer.log_scale == 0).all()
    with pytest.raises(ValueError, match=r"channel\(s\) \[0, 1, 2\]"):
        layer(torch.randn(1, 3, 1, 1))  # one element per channel
    x[:, 1] = torch.randn(4, 5, 5)
    x[0, 2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"channel\(s\) \[2\].*non-finite"):
        layer(x)


def test_module_state_dict_round_trip():
    torch.manual_seed(1)
    a = dgmfast.nn.ActNorm(3)
    a(torch.randn(10, 3, 4, 4))
    b = dgmfast.nn.ActNorm(3)
    b.load_state_dict(a.state_dict())
    assert b.initialized
    x = torch.randn(2, 3, 4, 4)
    y_b, _ = b(x)  # training mode: no re-initialization after loading an initialized state
    torch.testing.assert_close(y_b, a(x)[0])
    c = dgmfast.nn.ActNorm(3)
    c(torch.randn(10, 3, 4, 4))
    c.load_state_dict(dgmfast.nn.ActNorm(3).state_dict())  # loading an uninitialized state re-arms the init
    assert not c.initialized
    c(x)
    assert c.initialized
    with pytest.raises(ValueError, match=r"x must be \[B, 3, \.\.\.\]"):
        c(torch.randn(2, 4, 3))


def test_module_half_input_with_float32_parameters():
    torch.manual_seed(2)
    layer = dgmfast.nn.ActNorm(4)
    x = torch.randn(8, 4, 3, 3)
    layer(x)  # float32 init
    xb = x.to(torch.bfloat16)
    y, ld = layer(xb)
    assert y.dtype == torch.bfloat16 and ld.dtype == torch.float32
    (y.float().sum() + ld.sum()).backward()
    assert layer.loc.grad.dtype == torch.float32 and torch.isfinite(layer.log_scale.grad).all()
    y32, _ = layer(xb.float())
    assert (y.float() - y32).abs().max() <= 2**-7 * y32.abs().max()
