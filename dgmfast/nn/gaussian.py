"""Gaussian-posterior VAE modules built on dgmfast.functional: beta-VAE loss, VampPrior, ELBO surgery."""
import torch
from torch import nn

from dgmfast import functional as F
from dgmfast.ops.common import check_choice
from dgmfast.reference.gaussian import ESTIMATORS


class BetaVAELoss(nn.Module):
    """beta-VAE objective (Higgins et al.), optionally with the capacity schedule of Burgess et al., SPEC §7.

    ``forward(recon, kl, step=None) -> loss`` with ``KL = mean(kl)`` (kl: per-sample ``[B]``, e.g. from
    :func:`dgmfast.functional.reparameterize`, or a scalar) and recon averaged over the batch if it is
    per-sample:

    - ``capacity=None``: ``loss = recon + beta * KL``.
    - ``capacity=(c_max, num_steps)``: ``loss = recon + gamma * |KL - C(step)|`` with
      ``C(step) = c_max * min(1, step / num_steps)`` (nats). Without an explicit `step` the module counts
      its own training-mode calls (buffer ``step``, saved with the state dict).

    Example::

        z, kl, _ = dgmfast.functional.reparameterize(mu, logvar)
        loss_fn = dgmfast.nn.BetaVAELoss(capacity=(25.0, 100_000), gamma=1000.0)
        loss = loss_fn(recon_nll, kl)   # recon_nll: [B] or scalar
    """

    def __init__(self, beta=4.0, capacity=None, gamma=1000.0):
        super().__init__()
        if capacity is not None:
            if not (isinstance(capacity, (tuple, list)) and len(capacity) == 2):
                raise ValueError(f"capacity must be None or (c_max, num_steps), got {capacity!r}")
            c_max, num_steps = capacity
            if not c_max >= 0 or not num_steps > 0:
                raise ValueError(f"capacity needs c_max >= 0 and num_steps > 0, got {capacity!r}")
            capacity = (float(c_max), int(num_steps))
        self.beta, self.gamma, self.capacity = float(beta), float(gamma), capacity
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def extra_repr(self):
        return f"beta={self.beta}, capacity={self.capacity}, gamma={self.gamma}"

    def capacity_at(self, step):
        """C(step) = c_max * min(1, step / num_steps)."""
        c_max, num_steps = self.capacity
        return c_max * min(1.0, float(step) / num_steps)

    def forward(self, recon, kl, step=None):
        recon = recon.mean() if recon.dim() > 0 else recon
        kl = kl.mean() if kl.dim() > 0 else kl
        if self.capacity is None:
            return recon + self.beta * kl
        if step is None:
            step = int(self.step)
            if self.training:
                self.step += 1
        return recon + self.gamma * (kl - self.capacity_at(step)).abs()


class VampPrior(nn.Module):
    """VampPrior (Tomczak & Welling 2018), SPEC §9: ``log p(z) = logsumexp_k log q(z | u_k) - log K`` over
    ``num_pseudo`` trainable pseudo-inputs u_k, with q the encoder's diagonal-Gaussian posterior.

    ``encoder(u)`` maps ``[K, *input_shape]`` to ``(mu, logvar)`` (two ``[K, D]`` tensors, or one
    ``[K, 2D]`` tensor split in halves along dim 1). ``forward(z) -> log p(z)`` ``[N]`` (float32; float64
    for float64), fused (:func:`dgmfast.functional.gaussian_mixture_log_prob`). Includes the
    ``log 2pi`` constant that the authors' code omits. Pseudo-inputs start at N(init_mean, init_std^2)
    (the authors' defaults 0.05, 0.01).

    Example::

        prior = dgmfast.nn.VampPrior(encoder, input_shape=(1, 28, 28), num_pseudo=500)
        kl_mc = log_q - prior(z)        # one-sample KL estimate
    """

    def __init__(self, encoder: nn.Module, input_shape, num_pseudo=500, *, init_mean=0.05, init_std=0.01):
        super().__init__()
        if int(num_pseudo) < 1:
            raise ValueError(f"num_pseudo must be >= 1, got {num_pseudo!r}")
        self.encoder = encoder
        self.pseudo_inputs = nn.Parameter(init_mean + init_std * torch.randn(int(num_pseudo), *tuple(input_shape)))

    def posteriors(self):
        """(mu, logvar) ``[K, D]`` of the encoder at the pseudo-inputs."""
        out = self.encoder(self.pseudo_inputs)
        if isinstance(out, torch.Tensor):
            if out.dim() != 2 or out.shape[1] % 2:
                raise ValueError(f"encoder output must be (mu, logvar) or one [K, 2D] tensor, got {tuple(out.shape)}")
            return out.chunk(2, dim=1)
        mu, logvar = out
        return mu, logvar

    def forward(self, z):
        mu, logvar = self.posteriors()
        return F.gaussian_mixture_log_prob(z, mu, logvar)


class ElboSurgery(nn.Module):
    """ELBO surgery terms (SPEC §10) of a batch: ``forward(z, mu, logvar) -> ElboSurgery`` named tuple
    (see :func:`dgmfast.functional.elbo_surgery`), e.g. for beta-TCVAE
    ``loss = recon + s.mi + beta * s.tc + s.dimwise_kl``.

    Args: dataset_size (N >= batch size), estimator ("mws" or "mss"), process_group (global batch over
    torch.distributed ranks).
    """

    def __init__(self, dataset_size, estimator="mws", process_group=None):
        super().__init__()
        check_choice("estimator", estimator, ESTIMATORS)
        self.dataset_size, self.estimator, self.process_group = dataset_size, estimator, process_group

    def extra_repr(self):
        return f"dataset_size={self.dataset_size}, estimator={self.estimator!r}"

    def forward(self, z, mu, logvar):
        return F.elbo_surgery(z, mu, logvar, dataset_size=self.dataset_size, estimator=self.estimator,
                              process_group=self.process_group)
