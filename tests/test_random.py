"""The counter-based generator shared by every noise-drawing kernel (philox.h, kernels/_random.py)."""
import pytest
import torch
import triton
import triton.language as tl

from dgmfast.kernels._random import philox4x32_10
from dgmfast.ops.common import draw_seed, normal_from_words, philox_reference, uniform_from_words


def test_known_answer_random123():
    # Random123's known-answer vector for philox4x32-10 with counter 0 and key 0
    words = philox_reference(1, seed=0, stream=0)[:, 0].tolist()
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@triton.jit
def _philox_words_kernel(out_ptr, seed, n, stream, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w0, w1, w2, w3 = philox4x32_10(offs.to(tl.int64), stream, seed)
    tl.store(out_ptr + offs, w0.to(tl.int64), mask=mask)
    tl.store(out_ptr + n + offs, w1.to(tl.int64), mask=mask)
    tl.store(out_ptr + 2 * n + offs, w2.to(tl.int64), mask=mask)
    tl.store(out_ptr + 3 * n + offs, w3.to(tl.int64), mask=mask)


@pytest.mark.parametrize("seed", [0, 1, 0x123456789ABCDEF, 2**63 - 2])
def test_triton_matches_reference_bit_for_bit(seed):
    n = 777
    out = torch.zeros(4 * n, dtype=torch.int64)
    _philox_words_kernel[(triton.cdiv(n, 256),)](out, seed, n, 5, BLOCK=256)
    torch.testing.assert_close(out.view(4, n), philox_reference(n, seed, stream=5), rtol=0, atol=0)


def test_uniform_and_normal_from_words():
    w = philox_reference(200_000, seed=7)
    u = uniform_from_words(w[0])
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 5 * (1 / 12 / u.numel()) ** 0.5  # 5 sigma
    z = normal_from_words(w[0], w[1])
    assert torch.isfinite(z).all()
    assert abs(z.mean().item()) < 5 / u.numel() ** 0.5 and abs(z.var().item() - 1) < 0.02


def test_draw_seed_follows_manual_seed():
    torch.manual_seed(3)
    a = draw_seed()
    torch.manual_seed(3)
    assert draw_seed() == a and a.dtype == torch.int64 and a.device.type == "cpu"
    g = torch.Generator().manual_seed(5)
    assert 0 <= draw_seed(g).item() < 2**63
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        draw_seed(5)
