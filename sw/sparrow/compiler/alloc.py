"""Memory decisions of the back end: activation compression and the sparsity it is based on.

External-memory *placement* (liveness-based reuse) is done while lowering: an intermediate's
space returns to the builder's free list (:meth:`~sparrow.kernels.ProgramBuilder.free`) once
every reader of it (and of its views) is emitted, and a later intermediate may take it; the
builder's footprint hazards order the new writer after the old readers. Scratchpad space is
allocated per kernel (:class:`~sparrow.kernels.Ring` double buffers; released at the kernel's
end), so scratchpad lifetimes are the kernels' and never overlap wrongly.

Compression (:func:`compression_plan`): an activation is stored zero-mask compressed
(:mod:`sparrow.codec`, one group per scratchpad line in its own slot) when

* its producer kernel can write it compressed (a Conv — fused or not — or a Gemm with
  requantisation) and it lives inside one accelerator program (not a graph output, not kept,
  not read by a later step or the host);
* every consumer can read it compressed: a Conv reading it as its data input, or a Gemm reading
  it as ``A`` in one K chunk (never a residual Add, pool, concat or flatten view);
* the expected compressed size is smaller than raw: ``lines * (2 + mask_bytes) + nonzeros <
  elements`` (count bytes + masks + the non-zero bytes vs one byte per element), with the
  non-zero count from ``options["sparsity"]`` when given, else measured on the int8 values of
  one batch of seeded standard-normal noise through the float graph.

Each candidate's decision is recorded: ``raw_bytes``, ``compressed_bytes`` (expected),
``sparsity``, ``compressed`` and ``reason``.
"""

from __future__ import annotations

import numpy as np

from ..kernels.gemm import k_chunk
from .ir import Graph
from .quantize import float_run, quantize

__all__ = ["compression_plan", "measure_sparsity"]


def measure_sparsity(g: Graph, calibration: dict | None = None, names=None, seed: int = 0) -> dict:
    """``{value: fraction of zero int8 elements}`` over ``calibration`` batches (dict of graph
    input arrays, first axis a multiple of the batch) or one batch of seeded noise. Values must
    have their scales (run after calibration)."""
    rng = np.random.default_rng(seed)
    if calibration is None:
        calibration = {n: rng.standard_normal(g.values[n].shape) for n in g.inputs}
    names = set(names) if names is not None else {k for k, v in g.values.items() if not v.is_const}
    zeros, total = {}, {}
    b = g.values[g.inputs[0]].shape[0]
    n_all = np.asarray(calibration[g.inputs[0]]).shape[0]
    for s in range(0, n_all, b):
        env = float_run(g, {n: np.asarray(calibration[n])[s:s + b] for n in g.inputs})
        for k in names:
            v = g.values.get(k)
            if k not in env or v is None or v.scale is None:
                continue
            q = quantize(env[k], v.scale)
            zeros[k] = zeros.get(k, 0) + int(np.count_nonzero(q == 0))
            total[k] = total.get(k, 0) + int(q.size)
    return {k: zeros[k] / total[k] for k in zeros if total[k]}


def _reads_ok(g, c, name, cfg, groups, member_of):
    """Can consumer node ``c`` read ``name`` compressed?"""
    if member_of.get(c.name, c.name) != c.name:
        return False, f"read by {c.name} inside a fused group (residual/pool)"
    if c.op == "Conv" and c.inputs[0] == name:
        return True, ""
    if c.op == "Gemm" and c.inputs[0] == name:
        shp = g.values[name].shape
        if len(shp) != 2:
            return False, f"read by {c.name} through a view"
        K = shp[1]
        N = g.values[c.inputs[1]].shape[1] if g.values[c.inputs[1]].const.ndim == 2 else None
        if N is None or k_chunk(cfg, K, N) < K:
            return False, f"{c.name} reads K in several chunks"
        return True, ""
    return False, f"read by {c.name} ({c.op}), which loads it uncompressed"


def compression_plan(g: Graph, info: dict, cfg, opts: dict, groups: dict, next_host: list) -> dict:
    """Per candidate value: the compression decision record (see module doc)."""
    keep = set(opts["keep"])
    cons = g.consumers()
    order = {n.name: k for k, n in enumerate(g.nodes)}
    member_of = {m: h for h, grp in groups.items() for m in grp["nodes"]}
    cands = {}
    for n in g.nodes:
        if info[n.name]["place"] == "host" or member_of.get(n.name, n.name) != n.name:
            continue
        grp = groups.get(n.name)
        out = grp["out"] if grp else n.outputs[0]
        if n.op not in ("Conv", "Gemm"):
            continue
        last = order[grp["nodes"][-1]] if grp else order[n.name]
        users = cons.get(out, [])
        if out in g.outputs or out in keep or not users:
            continue
        if any(info[c.name]["place"] == "host" or order[c.name] >= next_host[last] for c in users):
            continue
        cands[out] = users
    if not cands:
        return {}
    given = opts.get("sparsity") or {}
    missing = [k for k in cands if k not in given]
    measured = measure_sparsity(g, names=missing) if missing else {}
    plan = {}
    cols = cfg.cols
    mb = (cols + 7) // 8
    for name, users in cands.items():
        shp = g.values[name].shape
        C = shp[1]
        rows = int(np.prod(shp)) // C
        lpp = -(-C // cols)
        elements = int(np.prod(shp))
        sp = float(given.get(name, measured.get(name, 0.0)))
        nnz = int(round(elements * (1.0 - sp)))
        comp_bytes = rows * lpp * (2 + mb) + nnz
        rec = {"raw_bytes": elements, "compressed_bytes": comp_bytes, "sparsity": round(sp, 4),
               "compressed": False, "reason": ""}
        ok, why = True, ""
        for c in users:
            ok, why = _reads_ok(g, c, name, cfg, groups, member_of)
            if not ok:
                break
        if not ok:
            rec["reason"] = why
        elif comp_bytes >= elements:
            rec["reason"] = "compressed form not smaller"
        else:
            rec["compressed"] = True
            rec["reason"] = "smaller"
        plan[name] = rec
    return plan
