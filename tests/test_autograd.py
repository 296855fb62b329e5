"""The eager autograd paths (dgmfast/ops/common.py FusedOp, csrc/cpu/autograd.h): eager calls reach the kernels
without torch.library's dispatch and give the custom op's results bit for bit, on a Python autograd.Function or,
on the cpu backend of the ops with a C++ Autograd kernel, a C++ graph node; create_graph=True through a fused
backward raises."""
import pytest
import torch

from tests.test_gaussian import posterior
from tests.test_invconv import lu_inputs
from tests.test_mixlogistic import make_inputs as mixlogistic_inputs
from tests.test_vaeflows import make_planar
from tests.utils import needs_extension


@needs_extension
def test_eager_fast_path_equals_the_custom_op(monkeypatch):
    """FusedOp: eager calls run the implementation directly (no torch.library dispatch) with the same
    autograd formula as the registered custom op; traced calls (fake tensors) go to the custom op."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dgmfast.ops import coupling as ops

    x, r, t = (torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(i)) for i in range(3))
    args = (1, 1.0, 0.0, False, False, "cpu")  # exp scale, clamp, eps, scale-then-shift, forward, backend
    results = []
    for fn in (ops.affine_coupling_fwd, ops.affine_coupling_fwd.op):
        xs = [a.clone().requires_grad_() for a in (x, r, t)]
        y, ld = fn(*xs, *args)
        ((y * y).sum() + ld.sum()).backward()
        results.append([y, ld] + [a.grad for a in xs])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    calls = []
    monkeypatch.setattr(ops.affine_coupling_fwd, "_impl", lambda *a: calls.append(a) or (a[0] * 1, a[0][:, 0, 0] * 1))
    ops.affine_coupling_fwd(x, r, t, *args)
    assert len(calls) == 1  # eager: the implementation, directly
    with FakeTensorMode() as mode:
        fx, fr, ft = (mode.from_tensor(a) for a in (x, r, t))
        y, ld = ops.affine_coupling_fwd(fx, fr, ft, *args)
    assert len(calls) == 1 and y.shape == x.shape and ld.shape == (3,)  # traced: the custom op and its fake


@needs_extension
def test_double_backward_is_a_clear_error():
    """The fused backward kernels record no graph: create_graph=True through an op raises (eager and custom op
    paths) instead of giving second derivatives of 0; first-order gradients are unaffected."""
    from dgmfast.ops import coupling as ops

    x, r, t = (torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(i)).requires_grad_() for i in range(3))
    args = (1, 1.0, 0.0, False, False, "cpu")
    for fn in (ops.affine_coupling_fwd, ops.affine_coupling_fwd.op):
        y, ld = fn(x, r, t, *args)
        with pytest.raises(RuntimeError, match="affine_coupling_fwd has no double backward"):
            torch.autograd.grad((y * y).sum(), x, create_graph=True)
        y, ld = fn(x, r, t, *args)
        assert torch.autograd.grad((y * y).sum(), x)[0].shape == x.shape


@pytest.mark.parametrize("given_eps", [False, True])
@needs_extension
def test_reparameterize_cpu_eager_records_the_cpp_node(given_eps):
    """Eager cpu calls record the C++ Autograd node of dgmfast_C::reparameterize_fwd; its outputs and
    gradients equal those of the dgmfast::reparameterize_fwd custom op (Python autograd) bit for bit."""
    from dgmfast.ops import gaussian as ops

    mu, lv, eps = posterior(7, 5, seed=4)
    seed = torch.tensor(99, dtype=torch.int64)
    results = []
    for fn in (ops.reparameterize_fwd, ops.reparameterize_fwd.op):
        xs = [a.clone().requires_grad_() for a in ((mu, lv, eps) if given_eps else (mu, lv))]
        outs = fn(xs[0], xs[1], xs[2] if given_eps else None, seed, "cpu")
        if fn is ops.reparameterize_fwd:
            assert "ReparameterizeNode" in type(outs[0].grad_fn).__name__ + outs[0].grad_fn.name()
        ((outs[0] * outs[0]).sum() + (3 * outs[1]).sum() - outs[2].sum()).backward()
        results.append(list(outs) + [a.grad for a in xs])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    with torch.no_grad():  # no graph without grad mode
        assert ops.reparameterize_fwd(mu.requires_grad_(), lv, None, seed, "cpu")[0].grad_fn is None
    for fn in (ops.reparameterize_fwd, ops.reparameterize_fwd.op):  # second derivatives: a clear error, not 0
        z, kl, _ = fn(mu, lv, None, seed, "cpu")
        with pytest.raises(RuntimeError, match="reparameterize_fwd has no double backward"):
            torch.autograd.grad((kl * kl).sum(), mu, create_graph=True)


@pytest.mark.parametrize("shared", [True, False])
@needs_extension
def test_planar_cpu_eager_records_the_cpp_node(shared):
    """Eager cpu calls record the C++ Autograd node of dgmfast_C::planar_flows_fwd; outputs and gradients equal
    those of the dgmfast::planar_flows_fwd custom op (Python autograd) bit for bit; second derivatives raise."""
    from dgmfast.ops import vaeflows as ops

    args = make_planar(19, 3, 7, shared_uw=shared, shared_b=shared, dtype=torch.float32, seed=2)
    results = []
    for fn in (ops.planar_flows_fwd, ops.planar_flows_fwd.op):
        xs = [a.clone().requires_grad_() for a in args]
        y, ld, pre = fn(*xs, "cpu")
        if fn is ops.planar_flows_fwd:
            assert "PlanarNode" in y.grad_fn.name() and not pre.requires_grad
        ((y * y).sum() + (2 * ld).sum()).backward()
        results.append([y, ld, pre] + [a.grad for a in xs])
        with pytest.raises(RuntimeError, match="planar_flows_fwd has no double backward"):
            y, ld, _ = fn(*xs, "cpu")
            torch.autograd.grad(ld.sum(), xs[0], create_graph=True)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _node_cases():
    """(name, FusedOp, tensor inputs, the indices that take a gradient, trailing args) of the ops whose eager cpu calls
    record a C++ node, in every direction and order their backward treats differently."""
    from dgmfast.ops import actnorm, coupling, invconv, mixlogistic

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, 3, generator=g)
    an = [x, 0.1 * torch.randn(4, generator=g), 0.1 * torch.randn(4, generator=g)]
    cp = [x, torch.randn(6, 4, 5, 3, generator=g), torch.randn(6, 4, 5, 3, generator=g)]
    mx = mixlogistic_inputs((6, 4, 5), 3, seed=1)
    lx, lp = lu_inputs((6, 4, 5, 3), seed=2)
    cases = [("ChannelMixNode", invconv.channel_mix_fwd, [lx, lp[1] + lp[2]], (0, 1), ("cpu",))]
    for reverse in (False, True):
        cases.append(("ActnormNode", actnorm.actnorm_fwd, an, (0, 1, 2), (reverse, "cpu")))
        cases.append(("InvconvLUNode", invconv.invconv_lu_fwd, [lx, *lp], (0, 2, 3, 5), (reverse, "cpu")))
        for order in (False, True):
            cases.append(("AffineCouplingNode", coupling.affine_coupling_fwd, cp, (0, 1, 2),
                          (2, 1.0, 1e-6, order, reverse, "cpu")))  # sigmoid scale
            cases.append(("MixLogisticNode", mixlogistic.mixlogistic_coupling_fwd, mx, range(6),
                          (1, 2.0, -7.0, order, reverse, "cpu")))  # tanh scale
    return cases


def _pair(out):
    """(output, log-det) of an op; 0 for an op without a log-det (channel_mix)."""
    return out if isinstance(out, tuple) else (out, torch.zeros(()))


@pytest.mark.parametrize("case", range(len(_node_cases())))
@needs_extension
def test_cpu_eager_calls_record_the_cpp_node(case):
    """actnorm, affine and mixture-of-logistics coupling and both 1x1 conv forms: eager cpu calls record the op's C++
    node; outputs and gradients equal the custom op's (Python autograd) bit for bit; second derivatives raise."""
    node, op, inputs, grad_idx, args = _node_cases()[case]
    results = []
    for fn in (op, op.op):
        xs = [a.clone().requires_grad_(i in grad_idx) for i, a in enumerate(inputs)]
        y, ld = _pair(fn(*xs, *args))
        assert (node in y.grad_fn.name()) == (fn is op)
        w = torch.linspace(-1, 1, y.numel()).view_as(y)
        ((y * w).sum() + (0.5 * ld).sum()).backward()
        results.append([y, ld] + [xs[i].grad for i in grad_idx])
        y, ld = _pair(fn(*xs, *args))
        with pytest.raises(RuntimeError, match="has no double backward"):
            torch.autograd.grad((y * y).sum() + ld.sum(), xs[0], create_graph=True)
    for a, b in zip(*results):
        assert torch.equal(a, b)
