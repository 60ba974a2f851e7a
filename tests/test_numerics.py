"""sparrow.golden.numerics against independent references in plain Python integers.

rne_shift is checked against ``round(Fraction(x, 2**s))`` (Python rounds a Fraction half to
even); requant/vadd/avgpool_scale against scalar Python-int formulas written here from the
docstring, never against the code under test.
"""

import os
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sparrow.golden import numerics

SEED = int(os.environ.get("SPARROW_SEED", "1"))
print(f"SPARROW_SEED={SEED}")

I64 = st.integers(-(1 << 63), (1 << 63) - 1)


def ref_rne(x: int, s: int) -> int:
    return round(Fraction(x, 1 << s))


def ref_sat(x: int, bits: int = 8) -> int:
    return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, x))


@settings(max_examples=400, deadline=None)
@given(x=I64, s=st.integers(0, 63))
def test_rne_shift_random(x, s):
    assert int(numerics.rne_shift(x, s)) == ref_rne(x, s)


@settings(max_examples=300, deadline=None)
@given(q=st.integers(-(1 << 40), 1 << 40), s=st.integers(1, 22))
def test_rne_shift_ties(q, s):
    """Exact ties x = (q + 1/2) * 2**s go to the even neighbour."""
    x = (2 * q + 1) << (s - 1)
    got = int(numerics.rne_shift(x, s))
    assert got == ref_rne(x, s)
    assert got % 2 == 0 and abs(Fraction(x, 1 << s) - got) == Fraction(1, 2)


def test_rne_shift_all_shifts_vectorised():
    rng = np.random.default_rng(SEED)
    x = rng.integers(-(1 << 63), (1 << 63) - 1, size=64, dtype=np.int64, endpoint=True)
    x[:4] = [-(1 << 63), (1 << 63) - 1, 0, -1]
    for s in range(64):
        got = numerics.rne_shift(x, s)
        assert [int(v) for v in got] == [ref_rne(int(v), s) for v in x], s
    # per-element shifts (the REQUANT path broadcasts a shift per channel)
    shifts = np.arange(64)
    got = numerics.rne_shift(x, shifts)
    assert [int(v) for v in got] == [ref_rne(int(v), int(s)) for v, s in zip(x, shifts, strict=True)]


def test_rne_shift_rejects_bad_shift():
    import pytest
    for bad in (-1, 64):
        with pytest.raises(ValueError):
            numerics.rne_shift(5, bad)


@settings(max_examples=200, deadline=None)
@given(x=st.integers(-(1 << 62), 1 << 62), bits=st.integers(2, 32))
def test_sat(x, bits):
    assert int(numerics.sat(x, bits)) == ref_sat(x, bits)


@settings(max_examples=200, deadline=None)
@given(x=I64)
def test_wrap32(x):
    got = numerics.wrap32(np.int64(x))
    assert got.dtype == np.int32
    assert int(got) == ((x + (1 << 31)) % (1 << 32)) - (1 << 31)


def ref_requant(acc, bias, mult, shift, zp, lo, hi):
    t = acc + bias
    p = t * (mult & 0x7FFFFFFF)
    y = ref_rne(p, shift & 63) + zp
    return min(max(y, lo), hi)


I32 = st.integers(-(1 << 31), (1 << 31) - 1)
I8 = st.integers(-128, 127)


@settings(max_examples=400, deadline=None)
@given(acc=I32, bias=I32, mult=I32, shift=I32, zp=I8, lo=I8, hi=I8)
def test_requant_scalar(acc, bias, mult, shift, zp, lo, hi):
    got = numerics.requant(np.array([acc]), np.array([bias]), np.array([mult]), np.array([shift]), zp, lo, hi)
    assert got.dtype == np.int8
    assert int(got[0]) == ref_requant(acc, bias, mult, shift, zp, lo, hi)


def test_requant_per_channel_rows():
    rng = np.random.default_rng(SEED + 1)
    cols = 8
    acc = rng.integers(-(1 << 31), 1 << 31, size=(5, cols), dtype=np.int64)
    bias = rng.integers(-(1 << 31), 1 << 31, size=cols, dtype=np.int64)
    mult = rng.integers(-(1 << 31), 1 << 31, size=cols, dtype=np.int64)
    shift = rng.integers(0, 64, size=cols)
    shift[:3] = [0, 31, 63]
    got = numerics.requant(acc, bias, mult, shift, 3, -100, 100)
    for r in range(5):
        for c in range(cols):
            exp = ref_requant(int(acc[r, c]), int(bias[c]), int(mult[c]), int(shift[c]), 3, -100, 100)
            assert int(got[r, c]) == exp, (r, c)


@settings(max_examples=300, deadline=None)
@given(a=I8, b=I8, ma=st.integers(-(1 << 15), (1 << 15) - 1), mb=st.integers(-(1 << 15), (1 << 15) - 1),
       shift=st.integers(0, 63), relu=st.booleans())
def test_vadd_scalar(a, b, ma, mb, shift, relu):
    exp = ref_sat(ref_rne(a * ma + b * mb, shift))
    if relu:
        exp = max(exp, 0)
    assert int(numerics.vadd(np.array([a]), np.array([b]), ma, mb, shift, relu)[0]) == exp


@settings(max_examples=300, deadline=None)
@given(total=st.integers(-128 * 225, 127 * 225), mult=st.integers(0, (1 << 16) - 1), shift=st.integers(0, 63))
def test_avgpool_scale_scalar(total, mult, shift):
    got = numerics.avgpool_scale(np.array([total]), mult, shift)
    assert int(got[0]) == ref_sat(ref_rne(total * mult, shift))


def test_matmul_acc_wraps():
    a = np.full((1, 4), -128, dtype=np.int8)
    w = np.full((4, 2), -128, dtype=np.int8)
    acc = np.array([[(1 << 31) - 1, -(1 << 31)]], dtype=np.int32)
    got = numerics.matmul_acc(a, w, acc)
    exp = [((int(acc[0, c]) + 4 * 128 * 128 + (1 << 31)) % (1 << 32)) - (1 << 31) for c in range(2)]
    assert got.tolist() == [exp]
