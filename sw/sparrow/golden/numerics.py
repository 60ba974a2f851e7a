"""Bit-exact arithmetic of the datapath. The RTL must match these functions exactly.

Rounding
--------
Every right shift that drops fraction bits rounds **half to even** (convergent rounding, as
``numpy.rint`` and onnxruntime's QuantizeLinear do): ``rne_shift(x, s)`` is the integer nearest
to ``x / 2**s``, ties going to the even integer. Shifts are 0..63; 0 is exact.

Requantization (VECTOR REQUANT), per channel ``c``::

    t   = acc + bias[c]                         # exact (33 bits)
    p   = t * (mult[c] & 0x7fffffff)            # exact (64 bits): the multiplier is 31-bit unsigned
    y   = rne_shift(p, shift[c] & 63) + zp
    out = min(max(y, lo), hi)                   # int8 (lo, hi are int8)

Elementwise add (VECTOR ADD): ``sat8(rne_shift(a*mult_a + b*mult_b, shift))`` then ``max(0, .)``
with ``relu``. Average pool: ``sat8(rne_shift(sum * mult, shift))``. Matrix multiply
accumulators wrap modulo 2**32 (two's complement).
"""

from __future__ import annotations

import numpy as np

__all__ = ["rne_shift", "sat", "wrap32", "requant", "vadd", "avgpool_scale", "matmul_acc"]


def rne_shift(x, shift):
    """Round-half-to-even of ``x / 2**shift`` for int64 ``x`` (array or scalar) and shift 0..63."""
    x = np.asarray(x, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if np.any((s < 0) | (s > 63)):
        raise ValueError("shift must be in 0..63")
    s_b = np.broadcast_to(s, x.shape) if s.ndim else s
    q = x >> s_b
    with np.errstate(over="ignore"):
        r = x - (q << s_b)                       # remainder in [0, 2**s)
    half = np.where(s_b > 0, np.left_shift(np.int64(1), np.maximum(s_b - 1, 0)), 0)
    up = (s_b > 0) & ((r > half) | ((r == half) & ((q & 1) == 1)))
    return q + up.astype(np.int64)


def sat(x, bits=8):
    """Saturate to a signed ``bits``-bit integer."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(np.asarray(x, dtype=np.int64), lo, hi)


def wrap32(x):
    """Two's-complement wrap to int32."""
    return np.asarray(x, dtype=np.int64).astype(np.uint64).astype(np.uint32).view(np.int32)


def requant(acc, bias, mult, shift, zp=0, lo=-128, hi=127):
    """REQUANT of int32 accumulators ``acc[..., cols]`` with per-channel ``bias/mult/shift[cols]``."""
    acc = np.asarray(acc, dtype=np.int64)
    t = acc + np.asarray(bias, dtype=np.int64)
    m = np.asarray(mult, dtype=np.int64) & 0x7FFFFFFF
    p = t * m
    y = rne_shift(p, np.broadcast_to(np.asarray(shift, dtype=np.int64) & 63, p.shape)) + int(zp)
    return np.minimum(np.maximum(y, int(lo)), int(hi)).astype(np.int8)


def vadd(a, b, mult_a, mult_b, shift, relu=False):
    s = np.asarray(a, dtype=np.int64) * int(mult_a) + np.asarray(b, dtype=np.int64) * int(mult_b)
    y = sat(rne_shift(s, int(shift)))
    if relu:
        y = np.maximum(y, 0)
    return y.astype(np.int8)


def avgpool_scale(window_sum, mult, shift):
    return sat(rne_shift(np.asarray(window_sum, dtype=np.int64) * int(mult), int(shift))).astype(np.int8)


def matmul_acc(a, w, acc=None):
    """``acc + a @ w`` with int8 operands and wrapping int32 accumulators."""
    r = np.asarray(a, dtype=np.int64) @ np.asarray(w, dtype=np.int64)
    if acc is not None:
        r = r + np.asarray(acc, dtype=np.int64)
    return wrap32(r)
