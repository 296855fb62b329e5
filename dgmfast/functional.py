"""Public functional ops. Each validates its inputs, picks a backend (dgmfast.backends) and
calls the torch.library custom op, or the plain-PyTorch reference for the "torch" backend."""
import torch

from dgmfast import reference
from dgmfast.backends import select_backend
from dgmfast.ops import coupling as _coupling
from dgmfast.ops import dequant as _dequant
from dgmfast.ops import mixlogistic as _mixlogistic
from dgmfast.ops.common import (FLOAT_DTYPES, check_choice, check_like, check_tensor, draw_seed, philox_normal,
                                philox_uniform)
from dgmfast.reference.coupling import ORDERS, SCALE_MAPS
from dgmfast.reference.dequant import MODES, bits_per_dim

__all__ = ["affine_coupling", "uniform_dequantize", "gaussian_sample_log_prob", "dequantize_sigmoid_tail",
           "bits_per_dim", "mixlogistic_coupling"]
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


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


def _check_bits(n_bits, in_bits=None):
    for name, v in (("n_bits", n_bits), ("in_bits", in_bits)):
        if v is not None and (not isinstance(v, int) or not 1 <= v <= 16):
            raise ValueError(f"{name} must be an integer in 1..16, got {v!r}")
    if in_bits is not None and n_bits > in_bits:
        raise ValueError(f"n_bits must be <= in_bits (bits can only be dropped), got n_bits={n_bits}, in_bits={in_bits}")


def _check_mode_alpha(mode, alpha):
    check_choice("mode", mode, MODES)
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")


def _check_pixels(name, x, bits):
    """x: an integer tensor with values in [0, 2**bits); float input gets a TypeError that says how to convert."""
    check_tensor(name, x, dtypes=None)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of pixel values in [0, {2**bits}) (e.g. torch.uint8), got "
                        f"{x.dtype}; for images in [0, 1] use (x * {2**bits - 1}).round().to(torch.uint8)")
    if x.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must have an integer dtype in {[str(d) for d in INT_DTYPES]}, got {x.dtype}")
    if x.numel() and not torch.compiler.is_compiling():  # data-dependent: checked in eager mode
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= 2**bits:
            raise ValueError(f"{name} must have values in [0, {2**bits}) for {bits} bits, got values in [{lo}, {hi}]")


def uniform_dequantize(x, *, n_bits=8, in_bits=8, mode="logit", alpha=0.05, generator=None, reverse=False,
                       dtype=torch.float32):
    """Uniform dequantization with in-kernel noise, SPEC §6: ``(y, logdet)``.

    ``x``: integer ``[B, ...]`` pixels in ``[0, 2**in_bits)`` (read at its own width, uint8 stays 1 byte).
    Bits are dropped Glow-style (``floor(x / 2**(in_bits - n_bits))``); with ``u ~ U[0, 1)`` drawn inside
    the kernel from one seed of ``generator`` (Philox, identical on every backend) and ``n = 2**n_bits``:
    ``"unit"``: ``y = (x + u)/n``; ``"centered"``: ``y - 1/2``; ``"logit"`` (RealNVP):
    ``p = alpha + (1 - 2 alpha) y``, ``y = log p - log(1 - p)``. ``logdet[b] = log|det dy/d(x + u)|``.
    ``y`` has ``dtype`` (float32 by default). No gradient flows to integer data.

    ``reverse=True`` maps float ``y`` back to integers ``clamp(floor(n q), 0, n - 1)`` (uint8 for
    ``n_bits <= 8``, else int32) with logdet minus the forward one at ``y``; nothing flows back through it.

    Example::

        y, logdet = dgmfast.functional.uniform_dequantize(images_uint8, n_bits=5)
        bpd = dgmfast.functional.bits_per_dim(flow.log_prob(y), logdet, images_uint8[0].numel())
    """
    _check_mode_alpha(mode, alpha)
    if reverse:
        check_tensor("x", x)
        _check_bits(n_bits)
        x = x.detach()
        backend = select_backend("uniform_dequantize", x.device, x.dtype)
        if backend == "torch":
            return reference.dequant.uniform_dequantize_reverse(x, n_bits=n_bits, mode=mode, alpha=alpha)
        return _dequant.uniform_dequantize_reverse(x, n_bits, _dequant.MODE_IDS[mode], float(alpha), backend)
    _check_bits(n_bits, in_bits)
    _check_pixels("x", x, in_bits)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {[str(d) for d in FLOAT_DTYPES]}, got {dtype}")
    seed = draw_seed(generator)
    backend = select_backend("uniform_dequantize", x.device, dtype)
    if backend == "torch":
        noise = philox_uniform(x.numel(), int(seed), device=x.device).view(x.shape)
        return reference.dequant.uniform_dequantize(x, noise, n_bits=n_bits, in_bits=in_bits, mode=mode, alpha=alpha,
                                                    dtype=dtype)
    return _dequant.uniform_dequantize(x, seed, n_bits, in_bits, _dequant.MODE_IDS[mode], float(alpha), dtype,
                                       backend)


def gaussian_sample_log_prob(shape, *, generator=None, dtype=torch.float32, device="cpu"):
    """``eps ~ N(0, I)`` of ``shape`` (``[B, ...]``) drawn in the kernel, and ``log N(eps; 0, I)`` per sample,
    SPEC §6. Philox normals (Box-Muller), identical on every backend for one seed."""
    shape = [int(s) for s in (shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,))]
    if len(shape) < 1 or any(s < 0 for s in shape):
        raise ValueError(f"shape must be [B, ...] with non-negative sizes, got {shape}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {[str(d) for d in FLOAT_DTYPES]}, got {dtype}")
    device = torch.device(device)
    seed = draw_seed(generator)
    backend = select_backend("gaussian_sample_log_prob", device, dtype)
    if backend == "torch":
        numel = 1
        for s in shape:
            numel *= s
        eps = philox_normal(numel, int(seed), device=device).view(shape).to(dtype)
        return eps, reference.dequant.gaussian_log_prob(eps)
    return _dequant.gaussian_sample_log_prob(shape, seed, dtype, device, backend)


def dequantize_sigmoid_tail(x, v, *, n_bits=8, mode="logit", alpha=0.05):
    """The last step of Flow++ variational dequantization, SPEC §6: ``(y, logdet)``.

    ``u = sigmoid(v)``, ``q = (x + u)/2**n_bits``, ``y`` per mode as in :func:`uniform_dequantize`;
    ``logdet[b] = sum(log sigmoid'(v)) + (the mode's log-det)``. ``x``: integer ``[B, ...]`` in
    ``[0, 2**n_bits)``; ``v``: float, same shape. Gradients flow to ``v``.
    """
    _check_bits(n_bits)
    _check_mode_alpha(mode, alpha)
    _check_pixels("x", x, n_bits)
    check_tensor("v", v)
    if tuple(v.shape) != tuple(x.shape):
        raise ValueError(f"v must have shape {tuple(x.shape)} (as x), got {tuple(v.shape)}")
    if v.device != x.device:
        raise ValueError(f"v must be on device {x.device} (as x), got {v.device}")
    backend = select_backend("dequantize_sigmoid_tail", v.device, v.dtype)
    if backend == "torch":
        return reference.dequant.dequantize_sigmoid_tail(x, v, n_bits=n_bits, mode=mode, alpha=alpha)
    return _dequant.dequantize_sigmoid_tail_fwd(x, v, n_bits, _dequant.MODE_IDS[mode], float(alpha), backend)


def mixlogistic_coupling(x, logits, means, log_scales, log_scale, shift, *, scale_map="tanh", clamp=1.0,
                         min_log_scale=-7.0, order="scale_shift", reverse=False):
    """Flow++ mixture-of-logistics coupling, SPEC §2: ``(y, logdet)``.

    With ``l = max(log_scales, min_log_scale)``, ``w = log_softmax(logits)``, ``z_k = (x - mu_k) exp(-l_k)``:
    ``v = log u - log(1 - u)`` from the two stable log-sums ``log u = logsumexp(w + logsigmoid(z))``,
    ``log(1-u) = logsumexp(w + logsigmoid(-z))``; ``s = scale_map(log_scale)`` (see :func:`affine_coupling`);
    ``order="scale_shift"`` (Flow++): ``y = exp(s) v + shift``; ``"shift_scale"`` (its PyTorch port):
    ``y = (v + shift) exp(s)``. ``logdet[b] = sum(log f - log u - log(1-u) + s)`` with f the mixture pdf.
    ``reverse=True`` inverts: fixed-count bisection in logit space (40 steps in float32 math, 80 in
    float64), logdet = minus the forward logdet at the returned x, gradients by implicit differentiation.

    Args:
        x, log_scale, shift: ``[B, ...]``, one shape, dtype (float16/bfloat16/float32/float64) and device.
        logits, means, log_scales: ``[B, ..., K]`` (K last), same dtype and device. They are read through their
            strides: K-last contiguous tensors and views such as
            ``h.view(B, C, 3*K + 2, H, W).permute(0, 1, 3, 4, 2)[..., 2:K + 2]`` are not copied.
    Returns:
        ``(y, logdet)``: y like x; logdet ``[B]`` (float32, float64 for float64 x).

    Example::

        hv = h.unflatten(1, (C, 3 * K + 2)).movedim(2, -1)   # h: [B, C*(3K+2), H, W] from a conditioner
        y, logdet = dgmfast.functional.mixlogistic_coupling(
            x, hv[..., 2:K + 2], hv[..., K + 2:2 * K + 2], hv[..., 2 * K + 2:], hv[..., 0], hv[..., 1])
    """
    check_tensor("x", x)
    check_like("log_scale", log_scale, "x", x)
    check_like("shift", shift, "x", x)
    check_tensor("logits", logits, min_dim=2)
    k = logits.shape[-1]
    if k < 1:
        raise ValueError(f"logits must have K >= 1 components in its last dim, got shape {tuple(logits.shape)}")
    want = (*x.shape, k)
    check_like("logits", logits, "x", x, shape=want)
    check_like("means", means, f"x plus K={k} of logits", x, shape=want)
    check_like("log_scales", log_scales, f"x plus K={k} of logits", x, shape=want)
    check_choice("scale_map", scale_map, SCALE_MAPS)
    check_choice("order", order, ORDERS)
    if scale_map == "tanh" and not clamp > 0:
        raise ValueError(f"clamp must be > 0 for scale_map='tanh', got {clamp!r}")
    if not isinstance(min_log_scale, (int, float)) or not abs(float(min_log_scale)) < float("inf"):
        raise ValueError(f"min_log_scale must be a finite number, got {min_log_scale!r}")
    backend = select_backend("mixlogistic_coupling", x.device, x.dtype)
    if backend == "torch":
        return reference.mixlogistic.mixlogistic_coupling(x, logits, means, log_scales, log_scale, shift,
                                                          scale_map=scale_map, clamp=clamp,
                                                          min_log_scale=min_log_scale, order=order, reverse=reverse)
    return _mixlogistic.mixlogistic_coupling_fwd(x, logits, means, log_scales, log_scale, shift,
                                                 _coupling.SCALE_MAP_IDS[scale_map], float(clamp),
                                                 float(min_log_scale), order == "shift_scale", bool(reverse), backend)
