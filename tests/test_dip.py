"""DIP-VAE covariance penalty (SPEC §8): every backend against the float64 reference, closed forms,
and the global-batch penalty over a process group (2 gloo processes)."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dgmfast
from dgmfast import functional as F
from dgmfast.reference import dip as ref
from tests.utils import HALF_DTYPES, assert_close, assert_compiled_matches_eager, backend, backend_cases

# odd D; more rows than one CPU task (512) and one interpreter block (256); D above one Triton tile (64)
SHAPES = [(37, 10), (600, 5), (1, 3), (130, 70)]
KW = dict(lambda_od=2.0, lambda_d=3.0)


def make(shape, dtype=torch.float64, device="cpu", seed=0, loc=0.5):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g, dtype=torch.float64) @ torch.randn(shape[1], shape[1], generator=g,
                                                                            dtype=torch.float64) * 0.3 + loc
    lv = 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    return mu.to(device, dtype), lv.to(device, dtype)


def scaled(ref64, rel=2e-5):
    """float32 tolerances for a sum of D products: relative to the largest reference entry."""
    return dict(rtol=1e-4, atol=rel * max(1.0, ref64.abs().max().item()))


def run(be, mu, lv, variant, **kw):
    mu, lv = mu.detach().clone().requires_grad_(), lv.detach().clone().requires_grad_()
    with backend(be):
        p = F.dip_vae_penalty(mu, lv, variant=variant, **(kw or KW))
    p.backward()
    return p, mu.grad, lv.grad


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("variant", ["i", "ii"])
def test_forward_backward_match_reference(dev, be, variant):
    for shape in SHAPES:
        mu, lv = make(shape, device=dev)
        p64, gmu64, glv64 = run("torch", mu, lv, variant)
        p, gmu, glv = run(be, mu.float(), lv.float(), variant)
        assert p.dtype == torch.float32 and p.shape == ()
        assert_close(p, p64, **scaled(p64), name=f"penalty {shape}")
        assert_close(gmu, gmu64, **scaled(gmu64), name=f"grad_mu {shape}")
        if variant == "ii":
            assert_close(glv, glv64, **scaled(glv64), name=f"grad_logvar {shape}")
        else:
            assert glv is None


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float64])
def test_dtypes(dev, be, dtype):
    mu, lv = make((50, 6), device=dev, seed=1)
    p64, gmu64, glv64 = run("torch", mu, lv, "ii")
    p, gmu, glv = run(be, mu.to(dtype), lv.to(dtype), "ii")
    pl, gmul, glvl = run("torch", mu.to(dtype), lv.to(dtype), "ii")
    assert p.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert gmu.dtype == dtype and glv.dtype == dtype
    if dtype == torch.float64:
        for a, b in ((p, p64), (gmu, gmu64), (glv, glv64)):
            assert_close(a, b, rtol=1e-10, atol=1e-10)
        return
    assert_close(p.to(dtype), p64, low_ref=pl.to(dtype), atol=1e-2, name="penalty")
    assert_close(gmu, gmu64, low_ref=gmul, atol=1e-2, name="grad_mu")
    assert_close(glv, glv64, low_ref=glvl, atol=1e-2, name="grad_logvar")


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_whitened_batch_has_zero_penalty(dev, be, dtype):
    """A batch whose biased covariance is exactly I (ZCA-whitened in float64) has penalty 0:
    below 1e-18 in float64 and 1e-8 in float32 (each Cov entry off by ~1e-7, squared)."""
    x, _ = make((200, 8), seed=2)
    x = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(x.T @ x / x.shape[0])
    white = x @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T + 3.0
    with backend(be):
        p = F.dip_vae_penalty(white.to(dev, dtype), lambda_od=10.0, lambda_d=100.0)
    assert abs(p.item()) < (1e-18 if dtype == torch.float64 else 1e-8), p.item()


@pytest.mark.parametrize("dev,be", backend_cases())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_mean_loses_no_accuracy(dev, be, dtype):
    """A batch with mean 1e4 has the penalty and gradients of the centred batch. Values are multiples of
    2^-10 below 4 in magnitude, so x + 1e4 is exact in float32."""
    x, lv = make((300, 6), seed=3, loc=0.0)
    x = (x.clamp(-3.9, 3.9) * 1024).round() / 1024
    out = {}
    for shift in (0.0, 1e4):
        out[shift] = run(be, (x + shift).to(dev, dtype), lv.to(dev, dtype), "ii")
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for a, b in zip(out[1e4], out[0.0]):
        assert_close(a, b.double(), **tol)


@pytest.mark.parametrize("be", ["cpu", "triton"])
@pytest.mark.parametrize("rows", [300, 1300])  # one CPU task / Triton chunk, and three (CPU) merged by Chan's update
def test_moments_centre_each_chunk_on_its_mean(rows, be):
    """The kernels centre rows on their task's (chunk's) mean, not on the first row: with mu[0] an outlier 100
    standard deviations from the mean, shifting by mu[0] would cancel ~1e4 of the second moment in float32
    (relative error ~1e-3); the kernels keep the float32 reference's accuracy (torch.cov, centred on the mean)."""
    from dgmfast.ops.dip import dip_moments

    mu = torch.randn(rows, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 3.0
    mu[0] += 100.0
    m2_64 = torch.cov(mu.T, correction=0) * rows
    mu32 = mu.float()
    m2_ref32 = torch.cov(mu32.T, correction=0) * rows
    with backend(be):
        offset, m2, _ = dip_moments(mu32, None, be)
    err = lambda m: ((m.double() - m2_64).abs().max() / m2_64.abs().max()).item()  # noqa: E731
    assert err(m2) < max(4 * err(m2_ref32), 1e-6), (err(m2), err(m2_ref32))
    torch.testing.assert_close(offset.double(), mu.mean(0) - mu[0], rtol=1e-6, atol=1e-5)


def test_variant_ii_needs_logvar_and_bad_inputs():
    mu = torch.randn(4, 3)
    with pytest.raises(ValueError, match="logvar is required for variant='ii'"):
        F.dip_vae_penalty(mu, lambda_od=1.0, lambda_d=1.0, variant="ii")
    with pytest.raises(ValueError, match="variant must be one of"):
        F.dip_vae_penalty(mu, lambda_od=1.0, lambda_d=1.0, variant="iii")
    with pytest.raises(ValueError, match="logvar must have shape"):
        F.dip_vae_penalty(mu, torch.randn(4, 2), lambda_od=1.0, lambda_d=1.0, variant="ii")
    with pytest.raises(TypeError, match="logvar must have dtype"):
        F.dip_vae_penalty(mu, mu.double(), lambda_od=1.0, lambda_d=1.0, variant="ii")
    with pytest.raises(ValueError, match=r"mu must be \[N, D\]"):
        F.dip_vae_penalty(torch.randn(2, 3, 4), lambda_od=1.0, lambda_d=1.0)
    with pytest.raises(TypeError, match="mu must have a floating dtype"):
        F.dip_vae_penalty(torch.ones(2, 3, dtype=torch.long), lambda_od=1.0, lambda_d=1.0)
    with pytest.raises(ValueError, match="lambda_od must be a number >= 0"):
        F.dip_vae_penalty(mu, lambda_od=-1.0, lambda_d=1.0)
    with pytest.raises(ValueError, match="at least one row"):
        F.dip_vae_penalty(torch.randn(0, 3), lambda_od=1.0, lambda_d=1.0)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_closed_forms_and_peer_defects(dev, be):
    """Diagonal covariance with known entries: Cov is the biased (1/N) batch covariance centred over the
    batch, and the DIP-II term adds mean(exp(logvar)) per dim (a vector, not a scalar)."""
    col = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)  # mean 0, biased variance 1
    mu = torch.stack([2.0 * col + 5.0, col.roll(1) * 0 + 7.0, 3.0 * col * torch.tensor([1.0, 1, -1, -1]) - 1], 1)
    # Cov = diag(4, 0, 9) with off-diagonals 0 (the columns are orthogonal after centring)
    lv = torch.log(torch.tensor([[0.5, 1.0, 2.0]], dtype=torch.float64)).expand(4, 3)
    with backend(be):
        p1 = F.dip_vae_penalty(mu.to(dev), lambda_od=10.0, lambda_d=1.0)
        p2 = F.dip_vae_penalty(mu.to(dev), lv.to(dev), lambda_od=10.0, lambda_d=1.0, variant="ii")
        p_one = F.dip_vae_penalty(mu[:1].to(dev), lambda_od=10.0, lambda_d=2.0)  # N = 1: Cov = 0
    assert abs(p1.item() - (9.0 + 1.0 + 64.0)) < 1e-9
    assert abs(p2.item() - (3.5**2 + 0.0 + 10.0**2)) < 1e-9
    assert abs(p_one.item() - 2.0 * 3) < 1e-12


@pytest.mark.parametrize("variant", ["i", "ii"])
def test_gradcheck_reference_and_cpu_kernel(variant):
    mu, lv = (a.requires_grad_() for a in make((9, 4), seed=4))
    fn = lambda m, v: ref.dip_vae_penalty(m, v, variant=variant, **KW)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (mu, lv))
    with backend("cpu"):
        assert torch.autograd.gradcheck(lambda m, v: F.dip_vae_penalty(m, v, variant=variant, **KW), (mu, lv))


@pytest.mark.parametrize("dev,be", [c for c in backend_cases() if c.values[1] not in ("torch", "cuda")])
def test_opcheck(dev, be):
    mu, lv = (a.float().requires_grad_() for a in make((20, 5), device=dev, seed=5))
    for logvar in (lv, None):
        torch.library.opcheck(torch.ops.dgmfast.dip_vae_penalty_fwd, (mu, logvar, 2.0, 3.0, be))
        lv_d = logvar.detach() if logvar is not None else None
        torch.library.opcheck(torch.ops.dgmfast.dip_moments, (mu.detach(), lv_d, be))  # no autograd: statistics only
        offset, coef = torch.randn(5, device=dev), torch.randn(5, 5, device=dev)
        torch.library.opcheck(torch.ops.dgmfast.dip_vae_penalty_bwd, (mu.detach(), lv_d, offset, coef, be))


@pytest.mark.parametrize("be", ["cpu", "triton"])
def test_torch_compile_fullgraph(be):
    mu, lv = (a.float().requires_grad_() for a in make((64, 8), seed=6))

    def step(mu, lv):
        return F.dip_vae_penalty(mu, lv, lambda_od=1.0, lambda_d=2.0, variant="ii") + mu.square().mean()

    assert_compiled_matches_eager(step, (mu, lv), be)


@pytest.mark.parametrize("dev,be", backend_cases())
def test_noncontiguous_views(dev, be):
    h, _ = make((40, 14), device=dev, seed=7)
    mu, lv = h.float().chunk(2, dim=1)         # batch-strided views, read in place
    mu_t = h.float().T.contiguous().T[:, :7]   # column-major: copied
    for m in (mu, mu_t):
        p64, g64, gl64 = run("torch", m.double(), lv.double(), "ii")
        p, g, gl = run(be, m, lv, "ii")
        assert_close(p, p64, rtol=2e-5, atol=1e-5)
        assert_close(g, g64, rtol=1e-4, atol=1e-5)
        assert_close(gl, gl64, rtol=1e-4, atol=1e-5)


def test_module_defaults_and_forward():
    assert dgmfast.nn.DIPVAELoss().lambda_d == 100.0
    assert dgmfast.nn.DIPVAELoss(lambda_od=2.0, variant="ii").lambda_d == 2.0
    assert dgmfast.nn.DIPVAELoss(lambda_od=2.0, lambda_d=5.0).lambda_d == 5.0
    mu, lv = make((30, 4), seed=8)
    loss = dgmfast.nn.DIPVAELoss(lambda_od=3.0, variant="ii")
    expected = ref.dip_vae_penalty(mu, lv, lambda_od=3.0, lambda_d=3.0, variant="ii")
    torch.testing.assert_close(loss(mu, lv), expected)


# ---- global batch over a process group -------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port):
    import os
    os.environ.setdefault("TRITON_INTERPRET", "1")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for be in ("torch", "cpu", "triton"):
            _check_global_batch(rank, world, be)
    finally:
        dist.destroy_process_group()


def _check_global_batch(rank, world, be):
    sizes = [5, 8]
    mu_all, lv_all = make((sum(sizes), 6), seed=9, loc=1e3)
    mu_all[sizes[0]:] += 2.0  # the ranks' means differ
    mu_all, lv_all = mu_all.float().double(), lv_all.float().double()  # the float32 data, exactly
    lo = sum(sizes[:rank])
    rows = slice(lo, lo + sizes[rank])
    for variant in ("i", "ii"):
        mu64 = mu_all.clone().requires_grad_()
        lv64 = lv_all.clone().requires_grad_()
        single = ref.dip_vae_penalty(mu64, lv64, variant=variant, **KW)
        single.backward()
        mu = mu_all[rows].float().requires_grad_()
        lv = lv_all[rows].float().requires_grad_()
        with backend(be):
            p = F.dip_vae_penalty(mu, lv, variant=variant, process_group=dist.group.WORLD, **KW)
        # DDP's objective is the mean of the per-rank losses; each rank's rows get its gradient
        (p / world).backward()
        assert_close(p, single, rtol=2e-5, atol=1e-5, name=f"rank {rank} penalty")
        assert_close(mu.grad, mu64.grad[rows], rtol=1e-4, atol=1e-5, name=f"rank {rank} grad_mu")
        if variant == "ii":
            assert_close(lv.grad, lv64.grad[rows], rtol=1e-4, atol=1e-5, name=f"rank {rank} grad_logvar")
    # DDP: parameter gradients equal single-process training on the concatenated batch
    torch.manual_seed(0)
    enc = torch.nn.Linear(6, 3).double()
    ref_grads = torch.autograd.grad(ref.dip_vae_penalty(enc(mu_all), **KW), list(enc.parameters()))
    ddp = torch.nn.parallel.DistributedDataParallel(enc)
    with backend(be):
        F.dip_vae_penalty(ddp(mu_all[rows]), process_group=dist.group.WORLD, **KW).backward()
    for prm, g in zip(ddp.module.parameters(), ref_grads):
        assert_close(prm.grad, g, rtol=1e-9, atol=1e-9, name=f"rank {rank} DDP grad")


def test_process_group_equals_concatenated_batch():
    """2 gloo processes with 5 and 8 rows around 1e3, the second rank shifted by 2: penalty and row gradients equal the
    single-process float64 result on the concatenated batch (torch, cpu and triton backends), and DDP
    parameter gradients equal single-process ones."""
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)
