"""Fixed-point helpers: float scales -> the integer multipliers the vector engine uses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["quantize_multiplier", "Requant", "add_multipliers", "avgpool_multiplier"]

_MULT_MAX = (1 << 31) - 1


def quantize_multiplier(scale: float) -> tuple[int, int]:
    """``(mult, shift)`` with ``mult / 2**shift`` the nearest representable value to ``scale``.

    ``0 <= mult < 2**31``, ``0 <= shift <= 63``: the largest shift whose multiplier fits 31 bits
    (most precision), so the relative error is below ``2**-30`` whenever ``scale >= 2**-33``.
    Scales too small to represent give ``(0, 0)``; ``scale`` must be finite, >= 0 and < 2**31.
    """
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be finite and >= 0, got {scale}")
    if scale >= 2.0 ** 31:
        raise ValueError(f"scale {scale} too large for a 31-bit multiplier")
    if scale == 0:
        return 0, 0
    # largest shift with round(scale * 2**shift) <= 2**31 - 1
    _, e = math.frexp(scale)                       # scale = f * 2**e, 0.5 <= f < 1
    shift = min(63, 31 - e)
    while shift > 0 and round(scale * 2.0 ** shift) > _MULT_MAX:
        shift -= 1
    if shift < 0:
        raise ValueError(f"scale {scale} too large for a 31-bit multiplier")
    mult = int(round(scale * 2.0 ** shift))
    if mult == 0:
        return 0, 0
    return mult, shift


@dataclass(frozen=True)
class Requant:
    """Per-output-channel requantisation of int32 accumulators to int8.

    ``out = clamp(rne((acc + bias) * mult >> shift) + zp, lo, hi)`` (``numerics.requant``).
    ``bias``, ``mult``, ``shift`` are length-``N`` integer arrays (or scalars, broadcast).
    Build from float scales with :meth:`from_scale`. ``relu=True`` sets ``lo = zp``.
    """
    bias: object
    mult: object
    shift: object
    zp: int = 0
    lo: int = -128
    hi: int = 127

    @classmethod
    def from_scale(cls, scale, bias=0, zp=0, relu=False, n=None):
        """``scale`` (float or per-channel array) = input_scale * weight_scale / output_scale."""
        sc = np.atleast_1d(np.asarray(scale, dtype=np.float64))
        pairs = [quantize_multiplier(s) for s in sc]
        mult = np.array([p[0] for p in pairs], np.int64)
        shift = np.array([p[1] for p in pairs], np.int64)
        return cls(bias=bias, mult=mult, shift=shift, zp=int(zp), lo=int(zp) if relu else -128, hi=127)

    def params(self, n: int) -> np.ndarray:
        """``[3, n]`` int32 rows bias, mult, shift, validated."""
        out = np.zeros((3, n), np.int64)
        for i, (name, v) in enumerate((("bias", self.bias), ("mult", self.mult), ("shift", self.shift))):
            a = np.asarray(v, dtype=np.int64)
            if a.ndim == 0 or a.shape == (1,):   # one value (e.g. from a scalar scale): broadcast
                a = np.full(n, int(a.reshape(-1)[0]))
            if a.shape != (n,):
                raise ValueError(f"requant.{name}: need {n} values (one per output channel), got {a.shape}")
            out[i] = a
        if np.any((out[0] < -(1 << 31)) | (out[0] >= 1 << 31)):
            raise ValueError("requant.bias: values must fit int32")
        if np.any((out[1] < 0) | (out[1] >= 1 << 31)):
            raise ValueError("requant.mult: values must be in 0..2**31-1")
        if np.any((out[2] < 0) | (out[2] > 63)):
            raise ValueError("requant.shift: values must be in 0..63")
        for name in ("zp", "lo", "hi"):
            if not -128 <= int(getattr(self, name)) <= 127:
                raise ValueError(f"requant.{name}: must be int8, got {getattr(self, name)}")
        if self.lo > self.hi:
            raise ValueError(f"requant.lo: {self.lo} > hi {self.hi}")
        return out.astype(np.int32)


def add_multipliers(scale_a: float, scale_b: float) -> tuple[int, int, int]:
    """``(mult_a, mult_b, shift)`` for VECTOR ADD: ``out ≈ a*scale_a + b*scale_b``.

    ``scale_x = input_scale_x / output_scale``. Multipliers are int16 (|m| <= 32767): the largest
    shift 0..63 that keeps both in range.
    """
    sa, sb = float(scale_a), float(scale_b)
    for nm, s in (("scale_a", sa), ("scale_b", sb)):
        if not math.isfinite(s):
            raise ValueError(f"{nm} must be finite, got {s}")
    big = max(abs(sa), abs(sb))
    if big == 0:
        return 0, 0, 0
    if round(big) > 32767:
        raise ValueError(f"scale_a/scale_b: {big} too large for an int16 multiplier")
    shift = 0
    while shift < 63 and round(big * 2.0 ** (shift + 1)) <= 32767:
        shift += 1
    return int(round(sa * 2.0 ** shift)), int(round(sb * 2.0 ** shift)), shift


def avgpool_multiplier(n: int) -> tuple[int, int]:
    """``(mult, shift)``, ``mult < 2**16``, with ``mult / 2**shift`` nearest to ``1/n``."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    shift = 0
    while shift < 63 and round(2.0 ** (shift + 1) / n) <= 0xFFFF:
        shift += 1
    return int(round(2.0 ** shift / n)), shift
