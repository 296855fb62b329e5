"""DIP-VAE loss module built on dgmfast.functional.dip_vae_penalty."""
from torch import nn

from dgmfast import functional as F
from dgmfast.ops.common import check_choice
from dgmfast.reference.dip import VARIANTS


class DIPVAELoss(nn.Module):
    """DIP-VAE covariance penalty (Kumar et al. 2018), SPEC §8: ``forward(mu, logvar=None) -> scalar``.

    ``lambda_d`` defaults to ``10 * lambda_od`` for variant "i" and ``lambda_od`` for variant "ii"
    (disentanglement_lib's study). ``process_group``: penalize the batch concatenated over a
    torch.distributed group (see :func:`dgmfast.functional.dip_vae_penalty`).

    Example::

        dip = dgmfast.nn.DIPVAELoss(lambda_od=10.0, variant="ii")
        loss = recon + kl + dip(mu, logvar)
    """

    def __init__(self, lambda_od=10.0, lambda_d=None, variant="i", process_group=None):
        super().__init__()
        check_choice("variant", variant, VARIANTS)
        self.variant = variant
        self.lambda_od = float(lambda_od)
        self.lambda_d = float(lambda_d) if lambda_d is not None else (10.0 if variant == "i" else 1.0) * self.lambda_od
        self.process_group = process_group

    def extra_repr(self):
        return f"lambda_od={self.lambda_od}, lambda_d={self.lambda_d}, variant={self.variant!r}"

    def forward(self, mu, logvar=None):
        return F.dip_vae_penalty(mu, logvar, lambda_od=self.lambda_od, lambda_d=self.lambda_d, variant=self.variant,
                                 process_group=self.process_group)
