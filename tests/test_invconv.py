"""Invertible 1x1 convolution (SPEC §4): the fused LU-form op on every backend against the float64 reference,
log-dets against the brute-force Jacobian, inverses, and the per-weight-version cache of the dense (lu=False)
form."""
import pytest
import torch

import dgmfast
from dgmfast import functional as F
from dgmfast.reference import invconv as ref
from tests.utils import (HALF_DTYPES, assert_close, assert_compiled_matches_eager, backend, backend_cases,
                         brute_force_logdet, needs_extension)


def make_layer(c, lu, seed=0):
    return dgmfast.nn.InvConv1x1(c, lu=lu, generator=torch.Generator().manual_seed(seed)).double()


def perturb(layer, seed=1, scale=0.3):
    """Move every parameter away from the orthogonal init (so log|det W| != 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("lu", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (3, 4), (2, 3, 2)])
def test_logdet_equals_bruteforce_jacobian(lu, shape):
    layer = make_layer(shape[1], lu)
    perturb(layer)
    x = torch.randn(shape, dtype=torch.float64)
    for reverse in (False, True):
        _, ld = layer(x, reverse=reverse)
        expected = torch.cat([brute_force_logdet(lambda v: layer(v, reverse=reverse)[0], x[b:b + 1])
                              for b in range(shape[0])])
        torch.testing.assert_close(ld, expected, rtol=1e-9, atol=1e-9)
    w = layer.weight_matrix().detach()
    torch.testing.assert_close(layer.log_abs_det().detach(), torch.linalg.slogdet(w)[1])


@pytest.mark.parametrize("lu", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reverse_of_forward_is_identity(lu, dtype):
    layer = make_layer(6, lu).to(dtype)
    perturb(layer)
    x = torch.randn(3, 6, 5, 7, dtype=dtype)
    y, ld = layer(x)
    x_back, ld_back = layer(y, reverse=True)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(x_back, x, rtol=tol, atol=tol)
    torch.testing.assert_close(ld_back, -ld)
    assert ld.dtype == dtype and ld.shape == (3,)


@pytest.mark.parametrize("lu", [True, False])
def test_orthogonal_init_is_reproducible(lu):
    a, b = make_layer(5, lu, seed=3), make_layer(5, lu, seed=3)
    w = a.weight_matrix().detach()
    torch.testing.assert_close(w @ w.T, torch.eye(5, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(w, b.weight_matrix().detach())
    assert not torch.equal(w, make_layer(5, lu, seed=4).weight_matrix().detach())
    assert abs(a.log_abs_det().item()) < 1e-6  # |det| of an orthogonal matrix is 1


@pytest.mark.parametrize("lu", [True, False])
def test_gradients_match_autograd_of_slogdet_and_inverse(lu):
    layer = make_layer(4, lu)
    perturb(layer)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    params = list(layer.parameters())
    for reverse in (False, True):
        y, ld = layer(x, reverse=reverse)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum() + 0.7 * ld.sum()
        grads = torch.autograd.grad(loss, params)
        w = layer.weight_matrix()  # plain autograd through W, slogdet and inv
        mat = torch.linalg.inv(w) if reverse else w
        y2 = torch.einsum("ij,bjhw->bihw", mat, x)
        ld2 = (-1 if reverse else 1) * 9 * torch.linalg.slogdet(w)[1]
        loss2 = (y2 * torch.linspace(-1, 1, y2.numel(), dtype=torch.float64).view_as(y2)).sum() + 0.7 * 2 * ld2
        for g, g2 in zip(grads, torch.autograd.grad(loss2, params)):
            torch.testing.assert_close(g, g2)


def test_dense_cache_has_no_double_backward():
    """The dense layer's log-det and inverse come from a cached float64 factorization whose backward is a
    constant: create_graph=True through them raises instead of giving a second derivative of 0. The LU
    layer is plain autograd and differentiates twice."""
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    for reverse in (False, True):
        layer = make_layer(4, lu=False)
        with backend("torch"):  # the mixing is plain autograd: only the cache is first-order
            y, ld = layer(x, reverse=reverse)
        with pytest.raises(RuntimeError, match="InvConv1x1's cached .* has no double backward"):
            torch.autograd.grad(ld.sum() + y.sum(), layer.weight, create_graph=True)
        y, ld = layer(x, reverse=reverse)  # the fused mixing is first-order too
        with pytest.raises(RuntimeError, match="has no double backward"):
            torch.autograd.grad((y * y).sum(), layer.weight, create_graph=True)
        assert torch.autograd.grad(ld.sum() + y.sum(), layer.weight)[0].shape == (4, 4)  # first order works
    lu_layer = make_layer(4, lu=True)
    with backend("torch"):  # the fused LU op's no-double-backward error is tested below
        y, ld = lu_layer(x)
        grads = torch.autograd.grad(ld.sum() + (y * y).sum(), list(lu_layer.parameters()), create_graph=True)
    assert any(g.requires_grad for g in grads)


def test_dense_cache_is_invalidated_by_an_optimizer_step():
    layer = make_layer(4, lu=False)
    perturb(layer)
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    calls = []
    factor = torch.linalg.lu_factor_ex

    def counting_lu_factor(*a, **k):
        calls.append(1)
        return factor(*a, **k)

    torch.linalg.lu_factor_ex = counting_lu_factor
    try:
        for step in range(3):
            y, ld = layer(x)
            layer(y, reverse=True)  # same version: the cached factorization serves both directions
            assert len(calls) == step + 1
            w = layer.weight.detach()
            torch.testing.assert_close(ld, 4 * torch.linalg.slogdet(w)[1].expand(3))
            x_back, _ = layer(y, reverse=True)
            torch.testing.assert_close(x_back, x)
            opt.zero_grad()
            ((y ** 2).sum() - ld.sum()).backward()
            opt.step()  # in-place update: a new weight version
        with torch.no_grad():
            layer.weight.mul_(1.5)  # any in-place change counts
        _, ld = layer(x)
        assert len(calls) == 4
        torch.testing.assert_close(ld, 4 * torch.linalg.slogdet(layer.weight.detach())[1].expand(3))
    finally:
        torch.linalg.lu_factor_ex = factor


def test_dense_singular_weight_raises():
    layer = make_layer(3, lu=False)
    with torch.no_grad():
        layer.weight.zero_()
    with pytest.raises(ValueError, match="singular"):
        layer(torch.randn(2, 3))
    with torch.no_grad():
        layer.weight.copy_(torch.eye(3)).mul_(float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        layer(torch.randn(2, 3))


def test_shape_errors_and_float32_logdet_from_float64_factorization():
    layer = dgmfast.nn.InvConv1x1(3, lu=False)
    with pytest.raises(ValueError, match=r"x must be \[B, 3, \.\.\.\]"):
        layer(torch.randn(2, 4, 5, 5))
    _, ld = layer(torch.randn(2, 3, 5, 5))
    assert ld.dtype == torch.float32
    w64 = layer.weight.detach().double()
    assert abs(ld[0].item() - 25 * torch.linalg.slogdet(w64)[1].item()) < 1e-5


def test_lu_weight_reference_and_inverse():
    layer = make_layer(5, lu=True)
    perturb(layer)
    params = (layer.perm, layer.lower, layer.upper, layer.sign_s, layer.log_abs_s)
    w, w_inv = ref.lu_weight(*params), ref.lu_inverse(*params)
    torch.testing.assert_close(w @ w_inv, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(torch.linalg.slogdet(w)[1], layer.log_abs_s.sum())


# ---- the fused LU-form op (dgmfast.functional.invconv_lu) ------------------------------------------------------

# [B, C] vectors; odd sizes; C not a multiple of the CPU register blocks (4); planes longer than one CPU task;
# many samples per task; C larger than one Triton channel block
OP_SHAPES = [(5, 7), (3, 5, 4, 3), (2, 3, 130, 131), (1, 1, 1, 1), (300, 2, 3, 3), (2, 40, 9)]


def lu_inputs(shape, dtype=torch.float32, device="cpu", seed=0, scale=0.3):
    """x and LU parameters (perm, lower, upper, sign_s, log_abs_s) of a random well-conditioned W."""
    layer = dgmfast.nn.InvConv1x1(shape[1], generator=torch.Generator().manual_seed(seed)).double()
    perturb(layer, seed=seed + 1, scale=scale / max(shape[1], 1) ** 0.5)
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    params = [p.detach() for p in layer._lu_params()]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return x.to(device, dtype), [p.to(device, acc) for p in params]


def run_op(be, x, params, reverse, dtype=None, weights=None):
    """(y, logdet, grad_x, grad_lower, grad_upper, grad_log_abs_s) of a weighted sum of the outputs."""
    xs = [x.detach().to(dtype or x.dtype).requires_grad_()]
    ps = [p.detach().to(dtype or p.dtype).requires_grad_(i in (1, 2, 4)) for i, p in enumerate(params)]
    with backend(be):
        y, ld = F.invconv_lu(xs[0], *ps, reverse=reverse)
    w, v = weights if weights is not None else (torch.ones_like(y, dtype=torch.float64),
                                                 torch.ones_like(ld, dtype=torch.float64))
    ((y.double() * w).sum() + (ld.double() * v).sum()).backward()
    return y, ld, xs[0].grad, ps[1].grad, ps[2].grad, ps[4].grad


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("reverse", [False, True])
def test_op_forward_backward_match_reference(dev, be, reverse):
    for shape in OP_SHAPES:
        x, params = lu_inputs(shape, device=dev)
        weights = (torch.randn(shape, dtype=torch.float64, device=dev),
                   torch.randn(shape[0], dtype=torch.float64, device=dev))
        out = run_op(be, x, params, reverse, weights=weights)
        ref64 = run_op("torch", x, params, reverse, dtype=torch.float64, weights=weights)
        assert out[1].dtype == torch.float32 and out[0].dtype == torch.float32
        n = x.numel() / max(x.shape[1], 1)  # products summed per parameter gradient entry
        for i, nm in enumerate(["y", "logdet", "grad_x", "grad_lower", "grad_upper", "grad_log_abs_s"]):
            atol = 2e-5 * (1 if nm in ("y", "grad_x") else n ** 0.5 * 4 * shape[1])
            assert_close(out[i], ref64[i], rtol=1e-5, atol=atol, name=f"{nm} {shape}")


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_op_dtypes(dev, be, dtype, reverse):
    x, params = lu_inputs((4, 6, 9, 11), dtype=dtype, device=dev, seed=1)
    out = run_op(be, x, params, reverse)
    ref64 = run_op("torch", x, params, reverse, dtype=torch.float64)
    low = run_op("torch", x, params, reverse)
    assert out[0].dtype == dtype and out[1].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for i, nm in enumerate(["y", "logdet", "grad_x", "grad_lower", "grad_upper", "grad_log_abs_s"]):
        if dtype == torch.float64:
            assert_close(out[i], ref64[i], rtol=1e-10, atol=1e-9, name=nm)
        else:  # the parameters' gradients are float32 sums of 400 half-precision products per entry
            o, r = (out[i], low[i]) if out[i].dtype == dtype else (out[i].to(dtype), low[i].to(dtype))
            assert_close(o, ref64[i], low_ref=r, atol=5e-2 if nm in ("y", "grad_x", "logdet") else 2.0, name=nm)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_op_logdet_equals_slogdet_of_bruteforce_jacobian(dev, be):
    x, params = lu_inputs((2, 3, 2, 2), dtype=torch.float64, device=dev, seed=2, scale=1.0)
    with backend(be):
        for reverse in (False, True):
            _, ld = F.invconv_lu(x, *params, reverse=reverse)
            fn = lambda v: F.invconv_lu(v, *params, reverse=reverse)[0]  # noqa: E731
            expected = torch.cat([brute_force_logdet(fn, x[b:b + 1]) for b in range(x.shape[0])])
            torch.testing.assert_close(ld, expected.to(ld.device), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (7, 5), (2, 9, 3)])
def test_op_inverse_roundtrip(dev, be, shape):
    x, params = lu_inputs(shape, device=dev, seed=3, scale=1.0)
    with backend(be):
        y, ld = F.invconv_lu(x, *params)
        x_back, ld_back = F.invconv_lu(y, *params, reverse=True)
    torch.testing.assert_close(x_back, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld_back, -ld)


@pytest.mark.parametrize("reverse", [False, True])
def test_op_gradcheck_reference_and_cpu_kernel(reverse):
    x, params = lu_inputs((2, 3, 4), dtype=torch.float64, seed=4, scale=1.0)
    fixed = (params[0], params[3])

    def fn(x, lower, upper, log_abs_s):
        return F.invconv_lu(x, fixed[0], lower, upper, fixed[1], log_abs_s, reverse=reverse)

    inputs = [a.requires_grad_() for a in (x, params[1], params[2], params[4])]
    for be in ("torch", "cpu"):
        with backend(be):
            assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dev,be", [c for c in backend_cases() if c.values[1] != "torch"])
@pytest.mark.parametrize("reverse", [False, True])
def test_op_opcheck(dev, be, reverse):
    x, params = lu_inputs((2, 3, 5), device=dev, seed=5)
    args = [x.requires_grad_(), params[0], params[1].requires_grad_(), params[2].requires_grad_(), params[3],
            params[4].requires_grad_()]
    torch.library.opcheck(torch.ops.dgmfast.invconv_lu_fwd, (*args, reverse, be))
    gy, gld = torch.randn_like(x), torch.randn(2, device=dev)
    plain = [a.detach() for a in args]
    torch.library.opcheck(torch.ops.dgmfast.invconv_lu_bwd, (*plain, gy, gld, reverse, be))
    plain[2], plain[3] = plain[2].T.contiguous().T, plain[3].T.contiguous().T  # column-major parameters
    torch.library.opcheck(torch.ops.dgmfast.invconv_lu_bwd, (*plain, gy, gld, reverse, be))


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_op_torch_compile_fullgraph(be):
    layer = dgmfast.nn.InvConv1x1(6, generator=torch.Generator().manual_seed(6))
    perturb(layer, seed=7, scale=0.1)
    x = torch.randn(4, 6, 8, 8, requires_grad=True)

    def step(x):
        y, ld = layer(x)
        z, ld2 = layer(y * 0.5, reverse=True)
        return (y * y).sum() + (z * z).sum() - ld.sum() + ld2.sum()

    params = [x, layer.lower, layer.upper, layer.log_abs_s]
    assert_compiled_matches_eager(step, (x,), be, wrt=params)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_op_noncontiguous_inputs(dev, be):
    _, params = lu_inputs((1, 4, 1), device=dev, seed=8, scale=1.0)
    cases = [
        torch.randn(3, 6, 5, 4, device=dev).permute(0, 3, 2, 1),  # [3, 4, 5, 6], planes not contiguous
        torch.randn(4, 8, 5, 6, device=dev)[:, ::2],              # channel stride 60: planes read in place
        torch.randn(4, 9, device=dev)[:, ::2][:, :4],             # [B, C] with a channel stride
        torch.randn(4, 5, device=dev).t()[:, :4],                 # transposed [B, C]
    ]
    strided = [params[0], params[1].t().contiguous().t(), params[2].t().contiguous().t(), params[3],
               torch.stack([params[4], params[4]], 1)[:, 0]]  # column-major and strided parameters
    for base in cases:
        out = run_op(be, base, strided, False)
        ref64 = run_op("torch", base, params, False, dtype=torch.float64)
        for i, nm in enumerate(["y", "logdet", "grad_x", "grad_lower", "grad_upper", "grad_log_abs_s"]):
            assert_close(out[i], ref64[i], atol=1e-4, name=f"{nm} {tuple(base.shape)}")


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 2, 0), (0, 2)])
def test_op_empty(dev, be, shape):
    x, params = lu_inputs(shape, device=dev, seed=9)
    y, ld, gx, g_lower, g_upper, g_ls = run_op(be, x, params, False)
    assert y.shape == x.shape and ld.shape == (shape[0],) and gx.shape == x.shape
    assert (g_lower == 0).all() and (g_upper == 0).all()
    assert (g_ls == shape[0] * (shape[2] if len(shape) > 2 else 1)).all()  # d(sum logdet)/d log_abs_s = B * S


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("reverse", [False, True])
def test_op_extreme_values_stay_finite(dev, be, reverse):
    x, params = lu_inputs((3, 4, 5), device=dev, seed=10)
    x = x * torch.tensor([1e4, 1e-30, -1e4, 1.0], device=dev)[None, :, None]
    params[4] = torch.tensor([-20.0, 20.0, 0.5, -3.0], device=dev)  # |W|, |W^-1| entries up to e^20
    out = run_op(be, x, params, reverse)
    for v in out:
        assert torch.isfinite(v).all(), v
    ref64 = run_op("torch", x, params, reverse, dtype=torch.float64)
    scale = ref64[0].abs().max().item()
    assert_close(out[0], ref64[0], rtol=1e-5, atol=1e-6 * scale, name="y")


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_op_gradients_are_deterministic(be):
    x, params = lu_inputs((32, 6, 40, 50), seed=11)  # several CPU tasks
    gy = torch.randn_like(x)
    results = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        results.append(run_op(be, x, params, False, weights=(gy.double(), torch.ones(32, dtype=torch.float64)))[2:])
    torch.set_num_threads(2)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_op_bad_inputs_raise_clear_errors():
    x, params = lu_inputs((2, 3, 4), seed=12)
    with pytest.raises(ValueError, match=r"lower must have shape \(3, 3\)"):
        F.invconv_lu(x, params[0], params[1][:2], *params[2:])
    with pytest.raises(TypeError, match=r"log_abs_s must have dtype torch.float32 .* got torch.float64"):
        F.invconv_lu(x, *params[:4], params[4].double())
    with pytest.raises(ValueError, match=r"x must have at least 2 dim"):
        F.invconv_lu(x[:, 0, 0], *params)
    layer = dgmfast.nn.InvConv1x1(3)
    with pytest.raises(ValueError, match=r"x must be \[B, 3, \.\.\.\]"):
        layer(torch.randn(2, 4, 5))


@needs_extension
def test_cpu_op_rejects_a_perm_that_is_not_a_permutation():
    x, params = lu_inputs((2, 3, 4), seed=13)
    bad = params[0].clone()
    bad[0] = bad[1]  # two rows with their 1 in the same column
    with backend("cpu"), pytest.raises(RuntimeError, match="perm must be a permutation matrix"):
        F.invconv_lu(x, bad, *params[1:])


def test_fused_layer_has_no_double_backward():
    layer = make_layer(4, lu=True).float()
    x = torch.randn(2, 4, 3, 3)
    with backend("cpu"):
        y, ld = layer(x)
        with pytest.raises(RuntimeError, match="invconv_lu_fwd has no double backward"):
            torch.autograd.grad(ld.sum() + (y * y).sum(), [layer.lower], create_graph=True)


def test_layer_runs_the_op_and_matches_the_reference_layer():
    layer = make_layer(6, lu=True).float()
    perturb(layer, seed=15, scale=0.1)
    x = torch.randn(8, 6, 4, 4)
    grads = {}
    for be in ("torch", "cpu"):
        with backend(be):
            y, ld = layer(x)
            z, _ = layer(y, reverse=True)
        layer.zero_grad()
        ((y * y).sum() + ld.sum() + z.sum()).backward()
        grads[be] = [y, ld, z] + [p.grad.clone() for p in (layer.lower, layer.upper, layer.log_abs_s)]
    for a, b in zip(grads["cpu"], grads["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


# ---- the dense form's mixing (dgmfast.functional.channel_mix) -------------------------------------------------

def mix_run(be, x, w, dtype=None, weights=None):
    """(y, grad_x, grad_weight) of a weighted sum of y."""
    xs = x.detach().to(dtype or x.dtype).requires_grad_()
    ws = w.detach().to(dtype or w.dtype).requires_grad_()
    with backend(be):
        y = F.channel_mix(xs, ws)
    (y.double() * (weights if weights is not None else 1.0)).sum().backward()
    return y, xs.grad, ws.grad


@pytest.mark.parametrize("dev,be", backend_cases())
def test_channel_mix_matches_reference(dev, be):
    for shape in OP_SHAPES + [(3, 6, 0), (0, 4, 2)]:
        g = torch.Generator().manual_seed(20)
        x = torch.randn(shape, generator=g).to(dev)
        w = torch.randn(shape[1], shape[1], generator=g).to(dev) / shape[1] ** 0.5
        weights = torch.randn(shape, dtype=torch.float64, device=dev)
        out = mix_run(be, x, w, weights=weights)
        ref64 = mix_run("torch", x, w, dtype=torch.float64, weights=weights)
        n = x.numel() / max(x.shape[1], 1)
        for i, nm in enumerate(["y", "grad_x", "grad_weight"]):
            assert_close(out[i], ref64[i], rtol=1e-5, atol=2e-5 * (1 if i < 2 else 4 * n ** 0.5), name=f"{nm} {shape}")


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float64])
def test_channel_mix_dtypes(dev, be, dtype):
    g = torch.Generator().manual_seed(21)
    x = torch.randn(4, 6, 9, 11, generator=g).to(dev, dtype)
    w = (torch.randn(6, 6, generator=g) / 6 ** 0.5).to(dev, torch.float64 if dtype == torch.float64 else torch.float32)
    out, ref64, low = mix_run(be, x, w), mix_run("torch", x, w, dtype=torch.float64), mix_run("torch", x, w)
    assert out[0].dtype == dtype
    for i, nm in enumerate(["y", "grad_x", "grad_weight"]):
        if dtype == torch.float64:
            assert_close(out[i], ref64[i], rtol=1e-10, atol=1e-9, name=nm)
        else:
            o, r = (out[i], low[i]) if out[i].dtype == dtype else (out[i].to(dtype), low[i].to(dtype))
            assert_close(o, ref64[i], low_ref=r, atol=5e-2 if i < 2 else 2.0, name=nm)


@pytest.mark.parametrize("dev,be", [c for c in backend_cases() if c.values[1] != "torch"])
def test_channel_mix_opcheck(dev, be):
    x = torch.randn(2, 3, 5, device=dev, requires_grad=True)
    for w in (torch.randn(3, 3, device=dev), torch.randn(3, 3, device=dev).T):  # row- and column-major weights
        torch.library.opcheck(torch.ops.dgmfast.channel_mix_fwd, (x, w.requires_grad_(), be))
        torch.library.opcheck(torch.ops.dgmfast.channel_mix_bwd, (x.detach(), w.detach(), torch.randn_like(x), be))


def test_channel_mix_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 3\)"):
        F.channel_mix(x, torch.randn(3, 4))
    with pytest.raises(TypeError, match=r"weight must have dtype torch.float32 .* got torch.float64"):
        F.channel_mix(x, torch.randn(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_dense_layer_fused_equals_reference_layer(be):
    layer = make_layer(5, lu=False).float()
    perturb(layer, seed=22, scale=0.1)
    x = torch.randn(6, 5, 4, 3)

    def step(x):
        y, ld = layer(x)
        z, ld2 = layer(y * 0.5, reverse=True)
        return (y * y).sum() + (z * z).sum() - ld.sum() + ld2.sum()

    grads = {}
    for b in ("torch", be):
        with backend(b):
            layer.zero_grad()
            step(x).backward()
            grads[b] = layer.weight.grad.clone()
    torch.testing.assert_close(grads[be], grads["torch"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_channel_mix_torch_compile_fullgraph(be):
    x = torch.randn(4, 6, 8, 8, requires_grad=True)
    w = (torch.randn(6, 6) / 6 ** 0.5).requires_grad_()

    def step(x, w):
        y = F.channel_mix(x, w)
        return (y * y).sum()

    assert_compiled_matches_eager(step, (x, w), be)


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_dense_layer_compiles_fullgraph(be):
    """Under torch.compile the dense layer takes its log-det and inverse from differentiable float64 slogdet and
    inv (its cache keys on a data pointer, which a graph cannot hold); the reverse passes a column-major W^-1."""
    layer = make_layer(5, lu=False).float()
    perturb(layer, seed=23, scale=0.1)

    def step(x):
        y, ld = layer(x)
        z, ld2 = layer(y * 0.5, reverse=True)
        return (y * y).sum() + (z * z).sum() - ld.sum() + ld2.sum()

    assert_compiled_matches_eager(step, (torch.randn(6, 5, 4, 3),), be, wrt=[layer.weight], rtol=1e-5, atol=1e-4)
