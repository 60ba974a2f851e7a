"""Tiled, double-buffered int8 GEMM: ``out[M, N] = requant(A[M, K] @ W[K, N])`` (or raw int32).

Layout
------
* ``A``: int8 ``[M, K]`` row-major in DRAM (row stride ``K`` bytes). In ACT, row ``m`` of a tile
  occupies ``ceil(kc/cols)`` consecutive lines (the K chunk, zero/garbage beyond ``kc`` ignored
  by MATMUL).
* ``W``: int8 ``[K, N]`` row-major. A column tile ``n0:n0+cols`` of a K chunk is loaded as
  ``kc`` WGT lines (``line_bytes`` = the tile's width; missing columns load as zeros).
* requant parameters: a constant ``[ceil(N/cols), 3, cols]`` int32 block (bias, mult, shift per
  column tile), loaded to 3 ACC lines per tile.
* ``out``: int8 ``[M, N]`` (requantised) or int32 ``[M, N]`` (raw accumulators, ``requant=None``).

Tiling: M in tiles of ``Mt`` rows (bounded by the ACT/ACC budget and field widths), N in tiles
of ``cols`` columns, K in chunks of ``Kc`` (all of K when it fits half the weight scratchpad,
else chunks accumulated with ``accumulate=1``). Weights stay resident in WGT when all of them
fit; otherwise they stream through two buffers. A, the ACC tile, the parameter lines and the
output lines are all double-buffered, so LOAD, MATMUL, VECTOR and STORE overlap; the builder
inserts the semaphores.
"""

from __future__ import annotations

import numpy as np

from .builder import ProgramBuilder, Ring, Tensor
from .common import (MAX_A_STRIDE, MAX_K, MAX_M_INNER, MAX_ROWS, cdiv, check_stride, load,
                     load_compressed_lines, load_params, move_lines, store_rows)
from .quant import Requant

__all__ = ["gemm", "pack_requant_params"]


def pack_requant_params(b: ProgramBuilder, requant: Requant, n: int) -> Tensor:
    """Constant ``[ceil(n/cols), 3, cols]`` int32 tensor of bias/mult/shift lines per column tile."""
    cols = b.cfg.cols
    p = requant.params(n)
    nt = cdiv(n, cols)
    out = np.zeros((nt, 3, cols), np.int32)
    for t in range(nt):
        w = min(cols, n - t * cols)
        out[t, :, :w] = p[:, t * cols:t * cols + w]
    return b.const(out, "int32")


def k_chunk(cfg, K: int, N: int) -> int:
    """The K chunk :func:`gemm` uses for ``[M, K] @ [K, N]`` on an otherwise empty builder
    (``K`` itself when A is read in one piece)."""
    cols = cfg.cols
    kmax = min(MAX_K // cols, MAX_A_STRIDE) * cols
    wavail = cfg.spad_depth("WGT")
    if K <= kmax and cdiv(N, cols) * K <= wavail:
        return K
    Kc = min(K, kmax, (wavail // 2) // cols * cols)
    return Kc // cols * cols if Kc < K else Kc


def _as_tensor(b, x, name, ndim):
    if isinstance(x, Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "iu" or arr.min(initial=0) < -128 or arr.max(initial=0) > 127:
            raise ValueError(f"{name}: constant must be int8-valued")
        t = b.const(arr.astype(np.int8))
    if len(t.shape) != ndim or t.dtype != "int8":
        raise ValueError(f"{name}: expected an int8 tensor of rank {ndim}, got {t.dtype} {t.shape}")
    return t


def gemm(b: ProgramBuilder, A, W, out: Tensor | None = None, requant: Requant | None = None, *,
         a_onchip: int | None = None, out_onchip: tuple | None = None) -> Tensor:
    """Emit ``out = requant(A @ W)`` (int8) or, with ``requant=None``, ``out = A @ W`` (int32).

    Parameters
    ----------
    b : ProgramBuilder
    A : Tensor int8 [M, K]
    W : Tensor int8 [K, N] or a NumPy int8 array (becomes a constant)
    out : Tensor, optional
        int8 [M, N] (with ``requant``) or int32 [M, N]; allocated when omitted.
    requant : Requant, optional
        Per-channel bias/mult/shift, zero point and clamp (ReLU: ``lo = zp``).
    a_onchip : int, optional
        ``A`` is already in ACT (row ``m`` at line ``a_onchip + m*ceil(K/cols)``; ``A`` then only
        gives the shape): no LOAD. Needs all of K in one chunk and all M rows in one tile.
    out_onchip : (line, stride), optional
        Requantised output stays in ACT, row ``m``'s column tile ``t`` at line
        ``line + m*stride + t`` (the layout ``a_onchip`` reads with ``stride = ceil(N/cols)``):
        no STORE; returns ``None``. Fusing GEMM chains (MLPs) keeps intermediates on chip.

    Returns the output tensor.
    """
    cols = b.cfg.cols
    A = _as_tensor(b, A, "A", 2)
    packed = None
    if not isinstance(W, Tensor):
        # a constant: pre-pack column tiles [NT, K, cols] so each tile is contiguous lines
        warr = np.asarray(W)
        if warr.ndim != 2:
            raise ValueError(f"W: expected rank 2, got shape {warr.shape}")
        if warr.dtype.kind not in "iu" or warr.min(initial=0) < -128 or warr.max(initial=0) > 127:
            raise ValueError("W: constant must be int8-valued")
        kk, nn = warr.shape
        nt = cdiv(nn, cols)
        pk = np.zeros((kk, nt * cols), np.int8)
        pk[:, :nn] = warr
        packed = b.const(np.ascontiguousarray(pk.reshape(kk, nt, cols).transpose(1, 0, 2)))
        W = Tensor(0, (kk, nn), "int8", "W")
    W = _as_tensor(b, W, "W", 2)
    M, K = A.shape
    K2, N = W.shape
    if K2 != K:
        raise ValueError(f"W: shape {W.shape} does not match A {A.shape} (K = {K})")
    raw = requant is None
    odt = "int32" if raw else "int8"
    if out_onchip is not None and raw:
        raise ValueError("out_onchip: needs requant (int8 output)")
    if out is None and out_onchip is None:
        out = b.tensor((M, N), odt)
    if out is None:
        out = Tensor(0, (M, N), odt, "onchip")
    if tuple(out.shape) != (M, N) or out.dtype != odt:
        raise ValueError(f"out: expected {odt} [{M}, {N}], got {out.dtype} {out.shape}")
    check_stride(K, "A")
    if packed is None:
        check_stride(N, "W")

    def load_w(w_addr, t, k0, kc, nw):
        if packed is not None:
            move_lines(b, "load", "wgt", w_addr, packed.addr + (t * K + k0) * cols, kc, cols, cols)
        else:
            move_lines(b, "load", "wgt", w_addr, W.addr + k0 * N + t * cols, kc, nw, N)
    check_stride(N * (4 if raw else 1), "out")
    params = None if raw else pack_requant_params(b, requant, N)
    NT = cdiv(N, cols)
    kmax = min(MAX_K // cols, MAX_A_STRIDE) * cols            # K per MATMUL, whole lines

    with b.spad_scope():
        wavail = b.spad_available("WGT")
        resident = K <= kmax and NT * K <= wavail
        if resident:
            Kc = K
        else:
            Kc = min(K, kmax, (wavail // 2) // cols * cols)
            if Kc < K:
                Kc = Kc // cols * cols
            if Kc < 1:
                raise ValueError("cfg: weight scratchpad too small for a K chunk")
        nk = cdiv(K, Kc)
        if A.slot and nk > 1:
            raise ValueError("A: a compressed input needs all of K in one chunk (see k_chunk)")
        kl = cdiv(Kc, cols)
        # M tile from the ACT (2 A buffers + 2 output buffers) and ACC (2 tiles + 2 param sets) budgets
        act_av = b.spad_available("ACT")
        acc_av = b.spad_available("ACC") - 6
        per_row_act = (0 if a_onchip is not None else 2 * kl) + (0 if raw or out_onchip is not None else 2)
        Mt = min(M, MAX_ROWS, act_av // per_row_act if per_row_act else M, acc_av // 2)
        if Mt < 1:
            raise ValueError("cfg: scratchpads too small for one GEMM row")
        if a_onchip is not None and (nk > 1 or Mt < M):
            raise ValueError("a_onchip: an on-chip A needs all of K in one chunk and all rows in one tile")
        b.notes.append({"kernel": "gemm", "tag": b.tag, "batch": M, "batch_group": Mt,
                        "weights_resident": bool(resident), "row_tile": Mt,
                        "weight_loads": 1 if resident else cdiv(M, Mt)})
        a_ring = Ring(b.spad_alloc("ACT", 2 * Mt * kl), Mt * kl, 2) if a_onchip is None else None
        o_ring = None if raw or out_onchip is not None else Ring(b.spad_alloc("ACT", 2 * Mt), Mt, 2)
        acc_ring = Ring(b.spad_alloc("ACC", 2 * Mt), Mt, 2)
        p_ring = None if raw else Ring(b.spad_alloc("ACC", 6), 3, 2)
        if resident:
            w_base = b.spad_alloc("WGT", NT * K)
            w_loaded = set()
        else:
            w_ring = Ring(b.spad_alloc("WGT", 2 * Kc), Kc, 2)

        for m0 in range(0, M, Mt):
            mt = min(Mt, M - m0)
            a_full = None
            if a_onchip is not None:
                a_full = a_onchip
            elif nk == 1:
                a_full = a_ring.next()
                if A.slot:
                    load_compressed_lines(b, a_full, A, m0 * kl, mt * kl)
                else:
                    load(b, "act", a_full, A.addr + m0 * K, mt, kl, K)
            for t in range(NT):
                n0 = t * cols
                nw = min(cols, N - n0)
                if not raw:
                    p_line = p_ring.next()
                    load_params(b, params.addr + t * 3 * 4 * cols, p_line)
                acc = acc_ring.next()
                for c in range(nk):
                    k0 = c * Kc
                    kc = min(Kc, K - k0)
                    klc = cdiv(kc, cols)
                    if a_full is not None:
                        a_addr = a_full
                    else:
                        a_addr = a_ring.next()
                        load(b, "act", a_addr, A.addr + m0 * K + k0, mt, klc, K)
                    if resident:
                        w_addr = w_base + t * K
                        if t not in w_loaded:
                            load_w(w_addr, t, 0, K, nw)
                            w_loaded.add(t)
                    else:
                        w_addr = w_ring.next()
                        load_w(w_addr, t, k0, kc, nw)
                    for r0 in range(0, mt, MAX_M_INNER):
                        mi = min(MAX_M_INNER, mt - r0)
                        b.emit("matmul", a_addr=a_addr + r0 * klc, w_addr=w_addr, acc_addr=acc + r0, k=kc,
                               m_inner=mi, a_stride=klc, m_outer=1, accumulate=int(c > 0))
                if raw:
                    move_lines(b, "store", "acc", acc, out.addr + 4 * (m0 * N + n0), mt, 4 * nw, 4 * N)
                elif out_onchip is not None:
                    line, stride = out_onchip
                    b.emit("requant", src=acc, dst=line + m0 * stride + t, rows=mt, dst_stride=stride,
                           param=p_line, lo=requant.lo, hi=requant.hi, zp=requant.zp)
                else:
                    o = o_ring.next()
                    b.emit("requant", src=acc, dst=o, rows=mt, dst_stride=1, param=p_line,
                           lo=requant.lo, hi=requant.hi, zp=requant.zp)
                    store_rows(b, o, out, m0, mt, t, nw)
    return None if out_onchip is not None else out
