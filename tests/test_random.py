"""The counter-based generator shared by every noise-drawing kernel (philox.h, kernels/_random.py)."""
import pytest
import torch
import triton
import triton.language as tl

import dgmfast
from dgmfast.kernels import _random
from dgmfast.ops.common import draw_seed, philox_normal, philox_uniform, philox_words


def test_known_answer_random123():
    # Random123's known-answer vector for philox4x32-10 with counter 0 and key 0
    words = philox_words(torch.zeros(1, dtype=torch.int64), seed=0, stream=0)[:, 0].tolist()
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("first", [0, 1, 7, 2**32 - 37])  # the last crosses the carry into counter bits 32..63
@pytest.mark.parametrize("count", [1, 5, 31, 32, 33, 100, 257])
def test_cpu_simd_words_match_the_scalar_generator(first, count):
    """The C++ CPU kernels' words block (SIMD registers of 4 or 8 counters, 4 registers per step, scalar
    philox4x32_10 for the counters left over) against the mirror: heads, tails and several steps."""
    if not dgmfast.has_extension():
        pytest.skip("tests the C++ extension's Philox; this build has no extension (DGMFAST_SKIP_EXT or a failed build)")
    seed = 0x123456789ABCDEF
    words = torch.ops.dgmfast_C.philox_words(torch.tensor(seed), first, count, 3)
    expected = philox_words(torch.arange(first, first + count, dtype=torch.int64), seed, stream=3)
    torch.testing.assert_close(words.long() & 0xFFFFFFFF, expected, rtol=0, atol=0)


@triton.jit
def _philox_kernel(words_ptr, u_ptr, z_ptr, seed, n, stream, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    idx = offs.to(tl.int64)
    w0, w1, w2, w3 = _random.philox4x32_10(idx, stream, seed)
    tl.store(words_ptr + offs, w0.to(tl.int64), mask=mask)
    tl.store(words_ptr + n + offs, w1.to(tl.int64), mask=mask)
    tl.store(words_ptr + 2 * n + offs, w2.to(tl.int64), mask=mask)
    tl.store(words_ptr + 3 * n + offs, w3.to(tl.int64), mask=mask)
    tl.store(u_ptr + offs, _random.philox_uniform(idx, stream, seed), mask=mask)
    tl.store(z_ptr + offs, _random.philox_normal(idx, stream, seed), mask=mask)


@pytest.mark.parametrize("seed", [0, 1, 0x123456789ABCDEF, 2**63 - 2])
def test_triton_matches_reference(seed):
    n = 777
    words, u, z = torch.zeros(4 * n, dtype=torch.int64), torch.zeros(n), torch.zeros(n)
    _philox_kernel[(triton.cdiv(n, 256),)](words, u, z, seed, n, 5, BLOCK=256)
    idx = torch.arange(n, dtype=torch.int64)
    torch.testing.assert_close(words.view(4, n), philox_words(idx, seed, stream=5), rtol=0, atol=0)
    torch.testing.assert_close(u, philox_uniform(n, seed, stream=5), rtol=0, atol=0)  # bit for bit
    torch.testing.assert_close(z, philox_normal(n, seed, stream=5), rtol=0, atol=2e-6)  # libm ulps


def test_uniform_and_normal_statistics():
    n = 400_000
    u = philox_uniform(n, seed=7)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 5 * (1 / 12 / n) ** 0.5  # 5 sigma
    z = philox_normal(n, seed=7)
    assert torch.isfinite(z).all()
    assert abs(z.mean().item()) < 5 / n**0.5 and abs(z.var().item() - 1) < 0.02
    # the four words of one counter feed four distinct elements: neighbours are uncorrelated
    assert abs(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1].item()) < 5 / n**0.5


def test_draw_seed_follows_manual_seed():
    torch.manual_seed(3)
    a = draw_seed()
    torch.manual_seed(3)
    assert draw_seed() == a and a.dtype == torch.int64 and a.device.type == "cpu"
    g = torch.Generator().manual_seed(5)
    assert 0 <= draw_seed(g).item() < 2**63
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        draw_seed(5)
