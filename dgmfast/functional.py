"""Public functional ops. Each validates its inputs, picks a backend (dgmfast.backends) and
calls the torch.library custom op, or the plain-PyTorch reference for the "torch" backend."""
import torch

from dgmfast import reference
from dgmfast.backends import select_backend
from dgmfast.ops import coupling as _coupling
from dgmfast.ops.common import check_choice, check_like, check_tensor
from dgmfast.reference.coupling import ORDERS, SCALE_MAPS

__all__ = ["affine_coupling"]


def affine_coupling(x, log_scale, shift, *, scale_map="exp", clamp=1.0, eps=0.0, order="scale_shift",
                    reverse=False):
    """Affine coupling transform (RealNVP / Glow), SPEC §1.

    ``s = scale_map(log_scale)`` with scale_map ``"exp"`` (s = r), ``"tanh"`` (clamp*tanh(r/clamp)) or
    ``"sigmoid"`` (log(sigmoid(r + 2) + eps), Glow). ``order="scale_shift"``: ``y = x*exp(s) + shift``;
    ``"shift_scale"``: ``y = (x + shift)*exp(s)``. ``reverse=True`` applies the inverse.

    Args:
        x, log_scale, shift: ``[B, ...]`` tensors of one shape, dtype (float16/bfloat16/float32/float64)
            and device. ``log_scale`` is the raw conditioner output r. Any batch stride is read in
            place (e.g. ``h.chunk(2, dim=1)``); other layouts are copied.
    Returns:
        ``(y, logdet)``: y like x; logdet ``[B]`` = ``log|det dy/dx|`` (float32, float64 for float64 x).

    Example::

        log_scale, shift = conditioner(x_a).chunk(2, dim=1)
        y_b, logdet = dgmfast.functional.affine_coupling(x_b, log_scale, shift, scale_map="sigmoid",
                                                         order="shift_scale")
    """
    check_tensor("x", x)
    check_like("log_scale", log_scale, "x", x)
    check_like("shift", shift, "x", x)
    check_choice("scale_map", scale_map, SCALE_MAPS)
    check_choice("order", order, ORDERS)
    if scale_map == "tanh" and not clamp > 0:
        raise ValueError(f"clamp must be > 0 for scale_map='tanh', got {clamp!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    backend = select_backend("affine_coupling", x.device, x.dtype)
    if backend == "torch":
        return reference.coupling.affine_coupling(x, log_scale, shift, scale_map=scale_map, clamp=clamp, eps=eps,
                                                  order=order, reverse=reverse)
    shift_first = (order == "shift_scale") != bool(reverse)
    return _coupling.affine_coupling_fwd(x, log_scale, shift, _coupling.SCALE_MAP_IDS[scale_map], float(clamp),
                                         float(eps), shift_first, bool(reverse), backend)
