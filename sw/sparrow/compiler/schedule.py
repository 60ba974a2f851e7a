"""Instruction scheduling: dependency graph of engine operations, list scheduling, timeline.

Works on a :class:`~sparrow.kernels.ProgramBuilder` before ``finish()``:

* :func:`dependencies` — the hazard graph of the recorded instructions from their footprints
  (per scratchpad/DRAM location: the last writer and the readers since; a read depends on the
  last writer, a write on the last writer and every reader since). Every conflicting pair of
  instructions is ordered by a path of these edges, so any order that respects them is
  equivalent to program order.
* :func:`estimate` — each instruction's duration from the golden cycle model
  (:mod:`sparrow.golden.perf`), assuming dense data (no zero skipping).
* :func:`list_schedule` — event-driven list scheduling on the four engines (LOAD, MATMUL,
  VECTOR, STORE run concurrently, each one instruction at a time): at every step the engine
  that can start soonest takes, among its instructions whose dependencies are done by then, the
  one with the longest remaining critical path (bottom level). Independent operations are
  reordered so the DMA engines prefetch the next tile's/layer's data while the matrix engine
  computes. ``in_order=True`` keeps each engine's program order (the estimate of the
  unscheduled program).
* :func:`schedule` — reorders the builder when the estimated makespan improves (the builder's
  hazard tracking then recomputes the semaphores of the new order) and returns the report:
  estimated cycles before/after, sync edges (cross-engine hazard edges of the dependency graph,
  i.e. what naive sync insertion would turn into waits, and the waits kept after vector-clock
  pruning) and the estimated timeline per node and engine.
"""

from __future__ import annotations

import bisect
import heapq
import pickle
import sys

import numpy as np

from ..golden import perf
from ..kernels.builder import ENGINES

__all__ = ["dependencies", "estimate", "list_schedule", "schedule", "signature", "ENGINE_NAMES"]

ENGINE_NAMES = [e.name.lower() for e in ENGINES]
_INF = 1 << 62
#: cycles between a producer's completion and a dependent instruction on another engine starting
SYNC_LATENCY = 1


class _Space:
    """Disjoint segments of one address space with last writer and readers since."""

    def __init__(self):
        self.starts = [0]
        self.writer = [None]
        self.readers = [[]]

    def _split(self, x):
        k = bisect.bisect_right(self.starts, x) - 1
        if self.starts[k] != x:
            self.starts.insert(k + 1, x)
            self.writer.insert(k + 1, self.writer[k])
            self.readers.insert(k + 1, list(self.readers[k]))
            return k + 1
        return k

    def access(self, idx, write, lo, hi, deps):
        a = self._split(lo)
        b = self._split(hi + 1)
        for k in range(a, b):
            w = self.writer[k]
            if w is not None:
                deps.add(w)
            if write:
                deps.update(self.readers[k])
        if write:
            # merge the covered segments into one written by idx
            del self.starts[a + 1:b]
            del self.writer[a + 1:b]
            del self.readers[a + 1:b]
            self.writer[a] = idx
            self.readers[a] = []
        else:
            for k in range(a, b):
                self.readers[k].append(idx)


def dependencies(records) -> list:
    """``preds[i]``: sorted indices of the earlier instructions ``i`` must follow (see module doc)."""
    spaces = {}
    preds = []
    for i, (_, _, _, acc, _) in enumerate(records):
        deps = set()
        for space, write, lo, hi in acc:
            sp = spaces.get(space)
            if sp is None:
                sp = spaces[space] = _Space()
            sp.access(i, write, lo, hi, deps)
        deps.discard(i)
        preds.append(sorted(deps))
    return preds


_MATMUL: dict = {}  # (cfg, costs, rows, k) -> perf.matmul_cycles of a dense MATMUL


def estimate(cfg, mnemonic, v, costs=perf.DEFAULT_COSTS) -> int:
    """Estimated cycles of one instruction (dense data) from the golden cycle model."""
    cols = cfg.cols
    if mnemonic in ("load", "store"):
        spad = v["spad"]
        lb = v["line_bytes"] or cfg.spad_line_bytes(spad)
        rows, rl = v["rows"], v["row_lines"]
        if v["compressed"]:
            rb = 2 + rl * ((cols + 7) // 8 + cols // 2)        # expected: half the elements non-zero
        else:
            rb = rl * lb
        pad = 0
        if mnemonic == "load":
            pad = ((v["pad_top"] + rows + v["pad_bottom"]) * (v["pad_left"] + rl + v["pad_right"])
                   - rows * rl)
        return perf.dma_cycles_uniform(cfg, rows, rb, rl, pad, costs, store=mnemonic == "store")
    if mnemonic == "matmul":  # dense: every row costs k cycles
        n, k = v["m_outer"] * v["m_inner"], v["k"]
        key = (cfg, costs, n, k)  # a handful of shapes per model, each a NumPy call in the model
        c = _MATMUL.get(key)
        if c is None:
            if len(_MATMUL) > 4096:
                _MATMUL.clear()
            c = _MATMUL[key] = perf.matmul_cycles(cfg, np.full(n, k), costs)
        return c
    if mnemonic in ("requant", "vadd", "maxpool", "avgpool", "mask"):
        return perf.vector_cycles(perf.vector_lines_read(mnemonic, v), costs)
    return perf.nop_cycles(costs)


def list_schedule(records, preds, durations, in_order=False):
    """``(start times, makespan)`` of the list schedule (see module doc)."""
    n = len(records)
    eng = [r[2] for r in records]
    if in_order:  # each engine in program order: also depend on the engine's previous instruction
        last = [None] * 4
        allp = []
        for j in range(n):
            e = eng[j]
            allp.append(set(preds[j]) | ({last[e]} if last[e] is not None else set()))
            last[e] = j
    else:
        allp = preds
    succs = [[] for _ in range(n)]
    for j, ps in enumerate(allp):
        for i in ps:
            succs[i].append(j)
    npred = [len(p) for p in allp]
    if in_order:
        prio = [-j for j in range(n)]
    else:  # bottom level: longest remaining path
        prio = [0] * n
        for i in range(n - 1, -1, -1):
            prio[i] = durations[i] + max((prio[s] for s in succs[i]), default=0)
    ready = [0] * n
    start = [None] * n
    pending = [[] for _ in range(4)]   # (ready time, idx)
    avail = [[] for _ in range(4)]     # (-prio, idx)
    free = [0] * 4
    for j in range(n):
        if npred[j] == 0:
            heapq.heappush(pending[eng[j]], (0, j))
    done = 0
    makespan = 0
    while done < n:
        best_e, best_t = None, _INF
        for e in range(4):
            t = free[e]
            if avail[e]:
                cand = t
            elif pending[e]:
                cand = max(t, pending[e][0][0])
            else:
                continue
            if cand < best_t:
                best_e, best_t = e, cand
        if best_e is None:  # pragma: no cover - the graph is acyclic
            raise RuntimeError("scheduler: no instruction can start (cyclic dependencies)")
        e, t = best_e, best_t
        pe, av = pending[e], avail[e]
        while pe and pe[0][0] <= t:
            _, j = heapq.heappop(pe)
            heapq.heappush(av, (-prio[j], j))
        _, j = heapq.heappop(av)
        start[j] = t
        end = t + durations[j]
        free[e] = end
        makespan = max(makespan, end)
        done += 1
        for s in succs[j]:
            lat = end + (SYNC_LATENCY if eng[s] != e else 0)
            if lat > ready[s]:
                ready[s] = lat
            npred[s] -= 1
            if npred[s] == 0:
                heapq.heappush(pending[eng[s]], (ready[s], s))
    return start, makespan


def _timeline(records, start, durations):
    """Per node tag, per engine: [first start, last end] of its instructions."""
    out = {}
    for j, r in enumerate(records):
        tag = r[4] if r[4] is not None else "(untagged)"
        d = out.setdefault(tag, {})
        name = ENGINE_NAMES[r[2]]
        s, e = start[j], start[j] + durations[j]
        if name in d:
            d[name] = [min(d[name][0], s), max(d[name][1], e)]
        else:
            d[name] = [s, e]
    return out


def schedule(b, enabled: bool = True, timeline: bool = True) -> dict:
    """Schedule the instructions of builder ``b`` (see module doc); returns the report dict."""
    records = b.records
    cfg = b.cfg
    n = len(records)
    if n == 0:
        return {"enabled": enabled, "reordered": False, "est_cycles_before": 0, "est_cycles": 0,
                "sync_edges_before": 0, "instructions": 0, "timeline": {}}
    preds = dependencies(records)
    durations = [estimate(cfg, r[0], r[1]) for r in records]
    hazards = sum(1 for j, ps in enumerate(preds) for i in ps if records[i][2] != records[j][2])
    start0, span0 = list_schedule(records, preds, durations, in_order=True)
    start, span = start0, span0
    reordered = False
    if enabled:
        start1, span1 = list_schedule(records, preds, durations)
        if span1 < span0:
            order = sorted(range(n), key=lambda j: (start1[j], j))
            b.reorder(order)
            try:
                b.check_sync()
            except ValueError:  # e.g. a semaphore count bound: keep program order
                b.reorder(_inverse(order))
            else:
                start, span, reordered = [start1[j] for j in order], span1, True
                records = [records[j] for j in order]
                durations = [durations[j] for j in order]
    rep = {
        "enabled": enabled,
        "reordered": reordered,
        "instructions": n,
        "est_cycles_before": int(span0),
        "est_cycles": int(span),
        "sync_edges_before": int(hazards),
    }
    if timeline:
        rep["timeline"] = _timeline(records, start, durations)
    return rep


def signature(b) -> bytes:
    """The instructions recorded by builder ``b`` (mnemonic, field values, tag), in order, as
    bytes: everything :func:`schedule` and ``b.finish()`` depend on besides the hardware config
    and the options (footprints and engines follow from the fields). A pickle, with the strings
    interned so that it depends on their values only: equal bytes mean equal instructions."""
    intern = sys.intern
    return pickle.dumps([(intern(m), tuple(f.values()), None if t is None else intern(t))
                         for m, f, _, _, t in b.records], protocol=pickle.HIGHEST_PROTOCOL)


def _inverse(order):
    """The permutation that brings a builder reordered by ``order`` back to program order."""
    pos = {o: k for k, o in enumerate(order)}
    return [pos[i] for i in range(len(order))]
