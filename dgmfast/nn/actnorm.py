"""ActNorm (Glow's activation normalization) built on dgmfast.functional.actnorm."""
import torch
from torch import nn

from dgmfast import functional as F
from dgmfast.reference.actnorm import actnorm_data_init


class ActNorm(nn.Module):
    """Per-channel affine flow layer, SPEC §3: ``forward(x, reverse=False) -> (y, logdet)``,
    ``y = (x + loc) * exp(log_scale)`` on dim 1 of ``[B, C, ...]`` (or ``[B, C]``).

    Data-dependent initialization (Glow): the first forward in training mode (not in reverse) sets
    ``loc = -mean_c(x)`` and ``log_scale = -log(std_c(x) + 1e-6)`` over the batch and spatial dims, so that
    batch's output has zero mean and unit variance per channel. A channel with zero variance (or
    non-finite values) in that batch raises ValueError naming the channel. The ``initialized`` buffer
    records it, so a loaded state_dict is not re-initialized; before initialization (eval mode or
    reverse) the layer is the identity. The parameters are cast to x's dtype for the op.

    Example::

        layer = dgmfast.nn.ActNorm(16)
        y, logdet = layer(x)                # first training-mode call initializes from x
        x_back, _ = layer(y, reverse=True)
    """

    eps = 1e-6

    def __init__(self, num_channels: int):
        super().__init__()
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        self.num_channels = num_channels
        self.loc = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False  # host mirror of the buffer: no device sync per forward
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_initialized())

    def _sync_initialized(self):
        self._initialized = bool(self.initialized)

    def extra_repr(self):
        return f"{self.num_channels}"

    @torch.no_grad()
    def initialize(self, x):
        """Data-dependent initialization from the batch x (see the class docstring)."""
        loc, log_scale, std = actnorm_data_init(x, self.eps)
        bad = (~torch.isfinite(std)) | (std == 0)
        if bad.any():
            channels = bad.nonzero().flatten().tolist()
            raise ValueError(f"ActNorm data-dependent init: channel(s) {channels} of x (shape {tuple(x.shape)}) have "
                             f"zero variance or non-finite values over the batch and spatial dims (std = "
                             f"{std[bad].tolist()}), so log_scale = -log(std + {self.eps}) would be meaningless; "
                             "initialize from a batch where every channel varies")
        self.loc.copy_(loc)
        self.log_scale.copy_(log_scale)
        self.initialized.fill_(True)
        self._initialized = True

    def forward(self, x, reverse=False):
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"x must be [B, {self.num_channels}, ...], got shape {tuple(x.shape)}")
        if self.training and not reverse and not self._initialized:
            self._sync_initialized()
            if not self._initialized:
                self.initialize(x)
        # parameters follow x's dtype (a no-op unless x is, e.g., bfloat16 under autocast)
        return F.actnorm(x, self.loc.to(x.dtype), self.log_scale.to(x.dtype), reverse=reverse)
