"""DIP-VAE covariance penalty (SPEC §8), plain PyTorch: the executable contract the kernels must equal."""
import torch

from dgmfast.reference.common import acc_dtype

VARIANTS = ("i", "ii")


def dip_vae_penalty(mu, logvar=None, *, lambda_od, lambda_d, variant="i"):
    """``lambda_od * sum_{i != j} Cov_ij^2 + lambda_d * sum_i (Cov_ii - 1)^2``.

    ``Cov = (1/N) sum_n (mu_n - mean)(mu_n - mean)^T`` over the batch of ``mu`` ``[N, D]`` (biased);
    variant ``"ii"`` adds ``diag(mean_n exp(logvar_n))``. Returns a 0-dim tensor in float32
    (float64 for float64 input).
    """
    acc = acc_dtype(mu.dtype)
    m = mu.to(acc)
    centred = m - m.mean(0)
    cov = centred.T @ centred / m.shape[0]
    if variant == "ii":
        cov = cov + torch.diag(logvar.to(acc).exp().mean(0))
    diag = torch.diagonal(cov)
    off_diag = cov - torch.diag(diag)
    return lambda_od * off_diag.square().sum() + lambda_d * (diag - 1).square().sum()
