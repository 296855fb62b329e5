"""The loop helpers of csrc/cpu/loops.h, through the C++ kernels that use them: VecIO's full and partial
converting loads/stores (row lengths around the vector width, every dtype), parallel_rows (short rows
grouped into tasks, long rows split into 16384-element chunks whose sums are added in chunk order) and
parallel_row_tiles (reparameterize's row tiles): results equal the reference and do not depend on the
thread count, bit for bit."""
import pytest
import torch

import dgmfast
from dgmfast import functional as F
from tests.utils import assert_close, backend

pytestmark = pytest.mark.skipif(not dgmfast.has_extension(),
                                reason="tests the C++ extension's loops; this build has no extension")

# (B, C, L): rows of C*L elements shorter than a vector, around one and two vectors, grouped many per task
# (B*N >> 16384 with short rows), and rows longer than one 16384-element chunk
SHAPES = [(1, 1, 1), (3, 1, 7), (5, 2, 8), (7, 1, 17), (300, 1, 33), (2000, 3, 5), (3, 2, 9000), (2, 1, 40000)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def _coupling(x, s, t):
    return F.affine_coupling(x, s, t, scale_map="sigmoid", order="shift_scale")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_parallel_rows_and_vector_io(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x, s, t = (torch.randn(shape, generator=g).to(dtype) for _ in range(3))
    with backend("cpu"):
        y1, ld1 = _threads(1, lambda: _coupling(x, s, t))
        y2, ld2 = _threads(2, lambda: _coupling(x, s, t))
    with backend("torch"):
        y64, ld64 = _coupling(x.double(), s.double(), t.double())
        y_low, ld_low = _coupling(x, s, t)
    assert torch.equal(y1, y2) and torch.equal(ld1, ld2)  # no dependence on the thread count
    assert_close(y1, y64, low_ref=y_low, name="y")
    assert_close(ld1, ld64, low_ref=ld_low, rtol=1e-5, atol=1e-4, name="logdet")


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (17, 16), (256, 10), (1000, 33), (5, 5000)], ids=str)
def test_parallel_row_tiles(shape):
    g = torch.Generator().manual_seed(shape[0])
    mu, logvar, eps = (torch.randn(shape, generator=g) for _ in range(3))
    with backend("cpu"):
        z1, kl1, lq1 = _threads(1, lambda: F.reparameterize(mu, logvar, eps=eps))
        z2, kl2, lq2 = _threads(2, lambda: F.reparameterize(mu, logvar, eps=eps))
        noise = [_threads(n, lambda: F.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(3))[0])
                 for n in (1, 2)]
    with backend("torch"):
        z64, kl64, lq64 = F.reparameterize(mu.double(), logvar.double(), eps=eps.double())
    assert torch.equal(z1, z2) and torch.equal(kl1, kl2) and torch.equal(lq1, lq2)
    assert torch.equal(noise[0], noise[1])  # in-kernel noise: one Philox range per tile, any thread count
    assert_close(z1, z64, rtol=1e-5, atol=1e-5, name="z")
    assert_close(kl1, kl64, rtol=1e-5, atol=1e-4, name="kl")
    assert_close(lq1, lq64, rtol=1e-5, atol=1e-4, name="log_q")
