"""Fusion planning: which accelerator nodes run as one kernel with the intermediate on chip.

A group starts at a ``Conv`` (its bias, requantisation and ReLU/Clip are already one kernel: the
frontend folds the activation into ``attrs["act"]``) and may absorb, in this order:

* a residual ``Add`` of the conv output and a tensor produced *before* the conv (so it is in
  external memory when the fused kernel runs), same shape; the Add's ReLU comes along;
* a ``MaxPool`` with ``kernel == strides``, no padding, no dilation, floor mode, reading the
  conv (or add) output.

A GEMM chain (an MLP: ``Gemm`` whose output is read only by the next ``Gemm`` as its ``A``,
each with its bias/requant/ReLU) is one group too: the intermediates stay in two ACT
ping-pong buffers in exactly the layout the next GEMM reads (``gemm(out_onchip=...,
a_onchip=...)``), when all rows fit one tile and every later layer reads K in one chunk.

A value is fused away only when it has exactly one consumer (the next member), is not a graph
output, and is not in ``keep`` (values the user asked to see stay materialised). All nodes
between the group's first and last member in topological order must be accelerator nodes, so the
group lies inside one accelerator segment. The fused kernel is emitted at the position of the
conv; the skipped members' outputs never reach external memory.

:func:`plan` returns ``{head node name: group}``, a group being a dict with ``nodes`` (member
names in order), ``add`` (the Add node or ``None``), ``residual`` (the Add's other input),
``pool`` (the MaxPool node or ``None``), ``out`` (the value the group produces),
``intermediates`` (values that no longer exist in external memory) and ``dram_bytes_saved``:
each intermediate would have been written once and read once (``2 * elements`` bytes, int8).
"""

from __future__ import annotations

import numpy as np

from . import hostops
from .ir import Graph

__all__ = ["plan"]


def _single(cons, g, name, keep):
    users = cons.get(name, [])
    if len(users) != 1 or name in g.outputs or name in keep:
        return None
    return users[0]


def _fusable_pool(g, n) -> tuple | None:
    if n.op != "MaxPool":
        return None
    a = n.attrs
    if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
        return None
    if a.get("storage_order", 0):
        return None
    shp = g.values[n.inputs[0]].shape
    if len(shp) != 4 or len(n.outputs) != 1:
        return None
    k, st, pads = hostops.pool_geometry(a, shp)
    if tuple(k) != tuple(st) or any(pads) or max(k) > 7:
        return None
    if shp[2] < k[0] or shp[3] < k[1]:
        return None
    return tuple(int(v) for v in k)


def _chain_fits(cfg, M, layers_kn) -> bool:
    """A GEMM chain with intermediates in two ACT ping-pong buffers: every later layer reads A
    on chip (all of K in one chunk, all M rows in one tile)."""
    from ..kernels.common import MAX_ROWS, cdiv
    from ..kernels.gemm import k_chunk

    cols = cfg.cols
    if M > MAX_ROWS or 2 * M + 6 > cfg.spad_depth("ACC"):
        return False
    inter = max(cdiv(n, cols) for _, n in layers_kn[:-1])
    k0 = cdiv(layers_kn[0][0], cols)
    if 2 * M * inter + max(2 * M * k0 + 2 * M, 2 * M) > cfg.spad_depth("ACT"):
        return False
    return all(k_chunk(cfg, k, n) == k for k, n in layers_kn[1:])


def plan(g: Graph, info: dict, keep=(), cfg=None) -> dict:
    keep = set(keep or ())
    cons = g.consumers()
    order = {n.name: i for i, n in enumerate(g.nodes)}
    prod = g.producer()
    on_acc = [info[n.name]["place"] != "host" for n in g.nodes]
    groups = {}
    taken = set()

    def contiguous(a, b):
        return all(on_acc[i] for i in range(order[a], order[b] + 1))

    for n in g.nodes:
        if n.op == "Gemm" and cfg is not None and on_acc[order[n.name]] and n.name not in taken:
            chain, cur = [n], n.outputs[0]
            while True:
                nxt = _single(cons, g, cur, keep)
                if (nxt is None or nxt.op != "Gemm" or nxt.inputs[0] != cur or not on_acc[order[nxt.name]]
                        or nxt.name in taken or not contiguous(chain[-1].name, nxt.name)
                        or len(g.values[cur].shape) != 2):
                    break
                chain.append(nxt)
                cur = nxt.outputs[0]
            while len(chain) > 1:
                kn = [tuple(int(d) for d in g.values[c.inputs[1]].const.shape) for c in chain]
                if _chain_fits(cfg, int(g.values[n.inputs[0]].shape[0]), kn):
                    break
                chain.pop()
            if len(chain) > 1:
                inter = [c.outputs[0] for c in chain[:-1]]
                taken.update(c.name for c in chain)
                groups[n.name] = {
                    "nodes": [c.name for c in chain],
                    "add": None,
                    "residual": None,
                    "pool": None,
                    "chain": chain,
                    "out": chain[-1].outputs[0],
                    "intermediates": inter,
                    "dram_bytes_saved": sum(2 * int(np.prod(g.values[v].shape)) for v in inter),
                }
            continue
        if n.op != "Conv" or not on_acc[order[n.name]] or n.name in taken:
            continue
        members, inter = [n.name], []
        cur = n.outputs[0]
        add = pool = None
        residual = None
        nxt = _single(cons, g, cur, keep)
        if (nxt is not None and nxt.op == "Add" and on_acc[order[nxt.name]] and nxt.name not in taken
                and len(nxt.inputs) == 2 and nxt.inputs[0] != nxt.inputs[1]):
            other = nxt.inputs[1] if nxt.inputs[0] == cur else nxt.inputs[0]
            p = prod.get(other)
            ok_src = (p is None and not g.values[other].is_const) or (p is not None and order[p.name] < order[n.name])
            if (ok_src and tuple(g.values[other].shape) == tuple(g.values[cur].shape)
                    and len(g.values[cur].shape) == 4 and contiguous(n.name, nxt.name)):
                add, residual = nxt, other
                members.append(nxt.name)
                inter.append(cur)
                cur = nxt.outputs[0]
                nxt = _single(cons, g, cur, keep)
        if (nxt is not None and on_acc[order[nxt.name]] and nxt.name not in taken
                and _fusable_pool(g, nxt) and contiguous(n.name, nxt.name)):
            pool = nxt
            members.append(nxt.name)
            inter.append(cur)
            cur = nxt.outputs[0]
        if len(members) == 1:
            continue
        taken.update(members)
        saved = sum(2 * int(np.prod(g.values[v].shape)) for v in inter)
        groups[n.name] = {
            "nodes": members,
            "add": add,
            "residual": residual,
            "pool": pool,
            "chain": None,
            "out": cur,
            "intermediates": inter,
            "dram_bytes_saved": saved,
        }
    return groups
