"""Counter-based random numbers for Triton kernels, bit-identical to csrc/include/dgmfast/philox.h.

Philox4x32-10 with counter (g_lo, g_hi, stream, 0) and key (seed_lo, seed_hi) gives four words for
the elements 4g..4g+3: uniform(i) is word i % 4, normal(i) the cos (even i) / sin (odd i) half of
Box-Muller on words (2k, 2k+1), k = (i % 4) // 2. 32x32->64-bit products are formed in uint64, so
the interpreter and the GPU agree exactly.
"""
import triton
import triton.language as tl


@triton.jit
def philox4x32_10(counter, stream, seed):
    """Four uint32 words for each element of the int64 tensor `counter`."""
    idx = counter.to(tl.uint64)
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
def _pick(k, w0, w1, w2, w3):
    return tl.where(k == 0, w0, tl.where(k == 1, w1, tl.where(k == 2, w2, w3)))


@triton.jit
def philox_uniform(index, stream, seed):
    """Uniform [0, 1) float32 for each element index (int64 tensor)."""
    w0, w1, w2, w3 = philox4x32_10(index >> 2, stream, seed)
    return uniform_from_bits(_pick(index & 3, w0, w1, w2, w3))


@triton.jit
def philox_normal(index, stream, seed):
    """Standard normal float32 for each element index (int64 tensor)."""
    w0, w1, w2, w3 = philox4x32_10(index >> 2, stream, seed)
    k = index & 3
    first = k < 2
    b1 = tl.where(first, w0, w2)
    b2 = tl.where(first, w1, w3)
    u1 = ((b1 >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08
    radius = tl.sqrt(-2.0 * tl.log(u1))
    angle = 6.283185307179586 * uniform_from_bits(b2)
    return radius * tl.where((k & 1) == 1, tl.sin(angle), tl.cos(angle))
