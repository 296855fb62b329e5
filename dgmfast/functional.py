"""Public functional ops. Each validates its inputs, picks a backend (dgmfast.backends) and
calls the torch.library custom op, or the plain-PyTorch reference for the "torch" backend."""
import torch

from dgmfast import reference
from dgmfast.backends import select_backend
from dgmfast.ops import actnorm as _actnorm
from dgmfast.ops import coupling as _coupling
from dgmfast.ops import dequant as _dequant
from dgmfast.ops import dip as _dip
from dgmfast.ops import vaeflows as _vaeflows
from dgmfast.ops.common import (FLOAT_DTYPES, check_choice, check_like, check_tensor, draw_seed, philox_normal,
                                philox_uniform)
from dgmfast.reference.coupling import ORDERS, SCALE_MAPS
from dgmfast.reference.dequant import MODES
from dgmfast.reference.dip import VARIANTS

__all__ = ["affine_coupling", "uniform_dequantize", "gaussian_sample_log_prob", "dequantize_sigmoid_tail",
           "bits_per_dim", "dip_vae_penalty", "planar_flows", "iaf_step", "actnorm"]
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
    (Cov_ii - 1)^2``. One pass over the rows for the statistics (shifted by the first row, so a large
    mean loses no accuracy) and one for the gradient; nothing of size [N, D] is saved.

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
