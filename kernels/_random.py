"""Counter-based random numbers for Triton kernels, bit-identical to csrc/include/dgmfast/philox.h.

Philox4x32-10: element `index` (int64 tensor) of stream `stream` under a 64-bit `seed` uses counter
(index_lo, index_hi, stream, 0) and key (seed_lo, seed_hi). 32x32->64-bit products are formed in
uint64, so the interpreter and the GPU agree exactly.
"""
import triton
import triton.language as tl


@triton.jit
def philox4x32_10(index, stream, seed):
    """Four uint32 words for each element of the int64 tensor `index`."""
    idx = index.to(tl.uint64)
    c0 = (idx & 0xFFFFFFFF).to(tl.uint32)
    c1 = (idx >> 32).to(tl.uint32)
    c2 = (c0 * 0 + stream).to(tl.uint32)
    c3 = c0 * 0
    s = seed.to(tl.uint64)
    k0 = (c0 * 0 + (s & 0xFFFFFFFF).to(tl.uint32)).to(tl.uint32)
    k1 = (c0 * 0 + (s >> 32).to(tl.uint32)).to(tl.uint32)
    for _ in tl.static_range(10):
        p0 = c0.to(tl.uint64) * 0xD2511F53
        p1 = c2.to(tl.uint64) * 0xCD9E8D57
        n0 = (p1 >> 32).to(tl.uint32) ^ c1 ^ k0
        n2 = (p0 >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = (p1 & 0xFFFFFFFF).to(tl.uint32)
        c3 = (p0 & 0xFFFFFFFF).to(tl.uint32)
        c0 = n0
        c2 = n2
        k0 = ((k0.to(tl.uint64) + 0x9E3779B9) & 0xFFFFFFFF).to(tl.uint32)
        k1 = ((k1.to(tl.uint64) + 0xBB67AE85) & 0xFFFFFFFF).to(tl.uint32)
    return c0, c1, c2, c3


@triton.jit
def uniform_from_bits(bits):
    """[0, 1) from the top 24 bits (exact in float32, never 1)."""
    return (bits >> 8).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def normal_from_bits(bits1, bits2):
    """Box-Muller: u1 in (0, 1], u2 in [0, 1)."""
    u1 = ((bits1 >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08
    u2 = uniform_from_bits(bits2)
    return tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)


@triton.jit
def philox_uniform(index, stream, seed):
    r0, _, _, _ = philox4x32_10(index, stream, seed)
    return uniform_from_bits(r0)


@triton.jit
def philox_normal(index, stream, seed):
    r0, r1, _, _ = philox4x32_10(index, stream, seed)
    return normal_from_bits(r0, r1)
