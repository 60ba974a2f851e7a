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

from ..kernels import ProgramBuilder, Requant, Ring, Tensor, add, conv2d, gemm, maxpool
from ..kernels.builder import _Record
from ..kernels.vector import _pool
from ..kernels.common import MAX_ROWS, cdiv, check_stride, line_bytes_field, load, store
from ..kernels.conv import conv_out_size, normalize_pads
from . import alloc, fuse, hostops, schedule
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
        self.lowered = []      # node names (fused members included), in order
        self.heads = []        # first nodes of fused groups
        self.root = {}         # value -> value whose DRAM it uses (views share their source's)
        self.freed = set()
        self.comp_names = []


def _conv_args(g, n, x):
    sc = lambda name: g.values[name].scale  # noqa: E731
    y = n.outputs[0]
    w = g.const(n.inputs[1]).astype(np.float64)
    M = w.shape[0]
    bias = g.const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else np.zeros(M)
    sw = weight_scales(w, 0)
    wq = np.clip(np.rint(w / sw[:, None, None, None]), -127, 127).astype(np.int8)
    rq = _requant(sc(n.inputs[0]), sw, sc(y), bias, n.attrs.get("act"), M)
    KH, KW = w.shape[2:]
    st = tuple(n.attrs.get("strides", [1, 1]))
    pads = hostops.conv_pads(n.attrs, x.shape[1:3], (KH, KW), st)
    return wq.transpose(2, 3, 1, 0), rq, st, pads, int(n.attrs.get("group", 1))


def _lower_node(seg: _Seg, g: Graph, n, place_of, new_out, opts, group=None):
    """Emit node ``n`` (or the fused ``group`` headed by it); returns (Tensor, layout, meta).

    ``new_out(shape)`` allocates the output tensor (DRAM reuse when enabled)."""
    b = seg.b
    sc = lambda name: g.values[name].scale  # noqa: E731
    x, lay, meta = place_of(n.inputs[0])
    y = n.outputs[0]
    act = n.attrs.get("act")
    if n.op == "Conv":
        wq, rq, st, pads, groups = _conv_args(g, n, x)
        residual = pool = None
        if group is not None:
            if group["add"] is not None:
                a = group["add"]
                r, rlay, _ = place_of(group["residual"])
                if rlay != "nhwc":
                    raise CompileError(f"{a.desc()}: residual input is not an NHWC tensor")
                s = sc(a.outputs[0])
                residual = (r, sc(y) / s, sc(group["residual"]) / s, bool(a.attrs.get("act")))
            if group["pool"] is not None:
                pool = _pool_k(g, group["pool"])
        N_, H, W_, _ = x.shape
        KH, KW, _, M = wq.shape
        OH = conv_out_size(H, KH, st[0], pads[0], pads[2])
        OW = conv_out_size(W_, KW, st[1], pads[1], pads[3])
        if pool is not None:
            OH, OW = OH // pool[0], OW // pool[1]
        out = new_out((N_, OH, OW, M))
        t = conv2d(b, x, wq, rq, stride=st, padding=pads, groups=groups, out=out, residual=residual, pool=pool,
                   batch_group=opts["batch"])
        return t, "nhwc", None
    if n.op == "Gemm":
        if group is not None and group.get("chain"):
            return _gemm_chain(b, g, group["chain"], x, lay, meta, new_out), "plain", None
        wq, rq = _gemm_args(g, n, lay, meta)
        return gemm(b, x, wq, requant=rq, out=new_out((x.shape[0], wq.shape[1]))), "plain", None
    if n.op in ("Add", "Relu"):
        if n.op == "Relu":
            return add(b, x, x, 0.5, 0.5, relu=True, out=new_out(x.shape)), lay, meta
        x2, lay2, meta2 = place_of(n.inputs[1])
        if (lay2, meta2) != (lay, meta):
            raise CompileError(f"{n.desc()}: inputs have different memory layouts ({lay} vs {lay2})")
        s = sc(y)
        return (add(b, x, x2, sc(n.inputs[0]) / s, sc(n.inputs[1]) / s, relu=bool(act), out=new_out(x.shape)),
                lay, meta)
    if n.op in ("MaxPool", "AveragePool"):
        k, st, pads = hostops.pool_geometry(n.attrs, g.values[n.inputs[0]].shape)
        N_, H, W_, C = x.shape
        pp = normalize_pads(pads)
        oshape = (N_, conv_out_size(H, k[0], st[0], pp[0], pp[2]), conv_out_size(W_, k[1], st[1], pp[1], pp[3]), C)
        if n.op == "MaxPool":
            return maxpool(b, x, k, st, pads, nonnegative=True, out=new_out(oshape)), "nhwc", None
        return _avgpool(b, x, k, st, pads, sc(n.inputs[0]) / sc(y), new_out(oshape)), "nhwc", None
    if n.op == "GlobalAveragePool":
        N_, H, W, C = x.shape
        return _avgpool(b, x, (H, W), (1, 1), 0, sc(n.inputs[0]) / sc(y), new_out((N_, 1, 1, C))), "nhwc", None
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
        lead = parts[0][0].shape[:-1]
        out = new_out(tuple(lead) + (sum(t.shape[-1] for t, _, _ in parts),))
        return _concat(b, [t for t, _, _ in parts], out), parts[0][1], None
    raise CompileError(f"{n.desc()}: no lowering")  # pragma: no cover - classify() prevents this


def _gemm_args(g, n, lay, meta):
    sc = lambda name: g.values[name].scale  # noqa: E731
    w = g.const(n.inputs[1]).astype(np.float64)
    K, N = w.shape
    if lay == "flat_nhwc":
        C, H, W = meta
        w = w.reshape(C, H, W, N).transpose(1, 2, 0, 3).reshape(K, N)
    sw = weight_scales(w, 1)
    wq = np.clip(np.rint(w / sw[None, :]), -127, 127).astype(np.int8)
    rq = _requant(sc(n.inputs[0]), sw, sc(n.outputs[0]), g.const(n.inputs[2]), n.attrs.get("act"), N)
    return wq, rq


def _gemm_chain(b, g, chain, x, lay, meta, new_out):
    """Fused GEMM chain: intermediates in two ACT ping-pong buffers (see :mod:`.fuse`)."""
    cols = b.cfg.cols
    M = x.shape[0]
    kls = [cdiv(g.values[c.outputs[0]].shape[1], cols) for c in chain[:-1]]
    with b.spad_scope():
        half = M * max(kls)
        buf = b.spad_alloc("ACT", 2 * half)
        a_on, a = None, x
        for i, c in enumerate(chain):
            wq, rq = _gemm_args(g, c, lay if i == 0 else "plain", meta if i == 0 else None)
            N = wq.shape[1]
            if i == len(chain) - 1:
                return gemm(b, a, wq, requant=rq, out=new_out((M, N)), a_onchip=a_on)
            dst = buf + (i % 2) * half
            gemm(b, a, wq, requant=rq, a_onchip=a_on, out_onchip=(dst, kls[i]))
            a_on, a = dst, Tensor(0, (M, N), "int8", c.outputs[0])


def _pool_k(g, n):
    k, _, _ = hostops.pool_geometry(n.attrs, g.values[n.inputs[0]].shape)
    return (int(k[0]), int(k[1]))


def _avgpool(b, x, k, st, pads, ratio, out=None):
    """Average pool that also rescales (input scale / output scale): ``mult / 2**shift`` is
    ``ratio / (kh*kw)`` with the 16-bit multiplier of the AVGPOOL instruction."""
    r = ratio / (k[0] * k[1])
    if not 0 < r <= 0xFFFF:
        raise ValueError(f"scale: average-pool rescale {r} outside the 16-bit multiplier range")
    shift = 0
    while shift < 63 and round(r * 2.0 ** (shift + 1)) <= 0xFFFF:
        shift += 1
    return _pool(b, x, "avgpool", k, st, pads, out, (int(round(r * 2.0**shift)), shift))


def _concat(b, parts, out):
    """Channel concat by DMA: each input's pixels go through ACT into its channel slice."""
    cols = b.cfg.cols
    lead = parts[0].shape[:-1]
    ctot = sum(t.shape[-1] for t in parts)
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


#: Back-end options and their defaults (every optimisation on). Documented in :func:`lower`.
DEFAULT_OPTIONS = {
    "fuse": True,
    "schedule": True,
    "reuse_dram": True,
    "compress": True,
    "batch": True,
    "keep": [],
    "sparsity": None,
    "timeline": True,
}


def resolve_options(options: dict | None) -> dict:
    """``options`` merged over :data:`DEFAULT_OPTIONS`, validated (errors name the option)."""
    opts = dict(DEFAULT_OPTIONS)
    for k, v in dict(options or {}).items():
        if k not in DEFAULT_OPTIONS:
            raise CompileError(f"options: unknown back-end option {k!r} (known: {sorted(DEFAULT_OPTIONS)})")
        opts[k] = v
    for k in ("fuse", "schedule", "reuse_dram", "compress", "batch", "timeline"):
        if not isinstance(opts[k], bool):
            raise CompileError(f"options: {k!r} must be true or false, not {opts[k]!r}")
    if opts["sparsity"] is not None and not isinstance(opts["sparsity"], dict):
        raise CompileError("options: 'sparsity' must be a dict {value name: zero fraction} or null")
    opts["keep"] = sorted(set(opts["keep"] or ()))
    return opts


def lower(g: Graph, info: dict, cfg, progress=None, options: dict | None = None, memo=None) -> dict:
    """Plan of steps, programs and segment images (see :mod:`.program` for the format).

    ``options`` is a JSON-able dict (part of the compile cache key); missing keys take the
    defaults of :data:`DEFAULT_OPTIONS`, all optimisations on:

    ``keep`` (list, default ``[]``)
        Value names that must be materialised in external memory, stay intact until the program
        ends and be listed in their step's ``outputs`` with ``"debug": True`` (saved
        intermediates). Never fused away, never compressed, never reused.
    ``fuse`` (bool, default ``True``)
        Conv + bias + requant + ReLU (+ residual Add, + MaxPool) as one kernel, and chains of
        Gemm (+ bias + requant + ReLU) layers, whose intermediates stay in the scratchpad
        (:mod:`.fuse`).
    ``schedule`` (bool, default ``True``)
        List-schedule each program's instructions on the four engines (:mod:`.schedule`).
    ``reuse_dram`` (bool, default ``True``)
        Tensors whose lifetimes do not overlap share external memory: an intermediate's space
        is freed once its last reader (and every reader of its views) is emitted, and any later
        tensor the program writes may take it (the footprint hazards order the new writer after
        the old readers). Host-written inputs and constants never take freed space; graph
        outputs, kept values and values read by later steps are never freed.
    ``compress`` (bool, default ``True``)
        Store an activation zero-mask compressed when its expected compressed size is smaller
        than raw (and its producer and consumers support it); consumers load it compressed.
    ``sparsity`` (dict or ``None``, default ``None``)
        ``{value name: fraction of zero int8 elements}`` (e.g. measured on calibration data);
        values not listed are measured on one batch of seeded noise through the float graph.
    ``batch`` (bool, default ``True``)
        Batch > 1: convolutions whose weights stream through the weight scratchpad run a group
        of images under each loaded weight chunk (weights loaded once serve the group).
    ``timeline`` (bool, default ``True``)
        Include the estimated per-node, per-engine timeline in the step's ``schedule`` report.

    Each ``acc`` step carries ``tags`` (the graph node of every instruction, ``None`` for HALT;
    a fused group's instructions carry its first node) and the reports ``fusion`` (groups with
    ``dram_bytes_saved``), ``schedule`` (estimated cycles before/after, timeline), ``sync``
    (``edges_before``: cross-engine hazard edges; ``edges_after``: semaphore waits kept),
    ``dram`` (bytes allocated, with and without reuse), ``compression`` (per tensor: raw and
    expected compressed bytes, sparsity, decision and reason) and ``batch`` (per conv/gemm kernel
    its tiling, batch group and weight loads; consecutive kernels clustered into batched — each
    weight load serves the whole batch — and non-batched).

    ``memo`` (``None``, or ``{sub-cache name: .cache.Memo}``, see :mod:`.cache`): ``"kernels"``
    caches what each node's (or fused group's) kernels emit by everything that emission reads
    (:func:`_lower_node_memo`), ``"schedule"`` each program's scheduling and synchronisation by
    the instructions its kernels emitted. The plan is the same with or without them.
    """
    opts = resolve_options(options)
    keep = set(opts["keep"])
    steps, programs = [], []
    seg = None
    cons = g.consumers()
    order = {n.name: k for k, n in enumerate(g.nodes)}
    prod_of = g.producer()
    groups = fuse.plan(g, info, keep, cfg) if opts["fuse"] else {}
    member_of = {m: head for head, grp in groups.items() for m in grp["nodes"]}
    # index of the first host node at or after each position (segment boundary)
    next_host = [len(g.nodes)] * (len(g.nodes) + 1)
    for k in range(len(g.nodes) - 1, -1, -1):
        next_host[k] = k if info[g.nodes[k].name]["place"] == "host" else next_host[k + 1]
    comp = alloc.compression_plan(g, info, cfg, opts, groups, next_host) if opts["compress"] else {}

    def internal(name, k_prod):
        """Value produced at node index ``k_prod`` used only inside its segment (may be freed)."""
        if name in g.outputs or name in keep:
            return False
        return all(order[c.name] < next_host[k_prod] and info[c.name]["place"] != "host"
                   for c in cons.get(name, []))

    def close():
        nonlocal seg
        if seg is None:
            return
        outs = []
        done = set(seg.lowered)
        last = max(order[nm] for nm in seg.lowered)
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
        nodes = list(seg.lowered)
        try:
            sched, image, tags, n_instructions, sync_after = _schedule_finish(seg.b, opts, memo)
        except ValueError as e:
            raise CompileError(f"accelerator program of nodes {nodes}: {e}") from None
        try:  # where a driver puts the instruction image (after everything the program uses)
            prog_addr = seg.b.alloc(len(image), align=64)
        except ValueError as e:
            raise CompileError(f"accelerator program of nodes {nodes}: {e}") from None
        programs.append(
            {
                "program": image,
                "segments": list(seg.b.segments),
                "n_instructions": n_instructions,
            }
        )
        fused = [
            {k: (v.name if v is not None else None) if k in ("add", "pool") else v
             for k, v in groups[h].items() if k != "chain"}
            for h in seg.heads
        ]
        steps.append(
            {
                "kind": "acc",
                "program": len(programs) - 1,
                "program_addr": prog_addr,
                "nodes": nodes,
                "tags": tags,
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
                "fusion": {"groups": fused, "dram_bytes_saved": sum(f["dram_bytes_saved"] for f in fused)},
                "schedule": sched,
                "sync": {"edges_before": sched["sync_edges_before"], "edges_after": sync_after},
                "dram": {"bytes": seg.b.dram_used, "bytes_without_reuse": seg.b.dram_used + seg.b.reused_bytes,
                         "reuse": opts["reuse_dram"]},
                "compression": {nm: comp[nm] for nm in seg.comp_names},
                "batch": _batch_report(seg.b.notes),
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
        head = member_of.get(n.name)
        if head is not None and head != n.name:
            continue  # lowered with its group's first node
        if seg is None:
            seg = _Seg(cfg)
        grp = groups.get(n.name)

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
                seg.root[name] = name
            return seg.place[name]

        out_name = grp["out"] if grp else n.outputs[0]
        # any tensor the program writes may take freed space (hazards order it after the dead
        # tensor's readers); only host-written inputs and constants never do
        reuse = opts["reuse_dram"]
        compressed = bool(comp.get(out_name, {}).get("compressed"))

        def new_out(shape, seg=seg, out_name=out_name, reuse=reuse, compressed=compressed):
            try:
                t = seg.b.tensor(shape, "int8", name=out_name, reuse=reuse, compressed=compressed)
            except ValueError as e:
                raise CompileError(f"tensor {out_name!r} {list(shape)} does not fit external memory: {e}") from None
            return t

        seg.b.tag = n.name
        try:
            kmemo = (memo or {}).get("kernels")
            if kmemo is not None and n.op not in ("Flatten", "Reshape"):
                placed = _lower_node_memo(kmemo, seg, g, n, place_of, new_out, opts, grp,
                                          (out_name, reuse, compressed))
            else:
                placed = _lower_node(seg, g, n, place_of, new_out, opts, grp)
        except CompileError:
            raise
        except ValueError as e:
            raise CompileError(f"{n.desc()}: cannot be lowered for preset {cfg.name!r} "
                               f"(input tensor {n.inputs[0]!r}, output tensor {out_name!r}): {e}") from None
        seg.place[out_name] = placed
        members = grp["nodes"] if grp else [n.name]
        if grp:
            seg.heads.append(n.name)
        seg.lowered.extend(members)
        if n.op in ("Flatten", "Reshape"):
            seg.root[out_name] = seg.root.get(n.inputs[0], n.inputs[0])
        else:
            seg.root[out_name] = out_name
        if out_name in comp:
            seg.comp_names.append(out_name)
        if opts["reuse_dram"]:
            _release(seg, prod_of, cons, internal, order)
    close()
    return {"steps": steps, "programs": programs}


# -- kernel emission memo ----------------------------------------------------------------------
# What lowering one node (or fused group) does to the segment's ProgramBuilder, by attribute:
# read, and replaced by the memo (allocators and the zero line) ...
_B_STATE = ("_dram_next", "_free", "_zero", "_spad_free")
# ... read only (with "cfg", which is in the memo's base key) ...
_B_READ = ("_dram_limit", "slack", "tag", "_finished", "cfg")
# ... appended to / added to ("tensors": entries; "reused_bytes": incremented) ...
_B_ADDED = ("segments", "notes", "tensors", "reused_bytes")
# ... and the instruction records, rebuilt by _append (their waits depend on the whole program).
_B_RECORDS = ("_records", "_last", "_hist")
#: every ProgramBuilder attribute before finish(); a builder with others is not memoised (its
#: new state would not be captured), and tests/test_compile_cache.py fails so it gets added here
BUILDER_ATTRS = frozenset(_B_STATE + _B_READ + _B_ADDED + _B_RECORDS + ("tags", "channels"))


def _reads(n, grp) -> list:
    """The values :func:`_lower_node` places (``place_of``), in its order."""
    out = [n.inputs[0]]
    if n.op == "Conv" and grp is not None and grp["add"] is not None:
        out.append(grp["residual"])
    elif n.op == "Add":
        out.append(n.inputs[1])
    elif n.op == "Concat":
        out += [i for i in n.inputs[1:]]
    return out


def _group_key(grp):
    if grp is None:
        return None
    name = lambda x: None if x is None else x.name  # noqa: E731
    return [grp["nodes"], grp["out"], grp["residual"], name(grp["add"]), name(grp["pool"]),
            [c.name for c in grp["chain"]] if grp.get("chain") else None]


def _lower_node_memo(memo, seg, g, n, place_of, new_out, opts, grp, out_args):
    """:func:`_lower_node`, or its recorded effect on the builder replayed from ``memo``.

    The kernels see only the node (its weights, scales and attributes: the memo's base key is
    the model's partition and quantize keys and the back-end code), its fused group, the placed
    input tensors, how the output is allocated (``out_args``: name, reuse, compressed), the
    ``batch`` option and the builder's allocators; that is the key (addresses of the inputs and
    the allocator's next address modulo the alignment: an entry is relocated, :func:`_relocate`). The entry is what the
    emission did: its instructions (replayed through the builder's hazard tracking, so their
    semaphores follow from the program before them; for a program's first node, whose
    instructions depend on none before them, with the hazard tracking's result), constant
    segments, kernel notes, named tensors, and the allocators afterwards.
    """
    b = seg.b
    if set(vars(b)) - BUILDER_ATTRS or b._finished is not None:
        return _lower_node(seg, g, n, place_of, new_out, opts, grp)
    placed_in = []
    for v in _reads(n, grp):  # placing inputs allocates segment inputs: same order as _lower_node
        t, lay, meta = place_of(v)
        placed_in.append([v, t.addr, list(t.shape), t.dtype, t.name, t.slot, t.lpp, lay,
                          list(meta) if meta else None])
    z = b._zero
    first = not b._records  # the program's first instructions: their waits are in the entry
    # the key holds the inputs' addresses modulo the allocation alignment and not where the
    # node's first allocation lands (``base``): an entry made at another layout is relocated
    # (see _relocate)
    next0 = b._dram_next
    layout = [t[1] for t in placed_in] + [-(-next0 // _ALIGN) * _ALIGN]
    rel_in = [[*t[:1], t[1] % _ALIGN, *t[2:]] for t in placed_in]
    key, got = memo.get(
        n.name, n.op, _group_key(grp), bool(opts["batch"]), rel_in, list(out_args),
        "base", b._dram_limit, [list(f) for f in b._free],
        None if z is None else [z.addr, list(z.shape), z.dtype, z.name],
        sorted(b._spad_free.items()), b.slack, b.tag, first,
    )
    if got is not None and got["layout"] != layout:
        got = _relocate(got, layout, b)  # None: not relocatable here, emit
    if got is not None:
        if first:
            for m, fields, e, acc, tag, waits, signals, vc in got["records"]:
                r = _Record(m, fields, e, len(b._records), acc, tag)
                r.waits, r.signals, r.vc = waits, signals, vc
                b._records.append(r)
                b._hist[e].append(r)
                b._last[e] = r
        else:
            for m, fields, e, acc, tag in got["records"]:
                b._append(_Record(m, fields, e, len(b._records), acc, tag))
        b.segments.extend(got["segments"])
        b.notes.extend(got["notes"])
        b.tensors.update(got["tensors"])
        b.reused_bytes += got["reused"]
        b._dram_next, b._free, b._zero, b._spad_free = got["state"]
        if b._dram_next <= got["layout"][-1]:  # the node allocated nothing: the allocator stays
            b._dram_next = next0
        return got["placed"]
    n_rec, n_seg, n_notes = len(b._records), len(b.segments), len(b.notes)
    tensors, reused, free0 = dict(b.tensors), b.reused_bytes, list(b._free)
    placed = _lower_node(seg, g, n, place_of, new_out, opts, grp)
    recs = b._records[n_rec:]
    entry = {
        "layout": layout,
        "records": [(r.mnemonic, r.fields, r.engine, r.acc, r.tag, r.waits, r.signals, r.vc) for r in recs]
        if first else [(r.mnemonic, r.fields, r.engine, r.acc, r.tag) for r in recs],
        "segments": b.segments[n_seg:],
        "notes": b.notes[n_notes:],
        "tensors": {k: t for k, t in b.tensors.items() if tensors.get(k) is not t},
        "reused": b.reused_bytes - reused,
        "state": (b._dram_next, list(b._free), b._zero, dict(b._spad_free)),
        "placed": placed,
    }
    entry["regions"] = _regions(entry, placed_in, layout[-1], free0, z, b.slack)
    memo.put(key, entry)
    return placed


_ALIGN = 16  # ProgramBuilder.alloc's alignment (the kernels allocate with the default only)


def _dram_spans(entry):
    """Every external-memory range ``(first, last byte)`` an entry's effect holds: load/store
    addresses, DRAM footprints, constant segments, tensors."""
    for r in entry["records"]:
        a = r[1].get("dram_addr")
        if a is not None:
            yield a, a
        for sp, _, lo, hi in r[3]:
            if sp == "DRAM":
                yield lo, hi
    for a, d in entry["segments"]:
        yield a, a + max(len(d), 1) - 1
    for t in _tensors_of(entry):
        yield t.addr, t.addr + max(t.dram_nbytes, 1) - 1


def _tensors_of(entry):
    ts = list(entry["tensors"].values())
    z = entry["state"][2]
    if z is not None:
        ts.append(z)
    ts.extend(x for x in entry["placed"] if isinstance(x, Tensor))
    return ts


def _regions(entry, placed_in, dram_next, free0, z0, slack):
    """The relocatable address ranges ``[lo, hi)`` of an entry (one per input tensor, then the
    space the node allocated from ``dram_next``), or ``None`` -- the entry is then used at its
    own layout only -- when ranges overlap or some range the entry holds is not inside one of
    them nor inside what the key holds absolutely (the zero tensor, freed space ``free0``)."""
    regs = [(t[1], t[1] + Tensor(t[1], tuple(t[2]), t[3], t[4], t[5], t[6]).dram_nbytes + slack)
            for t in placed_in]
    regs.append((dram_next, entry["state"][0]))
    fixed = [(a, a + n) for a, n in free0]
    if z0 is not None:
        fixed.append((z0.addr, z0.addr + max(z0.dram_nbytes, 1)))
    spans = sorted(r for r in regs + fixed if r[1] > r[0])
    if any(spans[k][1] > spans[k + 1][0] for k in range(len(spans) - 1)):
        return None
    inside = regs + fixed
    for lo, hi in _dram_spans(entry):
        if not any(a <= lo and hi < b for a, b in inside):
            return None
    return regs


def _relocate(entry, layout, b):
    """``entry`` (a :func:`_lower_node_memo` effect recorded at another ``layout``: input
    addresses, allocator's next address) moved to ``layout``: every address in an input's range
    moves with that input, every address the node allocated moves with the allocator. ``None``
    when the entry is not relocatable or would not fit."""
    regs = entry.get("regions")
    if regs is None or len(regs) != len(layout):
        return None
    deltas = [new - old for new, old in zip(layout, entry["layout"])]
    if any(d % _ALIGN for d in deltas) or entry["state"][0] + deltas[-1] > b._dram_limit:
        return None
    # (the node allocated nothing when the allocator ends at or before base: the caller keeps it)
    moved = [(lo + d, hi + d) for (lo, hi), d in zip(regs, deltas)]
    if any(lo < 0 for lo, _ in moved):
        return None
    spans = sorted([r for r in moved if r[1] > r[0]] + [(a, a + n) for a, n in entry["state"][1]])
    if any(spans[k][1] > spans[k + 1][0] for k in range(len(spans) - 1)):
        return None

    def mv(a):
        for (lo, hi), d in zip(regs, deltas):
            if lo <= a < hi:
                return a + d
        return a

    def mvt(t):
        return dataclasses.replace(t, addr=mv(t.addr)) if isinstance(t, Tensor) else t

    recs = []
    for r in entry["records"]:
        f, acc = r[1], r[3]
        if "dram_addr" in f:
            f = dict(f)
            f["dram_addr"] = mv(f["dram_addr"])
        if any(x[0] == "DRAM" for x in acc):
            acc = [(sp, w, mv(lo), mv(hi)) if sp == "DRAM" else (sp, w, lo, hi) for sp, w, lo, hi in acc]
        recs.append((r[0], f, r[2], acc, *r[4:]))
    dn, free, z, spad = entry["state"]
    out = dict(entry)
    out.update(
        records=recs,
        segments=[(mv(a), d) for a, d in entry["segments"]],
        tensors={k: mvt(t) for k, t in entry["tensors"].items()},
        state=(dn + deltas[-1], free, mvt(z), spad),
        placed=tuple(mvt(x) for x in entry["placed"]),
        layout=layout,
    )
    return out


def _schedule_finish(b, opts, memo):
    """``(schedule report, program image, tags, instruction count, semaphore waits kept)`` of
    builder ``b``: scheduled (:func:`.schedule.schedule`) and finished, or read from ``memo``
    by the emitted instructions (:func:`.schedule.signature`)."""
    key = None
    memo = (memo or {}).get("schedule")
    if memo is not None:
        key, got = memo.get(opts["schedule"], opts["timeline"], schedule.signature(b))
        if got is not None:
            return got
    sched = schedule.schedule(b, enabled=opts["schedule"], timeline=opts["timeline"])
    prog = b.finish()
    out = (sched, bytes(prog), list(b.tags), len(prog), b.sync_edges())
    if memo is not None:
        memo.put(key, out)
    return out


def _batch_report(notes) -> dict:
    """Weight-bearing kernels grouped into clusters: ``batched`` when every weight load serves
    the whole batch (weights resident, or the whole batch runs under each loaded chunk)."""
    clusters = []
    for nt in notes:
        batched = nt["batch"] > 1 and (nt["weights_resident"] or nt["batch_group"] >= nt["batch"])
        if clusters and clusters[-1]["batched"] == batched:
            clusters[-1]["nodes"].append(nt["tag"])
        else:
            clusters.append({"batched": batched, "nodes": [nt["tag"]]})
    return {"clusters": clusters, "kernels": [dict(nt) for nt in notes]}


def _release(seg, prod_of, cons, internal, order):
    """Free the external memory of values whose every reader (and alias reader) is lowered."""
    done = set(seg.lowered)
    roots = {}
    for name, r in seg.root.items():
        roots.setdefault(r, []).append(name)
    for r, names in roots.items():
        if r in seg.freed or r not in seg.place:
            continue
        prod = prod_of.get(r)
        if prod is None:
            continue  # a segment input written by the host: keep (never handed to another tensor)
        k_prod = order[prod.name]
        if not all(internal(nm, order[prod_of[nm].name] if nm in prod_of else k_prod) for nm in names):
            continue
        if all(c.name in done for nm in names for c in cons.get(nm, [])):
            seg.b.free(seg.place[r][0])
            seg.freed.add(r)


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
