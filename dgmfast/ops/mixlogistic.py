"""Flow++ mixture-of-logistics coupling (SPEC §2) as torch.library custom ops.

``dgmfast::mixlogistic_coupling_fwd`` maps x (either direction) to (out, logdet);
``dgmfast::mixlogistic_coupling_bwd`` is its fused backward, evaluated at the point in data space (the
input x of the forward, the output x of the reverse): backward saves that point and the five
parameter tensors, nothing K-sized of its own, and recomputes the mixture terms. In the forward
"scale_shift" direction grad_shift is grad_out itself, so no kernel writes it.

Parameters ``[B, ..., K]`` are read through their strides: every tensor of a call is addressed as
``b*s_b + (e // M)*s_o + (e % M)*s_i + k*s_k`` for one split of the element index e = o*M + i, so
K-last contiguous tensors, permuted views of a conditioner's output and expanded tensors are read in
place; a tensor whose element dims do not form at most two runs of that split is copied
(csrc/include/dgmfast/mixlogistic_launch.h implements the same rules for the C++ launchers).
Backends: "cpu"/"cuda" call dgmfast._C (csrc/cpu/mixlogistic.cpp, csrc/cuda/mixlogistic.cu),
"triton" launches kernels/mixlogistic.py.
"""
import torch
from torch import Tensor

from dgmfast.backends import register_op
from dgmfast.ops.common import custom_op, logdet_like, row_numel, triton_acc
from dgmfast.reference.mixlogistic import bisection_iters

register_op("mixlogistic_coupling")  # every backend takes float16/bfloat16/float32/float64


# ---- layouts (the rules of csrc/include/dgmfast/mixlogistic_launch.h) ------------------------------

def _runs(t, elem_dims):
    """Element dims [1, 1 + elem_dims) collapsed into [size, stride] runs, innermost first."""
    runs = []
    for d in range(elem_dims, 0, -1):
        size, stride = t.shape[d], t.stride(d)
        if size == 1:
            continue
        if runs and len(runs) <= 2 and stride == runs[-1][0] * runs[-1][1]:
            runs[-1][0] *= size
        else:
            runs.append([size, stride])
    return runs


def choose_inner(tensors, elem_dims, n):
    """The split M: the inner run of the first tensor whose element dims form two runs, else N."""
    for t in tensors:
        runs = _runs(t, elem_dims)
        if len(runs) == 2:
            return runs[0][0]
    return max(n, 1)


def elem_layout(t, elem_dims, m, has_k):
    """(s_b, s_o, s_i, s_k) of t for split M, or None when t cannot be read in place with it."""
    runs = _runs(t, elem_dims)
    if len(runs) > 2 or (len(runs) == 2 and runs[0][0] != m):
        return None
    s_b, s_k = t.stride(0), (t.stride(-1) if has_k else 0)
    if len(runs) == 2:
        return s_b, runs[1][1], runs[0][1], s_k
    s_i = runs[0][1] if runs else 0
    return s_b, m * s_i, s_i, s_k


def with_layout(t, elem_dims, m, has_k):
    """(t or a contiguous copy, its layout) for split M."""
    layout = elem_layout(t, elem_dims, m, has_k)
    if layout is None:
        t = t.contiguous()
        layout = elem_layout(t, elem_dims, m, has_k)
    return t, layout


def grad_like(p, elem_dims, m):
    """An uninitialized gradient for parameter p in p's dim order (empty_like) if that fits M, else contiguous."""
    g = torch.empty_like(p)
    layout = elem_layout(g, elem_dims, m, True)
    if layout is None:
        g = p.new_empty(p.shape)
        layout = elem_layout(g, elem_dims, m, True)
    return g, layout


def _triton_config(n, k, device):
    """(BLOCK, KP, num_warps): a [BLOCK, KP] parameter tile per program."""
    import triton
    kp = triton.next_power_of_2(k)
    cap = max(16, (4096 if device.type == "cuda" else 16384) // kp)
    block = min(max(triton.next_power_of_2(max(n, 1)), 16), cap)
    return block, kp, 4


def _prepare(x, params, others, extra=None):
    """Layouts of one call: returns (m, [(tensor, layout)] for x, params, others, extra)."""
    ed = x.dim() - 1
    n = row_numel(x)
    m = choose_inner([x, *others, *params] + ([extra] if extra is not None else []), ed, n)
    elems = [with_layout(t, ed, m, False) for t in (x, *others)]
    pars = [with_layout(p, ed, m, True) for p in params]
    return m, elems, pars


def _fwd_triton(x, logits, means, log_scales, log_scale, shift, scale_map, clamp, min_log_scale, shift_scale,
                reverse):
    from dgmfast.kernels.mixlogistic import _mixlogistic_fwd_kernel

    B, N, K = x.shape[0], row_numel(x), logits.shape[-1]
    m, ((x, lx), (r, lr), (t, lt)), ((pi, lpi), (mu, lmu), (ls, lls)) = _prepare(
        x, (logits, means, log_scales), (log_scale, shift))
    block, kp, warps = _triton_config(N, K, x.device)
    chunks = -(-N // block)
    out = x.new_empty(x.shape)
    partial = torch.empty((B, chunks), dtype=logdet_like(x).dtype, device=x.device)  # every slot written
    if B * chunks > 0:
        _mixlogistic_fwd_kernel[(B * chunks,)](
            x, pi, mu, ls, r, t, out, partial, N, m, K, chunks,
            *lx[:3], *lr[:3], *lt[:3], *lpi, *lmu, *lls,
            clamp, min_log_scale, bisection_iters(x.dtype),
            SCALE_MAP=scale_map, SHIFT_SCALE=shift_scale, REVERSE=reverse, ACC=triton_acc(x.dtype),
            BLOCK=block, KP=kp, num_warps=warps)
    return out, partial.sum(1)


def _bwd_triton(x, logits, means, log_scales, log_scale, shift, grad_out, grad_logdet, scale_map, clamp,
                min_log_scale, shift_scale, reverse):
    from dgmfast.kernels.mixlogistic import _mixlogistic_bwd_kernel

    B, N, K = x.shape[0], row_numel(x), logits.shape[-1]
    ed = x.dim() - 1
    m, ((x, lx), (r, lr), (t, lt), (gy, lgy)), ((pi, lpi), (mu, lmu), (ls, lls)) = _prepare(
        x, (logits, means, log_scales), (log_scale, shift, grad_out))
    (gpi, lgpi), (gmu, lgmu), (gls, lgls) = (grad_like(p, ed, m) for p in (pi, mu, ls))
    g_in, g_r = x.new_empty(x.shape), x.new_empty(x.shape)
    write_gt = reverse or shift_scale
    g_t = x.new_empty(x.shape if write_gt else (0,))
    block, kp, warps = _triton_config(N, K, x.device)
    chunks = -(-N // block)
    if B * chunks > 0:
        _mixlogistic_bwd_kernel[(B * chunks,)](
            x, pi, mu, ls, r, t, gy, grad_logdet.contiguous(), g_in, g_r, g_t, gpi, gmu, gls,
            N, m, K, chunks, *lx[:3], *lr[:3], *lt[:3], *lgy[:3], *lpi, *lmu, *lls, *lgpi, *lgmu, *lgls,
            clamp, min_log_scale,
            SCALE_MAP=scale_map, SHIFT_SCALE=shift_scale, REVERSE=reverse, WRITE_GT=write_gt,
            ACC=triton_acc(x.dtype), BLOCK=block, KP=kp, num_warps=warps)
    return g_in, gpi, gmu, gls, g_r, g_t


@custom_op("dgmfast::mixlogistic_coupling_fwd", native_autograd=("cpu", "cuda"))
def mixlogistic_coupling_fwd(x: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, log_scale: Tensor,
                             shift: Tensor, scale_map: int, clamp: float, min_log_scale: float, shift_scale: bool,
                             reverse: bool, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _fwd_triton(x, logits, means, log_scales, log_scale, shift, scale_map, clamp, min_log_scale,
                           shift_scale, reverse)
    return torch.ops.dgmfast_C.mixlogistic_coupling_fwd(x, logits, means, log_scales, log_scale, shift, scale_map,
                                                        clamp, min_log_scale, shift_scale, reverse)


@mixlogistic_coupling_fwd.register_fake
def _(x, logits, means, log_scales, log_scale, shift, scale_map, clamp, min_log_scale, shift_scale, reverse, backend):
    return x.new_empty(x.shape), logdet_like(x)


@custom_op("dgmfast::mixlogistic_coupling_bwd")
def mixlogistic_coupling_bwd(x: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, log_scale: Tensor,
                             shift: Tensor, grad_out: Tensor, grad_logdet: Tensor, scale_map: int, clamp: float,
                             min_log_scale: float, shift_scale: bool, reverse: bool,
                             backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _bwd_triton(x, logits, means, log_scales, log_scale, shift, grad_out, grad_logdet, scale_map, clamp,
                           min_log_scale, shift_scale, reverse)
    return torch.ops.dgmfast_C.mixlogistic_coupling_bwd(x, logits, means, log_scales, log_scale, shift, grad_out,
                                                        grad_logdet, scale_map, clamp, min_log_scale, shift_scale,
                                                        reverse)


@mixlogistic_coupling_bwd.register_fake
def _(x, logits, means, log_scales, log_scale, shift, grad_out, grad_logdet, scale_map, clamp, min_log_scale,
      shift_scale, reverse, backend):
    g_t = x.new_empty(x.shape if (reverse or shift_scale) else (0,))
    return (x.new_empty(x.shape), torch.empty_like(logits), torch.empty_like(means), torch.empty_like(log_scales),
            x.new_empty(x.shape), g_t)


def _setup_context(ctx, inputs, output):
    x, logits, means, log_scales, log_scale, shift, *params = inputs
    reverse = params[4]
    # the point in data space: the forward's input, the reverse's output
    ctx.save_for_backward(output[0] if reverse else x, logits, means, log_scales, log_scale, shift)
    ctx.params = params  # scale_map, clamp, min_log_scale, shift_scale, reverse, backend


def _backward(ctx, grad_out, grad_logdet):
    _, _, _, shift_scale, reverse, _ = ctx.params
    g_in, g_pi, g_mu, g_l, g_r, g_t = mixlogistic_coupling_bwd(*ctx.saved_tensors, grad_out, grad_logdet, *ctx.params)
    if not (reverse or shift_scale):
        g_t = grad_out
    return g_in, g_pi, g_mu, g_l, g_r, g_t, None, None, None, None, None, None


mixlogistic_coupling_fwd.register_autograd(_backward, setup_context=_setup_context)
