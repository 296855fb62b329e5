"""The CPU vector math of csrc/cpu/vec_math.h (through the test hook torch.ops.dgmfast_C.vec_math) against
float64, at the accuracy each function's comment states; lengths that leave a partial vector."""
import math

import numpy as np
import pytest
import torch

import dgmfast

pytestmark = pytest.mark.skipif(not dgmfast.has_extension(),
                                reason="tests the C++ extension's vector math; this build has no extension")


def _eval(fn, x):
    return torch.ops.dgmfast_C.vec_math(x, fn)


def _ulp_err(y, ref):
    """|y - ref| in units of float32 ulps of ref."""
    ulp = torch.from_numpy(np.spacing(ref.float().abs().numpy())).double()
    return ((y.double() - ref) / ulp).abs().max().item()


def test_exp_inline_within_an_ulp_and_its_range():
    x = torch.cat([torch.linspace(-103.9, 88.7, 100_003), torch.tensor([-200.0, -104.5, 100.5, 0.0])])
    y = _eval("exp_inline", x)
    ref = x.double().exp()
    finite = (x > -87) & (x < 88.7)  # normal results
    assert _ulp_err(y[finite], ref[finite]) <= 2
    assert y[x < -104].eq(0).all() and y[x > 100].isinf().all()
    torch.testing.assert_close(_eval("exp_inline", x.double()), ref, rtol=1e-15, atol=0)


def test_log1p_keeps_relative_accuracy_near_zero():
    x = torch.cat([-torch.logspace(-30, math.log10(0.999), 5001), torch.logspace(-30, 30, 5001),
                   torch.tensor([0.0, float("inf")])])
    y = _eval("log1p", x)
    ref = x.double().log1p()
    torch.testing.assert_close(y.double()[:-1], ref[:-1], rtol=3e-7, atol=0)
    assert y[-1].isinf()


def test_tanh_absolute_error():
    x = torch.linspace(-20, 20, 100_001)
    assert (_eval("tanh", x).double() - x.double().tanh()).abs().max().item() < 3e-7


@pytest.mark.parametrize("fn", ["log_positive", "log_positive_lut"])
def test_log_positive(fn):
    x = torch.cat([torch.logspace(-3, 3, 200_001), 1 + torch.linspace(-1e-3, 1e-3, 2001),
                   torch.logspace(-37, 38, 2001)])
    y = _eval(fn, x)
    ref = x.double().log()
    near = (x >= 1e-3) & (x <= 1e3)
    assert _ulp_err(y[near], ref[near]) <= 4  # relative accuracy kept next to 1, where log x -> 0
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(_eval(fn, x.double()), ref, rtol=1e-15, atol=0)


@pytest.mark.parametrize("n", [0, 1, 7, 15, 16, 17, 33])
def test_partial_vectors(n):
    x = torch.rand(n) + 0.5
    torch.testing.assert_close(_eval("log_positive", x).double(), x.double().log(), rtol=1e-6, atol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="fn must be one of"):
        _eval("sqrt", torch.ones(3))
    with pytest.raises(ValueError, match="float32 or float64"):
        _eval("tanh", torch.ones(3, dtype=torch.float16))
