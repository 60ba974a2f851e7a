"""Vector-engine kernels: requantisation, pooling, elementwise add and masking (DRAM -> DRAM).

Layouts
-------
* ``requant_relu``: int32 ``[M, N]`` accumulators (row-major, little-endian) -> int8 ``[M, N]``;
  columns in tiles of ``cols`` (one ACC line per row per tile).
* pools: int8 NHWC ``[N, H, W, C]`` -> ``[N, OH, OW, C]``; in ACT a pixel is ``lpp = ceil(C/cols)``
  lines, padded input rows as in :mod:`.conv` (zero padding done by the LOAD).
* ``add``: two int8 tensors of equal shape, processed as flat lines of ``cols`` bytes.
* ``mask``: int8 ``[R, L]``; row ``r`` is ``ceil(L/cols)`` lines, element ``e`` of line ``j`` is
  column ``j*cols + e``. A loaded mask is a constant bitmap in the VECTOR MASK format (8 data
  lines per mask line, bit ``(i % 8)*cols + e``, LSB first).
"""

from __future__ import annotations

import math

import numpy as np

from ..isa import MaskMode
from .builder import ProgramBuilder, Ring, Tensor
from .common import MAX_ROWS, cdiv, check_stride, line_bytes_field, load, load_params, store
from .conv import _pair, conv_out_size, load_padded_rows, normalize_pads
from .gemm import pack_requant_params
from .quant import Requant, add_multipliers, avgpool_multiplier

__all__ = ["requant_relu", "maxpool", "avgpool", "add", "mask", "pack_mask_bits"]


def _need(x, name, dtype, ndim=None):
    if not isinstance(x, Tensor) or x.dtype != dtype or (ndim is not None and len(x.shape) != ndim):
        raise ValueError(f"{name}: expected a {dtype} Tensor" + (f" of rank {ndim}" if ndim else ""))


def requant_relu(b: ProgramBuilder, x: Tensor, requant: Requant, out: Tensor | None = None) -> Tensor:
    """int32 ``x[M, N]`` -> int8 ``requant(x)`` (per-column bias/mult/shift, zp, clamp/ReLU)."""
    _need(x, "x", "int32", 2)
    cols = b.cfg.cols
    M, N = x.shape
    if out is None:
        out = b.tensor((M, N), "int8")
    if tuple(out.shape) != (M, N) or out.dtype != "int8":
        raise ValueError(f"out: expected int8 [{M}, {N}]")
    check_stride(4 * N, "x")
    params = pack_requant_params(b, requant, N)
    with b.spad_scope():
        Mt = min(M, MAX_ROWS, (b.spad_available("ACC") - 6) // 2, b.spad_available("ACT") // 2)
        acc_ring = Ring(b.spad_alloc("ACC", 2 * Mt), Mt, 2)
        o_ring = Ring(b.spad_alloc("ACT", 2 * Mt), Mt, 2)
        p_ring = Ring(b.spad_alloc("ACC", 6), 3, 2)
        for t in range(cdiv(N, cols)):
            n0 = t * cols
            nw = min(cols, N - n0)
            p_line = p_ring.next()
            load_params(b, params.addr + t * 12 * cols, p_line)
            for m0 in range(0, M, Mt):
                mt = min(Mt, M - m0)
                a = acc_ring.next()
                load(b, "acc", a, x.addr + 4 * (m0 * N + n0), mt, 1, 4 * N,
                     line_bytes_field(b, "acc", 4 * nw, "x"))
                o = o_ring.next()
                b.emit("requant", src=a, dst=o, rows=mt, dst_stride=1, param=p_line, lo=requant.lo,
                       hi=requant.hi, zp=requant.zp)
                store(b, "act", o, out.addr + m0 * N + n0, mt, 1, N, line_bytes_field(b, "act", nw, "out"))
    return out


def _store_pixels(b, o, dram, npix, C, lpp):
    """STORE ``npix`` pixels of ``lpp`` lines each (NHWC, ``C`` channels) from ACT line ``o``."""
    cols = b.cfg.cols
    if lpp == 1:
        store(b, "act", o, dram, npix, 1, C, line_bytes_field(b, "act", C, "out"))
    elif C % cols == 0:
        store(b, "act", o, dram, npix, lpp, C)
    else:
        for blk in range(lpp):
            nb = min(cols, C - blk * cols)
            store(b, "act", o + blk, dram + blk * cols, npix, 1, C, line_bytes_field(b, "act", nb, "out"),
                  spad_stride=lpp)


def _pool(b, x, kind, kernel, stride, padding, out, mult_shift):
    cols = b.cfg.cols
    _need(x, "x", "int8", 4)
    Nb, H, W, C = x.shape
    KH, KW = _pair(kernel, "kernel")
    sh, sw = _pair(stride if stride is not None else (KH, KW), "stride")
    if not (1 <= KH <= 15 and 1 <= KW <= 15):
        raise ValueError(f"kernel: {KH}x{KW} outside 1..15 (the kh/kw fields)")
    if not (1 <= sh <= 7 and 1 <= sw <= 7):
        raise ValueError(f"stride: ({sh}, {sw}) outside 1..7 (the stride fields)")
    pads = normalize_pads(padding)
    pt, pl, pb, pr = pads
    OH, OW = conv_out_size(H, KH, sh, pt, pb), conv_out_size(W, KW, sw, pl, pr)
    if OH < 1 or OW < 1:
        raise ValueError(f"kernel: {KH}x{KW} larger than the padded input")
    if OW > 255:
        raise ValueError(f"x: output width {OW} exceeds the out_w field (255)")
    lpp = cdiv(C, cols)
    if lpp > 63:
        raise ValueError(f"x: {C} channels need {lpp} lines per pixel, the lpp field allows 63")
    RS = (W + pl + pr) * lpp
    if RS > 0x3FFF:
        raise ValueError(f"x: padded row of {RS} lines exceeds the row_stride field")
    if out is None:
        out = b.tensor((Nb, OH, OW, C), "int8")
    if tuple(out.shape) != (Nb, OH, OW, C) or out.dtype != "int8":
        raise ValueError(f"out: expected int8 {(Nb, OH, OW, C)}")
    check_stride(C, "out")
    mult, shift = mult_shift
    with b.spad_scope():
        act = b.spad_available("ACT")
        th = 0
        for cand in range(min(OH, 255), 0, -1):
            if 2 * ((cand - 1) * sh + KH) * RS + 2 * cand * OW * lpp <= act:
                th = cand
                break
        if th == 0:
            raise ValueError("x: one output row of the pool does not fit the activation scratchpad")
        rows_max = (th - 1) * sh + KH
        in_ring = Ring(b.spad_alloc("ACT", 2 * rows_max * RS), rows_max * RS, 2)
        o_ring = Ring(b.spad_alloc("ACT", 2 * th * OW * lpp), th * OW * lpp, 2)
        for n in range(Nb):
            for oy0 in range(0, OH, th):
                tr = min(th, OH - oy0)
                r0 = oy0 * sh
                base = in_ring.next()
                load_padded_rows(b, x, n, base, r0, r0 + (tr - 1) * sh + KH, pads, lpp)
                o = o_ring.next()
                b.emit(kind, src=base, dst=o, lpp=lpp, row_stride=RS, out_h=tr, out_w=OW, kh=KH, kw=KW,
                       stride_h=sh, stride_w=sw, mult=mult, shift=shift)
                _store_pixels(b, o, out.addr + ((n * OH + oy0) * OW) * C, tr * OW, C, lpp)
    return out


def maxpool(b: ProgramBuilder, x: Tensor, kernel, stride=None, padding=0, *, nonnegative=False,
            out: Tensor | None = None) -> Tensor:
    """NHWC max pool. Padding is zero padding, exact only for non-negative inputs (e.g. after
    ReLU): with ``padding`` you must pass ``nonnegative=True`` (else ``ValueError``)."""
    if any(normalize_pads(padding)) and not nonnegative:
        raise ValueError("padding: maxpool pads with zeros, which is only exact for non-negative data; "
                         "pass nonnegative=True if the input is known >= 0 (e.g. after ReLU)")
    return _pool(b, x, "maxpool", kernel, stride, padding, out, (0, 0))


def avgpool(b: ProgramBuilder, x: Tensor, kernel, stride=None, padding=0, *, count_include_pad=True,
            out: Tensor | None = None) -> Tensor:
    """NHWC average pool: ``sat8(rne(sum * mult >> shift))``, ``mult/2**shift ≈ 1/(kh*kw)``
    (:func:`~.quant.avgpool_multiplier`). Padded zeros count in the divisor; padding with
    ``count_include_pad=False`` is rejected."""
    if any(normalize_pads(padding)) and not count_include_pad:
        raise ValueError("count_include_pad: padded average pooling divides by kh*kw; "
                         "count_include_pad=False is not supported")
    KH, KW = _pair(kernel, "kernel")
    return _pool(b, x, "avgpool", kernel, stride, padding, out, avgpool_multiplier(KH * KW))


def add(b: ProgramBuilder, x: Tensor, y: Tensor, scale_x: float, scale_y: float, *, relu=False,
        out: Tensor | None = None) -> Tensor:
    """Elementwise ``out = sat8(rne(x*mx + y*my >> shift))`` (optionally ReLU) of equal-shape int8
    tensors, with ``mx/2**shift ≈ scale_x``, ``my/2**shift ≈ scale_y`` (:func:`~.quant.add_multipliers`;
    ``scale_x = x_scale / out_scale``)."""
    _need(x, "x", "int8")
    _need(y, "y", "int8")
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(f"y: shape {y.shape} differs from x {x.shape}")
    if out is None:
        out = b.tensor(x.shape, "int8")
    if tuple(out.shape) != tuple(x.shape) or out.dtype != "int8":
        raise ValueError(f"out: expected int8 {x.shape}")
    ma, mb, shift = add_multipliers(scale_x, scale_y)
    cols = b.cfg.cols
    n = x.size
    L = cdiv(n, cols)
    rem = n - (L - 1) * cols
    with b.spad_scope():
        T = min(L, MAX_ROWS, b.spad_available("ACT") // 4)
        xr = Ring(b.spad_alloc("ACT", 2 * T), T, 2)
        yr = Ring(b.spad_alloc("ACT", 2 * T), T, 2)
        for l0 in range(0, L, T):
            t = min(T, L - l0)
            xa, ya = xr.next(), yr.next()
            load(b, "act", xa, x.addr + l0 * cols, t, 1, cols)
            load(b, "act", ya, y.addr + l0 * cols, t, 1, cols)
            b.emit("vadd", src_a=xa, src_b=ya, dst=xa, lines=t, mult_a=ma, mult_b=mb, shift=shift,
                   relu=int(relu))
            full = t if (l0 + t < L or rem == cols) else t - 1
            if full:
                store(b, "act", xa, out.addr + l0 * cols, full, 1, cols)
            if full < t:
                store(b, "act", xa + full, out.addr + (l0 + full) * cols, 1, 1, cols,
                      line_bytes_field(b, "act", rem, "x"))
    return out


def pack_mask_bits(masked: np.ndarray, cols: int) -> np.ndarray:
    """``[R, L]`` bool (True = replace) -> ``[ceil(R*rl/8), cols]`` uint8 bitmap lines."""
    masked = np.asarray(masked, dtype=bool)
    R, L = masked.shape
    rl = cdiv(L, cols)
    lines = np.zeros((R * rl, cols), bool)
    padded = np.zeros((R, rl * cols), bool)
    padded[:, :L] = masked
    lines[:] = padded.reshape(R * rl, cols)
    ml = cdiv(R * rl, 8)
    bits = np.zeros((ml * 8, cols), bool)
    bits[:R * rl] = lines
    # mask line k holds data lines 8k..8k+7: bit (i % 8)*cols + e
    flat = bits.reshape(ml, 8 * cols)
    return np.packbits(flat, axis=1, bitorder="little")


def mask(b: ProgramBuilder, x: Tensor, mode: str, *, param: int = 0, alt: int = -128, masked=None,
         out: Tensor | None = None) -> Tensor:
    """Masking of an int8 ``[R, L]`` matrix: elements where the mask holds become ``alt``.

    ``mode``: ``"causal"`` (masked where ``col > row + param``), ``"padding"`` (``col >= param``)
    or ``"loaded"`` (``masked``: a bool ``[R, L]`` array, True = replace; stored as a constant).
    """
    _need(x, "x", "int8", 2)
    cols = b.cfg.cols
    R, L = x.shape
    try:
        mm = MaskMode[str(mode).upper()]
    except KeyError:
        raise ValueError(f"mode: must be causal, padding or loaded, not {mode!r}") from None
    if not -128 <= int(alt) <= 127:
        raise ValueError(f"alt: must be int8, got {alt}")
    if out is None:
        out = b.tensor((R, L), "int8")
    if tuple(out.shape) != (R, L) or out.dtype != "int8":
        raise ValueError(f"out: expected int8 [{R}, {L}]")
    rl = cdiv(L, cols)
    if rl > 255:
        raise ValueError(f"x: rows of {L} elements need {rl} lines, the row_lines field allows 255")
    check_stride(L, "x")
    bm = None
    if mm == MaskMode.LOADED:
        m = np.asarray(masked, dtype=bool) if masked is not None else None
        if m is None or m.shape != (R, L):
            raise ValueError(f"masked: loaded mode needs a bool array of shape {(R, L)}")
        bm = b.const(pack_mask_bits(m, cols), "uint8")
    elif masked is not None:
        raise ValueError("masked: only used with mode='loaded'")
    with b.spad_scope():
        unit = 8 // math.gcd(rl, 8)
        act = b.spad_available("ACT")

        def lines_needed(r):     # two data buffers (+ two bitmap buffers when loaded)
            return 2 * r * rl + (2 * cdiv(r * rl, 8) if bm is not None else 0)
        rt = min(R, MAX_ROWS, act // (2 * rl))
        while rt > 0 and lines_needed(rt) > act:
            rt -= 1
        if rt > unit:
            rt = rt // unit * unit
        if mm == MaskMode.LOADED and rt < R and rt % unit:
            raise ValueError("x: rows too long to tile with a loaded mask")
        if rt < 1:
            raise ValueError("x: one row does not fit the activation scratchpad")
        mlines = cdiv(rt * rl, 8)
        d_ring = Ring(b.spad_alloc("ACT", 2 * rt * rl), rt * rl, 2)
        m_ring = Ring(b.spad_alloc("ACT", 2 * mlines), mlines, 2) if bm is not None else None
        for r0 in range(0, R, rt):
            t = min(rt, R - r0)
            d = d_ring.next()
            load(b, "act", d, x.addr + r0 * L, t, rl, L)
            fields = dict(src=d, dst=d, rows=t, row_lines=rl, mode=mm, alt=int(alt))
            if mm == MaskMode.CAUSAL:
                p = int(param) + r0
                if not -2048 <= p <= 2047:
                    raise ValueError(f"param: causal offset {param} + row {r0} exceeds the 12-bit field")
                fields["param"] = p
            elif mm == MaskMode.PADDING:
                if not -2048 <= int(param) <= 2047:
                    raise ValueError(f"param: {param} exceeds the 12-bit field")
                fields["param"] = int(param)
            else:
                ma = m_ring.next()
                nml = cdiv(t * rl, 8)
                load(b, "act", ma, bm.addr + (r0 * rl // 8) * cols, nml, 1, cols)
                fields["mask_addr"] = ma
            b.emit("mask", **fields)
            if L % cols == 0:
                store(b, "act", d, out.addr + r0 * L, t, rl, L)
            else:
                for j in range(rl):
                    nb = min(cols, L - j * cols)
                    store(b, "act", d + j, out.addr + r0 * L + j * cols, t, 1, L,
                          line_bytes_field(b, "act", nb, "x"), spad_stride=rl)
    return out
