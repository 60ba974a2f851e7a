"""Hierarchical partitioning: every node goes to the accelerator, the host, or is rejected.

:func:`classify` decides what the accelerator *can* run (with the reason when it cannot);
:func:`partition` then applies the compute-based rule to every accelerator subgraph (a maximal
run of accelerator nodes in topological order, i.e. one future program) that has node producers
and consumers, all on the host: it goes to the host when the cost model says running it there is
cheaper than starting a device program for it.

Cost model (cycles at the accelerator clock; rough by design): accelerator
``macs / (rows*cols) + bytes moved / mem_bytes + 100`` per node plus ``LAUNCH`` per program
(host<->device transfer set-up and program start); host ``2 * macs + 4 * elements``.
"""

from __future__ import annotations

import numpy as np

from . import hostops
from .ir import CompileError, Graph, Node

__all__ = ["classify", "estimate", "partition", "format_partition", "LAUNCH"]

LAUNCH = 2000


def _in_shape(g, n, k=0):
    return g.values[n.inputs[k]].shape


def _nonneg(g: Graph, name: str) -> bool:
    p = g.producer().get(name)
    if p is None:
        return False
    if p.attrs.get("act") and (p.attrs["act"][0] == "relu" or p.attrs["act"][1] >= 0):
        return True
    if p.op == "Relu":
        return True
    if p.op in ("MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape"):
        return _nonneg(g, p.inputs[0])
    return False


def classify(g: Graph, n: Node, cfg) -> tuple:
    """``("acc", "")`` or ``("host", why not on the accelerator)``; CompileError if neither."""
    why = _acc_reason(g, n, cfg)
    if why is None:
        return "acc", ""
    if n.op in hostops.HOST_OPS:
        return "host", why
    raise CompileError(
        f"{n.desc()}: unsupported operator: no accelerator lowering ({why}) and no host kernel for {n.op!r}"
    )


def _acc_reason(g: Graph, n: Node, cfg):
    op = n.op
    ins = [g.values[i] for i in n.inputs if i]
    if any(v.dtype not in ("float32", "float64") for v in ins if not v.is_const):
        return "non-float input"
    if op == "Conv":
        x = ins[0].shape
        if len(x) != 4:
            return "only 2-D convolution"
        if not ins[1].is_const or (len(ins) > 2 and not ins[2].is_const):
            return "weights/bias are not constants"
        if any(d != 1 for d in n.attrs.get("dilations", [1, 1])):
            return "dilation is not supported"
        st = n.attrs.get("strides", [1, 1])
        if max(st) > 7:
            return "stride > 7"
        return None
    if op == "Gemm":
        if set(n.attrs) - {"act"} or not ins[1].is_const or len(ins[0].shape) != 2:
            return "only A[M,K] @ constant W[K,N] + bias"
        return None
    if op == "Add":
        if len(ins) != 2 or any(v.is_const for v in ins) or ins[0].shape != ins[1].shape:
            return "only elementwise add of two equal-shape activations"
        if len(ins[0].shape) not in (2, 4):
            return "rank must be 2 or 4"
        return None
    if op == "Relu":
        return None if len(ins[0].shape) in (2, 4) else "rank must be 2 or 4"
    if op in ("MaxPool", "AveragePool"):
        if len(ins[0].shape) != 4:
            return "only 2-D pooling"
        if int(n.attrs.get("ceil_mode", 0)) or any(d != 1 for d in n.attrs.get("dilations", [1, 1])):
            return "ceil_mode/dilations are not supported"
        k, st, pads = hostops.pool_geometry(n.attrs, ins[0].shape)
        if max(k) > 15 or max(st) > 7:
            return "kernel > 15 or stride > 7"
        if any(pads):
            if op == "MaxPool" and not _nonneg(g, n.inputs[0]):
                return "padded max pool of a possibly negative input"
            if op == "AveragePool" and not int(n.attrs.get("count_include_pad", 0)):
                return "padded average pool with count_include_pad=0"
        return None
    if op == "GlobalAveragePool":
        x = ins[0].shape
        if len(x) != 4 or x[2] > 15 or x[3] > 15:
            return "only 4-D inputs with H, W <= 15"
        return None
    if op in ("Flatten", "Reshape"):
        x = ins[0].shape
        y = g.values[n.outputs[0]].shape
        if len(y) == 2 and y[0] == x[0] and len(x) in (2, 4):
            return None
        return "only [N, ...] -> [N, rest] views"
    if op == "Concat":
        shp = [v.shape for v in ins]
        ax = int(n.attrs.get("axis", 1)) % len(shp[0])
        if any(v.is_const for v in ins) or len(shp[0]) not in (2, 4) or ax != 1:
            return "only channel (axis 1) concat of 2-D/4-D activations"
        return None
    return f"no accelerator lowering for {op}"


def estimate(g: Graph, n: Node, cfg) -> dict:
    """``{"macs", "elements", "acc_cycles", "host_cycles"}`` of one node."""
    out = g.values[n.outputs[0]].shape
    elems = int(np.prod(out))
    macs = 0
    if n.op == "Conv":
        w = g.values[n.inputs[1]].shape
        macs = elems * int(np.prod(w[1:]))
    elif n.op in ("Gemm", "MatMul"):
        macs = elems * g.values[n.inputs[0]].shape[-1]
    elif n.op in ("MaxPool", "AveragePool"):
        k, _, _ = hostops.pool_geometry(n.attrs, g.values[n.inputs[0]].shape)
        macs = elems * k[0] * k[1]
    elif n.op == "GlobalAveragePool":
        macs = int(np.prod(g.values[n.inputs[0]].shape))
    nbytes = sum(int(np.prod(g.values[i].shape)) for i in n.inputs if i) + elems
    if n.op in ("Flatten", "Reshape"):
        acc = 0
    elif n.op == "Concat":
        acc = 2 * elems // cfg.mem_bytes + 100
    else:
        acc = macs // (cfg.rows * cfg.cols) + nbytes // cfg.mem_bytes + 100
    return {"macs": macs, "elements": elems, "acc_cycles": acc, "host_cycles": 2 * macs + 4 * elems}


def partition(g: Graph, cfg) -> dict:
    """``{node name: {"place": "acc"|"host", "why": str, **estimate}}``."""
    info = {}
    for n in g.nodes:
        place, why = classify(g, n, cfg)
        info[n.name] = {"place": place, "why": why, **estimate(g, n, cfg)}
    prod, cons = g.producer(), g.consumers()
    # Subgraphs: maximal runs of accelerator nodes (topological order) = future programs.
    runs, cur = [], []
    for n in g.nodes:
        if info[n.name]["place"] == "acc":
            cur.append(n)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    for run in runs:
        names = {n.name for n in run}
        ext_p = [prod[x] for n in run for x in n.inputs if x in prod and prod[x].name not in names]
        ext_c = [c for n in run for o in n.outputs for c in cons.get(o, []) if c.name not in names]
        host_total = sum(info[n.name]["host_cycles"] for n in run)
        acc_total = sum(info[n.name]["acc_cycles"] for n in run)
        if (
            ext_p
            and ext_c
            and all(info[m.name]["place"] == "host" for m in ext_p + ext_c)
            and host_total < acc_total + LAUNCH
        ):
            for n in run:
                info[n.name]["place"] = "host"
                info[n.name]["why"] = (
                    f"cost: subgraph of {len(run)} node(s) between host ops, host {host_total} < "
                    f"accelerator {acc_total} + launch {LAUNCH} cycles"
                )
    return info


def format_partition(g: Graph, info: dict) -> str:
    rows = [("node", "op", "place", "MACs", "acc cyc", "host cyc", "note")]
    for n in g.nodes:
        i = info[n.name]
        rows.append(
            (
                n.name,
                n.op + ("+" + n.attrs["act"][0] if n.attrs.get("act") else ""),
                i["place"],
                str(i["macs"]),
                str(i["acc_cycles"]),
                str(i["host_cycles"]),
                i["why"],
            )
        )
    w = [max(len(r[k]) for r in rows) for k in range(6)]
    return "\n".join(
        "  ".join(c.ljust(w[k]) for k, c in enumerate(r[:6])) + ("  " + r[6] if r[6] else "") for r in rows
    )
