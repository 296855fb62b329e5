"""Public functional ops. Each validates its inputs, picks a backend (dgmfast.backends) and
calls the torch.library custom op, or the plain-PyTorch reference for the "torch" backend."""
import math

import torch

from dgmfast import reference
from dgmfast.backends import select_backend
from dgmfast.ops import actnorm as _actnorm
from dgmfast.ops import coupling as _coupling
from dgmfast.ops import dequant as _dequant
from dgmfast.ops import dip as _dip
from dgmfast.ops import gaussian as _gaussian
from dgmfast.ops import invconv as _invconv
from dgmfast.ops import mixlogistic as _mixlogistic
from dgmfast.ops import vaeflows as _vaeflows
from dgmfast.ops.common import (FLOAT_DTYPES, check_choice, check_like, check_tensor, draw_seed, philox_normal,
                                philox_uniform)
from dgmfast.reference.common import acc_dtype
from dgmfast.reference.coupling import ORDERS, SCALE_MAPS
from dgmfast.reference.dequant import MODES
from dgmfast.reference.dip import VARIANTS
from dgmfast.reference.gaussian import ESTIMATORS, LOG_2PI, ElboSurgery, elbo_surgery_from_terms

__all__ = ["affine_coupling", "actnorm", "invconv_lu", "channel_mix", "uniform_dequantize", "gaussian_sample_log_prob", "dequantize_sigmoid_tail",
           "bits_per_dim", "reparameterize", "gaussian_mixture_log_prob", "elbo_surgery", "ElboSurgery",
           "mixlogistic_coupling", "dip_vae_penalty", "planar_flows", "iaf_step"]
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
        raise ValueError(f"n_bits must be <= in_bits (bits can only be dropped), got n_bits={n_bits}, "
                         f"in_bits={in_bits}")


def _check_mode_alpha(mode, alpha):
    check_choice("mode", mode, MODES)
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")


def _check_pixel_dtype(name, x, bits):
    """x: an integer tensor; float input gets a TypeError that says how to convert."""
    check_tensor(name, x, dtypes=None)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of pixel values in [0, {2**bits}) (e.g. torch.uint8), got "
                        f"{x.dtype}; for images in [0, 1] use (x * {2**bits - 1}).round().to(torch.uint8)")
    if x.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must have an integer dtype in {[str(d) for d in INT_DTYPES]}, got {x.dtype}")


def _check_pixel_values(name, x, bits, backend):
    """Values in [0, 2**bits). The C++ CPU kernels check while they read x (no extra pass, also under
    torch.compile, same message); other backends are checked here, in eager mode (data-dependent)."""
    if backend != "cpu" and x.numel() and not torch.compiler.is_compiling():
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
        if backend != "cpu" and not torch.compiler.is_compiling() and bool(torch.isnan(x).any()):
            raise ValueError("x (reverse=True: the dequantized values) must not contain NaN")  # the C++ kernel checks
        if backend == "torch":
            return reference.dequant.uniform_dequantize_reverse(x, n_bits=n_bits, mode=mode, alpha=alpha)
        return _dequant.uniform_dequantize_reverse(x, n_bits, _dequant.MODE_IDS[mode], float(alpha), backend)
    _check_bits(n_bits, in_bits)
    _check_pixel_dtype("x", x, in_bits)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {[str(d) for d in FLOAT_DTYPES]}, got {dtype}")
    seed = draw_seed(generator)
    backend = select_backend("uniform_dequantize", x.device, dtype)
    _check_pixel_values("x", x, in_bits, backend)
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
    _check_pixel_dtype("x", x, n_bits)
    check_tensor("v", v)
    if tuple(v.shape) != tuple(x.shape):
        raise ValueError(f"v must have shape {tuple(x.shape)} (as x), got {tuple(v.shape)}")
    if v.device != x.device:
        raise ValueError(f"v must be on device {x.device} (as x), got {v.device}")
    backend = select_backend("dequantize_sigmoid_tail", v.device, v.dtype)
    _check_pixel_values("x", x, n_bits, backend)
    if backend == "torch":
        return reference.dequant.dequantize_sigmoid_tail(x, v, n_bits=n_bits, mode=mode, alpha=alpha)
    return _dequant.dequantize_sigmoid_tail_fwd(x, v, n_bits, _dequant.MODE_IDS[mode], float(alpha), backend)


def bits_per_dim(log_prob, log_weight, num_dims):
    """``-(log_prob + log_weight) / (num_dims ln 2)``, SPEC §6: the dequantization bound on the discrete
    negative log-likelihood in bits per dimension. ``log_prob``: ``log p(y)`` of the density model,
    ``log_weight``: the dequantizer's (``[B]`` each); ``num_dims``: elements per sample (``C*H*W``)."""
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims <= 0:
        raise ValueError(f"num_dims must be a positive integer (elements per sample), got {num_dims!r}")
    return reference.dequant.bits_per_dim(log_prob, log_weight, num_dims)


def dip_vae_penalty(mu, logvar=None, *, lambda_od, lambda_d, variant="i", process_group=None):
    """DIP-VAE covariance penalty (Kumar et al. 2018), SPEC §8: a 0-dim tensor.

    ``Cov = (1/N) sum_n (mu_n - mean)(mu_n - mean)^T`` (biased, centred over the batch); variant ``"ii"``
    adds ``diag(mean_n exp(logvar_n))``. Penalty ``lambda_od * sum_{i != j} Cov_ij^2 + lambda_d * sum_i
    (Cov_ii - 1)^2``. One kernel over the rows for the statistics (each chunk of rows centred on its own mean, so
    neither a large mean nor an outlying row loses accuracy) and one pass for the gradient; nothing of size [N, D]
    is saved.

    Args:
        mu: ``[N, D]`` posterior means, N >= 1 (float16/bfloat16/float32/float64).
        logvar: ``[N, D]`` posterior log-variances like mu; required for ``variant="ii"``, ignored by "i".
        process_group: a ``torch.distributed`` group: the penalty of the batch concatenated over the group
            (identical on every rank; statistics gathered, not rows). Its backward sums the incoming
            gradients over the group, so under DDP parameter gradients equal single-process training on the
            whole batch. Not traceable by torch.compile.
    Returns:
        The penalty, float32 (float64 for float64 mu). Gradients flow to mu (and logvar for "ii").

    Example::

        loss = recon + dgmfast.functional.dip_vae_penalty(mu, lambda_od=10.0, lambda_d=100.0)
    """
    check_tensor("mu", mu, min_dim=2)
    if mu.dim() != 2:
        raise ValueError(f"mu must be [N, D], got shape {tuple(mu.shape)}")
    check_choice("variant", variant, VARIANTS)
    if variant == "ii":
        if logvar is None:
            raise ValueError("logvar is required for variant='ii' (it adds diag(mean exp(logvar))), got None")
        check_like("logvar", logvar, "mu", mu)
    else:
        logvar = None
    for name, v in (("lambda_od", lambda_od), ("lambda_d", lambda_d)):
        if not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    if mu.shape[1] == 0:
        raise ValueError(f"mu must have at least one latent dim, got shape {tuple(mu.shape)}")
    backend = select_backend("dip_vae_penalty", mu.device, mu.dtype)
    if process_group is not None:
        return _dip.GlobalDipPenalty.apply(mu, logvar, float(lambda_od), float(lambda_d), process_group, backend)
    if mu.shape[0] == 0:
        raise ValueError("mu must have at least one row (the covariance of an empty batch is undefined), got 0")
    if backend == "torch":
        return reference.dip.dip_vae_penalty(mu, logvar, lambda_od=lambda_od, lambda_d=lambda_d, variant=variant)
    return _dip.dip_vae_penalty_fwd(mu, logvar, float(lambda_od), float(lambda_d), backend)[0]


def _check_planar(z, u, w, b):
    check_tensor("z", z, min_dim=2)
    if z.dim() != 2:
        raise ValueError(f"z must be [B, D], got shape {tuple(z.shape)}")
    B, D = z.shape
    check_tensor("w", w, dtypes=None)
    if w.dim() not in (2, 3) or w.shape[-1] != D or (w.dim() == 3 and w.shape[0] != B):
        raise ValueError(f"w must be [L, {D}] (shared) or [{B}, L, {D}] (amortized), got shape {tuple(w.shape)}")
    check_like("w", w, "z", z, shape=w.shape)
    check_like("u", u, "w", w)
    L = w.shape[-2]
    check_tensor("b", b, dtypes=None)
    if tuple(b.shape) not in ((L,), (B, L)):
        raise ValueError(f"b must be [{L}] or [{B}, {L}], got shape {tuple(b.shape)}")
    check_like("b", b, "z", z, shape=b.shape)


def planar_flows(z, u, w, b):
    """L planar flow steps (Rezende & Mohamed 2015) in one kernel, SPEC §5: ``(z_L, logdet)``.

    Step l: ``u_hat = u + (m(w.u) - w.u) w/|w|^2`` with ``m(a) = -1 + softplus(a)`` (so ``w.u_hat > -1``: every
    step is invertible), ``a = w.z + b``, ``z <- z + u_hat tanh(a)``, ``logdet += log(1 + (1 - tanh(a)^2) w.u_hat)``.
    A step with ``w = 0`` is ``z + u tanh(b)`` with log-det 0.

    Args:
        z: ``[B, D]``.
        u, w: ``[L, D]`` shared by the batch, or ``[B, L, D]`` amortized (e.g. views of an encoder's output,
            read through their strides); same dtype and device as z.
        b: ``[L]`` or ``[B, L]``.
    Returns:
        ``(z_L, logdet)``: z_L like z, logdet ``[B]`` (float32, float64 for float64 z). Backward saves the
        inputs and the ``[B, L]`` pre-activations only.

    Example::

        u, w, b = dgmfast.nn.PlanarFlow.split_params(encoder_head(x), num_layers=16, dim=64)
        z_k, logdet = dgmfast.functional.planar_flows(z0, u, w, b)
    """
    _check_planar(z, u, w, b)
    backend = select_backend("planar_flows", z.device, z.dtype)
    if backend == "torch":
        return reference.vaeflows.planar_flows(z, u, w, b)
    out, logdet, _ = _vaeflows.planar_flows_fwd(z, u, w, b, backend)
    return out, logdet


def _depends_on(outputs, t):
    """Whether any of `outputs` was computed from tensor `t` (walks the autograd graph)."""
    target = t.grad_fn
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node is target or getattr(node, "variable", None) is t:
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


def iaf_step(z, mean, log_scale_raw, *, sigmoid_bias=2.0, reverse=False):
    """One inverse-autoregressive-flow step in the numerically stable form (Kingma et al. 2016), SPEC §5.

    ``g = sigmoid(log_scale_raw + sigmoid_bias)``, ``z' = g z + (1 - g) mean``, ``logdet[b] = sum log g``
    (pyro's ``AffineAutoregressive(stable=True)``). ``reverse=True``: ``z = (z' - (1 - g) mean)/g``, logdet
    ``-sum log g``; this is the inverse only when ``mean`` and ``log_scale_raw`` do not depend on ``z'``
    (inverting a whole autoregressive step takes D such calls, see ``dgmfast.nn.IAF``): a reverse call whose
    mean or log-scale was computed from z' itself raises (detected through the autograd graph in eager mode).

    Args:
        z, mean, log_scale_raw: ``[B, ...]`` of one shape, dtype and device.
    Returns:
        ``(z', logdet)``; logdet ``[B]`` float32 (float64 for float64 z).
    """
    check_tensor("z", z)
    check_like("mean", mean, "z", z)
    check_like("log_scale_raw", log_scale_raw, "z", z)
    if not isinstance(sigmoid_bias, (int, float)) or sigmoid_bias != sigmoid_bias:
        raise ValueError(f"sigmoid_bias must be a finite number, got {sigmoid_bias!r}")
    if reverse and z.requires_grad and not torch.compiler.is_compiling() and _depends_on((mean, log_scale_raw), z):
        raise ValueError("iaf_step(reverse=True) needs mean and log_scale_raw that do not depend on z (the input "
                         "being inverted); invert an autoregressive step one dimension at a time instead "
                         "(dgmfast.nn.IAF.forward(..., reverse=True))")
    return iaf_step_unchecked(z, mean, log_scale_raw, sigmoid_bias, reverse)


def iaf_step_unchecked(z, mean, log_scale_raw, sigmoid_bias, reverse):
    """:func:`iaf_step` without validation, for callers that built valid inputs themselves (dgmfast.nn.IAF
    inverts with D reverse calls whose mean and log-scale depend on z only through already-solved dims)."""
    backend = select_backend("iaf_step", z.device, z.dtype)
    if backend == "torch":
        return reference.vaeflows.iaf_step(z, mean, log_scale_raw, sigmoid_bias=sigmoid_bias, reverse=reverse)
    return _vaeflows.iaf_step_fwd(z, mean, log_scale_raw, float(sigmoid_bias), bool(reverse), backend)


def actnorm(x, loc, log_scale, *, reverse=False):
    """Activation normalization (Glow), SPEC §3: ``(y, logdet)``.

    ``y = (x + loc[c]) * exp(log_scale[c])`` per channel (dim 1); ``logdet[b] = S * sum(log_scale)`` with
    S the product of the dims after 1 (1 for ``[B, C]`` vectors). ``reverse=True``:
    ``x = y * exp(-log_scale[c]) - loc[c]`` with logdet negated. Gradients flow to x, loc and log_scale
    (the parameter gradients are per-channel reductions over batch and spatial dims, summed in a fixed
    order: bitwise reproducible).

    Args:
        x: ``[B, C, ...]`` float16/bfloat16/float32/float64. Any batch/channel strides are read in place.
        loc, log_scale: ``[C]``, x's dtype and device.
    Returns:
        ``(y, logdet)``: y contiguous like x; logdet ``[B]`` float32 (float64 for float64 x).

    Example::

        y, logdet = dgmfast.functional.actnorm(x, loc, log_scale)            # x: [B, C, H, W]
        x_back, _ = dgmfast.functional.actnorm(y, loc, log_scale, reverse=True)
    """
    check_tensor("x", x, min_dim=2)
    channels = (x.shape[1],)
    check_like("loc", loc, "x's channel dim", x, shape=channels)
    check_like("log_scale", log_scale, "x's channel dim", x, shape=channels)
    backend = select_backend("actnorm", x.device, x.dtype)
    if backend == "torch":
        return reference.actnorm.actnorm(x, loc, log_scale, reverse=reverse)
    return _actnorm.actnorm_fwd(x, loc, log_scale, bool(reverse), backend)


def _check_channel_param(name, t, shape, x):
    """A 1x1 conv parameter of x [B, C, ...]: `shape` (of C), x's accumulation dtype, x's device."""
    check_tensor(name, t, min_dim=0)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} (C = x.shape[1]), got {tuple(t.shape)}")
    acc = acc_dtype(x.dtype)
    if t.dtype != acc:
        raise TypeError(f"{name} must have dtype {acc} (the accumulation dtype of x's {x.dtype}), got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on device {x.device} (as x), got {t.device}")


def invconv_lu(x, perm, lower, upper, sign_s, log_abs_s, *, reverse=False):
    """Invertible 1x1 convolution in Glow's LU form, SPEC §4: ``(y, logdet)``.

    ``y[b, :, ...] = W x[b, :, ...]`` over dim 1 with ``W = perm @ L @ (U + diag(sign_s * exp(log_abs_s)))``,
    L the unit lower triangle of ``lower`` and U the strict upper triangle of ``upper`` (their other entries
    are ignored); ``logdet[b] = S * sum(log_abs_s)`` with S the product of the dims after 1. ``reverse=True``
    applies ``W^-1`` (triangular solves in float64, no determinant or inverse of W) with logdet negated.
    Gradients flow to x, lower, upper and log_abs_s (perm and sign_s are fixed). On the cpu backend W is
    assembled inside the op and the layer is one C++ graph node.

    Args:
        x: ``[B, C, ...]`` float16/bfloat16/float32/float64; any batch/channel strides are read in place.
        perm: ``[C, C]`` permutation matrix. lower, upper: ``[C, C]``. sign_s, log_abs_s: ``[C]``.
            The parameters are in x's accumulation dtype (float32, float64 for float64 x), on x's device.
    Returns:
        ``(y, logdet)``: y contiguous, x's shape and dtype; logdet ``[B]`` float32 (float64 for float64 x).

    Example::

        layer = dgmfast.nn.InvConv1x1(8)                        # lu=True: its forward calls this op
        y, logdet = dgmfast.functional.invconv_lu(x, layer.perm, layer.lower, layer.upper, layer.sign_s,
                                                  layer.log_abs_s)
    """
    check_tensor("x", x, min_dim=2)
    c = x.shape[1]
    for name, t, shape in (("perm", perm, (c, c)), ("lower", lower, (c, c)), ("upper", upper, (c, c)),
                           ("sign_s", sign_s, (c,)), ("log_abs_s", log_abs_s, (c,))):
        _check_channel_param(name, t, shape, x)
    return invconv_lu_unchecked(x, perm, lower, upper, sign_s, log_abs_s, reverse)


def invconv_lu_unchecked(x, perm, lower, upper, sign_s, log_abs_s, reverse):
    """:func:`invconv_lu` without validation, for callers whose parameters are valid by construction
    (dgmfast.nn.InvConv1x1: its own [C, C] / [C] parameters, cast to x's accumulation dtype and on x's device)."""
    backend = select_backend("invconv_lu", x.device, x.dtype)
    if backend == "torch":
        return reference.invconv.invconv_lu(x, perm, lower, upper, sign_s, log_abs_s, reverse=reverse)
    return _invconv.invconv_lu_fwd(x, perm, lower, upper, sign_s, log_abs_s, bool(reverse), backend)


def channel_mix(x, weight):
    """The channel mixing of a 1x1 convolution without bias, SPEC §4's dense form: ``y[b, :, ...] = weight @
    x[b, :, ...]`` over dim 1. Gradients flow to x and weight. ``dgmfast.nn.InvConv1x1(lu=False)`` calls it with W
    (or its cached inverse) and adds its cached log-determinant.

    Args:
        x: ``[B, C, ...]`` float16/bfloat16/float32/float64; any batch/channel strides are read in place.
        weight: ``[C, C]`` in x's accumulation dtype (float32, float64 for float64 x), on x's device.
    Returns:
        y: contiguous, x's shape and dtype.

    Example::

        y = dgmfast.functional.channel_mix(x, w)                # x: [B, C, H, W], w: [C, C]
    """
    check_tensor("x", x, min_dim=2)
    _check_channel_param("weight", weight, (x.shape[1], x.shape[1]), x)
    backend = select_backend("channel_mix", x.device, x.dtype)
    if backend == "torch":
        return reference.invconv.channel_matmul(x, weight.to(x.dtype))
    return _invconv.channel_mix_fwd(x, weight, backend)


# ---- Gaussian posterior, mixture log-density, ELBO surgery (SPEC §7, §9, §10) ---------------------

def _check_matrix(name, t):
    check_tensor(name, t)
    if t.dim() != 2:
        raise ValueError(f"{name} must be [N, D] (2-D), got shape {tuple(t.shape)}")


def reparameterize(mu, logvar, *, eps=None, generator=None):
    """Reparameterized sample of N(mu, exp(logvar)), its KL to N(0, I) and log q(z|x), SPEC §7.

    ``z = mu + exp(logvar/2) * eps``; ``kl[b] = 0.5*sum(mu^2 + exp(logvar) - logvar - 1)``;
    ``log_q[b] = sum(-0.5*(log 2pi + logvar + eps^2))``. eps is drawn in-kernel (Philox; one 64-bit
    seed per call from `generator`, default torch's global generator, so torch.manual_seed reproduces
    runs) unless given; backward recomputes it from the seed instead of storing it. Gradients flow to
    mu and logvar through all three outputs (and to a given eps).

    Args:
        mu, logvar: ``[B, D]``, one dtype (float16/bfloat16/float32/float64) and device; any batch stride.
        eps: optional ``[B, D]`` noise like mu (then `generator` is unused).
    Returns:
        ``(z, kl, log_q)``: z like mu; kl, log_q ``[B]`` float32 (float64 for float64 input).

    Example::

        mu, logvar = encoder(x).chunk(2, dim=1)
        z, kl, log_q = dgmfast.functional.reparameterize(mu, logvar)
        loss = recon_loss(decoder(z), x) + kl.mean()
    """
    _check_matrix("mu", mu)
    check_like("logvar", logvar, "mu", mu)
    if eps is not None:
        check_like("eps", eps, "mu", mu)
    backend = select_backend("reparameterize", mu.device, mu.dtype)
    seed = draw_seed(generator) if eps is None else torch.zeros((), dtype=torch.int64)
    if backend == "torch":
        return reference.gaussian.reparameterize(mu, logvar, eps=eps, seed=seed)
    return _gaussian.reparameterize_fwd(mu, logvar, eps, seed, backend)


def _check_mixture(z, means, logvars, log_weights):
    _check_matrix("z", z)
    _check_matrix("means", means)
    if means.shape[1] != z.shape[1]:
        raise ValueError(f"means must be [K, D] with D = {z.shape[1]} (as z), got shape {tuple(means.shape)}")
    if means.shape[0] == 0:
        raise ValueError("means must have at least one component (K >= 1), got K = 0")
    check_like("means", means, "z", z, shape=means.shape)
    check_like("logvars", logvars, "means", means)
    if log_weights is not None:
        check_like("log_weights", log_weights, "means", means, shape=(means.shape[0],))


def _mixture(z, means, logvars, log_weights, per_dim, backend, band=None, band_offset=0):
    """The mixture op on `backend` ("torch": the reference, with band weights as an [N, K] matrix)."""
    K = means.shape[0]
    if backend == "torch":
        pair = None if band is None else _band_matrix(z.shape[0], K, log_weights, band, band_offset)
        return reference.gaussian.gaussian_mixture_log_prob(z, means, logvars, log_weights, per_dim=per_dim,
                                                            pair_log_weights=pair)
    if log_weights is None:
        log_weights = means.new_full((K,), -math.log(K))
    if band is None:
        band = z.new_empty((0,), dtype=acc_dtype(z.dtype))
    return _gaussian.gaussian_mixture_fwd(z, means, logvars, log_weights, band, int(band_offset), bool(per_dim),
                                          backend)


def _band_matrix(n, K, log_weights, band, band_offset):
    """[n, K] pair log weights: band[o] where o = (k - i - band_offset) mod K < len(band), else log_weights[k]."""
    rows = torch.arange(n, device=band.device)[:, None]
    o = (torch.arange(K, device=band.device)[None, :] - rows - band_offset) % K
    full = log_weights.to(band.dtype)[None, :].expand(n, K)
    return torch.where(o < band.numel(), band[o.clamp(max=band.numel() - 1)], full)


def gaussian_mixture_log_prob(z, means, logvars, log_weights=None, *, per_dim=False):
    """Log-density of a diagonal-Gaussian mixture (VampPrior, aggregate posterior), SPEC §9.

    ``per_dim=False``: ``out[n] = logsumexp_k(log_weights_k + sum_d log N(z_nd; m_kd, lv_kd))``;
    ``per_dim=True``: ``out[n, d] = logsumexp_k(log_weights_k + log N(z_nd; m_kd, lv_kd))``, with
    ``log N(z; m, lv) = -0.5*(log 2pi + lv + (z - m)^2 exp(-lv))``. Fused: an online logsumexp over
    component tiles, never an [N, K, D] tensor; backward recomputes from the saved output.

    Args:
        z: ``[N, D]``; means, logvars: ``[K, D]`` (K >= 1); log_weights: ``[K]`` (default ``-log K``,
            not normalized for you). One dtype (float16/bfloat16/float32/float64) and device; strided
            views are read in place.
    Returns:
        ``[N]`` (or ``[N, D]``), float32 (float64 for float64 input). Gradients flow to all four inputs.

    Example::

        log_p = dgmfast.functional.gaussian_mixture_log_prob(z, prior_means, prior_logvars)
    """
    _check_mixture(z, means, logvars, log_weights)
    backend = select_backend("gaussian_mixture_log_prob", z.device, z.dtype)
    return _mixture(z, means, logvars, log_weights, per_dim, backend)


def _global_posteriors(mu, logvar, process_group):
    """(mu, logvar of the global batch, global batch size, offset of this rank's rows): all-gathered with
    gradients flowing back to the owning rank."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group was given but torch.distributed is not initialized")
    world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
    sizes = [torch.zeros(1, dtype=torch.int64, device=mu.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([mu.shape[0]], dtype=torch.int64, device=mu.device), group=process_group)
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) != 1:
        raise ValueError(f"elbo_surgery with process_group needs the same batch size on every rank, got {sizes}")
    mu_all = torch.cat(all_gather(mu, group=process_group))
    lv_all = torch.cat(all_gather(logvar, group=process_group))
    return mu_all, lv_all, sum(sizes), rank * mu.shape[0]


def _global_mean(v, total, process_group):
    """Mean over the global batch of per-sample v: the value is global, the gradient is this rank's share
    (each rank differentiates its own samples; the all-gather carries the cross-rank terms)."""
    s = v.sum()
    if process_group is None:
        return s / total
    import torch.distributed as dist
    g = s.detach().clone()
    dist.all_reduce(g, group=process_group)
    return (s + (g - s.detach())) / total


def elbo_surgery(z, mu, logvar, *, dataset_size, estimator="mws", process_group=None):
    """ELBO surgery (Hoffman & Johnson; Chen et al. 2018), SPEC §10: the KL term of the ELBO split into
    mutual information, total correlation and dimension-wise KL, estimated on the batch.

    Pairs (i, j) over the batch: ``log q(z_i|x_j) = sum_d log N(z_id; mu_jd, logvar_jd)``.
    ``"mws"``: ``log q(z_i) = logsumexp_j log q(z_i|x_j) - log(dataset_size*M)``; ``"mss"``: weights
    ``W_ii = 1/N``, ``W_i,i+1 = (N-M+1)/(N(M-1))``, others ``1/(M-1)`` (on the diagonal, not in columns 0
    and 1 as the widely copied matrix has it). ``log prod_d q(z_id)`` likewise per dimension. Runs on the
    fused mixture kernel (the MSS weights are its band option); never an [M, M, D] tensor.

    Args:
        z, mu, logvar: ``[M, D]``: samples z_i ~ q(z|x_i) and the posteriors of the batch.
        dataset_size: N >= the (global) batch size M. estimator: "mws" or "mss" (needs M >= 2).
        process_group: with torch.distributed initialized, use the global batch: posteriors are
            all-gathered (gradients flow back to their rank), z stays local. Every rank must call it
            with the same local batch size and run backward. Per-sample outputs are this rank's rows;
            the batch means are global means whose gradient on each rank is that of its own samples.
    Returns:
        :class:`ElboSurgery` (per-sample ``[M]`` log_q_zx, log_q_z, log_prod_q_zd, log_p_z; scalars mi,
        marginal_kl, tc, dimwise_kl), float32 (float64 for float64 input), with
        ``mi + marginal_kl = E[log q(z|x) - log p(z)]`` and ``marginal_kl = tc + dimwise_kl``.

    Example::

        z, kl, _ = dgmfast.functional.reparameterize(mu, logvar)
        s = dgmfast.functional.elbo_surgery(z, mu, logvar, dataset_size=len(dataset), estimator="mss")
        loss = recon + s.mi + beta * s.tc + s.dimwise_kl   # beta-TCVAE
    """
    _check_matrix("z", z)
    check_like("mu", mu, "z", z)
    check_like("logvar", logvar, "z", z)
    check_choice("estimator", estimator, ESTIMATORS)
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size <= 0:
        raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
    m = z.shape[0]
    if process_group is not None:
        mu_all, lv_all, M, offset = _global_posteriors(mu, logvar, process_group)
    else:
        mu_all, lv_all, M, offset = mu, logvar, m, 0
    if dataset_size < M:
        raise ValueError(f"dataset_size must be >= the batch size {M}, got {dataset_size}")
    if M == 0:
        raise ValueError("elbo_surgery needs a non-empty batch, got M = 0")
    if estimator == "mss" and M < 2:
        raise ValueError(f"estimator='mss' needs a batch of at least 2 samples, got M = {M}")
    acc = acc_dtype(z.dtype)
    N = dataset_size
    if estimator == "mws":
        log_w, band = z.new_full((M,), -math.log(N * M)), None
    else:
        log_w = z.new_full((M,), -math.log(M - 1))
        band = torch.tensor([-math.log(N), math.log((N - M + 1) / (N * (M - 1)))], dtype=acc, device=z.device)
    backend = select_backend("gaussian_mixture_log_prob", z.device, z.dtype)
    log_q_z = _mixture(z, mu_all, lv_all, log_w, False, backend, band, offset)
    log_prod_q_zd = _mixture(z, mu_all, lv_all, log_w, True, backend, band, offset).sum(1)
    za, ma, la = z.to(acc), mu.to(acc), logvar.to(acc)
    log_q_zx = reference.gaussian.gaussian_log_density(za, ma, la).sum(1)
    log_p_z = (-0.5 * (LOG_2PI + za * za)).sum(1)
    return elbo_surgery_from_terms(log_q_zx, log_q_z, log_prod_q_zd, log_p_z,
                                   mean=lambda v: _global_mean(v, M, process_group))


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
