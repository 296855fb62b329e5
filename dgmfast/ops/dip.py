"""DIP-VAE covariance penalty (SPEC §8) as torch.library custom ops, and its global-batch form.

``dgmfast::dip_vae_penalty_fwd(mu, logvar)`` -> ``(penalty, offset, grad_cov)``: one kernel over mu for the
centred second moment (each 512-row CPU task, or each Triton row chunk, is centred on its own mean and the parts
are merged with Chan et al.'s update), then the [D, D] epilogue; ``offset = mean - mu[0]`` and ``grad_cov = dP/dCov``
(symmetric, [D, D]) are saved for backward with the inputs: recomputing them would cost a second full
pass, keeping them costs O(D^2). ``dgmfast::dip_vae_penalty_bwd(mu, logvar, offset, coef)`` is the
gradient pass: ``grad_mu = 2 (mu_n - mu_0 - offset) coef``, ``grad_logvar = diag(coef) exp(logvar)`` with
``coef = grad_cov * grad_penalty / N``. ``dgmfast::dip_moments`` returns the local statistics that
:class:`GlobalDipPenalty` gathers across processes.

Backends: "cpu" calls dgmfast._C (csrc/cpu/dip.cpp); "triton" launches kernels/dip.py and does the
[D, D] epilogue here. The "cuda" backend refuses: the sums are a skinny GEMM (X^T X over N rows) that
the Triton kernel runs on tensor cores (tl.dot in IEEE fp32/fp64), and a hand-written CUDA copy would
only duplicate it; CUDA tensors run on the triton backend.
"""
from typing import Optional

import torch
from torch import Tensor

from dgmfast.backends import register_op
from dgmfast.ops.common import check_first_order, custom_op, row_contiguous, row_stride
from dgmfast.reference.common import acc_dtype

CUDA_REFUSAL = ("the cuda backend has no DIP-VAE kernel: the covariance is a skinny GEMM that the triton "
                "backend computes with tl.dot (see dgmfast/ops/dip.py); use triton for CUDA tensors")


def _refusals(backend, device, dtype):
    return [CUDA_REFUSAL] if backend == "cuda" else []


register_op("dip_vae_penalty", _refusals)


def penalty_from_moments(m2, sum_exp, n, lambda_od, lambda_d):
    """(P, G) from the centred second moment m2 [D, D], sum_exp [D] (or None) and the row count n
    (the epilogue of csrc/include/dgmfast/dip.h)."""
    cov = m2 / n
    diag = cov.diagonal() - 1.0
    if sum_exp is not None:
        diag = diag + sum_exp / n
    off = cov - torch.diag(cov.diagonal())
    penalty = lambda_od * off.square().sum() + lambda_d * diag.square().sum()
    return penalty, 2.0 * lambda_od * off + torch.diag(2.0 * lambda_d * diag)


# ---- triton launchers -------------------------------------------------------------------------------

def _tile(D):
    import triton
    return min(64, max(16, triton.next_power_of_2(D)))


def _moments_triton(mu, logvar):
    """(offset = mean - mu[0] [D], m2 [D, D], sum_exp [D] or [0]): per-chunk sums centred on each chunk's mean
    (kernels/dip.py), merged over chunks in order with Chan et al.'s update."""
    import triton

    from dgmfast.kernels.dip import _dip_sums_kernel
    from dgmfast.ops.common import triton_acc

    N, D = mu.shape
    acc = acc_dtype(mu.dtype)
    if N == 0:
        z = mu.new_zeros((D,), dtype=acc)
        return z, z.new_zeros((D, D)), z.clone() if logvar is not None else z.new_empty((0,))
    mu = row_contiguous(mu)
    logvar = None if logvar is None else row_contiguous(logvar)
    tile = _tile(D)
    tiles = triton.cdiv(D, tile)
    pad = tiles * tile
    block_n = 64 if mu.device.type == "cuda" else 256
    rows = block_n * max(1, triton.cdiv(N, block_n * 512))  # at most ~512 chunks, fixed by N
    chunks = max(1, triton.cdiv(N, rows))
    centre = torch.empty((chunks, pad), dtype=acc, device=mu.device)  # every slot written
    s1 = torch.empty((chunks, pad), dtype=acc, device=mu.device)
    s2 = torch.empty((chunks, pad, pad), dtype=acc, device=mu.device)
    se = torch.empty((chunks, pad) if logvar is not None else (0,), dtype=acc, device=mu.device)
    _dip_sums_kernel[(chunks, tiles, tiles)](
        mu, logvar if logvar is not None else mu, centre, s1, s2, se, N, D, row_stride(mu),
        row_stride(logvar) if logvar is not None else 0, rows, PAD=pad, HAS_LOGVAR=logvar is not None,
        ACC=triton_acc(mu.dtype), TILE=tile, BLOCK_N=block_n, num_warps=4)
    count = (N - rows * torch.arange(chunks, device=mu.device)).clamp(max=rows).to(acc)[:, None]  # rows per chunk
    centre, s1, s2 = centre[:, :D], s1[:, :D], s2[:, :D, :D]
    shift = centre - mu[0].to(acc)  # chunk centres relative to mu[0]: the offset's frame
    chunk_mean = shift + s1 / count  # mean - mu[0] of each chunk
    offset = (count * chunk_mean).sum(0) / N
    dev = (chunk_mean - offset) * count.sqrt()
    m2 = (s2 - s1[:, :, None] * s1[:, None, :] / count[:, :, None]).sum(0) + dev.T @ dev
    return offset, m2, se.sum(0)[:D] if logvar is not None else s1.new_empty((0,))


def _fwd_triton(mu, logvar, lambda_od, lambda_d):
    offset, m2, se = _moments_triton(mu, logvar)
    penalty, grad = penalty_from_moments(m2, se if logvar is not None else None, mu.shape[0], lambda_od, lambda_d)
    return penalty, offset, grad


def _bwd_triton(mu, logvar, offset, coef):
    import triton

    from dgmfast.kernels.dip import _dip_grad_kernel
    from dgmfast.ops.common import triton_acc

    mu = row_contiguous(mu)
    logvar = None if logvar is None else row_contiguous(logvar)
    N, D = mu.shape
    gmu = mu.new_empty(mu.shape)
    glv = mu.new_empty(mu.shape if logvar is not None else (0,))
    tile = _tile(D)
    block_n = 64 if mu.device.type == "cuda" else 256
    if N > 0:
        _dip_grad_kernel[(triton.cdiv(N, block_n), triton.cdiv(D, tile))](
            mu, logvar if logvar is not None else mu, offset.contiguous(), coef.contiguous(), gmu, glv, N, D,
            row_stride(mu), row_stride(logvar) if logvar is not None else 0,
            HAS_LOGVAR=logvar is not None, ACC=triton_acc(mu.dtype), TILE=tile, BLOCK_N=block_n, num_warps=4)
    return gmu, glv


# ---- plain-PyTorch statistics and gradient (the "torch" backend of GlobalDipPenalty) ------------------

def _moments_torch(mu, logvar):
    x = mu.to(acc_dtype(mu.dtype))
    if x.shape[0] == 0:
        return _moments_triton(mu, logvar)  # zeros; launches nothing for an empty batch
    shifted = x - x[0]  # as the kernels: no cancellation for a large mean
    offset = shifted.mean(0)
    centred = shifted - offset
    se = logvar.to(x.dtype).exp().sum(0) if logvar is not None else x.new_empty((0,))
    return offset, centred.T @ centred, se


def _bwd_torch(mu, logvar, offset, coef):
    x = mu.to(coef.dtype)
    gmu = 2.0 * ((x - x[:1]) - offset) @ coef if x.shape[0] else x.new_empty(x.shape)
    glv = coef.diagonal() * logvar.to(coef.dtype).exp() if logvar is not None else x.new_empty((0,))
    return gmu.to(mu.dtype), glv.to(mu.dtype)


# ---- custom ops --------------------------------------------------------------------------------------

def _acc_like(mu, shape):
    return mu.new_empty(shape, dtype=acc_dtype(mu.dtype))


@custom_op("dgmfast::dip_moments")
def dip_moments(mu: Tensor, logvar: Optional[Tensor], backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(offset = mean - mu[0] [D], m2 = sum_n (mu_n - mean)(mu_n - mean)^T [D, D], sum_n exp(logvar_n) [D] or [0])."""
    if backend == "triton":
        return _moments_triton(mu, logvar)
    if backend == "torch":
        return _moments_torch(mu, logvar)
    return torch.ops.dgmfast_C.dip_moments(mu, logvar)


@dip_moments.register_fake
def _(mu, logvar, backend):
    D = mu.shape[1]
    return _acc_like(mu, (D,)), _acc_like(mu, (D, D)), _acc_like(mu, (D if logvar is not None else 0,))


@custom_op("dgmfast::dip_vae_penalty_fwd")
def dip_vae_penalty_fwd(mu: Tensor, logvar: Optional[Tensor], lambda_od: float, lambda_d: float,
                        backend: str) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _fwd_triton(mu, logvar, lambda_od, lambda_d)
    return torch.ops.dgmfast_C.dip_vae_penalty_fwd(mu, logvar, lambda_od, lambda_d)


@dip_vae_penalty_fwd.register_fake
def _(mu, logvar, lambda_od, lambda_d, backend):
    D = mu.shape[1]
    return _acc_like(mu, ()), _acc_like(mu, (D,)), _acc_like(mu, (D, D))


@custom_op("dgmfast::dip_vae_penalty_bwd")
def dip_vae_penalty_bwd(mu: Tensor, logvar: Optional[Tensor], offset: Tensor, coef: Tensor,
                        backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _bwd_triton(mu, logvar, offset, coef)
    if backend == "torch":
        return _bwd_torch(mu, logvar, offset, coef)
    return torch.ops.dgmfast_C.dip_vae_penalty_bwd(mu, logvar, offset, coef)


@dip_vae_penalty_bwd.register_fake
def _(mu, logvar, offset, coef, backend):
    return mu.new_empty(mu.shape), mu.new_empty(mu.shape if logvar is not None else (0,))


def _setup_context(ctx, inputs, output):
    mu, logvar, _, _, backend = inputs
    _, offset, grad_cov = output
    ctx.save_for_backward(mu, logvar, offset, grad_cov)
    ctx.backend = backend


def _backward(ctx, grad_penalty, _grad_offset, _grad_cov):
    mu, logvar, offset, grad_cov = ctx.saved_tensors
    coef = grad_cov * (grad_penalty / mu.shape[0])
    gmu, glv = dip_vae_penalty_bwd(mu, logvar, offset, coef, ctx.backend)
    return gmu, (glv if logvar is not None else None), None, None, None


dip_vae_penalty_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---- global batch over a process group --------------------------------------------------------------

class GlobalDipPenalty(torch.autograd.Function):
    """The penalty of the batch concatenated over a process group, from gathered statistics.

    Each process sends (rows, mu[0], offset, m2, sum_exp) of its rows (float64, one all_gather of
    2 + 3D + D^2 numbers); every process merges them in rank order (Chan et al.'s pairwise update, with
    every mean taken relative to the first non-empty rank's mu[0]) and gets the same penalty. Backward sums
    the incoming gradients over the group (one scalar all_reduce, as torch.distributed.nn.all_reduce does)
    and runs the local gradient pass: under DDP, which averages gradients, parameters receive exactly the
    gradient of single-process training on the concatenated batch.
    """

    @staticmethod
    def forward(ctx, mu, logvar, lambda_od, lambda_d, group, backend):
        import torch.distributed as dist

        n, D = mu.shape
        offset, m2, se = dip_moments(mu, logvar, backend)
        first = mu[0].to(torch.float64) if n > 0 else mu.new_zeros((D,), dtype=torch.float64)
        local = torch.cat([mu.new_full((1,), n, dtype=torch.float64), first, offset.double(), m2.double().flatten(),
                           se.double()])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, local, group=group)
        stats = torch.stack(gathered)
        counts = stats[:, 0]
        total = float(counts.sum())
        if total == 0:
            raise ValueError("mu must have at least one row in the whole process group, got 0")
        firsts, offsets = stats[:, 1:1 + D], stats[:, 1 + D:1 + 2 * D]
        m2s = stats[:, 1 + 2 * D:1 + 2 * D + D * D].view(-1, D, D)
        ref = firsts[int((counts > 0).nonzero()[0])]
        rel = (firsts - ref) + offsets  # each rank's mean - ref
        mean = (counts[:, None] * rel).sum(0) / total
        dev = rel - mean
        m2_all = m2s.sum(0) + torch.einsum("r,ri,rj->ij", counts, dev, dev)
        se_all = stats[:, 1 + 2 * D + D * D:].sum(0) if logvar is not None else None
        penalty, grad_cov = penalty_from_moments(m2_all, se_all, total, lambda_od, lambda_d)
        acc = offset.dtype
        local_offset = (mean - (first - ref)).to(acc)  # global mean - this rank's mu[0]
        ctx.save_for_backward(mu, logvar, local_offset, grad_cov.to(acc))
        ctx.total, ctx.group, ctx.backend = total, group, backend
        return penalty.to(acc)

    @staticmethod
    def backward(ctx, grad_penalty):
        import torch.distributed as dist

        mu, logvar, offset, grad_cov = ctx.saved_tensors
        check_first_order("dip_vae_penalty (process_group)", ctx.needs_input_grad)
        g = grad_penalty.detach().clone()
        dist.all_reduce(g, group=ctx.group)
        gmu, glv = dip_vae_penalty_bwd(mu, logvar, offset, grad_cov * (g / ctx.total), ctx.backend)
        return gmu, (glv if logvar is not None else None), None, None, None, None
