"""Flow containers (FlowSequential, Squeeze2d, Split) and the Glow model: whole-flow log-dets against the
brute-force Jacobian, inverses, backend agreement and training."""
import copy
import math

import pytest
import torch

import dgmfast
from dgmfast.nn import (ActNorm, AffineCoupling, FlowSequential, Glow, InvConv1x1, Split, Squeeze2d, channel_merge,
                        channel_split)
from tests.utils import assert_compiled_matches_eager, backend, brute_force_logdet


def _conv_net(c_in, c_out, seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(c_in, 8, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv2d(8, c_out, 3, padding=1))


def small_flow():
    """Squeeze [B, 2, 4, 4] -> [B, 8, 2, 2], then ActNorm, both InvConv forms and both coupling masks,
    with every parameter away from the identity (float64)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    flow = FlowSequential(
        Squeeze2d(), ActNorm(8), InvConv1x1(8, generator=gen),
        AffineCoupling(_conv_net(4, 8, 1), mask="channel", scale_map="sigmoid", order="shift_scale"),
        InvConv1x1(8, lu=False, generator=gen),
        AffineCoupling(_conv_net(8, 16, 2), mask="checkerboard", parity=1, scale_map="tanh"),
        ActNorm(8)).double()
    with torch.no_grad():
        for m in flow.modules():
            if isinstance(m, (ActNorm, InvConv1x1)):
                for p in m.parameters():
                    p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            if isinstance(m, ActNorm):
                m.initialized.fill_(True)
                m._sync_initialized()
    return flow


@pytest.mark.parametrize("be", ["torch", "cpu"])
def test_flow_sequential_logdet_equals_bruteforce_jacobian_and_inverts(be):
    flow = small_flow()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    with backend(be):
        z, ld = flow(x)
        expected = brute_force_logdet(lambda v: flow(v)[0], x)
        x_back, ld_back = flow(z, reverse=True)
    assert z.shape == (1, 8, 2, 2)
    torch.testing.assert_close(ld, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_back, -ld)


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_flow_sequential_matches_the_reference_backend(be):
    flow = small_flow()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    with backend("torch"):
        z_ref, ld_ref = flow(x)
    with backend(be):
        z, ld = flow(x)
        x_back, ld_back = flow(z, reverse=True)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(ld, ld_ref)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ld_back, -ld)


def test_squeeze2d_order_and_inverse():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    y, ld = Squeeze2d()(x)
    assert y.shape == (2, 12, 2, 3) and (ld == 0).all() and ld.dtype == torch.float32
    for c, i, j, h, w in [(0, 0, 0, 0, 0), (1, 1, 0, 1, 2), (2, 1, 1, 1, 1), (2, 0, 1, 0, 2)]:
        assert y[1, 4 * c + 2 * i + j, h, w] == x[1, c, 2 * h + i, 2 * w + j]
    assert torch.equal(Squeeze2d()(y, reverse=True)[0], x)
    with pytest.raises(ValueError, match="even H and W"):
        Squeeze2d()(torch.randn(1, 1, 3, 4))
    with pytest.raises(ValueError, match="multiple of 4 channels"):
        Squeeze2d()(torch.randn(1, 6, 2, 2), reverse=True)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        Squeeze2d()(torch.randn(2, 4))


@pytest.mark.parametrize("parity", [0, 1])
def test_channel_split_matches_affine_coupling(parity):
    x = torch.randn(2, 5, 3, 3)
    x_a, x_b = channel_split(x, parity)
    seen = {}

    def net(v):
        seen["x_a"] = v
        return torch.zeros(v.shape[0], 2 * x_b.shape[1], *v.shape[2:])

    y, _ = AffineCoupling(net, mask="channel", parity=parity)(x)
    assert torch.equal(seen["x_a"], x_a)
    assert torch.equal(channel_merge(x_a, x_b, parity), x) and torch.equal(y, x)


@pytest.mark.parametrize("prior", ["standard", "conditional"])
def test_split_inverse_and_prior(prior):
    torch.manual_seed(3)
    split = Split(5, prior=prior).double()
    if prior == "conditional":
        with torch.no_grad():
            for p in split.parameters():
                p.normal_(0, 0.2)
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    kept, eps, ld = split(x)
    assert kept.shape == (2, 2, 3, 3) and eps.shape == (2, 3, 3, 3)
    x_back, ld_back = split.reverse(kept, eps)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ld_back, -ld)
    # log N(eps; 0, I) + logdet = log N(z; mean, std^2) of the factored-out z
    z = x[:, 2:]
    if prior == "conditional":
        neg_log_std, neg_mean = split.coupling.conditioner(kept).chunk(2, dim=1)
        mean, std = -neg_mean, torch.exp(-neg_log_std)
    else:
        mean, std = torch.zeros_like(z), torch.ones_like(z)
    direct = torch.distributions.Normal(mean, std).log_prob(z).sum((1, 2, 3))
    log_n_eps = (-0.5 * eps ** 2 - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
    torch.testing.assert_close(log_n_eps + ld, direct)
    with pytest.raises(ValueError, match="prior must be one of"):
        Split(4, prior="flow")


def init_glow(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    model = Glow(generator=torch.Generator().manual_seed(0), **kw).to(dtype)
    with torch.no_grad():  # move the zero-initialized convolutions away from the identity
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(16, model.in_channels, model.image_size, model.image_size, dtype=dtype) - 0.5
    model(x)  # data-dependent ActNorm init
    return model.eval(), x


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_glow_log_prob_equal_under_torch_and_cpu_backends(dtype, tol):
    model64, x64 = init_glow()
    model, x = copy.deepcopy(model64).to(dtype), x64.to(dtype)
    with backend("torch"):
        lp_ref = model.log_prob(x)
    with backend("cpu"):
        lp = model.log_prob(x)
    assert lp.shape == (16,) and lp.dtype == dtype
    torch.testing.assert_close(lp, lp_ref, rtol=tol, atol=tol)
    # float32 on either backend stays within float32 rounding of the float64 log-density (~ -100 nats)
    torch.testing.assert_close(lp.double(), model64.log_prob(x64), rtol=1e-4, atol=1e-3)


def test_glow_logdet_equals_bruteforce_jacobian():
    model, _ = init_glow(image_size=4, levels=2, steps=1, hidden=8)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64) - 0.5

    def flat_latents(v):
        return torch.cat([z.flatten(1) for z in model.encode(v)[0]], 1)

    _, ld = model.encode(x)
    expected = torch.cat([brute_force_logdet(flat_latents, x[b:b + 1]) for b in range(2)])
    torch.testing.assert_close(ld, expected, rtol=1e-9, atol=1e-9)
    latents, _ = model.encode(x)
    log_n = sum((-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1) for z in latents)
    torch.testing.assert_close(model.log_prob(x), ld + log_n)


def test_glow_sample_shape_and_reverse_consistency():
    model, _ = init_glow()
    assert model.latent_shapes == [(2, 4, 4), (8, 2, 2)]
    g = torch.Generator().manual_seed(5)
    latents = model.sample_latents(6, temperature=0.7, generator=g)
    x, ld_dec = model.decode(latents)
    assert x.shape == (6, 1, 8, 8)
    back, ld_enc = model.encode(x)  # forward(sample) recovers the latents
    for z, z_back in zip(latents, back):
        torch.testing.assert_close(z_back, z, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ld_enc, -ld_dec)
    s1 = model.sample(3, temperature=0.5, generator=torch.Generator().manual_seed(9))
    s2 = model.sample(3, temperature=0.5, generator=torch.Generator().manual_seed(9))
    assert s1.shape == (3, 1, 8, 8) and torch.equal(s1, s2) and not s1.requires_grad
    assert torch.isfinite(s1).all()


def _toy_batch(n, seed):
    """8x8 images of a bright square at a random position on a dark background, in [-0.5, 0.5] + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 8, 8)
    pos = torch.randint(0, 5, (n, 2), generator=g)
    for i in range(n):
        x[i, 0, pos[i, 0]:pos[i, 0] + 4, pos[i, 1]:pos[i, 1] + 4] = 1.0
    return x - 0.5 + torch.rand(x.shape, generator=g) / 8


def _train(backend_name, steps=10):
    torch.manual_seed(0)
    with backend(backend_name):
        model = Glow(generator=torch.Generator().manual_seed(0))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        losses = []
        for step in range(steps):
            loss = -model.log_prob(_toy_batch(32, step)).mean() / 64
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def test_glow_training_decreases_the_loss_and_matches_the_reference():
    losses = _train("cpu")
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses  # nats/dim, a clear decrease
    ref = _train("torch", steps=3)  # the same model and seed on the plain-PyTorch reference
    # step 0 differs only by float32 rounding; Adam's normalized steps then amplify it slowly
    assert abs(losses[0] - ref[0]) <= 1e-6, (losses[:3], ref)
    for a, b in zip(losses, ref):
        assert abs(a - b) <= 2e-3 * abs(b), (losses[:3], ref)


def test_glow_errors():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels"):
        Glow(image_size=6, levels=2)
    model = Glow()
    with pytest.raises(ValueError, match=r"x must be \[B, 1, 8, 8\]"):
        model.log_prob(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="latents must be a list of 2"):
        model.decode([torch.randn(2, 8, 2, 2)])
    with pytest.raises(ValueError, match="zero variance"):
        model(torch.zeros(4, 1, 8, 8))  # a constant batch cannot initialize ActNorm
    assert isinstance(dgmfast.nn.glow_step(4), FlowSequential)


def test_flowplusplus_backends_agree_inverse_and_trains():
    torch.manual_seed(0)
    model = dgmfast.nn.FlowPlusPlus(in_channels=1, image_size=4, levels=1, steps=2, hidden=8,
                                    num_components=3).double()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    with dgmfast.use_backend("torch"):
        lp_ref = model.log_prob(x)  # first call initializes the ActNorms
    with dgmfast.use_backend("cpu"):
        lp = model.log_prob(x)
        latents, _ = model.encode(x)
        x_back, _ = model.decode(latents)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(x_back, x, rtol=1e-8, atol=1e-8)
    # the whole model's log-density equals the change of variables computed by brute force
    with dgmfast.use_backend("cpu"):
        def z_of(v):
            lat, _ = model.encode(v)
            return torch.cat([t.flatten(1) for t in lat], 1)
        for b in range(2):
            jac = torch.autograd.functional.jacobian(lambda v: z_of(v.view(1, 1, 4, 4)).flatten(), x[b].flatten())
            z = z_of(x[b:b + 1])
            expected = torch.linalg.slogdet(jac)[1] + (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum()
            torch.testing.assert_close(lp[b], expected, rtol=1e-8, atol=1e-8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with dgmfast.use_backend("cpu"):
        losses = []
        for _ in range(15):
            opt.zero_grad()
            loss = -model.log_prob(x).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("model", ["glow", "flowpp"])
def test_whole_models_compile_fullgraph(model):
    """Glow and FlowPlusPlus log_prob under torch.compile(fullgraph=True) on the cpu backend: one graph (every
    fused op a custom op with its fake), the eager value and parameter gradients."""
    torch.manual_seed(0)
    flow = Glow(1, 8, levels=2, steps=2) if model == "glow" else dgmfast.nn.FlowPlusPlus(1, 8, steps=2)
    x = torch.rand(16, 1, 8, 8) - 0.5
    with backend("cpu"), torch.no_grad():
        flow.log_prob(x)  # the ActNorms' data-dependent init, outside the graph
    assert_compiled_matches_eager(lambda x: flow.log_prob(x).mean(), (x,), "cpu", wrt=list(flow.parameters()),
                                  rtol=1e-5, atol=1e-5)
