"""Invertible 1x1 convolution (SPEC §4): log-dets against the brute-force Jacobian, inverses, and the
per-weight-version cache of the dense (lu=False) form."""
import pytest
import torch

import dgmfast
from dgmfast.reference import invconv as ref
from tests.utils import brute_force_logdet


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
        y, ld = layer(x, reverse=reverse)
        with pytest.raises(RuntimeError, match="InvConv1x1's cached .* has no double backward"):
            torch.autograd.grad(ld.sum() + y.sum(), layer.weight, create_graph=True)
        assert torch.autograd.grad(ld.sum() + y.sum(), layer.weight)[0].shape == (4, 4)  # first order works
    lu_layer = make_layer(4, lu=True)
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
