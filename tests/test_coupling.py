"""Affine coupling (SPEC §1): every backend against the float64 reference."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dgmfast
from dgmfast import functional as F
from dgmfast.reference import coupling as ref
from tests.utils import (HALF_DTYPES, assert_close, assert_compiled_matches_eager, backend, backend_cases,
                         brute_force_logdet)

SCALE_MAPS = ["exp", "tanh", "sigmoid"]
ORDERS = ["scale_shift", "shift_scale"]
# odd sizes; a row longer than one CPU chunk (16384) and one interpreter block (8192)
SHAPES = [(3, 5, 7), (2, 5, 64, 60), (1, 1)]


def make_inputs(shape, dtype=torch.float32, device="cpu", seed=0, r_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x, r, t = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    return x.to(device, dtype), (r_scale * r).to(device, dtype), t.to(device, dtype)


def kwargs_for(scale_map, order, eps=0.0):
    return dict(scale_map=scale_map, order=order, clamp=1.5 if scale_map == "tanh" else 1.0, eps=eps)


def run_ref64(x, r, t, reverse, **kw):
    return ref.affine_coupling(x.double(), r.double(), t.double(), reverse=reverse, **kw)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("scale_map,eps", [("exp", 0.0), ("tanh", 0.0), ("sigmoid", 0.0), ("sigmoid", 1e-3)])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_backward_match_reference(dev, be, scale_map, eps, order, reverse):
    kw = kwargs_for(scale_map, order, eps)
    for shape in SHAPES:
        x, r, t = make_inputs(shape, device=dev)
        w = torch.randn(shape, dtype=torch.float64, device=dev)
        v = torch.randn(shape[0], dtype=torch.float64, device=dev)
        outs = {}
        for name, dtype in (("kernel", torch.float32), ("ref", torch.float64)):
            xs = [a.detach().to(dtype).requires_grad_() for a in (x, r, t)]
            with backend(be if name == "kernel" else "torch"):
                y, ld = F.affine_coupling(*xs, reverse=reverse, **kw)
            ((y.double() * w).sum() + (ld.double() * v).sum()).backward()
            outs[name] = (y, ld, *[a.grad for a in xs])
        assert outs["kernel"][1].dtype == torch.float32
        for i, nm in enumerate(["y", "logdet", "grad_x", "grad_log_scale", "grad_shift"]):
            atol = 2e-5 * (shape[-1] if nm == "logdet" else 1) ** 0.5 * 4
            assert_close(outs["kernel"][i], outs["ref"][i], atol=atol, name=f"{nm} {shape}")


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_dtypes(dev, be, dtype, reverse):
    kw = kwargs_for("sigmoid", "shift_scale")
    x, r, t = make_inputs((4, 3, 9, 11), dtype=dtype, device=dev, seed=1)
    xs = [a.clone().requires_grad_() for a in (x, r, t)]
    with backend(be):
        y, ld = F.affine_coupling(*xs, reverse=reverse, **kw)
    assert y.dtype == dtype and ld.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (y.float().square().sum() + ld.sum()).backward()
    xs64 = [a.detach().double().requires_grad_() for a in (x, r, t)]
    y64, ld64 = ref.affine_coupling(*xs64, reverse=reverse, **kw)
    (y64.square().sum() + ld64.sum()).backward()
    xsl = [a.detach().clone().requires_grad_() for a in (x, r, t)]
    with backend("torch"):
        yl, ldl = F.affine_coupling(*xsl, reverse=reverse, **kw)
    (yl.float().square().sum() + ldl.sum()).backward()
    assert_close(y, y64, low_ref=yl, name="y")
    assert_close(ld.to(dtype) if dtype in HALF_DTYPES else ld, ld64, low_ref=ldl.to(dtype), atol=0.5, name="logdet")
    for a, a64, al, nm in zip(xs, xs64, xsl, ["x", "log_scale", "shift"]):
        assert_close(a.grad, a64.grad, low_ref=al.grad, atol=5e-2, name=f"grad_{nm}")


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("scale_map", SCALE_MAPS)
@pytest.mark.parametrize("order", ORDERS)
def test_logdet_equals_bruteforce_jacobian(dev, be, scale_map, order):
    x, r, t = make_inputs((2, 3, 2), dtype=torch.float64, device=dev, seed=2)
    kw = kwargs_for(scale_map, order)
    with backend(be):
        for reverse in (False, True):
            _, ld = F.affine_coupling(x, r, t, reverse=reverse, **kw)
            per = []
            for b in range(x.shape[0]):
                fn = lambda v, b=b: F.affine_coupling(v, r[b:b + 1], t[b:b + 1], reverse=reverse, **kw)[0]
                per.append(brute_force_logdet(fn, x[b:b + 1]))
            expected = torch.cat(per)
            torch.testing.assert_close(ld, expected.to(ld.device), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("scale_map", SCALE_MAPS)
@pytest.mark.parametrize("order", ORDERS)
def test_inverse_roundtrip(dev, be, scale_map, order):
    x, r, t = make_inputs((3, 4, 5, 6), device=dev, seed=3, r_scale=2.0)
    kw = kwargs_for(scale_map, order)
    with backend(be):
        y, ld = F.affine_coupling(x, r, t, **kw)
        x_back, ld_back = F.affine_coupling(y, r, t, reverse=True, **kw)
    torch.testing.assert_close(x_back, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ld_back, -ld)


@pytest.mark.parametrize("scale_map,eps", [("exp", 0.0), ("tanh", 0.0), ("sigmoid", 0.0), ("sigmoid", 1e-3)])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_reference_and_cpu_kernel(scale_map, eps, order, reverse):
    x, r, t = (a.requires_grad_() for a in make_inputs((2, 3, 4), dtype=torch.float64, seed=4))
    kw = kwargs_for(scale_map, order, eps)
    assert torch.autograd.gradcheck(lambda *a: ref.affine_coupling(*a, reverse=reverse, **kw), (x, r, t))
    with backend("cpu"):
        assert torch.autograd.gradcheck(lambda *a: F.affine_coupling(*a, reverse=reverse, **kw), (x, r, t))


@pytest.mark.parametrize("dev,be", [c for c in backend_cases() if c.values[1] != "torch"])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck(dev, be, reverse):
    x, r, t = (a.requires_grad_() for a in make_inputs((2, 3, 5), device=dev, seed=5))
    args = (x, r, t, 2, 1.0, 0.0, reverse, reverse, be)
    torch.library.opcheck(torch.ops.dgmfast.affine_coupling_fwd, args)
    gy, gld = torch.randn_like(x), torch.randn(2, device=dev)
    x, r, t = x.detach(), r.detach(), t.detach()
    torch.library.opcheck(torch.ops.dgmfast.affine_coupling_bwd, (x, r, t, gy, gld, 2, 1.0, 0.0, reverse, reverse, be))


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_torch_compile_fullgraph(be):
    x, r, t = (a.requires_grad_() for a in make_inputs((4, 6, 8, 8), seed=6))
    kw = kwargs_for("tanh", "shift_scale")

    def step(x, r, t):
        y, ld = F.affine_coupling(x, r, t, **kw)
        return (y * y).sum() - ld.sum()

    assert_compiled_matches_eager(step, (x, r, t), be)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_noncontiguous_and_zero_stride_grads(dev, be):
    kw = kwargs_for("sigmoid", "scale_shift")
    h = torch.randn(3, 8, 5, 6, device=dev)
    base = torch.randn(3, 6, 5, 4, device=dev).permute(0, 3, 2, 1)  # [3, 4, 5, 6], not row-contiguous
    r, t = h.chunk(2, dim=1)  # row-contiguous views with a batch stride
    with backend(be):
        y, ld = F.affine_coupling(base, r, t, **kw)
    y64, ld64 = ref.affine_coupling(base.double(), r.double(), t.double(), **kw)
    assert_close(y, y64, name="y")
    assert_close(ld, ld64, atol=1e-4, name="logdet")
    # y.sum().backward() hands the op an expanded (zero-stride) gradient
    xr = [a.detach().clone().requires_grad_() for a in (base, r, t)]
    with backend(be):
        y, ld = F.affine_coupling(*xr, **kw)
    (y.sum() + ld.sum()).backward()
    x64 = [a.detach().double().requires_grad_() for a in (base, r, t)]
    y64, ld64 = ref.affine_coupling(*x64, **kw)
    (y64.sum() + ld64.sum()).backward()
    for a, b in zip(xr, x64):
        assert_close(a.grad, b.grad, name="grad")


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 0), (0,)])
def test_empty(dev, be, shape):
    x, r, t = (a.requires_grad_() for a in make_inputs(shape, device=dev))
    with backend(be):
        y, ld = F.affine_coupling(x, r, t, scale_map="tanh")
    assert y.shape == x.shape and ld.shape == (shape[0],)
    assert (ld == 0).all()
    (y.sum() + ld.sum()).backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("scale_map", ["tanh", "sigmoid"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("reverse", [False, True])
def test_extreme_values_stay_finite(dev, be, scale_map, order, reverse):
    # The reverse of the sigmoid map multiplies by 1/sigmoid(r + 2) ~ exp(-r): below r = -30 the
    # true result exceeds float32, so the sweep stops there (the forward takes r = -1e4).
    r_min = -30.0 if (scale_map == "sigmoid" and reverse) else -1e4
    r = torch.tensor([[r_min, -100.0 * (r_min < -100), -30.0, 0.0, 30.0, 100.0, 1e4]], device=dev).repeat(2, 1)
    x = torch.tensor([[1e4, -1e4, 3.0, -2.0, 1e4, -1e4, 0.5]], device=dev).repeat(2, 1)
    t = torch.full_like(x, 7.0)
    xs = [a.clone().requires_grad_() for a in (x, r, t)]
    with backend(be):
        y, ld = F.affine_coupling(*xs, scale_map=scale_map, order=order, reverse=reverse)
    (y.sum() + ld.sum()).backward()
    for v in (y, ld, *[a.grad for a in xs]):
        assert torch.isfinite(v).all(), v
    y64, ld64 = ref.affine_coupling(x.double(), r.double(), t.double(), scale_map=scale_map, order=order,
                                    reverse=reverse)
    assert_close(y, y64, rtol=1e-5, atol=1e-3, name="y")


def test_bad_inputs_name_the_argument():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="log_scale must have shape"):
        F.affine_coupling(x, torch.randn(2, 4), x)
    with pytest.raises(TypeError, match="shift must have dtype"):
        F.affine_coupling(x, x, x.double())
    with pytest.raises(ValueError, match="shift must be on device"):
        F.affine_coupling(x, x, x.to("meta"))
    with pytest.raises(ValueError, match="scale_map must be one of"):
        F.affine_coupling(x, x, x, scale_map="softplus")
    with pytest.raises(ValueError, match="order must be one of"):
        F.affine_coupling(x, x, x, order="both")
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        F.affine_coupling(torch.ones(2, 3, dtype=torch.int64), x, x)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        F.affine_coupling([1.0], x, x)
    with pytest.raises(ValueError, match="clamp must be > 0"):
        F.affine_coupling(x, x, x, scale_map="tanh", clamp=0.0)
    with pytest.raises(ValueError, match="at least 1 dim"):
        F.affine_coupling(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))


# ---- module --------------------------------------------------------------------------------------

def _conv_conditioner(c_in, c_out, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(c_in, 8, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv2d(8, c_out, 3, padding=1))


@pytest.mark.parametrize("mask,parity", [("channel", 0), ("channel", 1), ("checkerboard", 0), ("checkerboard", 1)])
@pytest.mark.parametrize("be", ["torch", "cpu", "triton"])
def test_module_inverse_and_logdet(mask, parity, be):
    C = 3
    c_b = C - C // 2 if parity == 0 else C // 2
    c_in = C // 2 if parity == 0 else C - C // 2
    cond = _conv_conditioner(C, 2 * C) if mask == "checkerboard" else _conv_conditioner(c_in, 2 * c_b)
    layer = dgmfast.nn.AffineCoupling(cond, mask=mask, parity=parity, scale_map="sigmoid", order="shift_scale").double()
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
    cond = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6))
    layer = dgmfast.nn.AffineCoupling(cond, scale_map="tanh")
    x = torch.randn(5, 6)
    grads = {}
    for be in ("torch", "cpu"):
        layer.zero_grad()
        with backend(be):
            y, ld = layer(x)
        (0.5 * y.square().sum() - ld.sum()).backward()
        grads[be] = [p.grad.clone() for p in layer.parameters()]
    for a, b in zip(grads["cpu"], grads["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---- dispatch ------------------------------------------------------------------------------------

def test_dispatch_env_context_and_refusals(monkeypatch):
    assert dgmfast.select_backend("affine_coupling", torch.device("cpu")) == "cpu"
    monkeypatch.setenv("DGMFAST_BACKEND", "torch")
    assert dgmfast.select_backend("affine_coupling", torch.device("cpu")) == "torch"
    with dgmfast.use_backend("cpu"):
        assert dgmfast.select_backend("affine_coupling", torch.device("cpu")) == "cpu"
    with dgmfast.use_backend("cuda"), pytest.raises(RuntimeError, match="cuda backend runs CUDA tensors"):
        F.affine_coupling(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3))
    monkeypatch.setenv("DGMFAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="backend must be one of"):
        dgmfast.select_backend("affine_coupling", torch.device("cpu"))


def test_info_runs():
    out = subprocess.run([sys.executable, "-m", "dgmfast.info"], capture_output=True, text=True, check=True).stdout
    assert "affine_coupling" in out and "extension dgmfast._C" in out


def test_works_without_extension():
    """A build without dgmfast._C (DGMFAST_SKIP_EXT=1) imports, warns once, and runs the reference."""
    code = textwrap.dedent("""
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "dgmfast._C":
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        import torch, dgmfast
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            x = torch.randn(2, 3)
            y, ld = dgmfast.functional.affine_coupling(x, x, x)
            y, ld = dgmfast.functional.affine_coupling(x, x, x)
        msgs = [str(m.message) for m in w if issubclass(m.category, dgmfast.DgmfastWarning)]
        assert not dgmfast.has_extension()
        assert len(msgs) == 1 and "not available" in msgs[0], msgs
        torch.testing.assert_close(y, x * x.exp() + x)
        try:
            with dgmfast.use_backend("cpu"):
                dgmfast.functional.affine_coupling(x, x, x)
        except RuntimeError as e:
            assert "dgmfast._C is not available" in str(e)
        else:
            raise AssertionError("forcing cpu without the extension must raise")
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "DGMFAST_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
