"""Lowering: accelerator segments -> kernel-builder programs; host nodes -> host steps.

Segments are maximal runs of consecutive (topological order) accelerator nodes; each becomes one
program with its own external-memory image. Tensor layouts in external memory: ``nhwc`` (a
logical NCHW tensor stored NHWC), ``plain`` (row-major 2-D) and ``flat_nhwc`` (a flatten view of
an NHWC tensor: logical ``[N, C*H*W]``, stored in NHWC order; a Gemm reading it permutes its
weight rows instead of moving data).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernels import ProgramBuilder, Requant, Ring, add, conv2d, gemm, maxpool
from ..kernels.vector import _pool
from ..kernels.common import MAX_ROWS, cdiv, check_stride, line_bytes_field, load, store
from . import hostops
from .ir import CompileError, Graph
from .quantize import weight_scales

__all__ = ["lower", "to_dram", "from_dram"]


def to_dram(x: np.ndarray, layout: str, meta) -> np.ndarray:
    """Logical (ONNX-layout) int8 array -> the array written to external memory."""
    if layout == "nhwc":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if layout == "flat_nhwc":
        C, H, W = meta
        return np.ascontiguousarray(x.reshape(-1, C, H, W).transpose(0, 2, 3, 1).reshape(x.shape))
    return x


def from_dram(a: np.ndarray, layout: str, meta) -> np.ndarray:
    if layout == "nhwc":
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    if layout == "flat_nhwc":
        C, H, W = meta
        return np.ascontiguousarray(a.reshape(-1, H, W, C).transpose(0, 3, 1, 2).reshape(a.shape))
    return a


def _requant(s_in, s_w, s_out, bias, act, n):
    bias_q = np.clip(np.rint(np.asarray(bias, np.float64) / (s_in * s_w)), -(1 << 31), (1 << 31) - 1)
    rq = Requant.from_scale(
        s_in * s_w / s_out * np.ones(n), bias=bias_q.astype(np.int64), relu=bool(act) and act[0] == "relu"
    )
    if act and act[0] == "clip":
        lo = int(max(-128, np.ceil(act[1] / s_out - 1e-9))) if np.isfinite(act[1]) else -128
        hi = int(min(127, np.floor(act[2] / s_out + 1e-9))) if np.isfinite(act[2]) else 127
        rq = dataclasses.replace(rq, lo=min(lo, 127), hi=max(hi, -128))
    return rq


class _Seg:
    def __init__(self, cfg):
        self.b = ProgramBuilder(cfg)
        self.place = {}  # name -> (Tensor, layout, meta)
        self.inputs = []
        self.nodes = []


def _lower_node(seg: _Seg, g: Graph, n, place_of):
    b = seg.b
    sc = lambda name: g.values[name].scale  # noqa: E731
    x, lay, meta = place_of(n.inputs[0])
    y = n.outputs[0]
    act = n.attrs.get("act")
    if n.op == "Conv":
        w = g.const(n.inputs[1]).astype(np.float64)
        M = w.shape[0]
        bias = g.const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else np.zeros(M)
        sw = weight_scales(w, 0)
        wq = np.clip(np.rint(w / sw[:, None, None, None]), -127, 127).astype(np.int8)
        rq = _requant(sc(n.inputs[0]), sw, sc(y), bias, act, M)
        KH, KW = w.shape[2:]
        st = tuple(n.attrs.get("strides", [1, 1]))
        pads = hostops.conv_pads(n.attrs, x.shape[1:3], (KH, KW), st)
        t = conv2d(
            b, x, wq.transpose(2, 3, 1, 0), rq, stride=st, padding=pads, groups=int(n.attrs.get("group", 1))
        )
        return t, "nhwc", None
    if n.op == "Gemm":
        w = g.const(n.inputs[1]).astype(np.float64)
        K, N = w.shape
        if lay == "flat_nhwc":
            C, H, W = meta
            w = w.reshape(C, H, W, N).transpose(1, 2, 0, 3).reshape(K, N)
        sw = weight_scales(w, 1)
        wq = np.clip(np.rint(w / sw[None, :]), -127, 127).astype(np.int8)
        rq = _requant(sc(n.inputs[0]), sw, sc(y), g.const(n.inputs[2]), act, N)
        return gemm(b, x, wq, requant=rq), "plain", None
    if n.op in ("Add", "Relu"):
        if n.op == "Relu":
            return add(b, x, x, 0.5, 0.5, relu=True), lay, meta
        x2, lay2, meta2 = place_of(n.inputs[1])
        if (lay2, meta2) != (lay, meta):
            raise CompileError(f"{n.desc()}: inputs have different memory layouts ({lay} vs {lay2})")
        s = sc(y)
        return add(b, x, x2, sc(n.inputs[0]) / s, sc(n.inputs[1]) / s, relu=bool(act)), lay, meta
    if n.op in ("MaxPool", "AveragePool"):
        k, st, pads = hostops.pool_geometry(n.attrs, g.values[n.inputs[0]].shape)
        if n.op == "MaxPool":
            return maxpool(b, x, k, st, pads, nonnegative=True), "nhwc", None
        return _avgpool(b, x, k, st, pads, sc(n.inputs[0]) / sc(y)), "nhwc", None
    if n.op == "GlobalAveragePool":
        _, H, W, _ = x.shape
        return _avgpool(b, x, (H, W), (1, 1), 0, sc(n.inputs[0]) / sc(y)), "nhwc", None
    if n.op in ("Flatten", "Reshape"):
        shp = g.values[y].shape
        if lay == "nhwc":
            N_, H, W, C = x.shape
            if H == W == 1:
                return x.reshape(shp), "plain", None
            return x.reshape(shp), "flat_nhwc", (C, H, W)
        return x.reshape(shp), lay, meta
    if n.op == "Concat":
        parts = [place_of(i) for i in n.inputs]
        if any(lay_i not in ("nhwc", "plain") for _, lay_i, _ in parts):
            raise CompileError(f"{n.desc()}: an input is a flatten view; concat needs nhwc/plain tensors")
        return _concat(b, [t for t, _, _ in parts]), parts[0][1], None
    raise CompileError(f"{n.desc()}: no lowering")  # pragma: no cover - classify() prevents this


def _avgpool(b, x, k, st, pads, ratio):
    """Average pool that also rescales (input scale / output scale): ``mult / 2**shift`` is
    ``ratio / (kh*kw)`` with the 16-bit multiplier of the AVGPOOL instruction."""
    r = ratio / (k[0] * k[1])
    if not 0 < r <= 0xFFFF:
        raise ValueError(f"scale: average-pool rescale {r} outside the 16-bit multiplier range")
    shift = 0
    while shift < 63 and round(r * 2.0 ** (shift + 1)) <= 0xFFFF:
        shift += 1
    return _pool(b, x, "avgpool", k, st, pads, None, (int(round(r * 2.0**shift)), shift))


def _concat(b, parts):
    """Channel concat by DMA: each input's pixels go through ACT into its channel slice."""
    cols = b.cfg.cols
    lead = parts[0].shape[:-1]
    ctot = sum(t.shape[-1] for t in parts)
    out = b.tensor(tuple(lead) + (ctot,), "int8")
    P = int(np.prod(lead))
    check_stride(ctot, "out")
    off = 0
    for t in parts:
        C = t.shape[-1]
        rl = cdiv(C, cols)
        with b.spad_scope():
            T = min(P, MAX_ROWS, b.spad_available("ACT") // (2 * rl))
            if T < 1:
                raise ValueError(f"x: a pixel of {C} channels does not fit the activation scratchpad")
            ring = Ring(b.spad_alloc("ACT", 2 * T * rl), T * rl, 2)
            for p0 in range(0, P, T):
                k = min(T, P - p0)
                a = ring.next()
                for j in range(rl):
                    nb = min(cols, C - j * cols)
                    lb = line_bytes_field(b, "act", nb, "x")
                    load(b, "act", a + j * T, t.addr + p0 * C + j * cols, k, 1, C, lb)
                    store(b, "act", a + j * T, out.addr + p0 * ctot + off + j * cols, k, 1, ctot, lb)
        off += C
    return out


def lower(g: Graph, info: dict, cfg, progress=None, options: dict | None = None) -> dict:
    """Plan of steps, programs and segment images (see :mod:`.program` for the format).

    ``options`` (a JSON-able dict, part of the compile cache key) may hold ``keep``: value names
    that must be materialised in external memory, stay intact until the program ends and be
    listed in their step's ``outputs`` with ``"debug": True`` (saved intermediates). Each
    ``acc`` step carries ``tags``: the graph node of every instruction (``None`` for HALT).
    """
    options = dict(options or {})
    keep = set(options.get("keep") or ())
    steps, programs = [], []
    seg = None
    cons = g.consumers()
    order = {n.name: k for k, n in enumerate(g.nodes)}

    def close():
        nonlocal seg
        if seg is None:
            return
        outs = []
        done = {nn.name for nn in seg.nodes}
        last = max(order[nn.name] for nn in seg.nodes)
        for name, (t, lay, meta) in seg.place.items():
            if name in [i[0] for i in seg.inputs]:
                continue
            later = any(order[c.name] > last for c in cons.get(name, []) if c.name not in done)
            if later or name in g.outputs or name in keep:
                outs.append(
                    {
                        "name": name,
                        "addr": t.addr,
                        "shape": list(t.shape),
                        "layout": lay,
                        "meta": list(meta) if meta else None,
                    }
                )
                if not (later or name in g.outputs):
                    outs[-1]["debug"] = True
        try:
            prog = seg.b.finish()
        except ValueError as e:
            raise CompileError(f"accelerator program of nodes {[nn.name for nn in seg.nodes]}: {e}") from None
        image = bytes(prog)
        try:  # where a driver puts the instruction image (after everything the program uses)
            prog_addr = seg.b.alloc(len(image), align=64)
        except ValueError as e:
            raise CompileError(f"accelerator program of nodes {[nn.name for nn in seg.nodes]}: {e}") from None
        programs.append(
            {
                "program": image,
                "segments": list(seg.b.segments),
                "n_instructions": len(prog),
            }
        )
        steps.append(
            {
                "kind": "acc",
                "program": len(programs) - 1,
                "program_addr": prog_addr,
                "nodes": [nn.name for nn in seg.nodes],
                "tags": list(seg.b.tags),
                "inputs": [
                    {
                        "name": nm,
                        "addr": t.addr,
                        "shape": list(t.shape),
                        "layout": lay,
                        "meta": list(meta) if meta else None,
                    }
                    for nm, t, lay, meta in seg.inputs
                ],
                "outputs": outs,
            }
        )
        seg = None

    for k, n in enumerate(g.nodes):
        if progress:
            progress(k, len(g.nodes))
        if info[n.name]["place"] == "host":
            close()
            steps.append(
                {
                    "kind": "host",
                    "node": n.name,
                    "op": n.op,
                    "attrs": _jsonable(n.attrs),
                    "inputs": list(n.inputs),
                    "outputs": list(n.outputs),
                }
            )
            continue
        if seg is None:
            seg = _Seg(cfg)

        def place_of(name, seg=seg):
            if name not in seg.place:
                shp = g.values[name].shape
                lay = "nhwc" if len(shp) == 4 else "plain"
                dshape = (shp[0], shp[2], shp[3], shp[1]) if lay == "nhwc" else shp
                try:
                    t = seg.b.tensor(dshape, "int8", name=name)
                except ValueError as e:
                    raise CompileError(f"tensor {name!r} {shp}: {e}") from None
                seg.place[name] = (t, lay, None)
                seg.inputs.append((name, t, lay, None))
            return seg.place[name]

        seg.b.tag = n.name
        try:
            seg.place[n.outputs[0]] = _lower_node(seg, g, n, place_of)
        except CompileError:
            raise
        except ValueError as e:
            raise CompileError(f"{n.desc()}: cannot be lowered for preset {cfg.name!r}: {e}") from None
        seg.nodes.append(n)
    close()
    return {"steps": steps, "programs": programs}


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v
