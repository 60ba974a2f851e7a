"""2-D convolution by implicit im2col: no patch matrix is ever built.

Layout
------
* input ``x``: int8 NHWC ``[N, H, W, C]`` in DRAM, channels not padded.
* in ACT, a tile of *padded* input rows: pixel ``(r, px)`` (padded coordinates) at line
  ``base + r*RS + px*lpp`` with ``lpp = ceil(C/cols)`` lines per pixel (channel ``c`` is element
  ``c % cols`` of line ``c // cols``) and ``RS = (W + pad_l + pad_r)*lpp``. Padding lines are zero
  (LOAD padding fields when they fit, else zero-filled from a constant).
* weights: ONNX-like ``[KH, KW, C/groups, Cout]`` NumPy int8 (a compile-time constant). For every
  output column tile ``n0:n0+cols`` they are expanded to a dense block over the input channels
  that tile's groups use (``c_start .. c_hi``, ``c_start`` line aligned), zero across groups —
  so groups and depthwise run on the same path as ``groups=1`` — and stored as rows
  ``(ky*KW + kx)*Kt + j`` of ``cols`` bytes.
* output: int8 NHWC ``[N, OH, OW, Cout]``.

For each tap ``(ky, kx)`` (and channel chunk), one MATMUL walks all output pixels of the tile:
``a_addr = base + ky*RS + kx*lpp + c_start/cols``, ``m_inner = OW``, ``a_stride = stride_w*lpp``,
``m_outer = rows``, ``a_outer_stride = stride_h*RS``; the first tap overwrites the accumulators,
the others accumulate. Then REQUANT (bias, scale, zero point, ReLU clamp) and a STORE of
``cols`` channels per pixel. Tiled by output rows (and column tiles of ``cols`` output channels),
double-buffered.
"""

from __future__ import annotations

import numpy as np

from .builder import ProgramBuilder, Ring, Tensor
from .common import (MAX_A_STRIDE, MAX_K, MAX_M_INNER, MAX_ROW_LINES, MAX_ROWS, cdiv, check_stride,
                     line_bytes_field, load, load_compressed_lines, load_params, move_lines, store_rows,
                     zero_fill)
from .gemm import pack_requant_params
from .quant import Requant
from ..golden.perf import DEFAULT_COSTS as _COSTS

__all__ = ["conv2d", "conv_out_size", "normalize_pads", "load_padded_rows"]


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"{name}: expected an int or a pair, got {v}")
    return v


def normalize_pads(padding) -> tuple:
    """``(top, left, bottom, right)`` from an int, ``(ph, pw)`` or ``(top, left, bottom, right)``."""
    if isinstance(padding, (int, np.integer)):
        p = (int(padding),) * 4
    else:
        p = tuple(int(i) for i in padding)
        if len(p) == 2:
            p = (p[0], p[1], p[0], p[1])
    if len(p) != 4 or min(p) < 0:
        raise ValueError("padding: expected a non-negative int, (ph, pw) or (top, left, bottom, right), "
                         f"got {padding}")
    return p


def conv_out_size(size, k, stride, pad_a, pad_b):
    return (size + pad_a + pad_b - k) // stride + 1


def load_padded_rows(b: ProgramBuilder, x: Tensor, n: int, base: int, r0: int, r1: int, pads, lpp: int,
                     fresh_lines: int | None = None):
    """Fill ACT lines ``base ..`` with padded input rows ``r0 .. r1-1`` (padded coordinates) of image n.

    Row ``r`` of the tile at ``base + (r - r0)*RS``, ``RS = (W + pl + pr)*lpp``; zero padding.
    A compressed ``x`` is loaded line by line (groups) and its padding zero-filled: the whole
    region of ``fresh_lines`` lines when given (the buffer's first use), afterwards only the
    top/bottom padding rows (the left/right padding columns of a buffer stay zero: data loads
    never write them). ``fresh_lines=None`` means the region was never zeroed (fill all).
    """
    _, H, W, C = x.shape
    cols = b.cfg.cols
    pt, pl, pb, pr = pads
    RS = (W + pl + pr) * lpp
    ztop = max(0, min(r1, pt) - r0)
    zbot = max(0, r1 - max(r0, pt + H))
    nrows = (r1 - r0) - ztop - zbot
    total = (r1 - r0) * RS
    if nrows <= 0:
        zero_fill(b, "act", base, total)
        return
    y0 = r0 + ztop - pt
    if x.slot:   # compressed: one group per line, pixel-major
        if fresh_lines is None:
            if ztop or zbot or pl or pr:
                zero_fill(b, "act", base, total)
        elif fresh_lines:
            if pl or pr or ztop or zbot:
                zero_fill(b, "act", base, max(fresh_lines, total))
        else:
            if ztop:
                zero_fill(b, "act", base, ztop * RS)
            if zbot:
                zero_fill(b, "act", base + (ztop + nrows) * RS, zbot * RS)
        if pl == 0 and pr == 0:
            load_compressed_lines(b, base + ztop * RS, x, (n * H + y0) * W * lpp, nrows * W * lpp)
        else:
            for i in range(nrows):
                load_compressed_lines(b, base + (ztop + i) * RS + pl * lpp, x, ((n * H + y0 + i) * W) * lpp,
                                      W * lpp)
        return
    src = x.addr + ((n * H + y0) * W) * C
    contiguous = (lpp == 1) or (C % cols == 0)
    lb = min(C, cols) if lpp == 1 else cols
    lb_field = line_bytes_field(b, "act", lb, "x")
    row_lines = W * lpp
    if (contiguous and max(pl * lpp, pr * lpp, ztop, zbot) <= 15 and row_lines <= MAX_ROW_LINES
            and nrows <= MAX_ROWS and W * C <= 0xFFFF):
        b.emit("load", spad="act", spad_addr=base, dram_addr=src, rows=nrows, row_lines=row_lines,
               dram_stride=W * C, line_bytes=lb_field, pad_top=ztop, pad_bottom=zbot,
               pad_left=pl * lpp, pad_right=pr * lpp)
        return
    if ztop or zbot or pl or pr:
        zero_fill(b, "act", base, total)
    if contiguous and pl == 0 and pr == 0 and row_lines <= MAX_ROW_LINES and W * C <= 0xFFFF:
        load(b, "act", base + ztop * RS, src, nrows, row_lines, W * C, lb_field)
        return
    check_stride(C, "x")
    for i in range(nrows):
        load(b, "act", base + (ztop + i) * RS + pl * lpp, src + i * W * C, W, lpp, C, lb_field)


def _dense_tiles(w, C, Cout, groups, cols):
    """Per column tile: (c_start, Kt, dense [KH*KW*Kt, cols] int8)."""
    KH, KW, cpg, _ = w.shape
    opg = Cout // groups
    tiles = []
    for n0 in range(0, Cout, cols):
        nw = min(cols, Cout - n0)
        g_lo, g_hi = n0 // opg, (n0 + nw - 1) // opg
        c_start = (g_lo * cpg) // cols * cols
        c_hi = (g_hi + 1) * cpg
        Kt = c_hi - c_start
        d = np.zeros((KH, KW, Kt, cols), np.int8)
        for c in range(nw):
            o = n0 + c
            g = o // opg
            lo = g * cpg - c_start
            d[:, :, lo:lo + cpg, c] = w[:, :, :, o]
        tiles.append((c_start, Kt, d.reshape(KH * KW * Kt, cols)))
    return tiles


def conv2d(b: ProgramBuilder, x: Tensor, weights, requant: Requant, *, stride=1, padding=0, groups=1,
           out: Tensor | None = None, residual=None, pool=None, batch_group: bool = True) -> Tensor:
    """Emit an int8 NHWC convolution: ``out = requant(conv(x, weights))``.

    Parameters
    ----------
    x : Tensor int8 [N, H, W, C]
    weights : ndarray int8 [KH, KW, C // groups, Cout]
    requant : Requant
        Per-output-channel bias/mult/shift, zero point, clamp (ReLU with ``lo = zp``).
    stride : int or (sh, sw), each 1..7 (limited by the MATMUL ``a_stride`` field otherwise)
    padding : int, (ph, pw) or (top, left, bottom, right); zero padding
    groups : int; ``groups == C == Cout`` is depthwise
    out : Tensor int8 [N, OH, OW, Cout] (or the pooled shape with ``pool``), optional
    residual : (Tensor, scale_conv, scale_res, relu), optional
        Fused residual add: ``add(conv_out, residual, scale_conv, scale_res, relu=relu)`` exactly
        as :func:`~.vector.add` computes it (VECTOR ADD on the tile still in the scratchpad;
        ``residual`` is an int8 ``[N, OH, OW, Cout]`` tensor).
    pool : (kh, kw), optional
        Fused max pool with ``kernel == stride`` and no padding, applied after the (residual)
        add on the tile in the scratchpad; ``out`` is ``[N, OH // kh, OW // kw, Cout]`` (floor).
    batch_group : bool
        When the weights do not stay resident in the weight scratchpad, run several images of
        the batch under each loaded weight chunk (weights loaded once per row tile serve the
        whole group) instead of reloading them per image.

    Every intermediate of a fused kernel (accumulators, the requantised tile, the add result)
    stays in the scratchpad; only ``out`` is written to external memory.
    """
    cols = b.cfg.cols
    if not isinstance(x, Tensor) or len(x.shape) != 4 or x.dtype != "int8":
        raise ValueError("x: expected an int8 NHWC Tensor")
    Nb, H, W, C = x.shape
    w = np.asarray(weights)
    if w.ndim != 4:
        raise ValueError(f"weights: expected [KH, KW, Cin/groups, Cout], got shape {w.shape}")
    if w.dtype.kind not in "iu" or w.min(initial=0) < -128 or w.max(initial=0) > 127:
        raise ValueError("weights: must be int8-valued")
    w = w.astype(np.int8)
    KH, KW, cpg, Cout = w.shape
    if not isinstance(groups, (int, np.integer)) or groups < 1 or C % groups or Cout % groups:
        raise ValueError(f"groups: {groups} must divide C={C} and Cout={Cout}")
    if cpg != C // groups:
        raise ValueError(f"weights: dimension 2 is {cpg}, expected C/groups = {C // groups}")
    sh, sw = _pair(stride, "stride")
    if not (1 <= sh and 1 <= sw):
        raise ValueError(f"stride: must be >= 1, got {stride}")
    pads = normalize_pads(padding)
    pt, pl, pb, pr = pads
    OH, OW = conv_out_size(H, KH, sh, pt, pb), conv_out_size(W, KW, sw, pl, pr)
    if OH < 1 or OW < 1:
        raise ValueError(f"weights: kernel {KH}x{KW} larger than the padded input {H}x{W}")
    res = None
    if residual is not None:
        rt, s_conv, s_res, res_relu = residual
        if not isinstance(rt, Tensor) or rt.dtype != "int8" or tuple(rt.shape) != (Nb, OH, OW, Cout):
            raise ValueError(f"residual: expected an int8 Tensor {(Nb, OH, OW, Cout)}")
        from .quant import add_multipliers
        res = (rt, *add_multipliers(s_conv, s_res), int(bool(res_relu)))
    if pool is not None:
        PKH, PKW = _pair(pool, "pool")
        if not (1 <= PKH <= min(15, OH) and 1 <= PKW <= min(15, OW)):
            raise ValueError(f"pool: {PKH}x{PKW} outside 1..15 or larger than the conv output {OH}x{OW}")
        if PKH > 7 or PKW > 7:
            raise ValueError(f"pool: stride {PKH}x{PKW} outside 1..7 (the stride fields)")
        OHo, OWo = OH // PKH, OW // PKW
        OHc = OHo * PKH           # conv rows the pool reads (floor mode)
    else:
        PKH = PKW = 1
        OHo, OWo, OHc = OH, OW, OH
    if out is None:
        out = b.tensor((Nb, OHo, OWo, Cout), "int8")
    if tuple(out.shape) != (Nb, OHo, OWo, Cout) or out.dtype != "int8":
        raise ValueError(f"out: expected int8 {(Nb, OHo, OWo, Cout)}, got {out.dtype} {out.shape}")
    check_stride(Cout, "out")
    lpp = cdiv(C, cols)
    Wp = W + pl + pr
    RS = Wp * lpp
    if sw * lpp > MAX_A_STRIDE:
        raise ValueError(f"stride: stride_w * ceil(C/cols) = {sw * lpp} exceeds the a_stride field (255)")
    if sh * RS > 0x3FFF:
        raise ValueError(f"x: stride_h * padded row lines = {sh * RS} exceeds the a_outer_stride field")

    tiles = _dense_tiles(w, C, Cout, groups, cols)
    blob = np.concatenate([d for _, _, d in tiles])
    wt = b.const(blob)
    offs = np.cumsum([0] + [d.shape[0] for _, _, d in tiles])
    params = pack_requant_params(b, requant, Cout)

    with b.spad_scope():
        wavail = b.spad_available("WGT")
        total_w = int(offs[-1])
        resident = total_w <= wavail
        budget = wavail if resident else wavail // 2
        kmax = MAX_K // cols * cols
        piece_max = min(kmax, budget // cols * cols)
        if piece_max < 1:
            raise ValueError("cfg: weight scratchpad too small")
        # chunks: per tile, list of (row0, rows, pieces=[(tap, j0, j1, row_in_chunk)])
        chunks = []
        for _, Kt, _ in tiles:
            tl, cur, cur_rows = [], [], 0
            for tap in range(KH * KW):
                for j0 in range(0, Kt, piece_max):
                    j1 = min(Kt, j0 + piece_max)
                    if cur_rows + (j1 - j0) > budget:
                        tl.append(cur)
                        cur, cur_rows = [], 0
                    cur.append((tap, j0, j1, cur_rows))
                    cur_rows += j1 - j0
            tl.append(cur)
            chunks.append(tl)
        if resident:
            w_base = b.spad_alloc("WGT", total_w)
            w_loaded = set()
        else:
            w_ring = Ring(b.spad_alloc("WGT", 2 * budget), budget, 2)
        act_av = b.spad_available("ACT")
        acc_av = b.spad_available("ACC") - 6

        def fits(cand, g):
            rows_in = (cand - 1) * sh + KH
            need_act = 2 * g * rows_in * RS + 2 * cand * OW
            if res is not None:
                need_act += 2 * cand * OW
            if pool is not None:
                need_act += 2 * (cand // PKH) * OWo
            return (need_act <= act_av and 2 * g * cand * OW <= acc_av and cand * OW <= 4095
                    and (pool is None or cand % PKH == 0))

        # (batch group G, row tile th) with the lowest estimated time: per row tile the MATMULs
        # (start cost + k * ceil(rows/lanes), write-back bound) against the weight and input
        # LOADs (lines), the engines overlapping tile by tile (golden cycle model constants)
        ks = [j1 - j0 for tl in chunks for pieces in tl for _, j0, j1, _ in pieces]
        n_chunks = sum(len(tl) for tl in chunks)
        lanes = b.cfg.rows

        def mergeable(g, t):
            return KH == sh and g > 1 and g * t <= MAX_M_INNER and OW <= MAX_M_INNER

        def est(g, t):
            def tile(tr):
                n = tr * OW
                if mergeable(g, t) and tr == t:
                    mm = sum(_COSTS.matmul_start + max(k * cdiv(g * n, lanes), g * n) for k in ks)
                else:
                    mm = g * sum(_COSTS.matmul_start + max(k * cdiv(n, lanes), n) for k in ks)
                ld = g * ((tr - 1) * sh + KH) * RS
                if not resident:
                    ld += total_w + n_chunks * _COSTS.dma_start
                return max(mm, ld)
            full, last = divmod(OHc, t)
            return cdiv(Nb, g) * (full * tile(t) + (tile(last) if last else 0))

        choices = []
        for g in (range(1, Nb + 1) if (batch_group and not resident and Nb > 1) else (1,)):
            fit = [c for c in range(1, min(OHc, 255) + 1) if fits(c, g)]
            if not fit:
                break
            # one image at a time: the largest row tile (dynamic lane balancing makes the
            # estimate's lane-rounding pessimistic); groups: every row tile that fits
            for c in (fit[-1:] if g == 1 else fit):
                choices.append((est(g, c), -c, g, c))
        th, G = 0, 1
        if choices:
            # the fastest; among equals the fewest weight loads (DRAM traffic), then larger tiles
            best = min(c[0] for c in choices)
            near = [c for c in choices if c[0] <= best]
            _, _, G, th = min(near, key=lambda c: (cdiv(Nb, c[2]) * cdiv(OHc, c[3]), c[1], c[2]))
        if th == 0:
            raise ValueError(f"x: one output row ({OW} pixels, {KH} input rows of {RS} lines) does not "
                             f"fit the scratchpads; tile the width before calling conv2d")
        rows_max = (th - 1) * sh + KH
        merge_imgs = mergeable(G, th)
        b.notes.append({"kernel": "conv2d", "tag": b.tag, "batch": Nb, "batch_group": G,
                        "weights_resident": bool(resident), "row_tile": th,
                        "weight_loads": (1 if resident else cdiv(Nb, G) * cdiv(OHc, th))})
        in_ring = Ring(b.spad_alloc("ACT", 2 * G * rows_max * RS), G * rows_max * RS, 2)
        o_ring = Ring(b.spad_alloc("ACT", 2 * th * OW), th * OW, 2)
        r_ring = Ring(b.spad_alloc("ACT", 2 * th * OW), th * OW, 2) if res is not None else None
        q_ring = (Ring(b.spad_alloc("ACT", 2 * (th // PKH) * OWo), (th // PKH) * OWo, 2)
                  if pool is not None else None)
        acc_ring = Ring(b.spad_alloc("ACC", 2 * G * th * OW), G * th * OW, 2)
        p_ring = Ring(b.spad_alloc("ACC", 6), 3, 2)

        zeroed = set()   # input regions whose padding columns are zero (compressed x)
        for n0 in range(0, Nb, G):
            imgs = range(n0, min(Nb, n0 + G))
            for oy0 in range(0, OHc, th):
                tr = min(th, OHc - oy0)
                r0 = oy0 * sh
                r1 = r0 + (tr - 1) * sh + KH
                base = in_ring.next()
                for gi, n in enumerate(imgs):
                    reg = base + gi * rows_max * RS
                    load_padded_rows(b, x, n, reg, r0, r1, pads, lpp,
                                     fresh_lines=0 if reg in zeroed else rows_max * RS)
                    zeroed.add(reg)
                for t, (c_start, Kt, _) in enumerate(tiles):
                    c0 = t * cols
                    nw = min(cols, Cout - c0)
                    p_line = p_ring.next()
                    load_params(b, params.addr + t * 3 * 4 * cols, p_line)
                    acc = acc_ring.next()
                    first = True
                    for ci, pieces in enumerate(chunks[t]):
                        crow0 = pieces[0][0] * Kt + pieces[0][1]
                        crows = sum(j1 - j0 for _, j0, j1, _ in pieces)
                        w_src = wt.addr + (int(offs[t]) + crow0) * cols
                        if resident:
                            w_addr = w_base + int(offs[t]) + crow0
                            if (t, ci) not in w_loaded:
                                move_lines(b, "load", "wgt", w_addr, w_src, crows, cols, cols)
                                w_loaded.add((t, ci))
                        else:
                            w_addr = w_ring.next()
                            move_lines(b, "load", "wgt", w_addr, w_src, crows, cols, cols)
                        if merge_imgs and tr == th and len(imgs) > 1:
                            # KH == stride_h: every image's rows continue the previous image's
                            # at the same stride, so one MATMUL covers the whole group
                            for pi, (tap, j0, j1, roff) in enumerate(pieces):
                                ky, kx = divmod(tap, KW)
                                a0 = base + ky * RS + kx * lpp + (c_start + j0) // cols
                                _conv_matmuls(b, a0, w_addr + roff, acc, j1 - j0, len(imgs) * tr, OW,
                                              sw * lpp, sh * RS, first and pi == 0)
                            first = False
                            continue
                        for gi, _n in enumerate(imgs):
                            for pi, (tap, j0, j1, roff) in enumerate(pieces):
                                ky, kx = divmod(tap, KW)
                                a0 = base + gi * rows_max * RS + ky * RS + kx * lpp + (c_start + j0) // cols
                                _conv_matmuls(b, a0, w_addr + roff, acc + gi * th * OW, j1 - j0, tr, OW,
                                              sw * lpp, sh * RS, first and pi == 0)
                        first = False
                    for gi, n in enumerate(imgs):
                        o = o_ring.next()
                        b.emit("requant", src=acc + gi * th * OW, dst=o, rows=tr * OW, dst_stride=1,
                               param=p_line, lo=requant.lo, hi=requant.hi, zp=requant.zp)
                        if res is not None:
                            rt, ma, mb, shift, rrelu = res
                            ra = r_ring.next()
                            move_lines(b, "load", "act", ra, rt.addr + ((n * OH + oy0) * OW) * Cout + c0,
                                       tr * OW, nw, Cout)
                            b.emit("vadd", src_a=o, src_b=ra, dst=o, lines=tr * OW, mult_a=ma, mult_b=mb,
                                   shift=shift, relu=rrelu)
                        if pool is not None:
                            q = q_ring.next()
                            ph = tr // PKH
                            b.emit("maxpool", src=o, dst=q, lpp=1, row_stride=OW, out_h=ph, out_w=OWo,
                                   kh=PKH, kw=PKW, stride_h=PKH, stride_w=PKW, mult=0, shift=0)
                            store_rows(b, q, out, (n * OHo + oy0 // PKH) * OWo, ph * OWo, t, nw)
                        else:
                            store_rows(b, o, out, (n * OH + oy0) * OW, tr * OW, t, nw)
    return out


def _conv_matmuls(b, a0, w_addr, acc, k, rows, OW, a_stride, a_outer, first):
    if OW <= MAX_M_INNER:
        b.emit("matmul", a_addr=a0, w_addr=w_addr, acc_addr=acc, k=k, m_inner=OW, a_stride=a_stride,
               m_outer=rows, a_outer_stride=a_outer, accumulate=int(not first))
        return
    for r in range(rows):
        for x0 in range(0, OW, MAX_M_INNER):
            mi = min(MAX_M_INNER, OW - x0)
            b.emit("matmul", a_addr=a0 + r * a_outer + x0 * a_stride, w_addr=w_addr,
                   acc_addr=acc + r * OW + x0, k=k, m_inner=mi, a_stride=a_stride, m_outer=1,
                   accumulate=int(not first))
