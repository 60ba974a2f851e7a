"""Scratchpad port throughput (amaranth.sim): reads accepted per port per cycle.

Runs the ACT scratchpad of a preset (``SPARROW_PRESET``, default ``small``) with its intended
clients (one read port per matrix lane, two vector reads, one DMA read; vector and DMA writes)
under three traffic patterns, every client requesting every cycle:

* ``conflict_free``: reader *i* and writer *j* only touch banks ``i`` and ``j + 1`` (first
  ``banks`` readers);
* ``uniform``: every reader and writer picks a uniformly random line each cycle;
* ``same_bank``: every reader reads distinct lines of bank 0.
"""

import os
import random

from amaranth.sim import Simulator

from sparrow.config import preset
from sparrow.hdl.scratchpad import act_scratchpad

CYCLES = 600


def _measure(cfg, pattern, seed=1):
    rng = random.Random(seed)
    readers = [f"mx{i}" for i in range(cfg.rows)] + ["vec_a", "vec_b", "dma"]
    spad = act_scratchpad(cfg, readers, ["vec", "dma"])
    banks, depth, n = cfg.act_banks, cfg.act_depth, len(readers)

    def rd_addr(i):
        if pattern == "conflict_free":
            return i + banks * rng.randrange(depth // banks) if i < banks else None
        if pattern == "uniform":
            return rng.randrange(depth)
        return banks * (i + n * rng.randrange(depth // banks // n))

    def wr_addr(j):
        if pattern == "conflict_free":
            return (j + 1) % banks + banks * rng.randrange(depth // banks) if j < banks else None
        if pattern == "uniform":
            return rng.randrange(depth)
        return None

    counts = {"rd": [0] * n, "wr": [0] * 2}
    active = {"rd": [rd_addr(i) is not None for i in range(n)],
              "wr": [wr_addr(j) is not None for j in range(2)]}

    async def tb(ctx):
        cur_rd, cur_wr = [None] * n, [None] * 2
        aw = spad.addr_width
        for _ in range(CYCLES):
            for i, p in enumerate(spad.rd):
                if cur_rd[i] is None:
                    cur_rd[i] = rd_addr(i)
                ctx.set(p.cmd.valid, cur_rd[i] is not None)
                if cur_rd[i] is not None:
                    ctx.set(p.cmd.payload, cur_rd[i])
            for j, p in enumerate(spad.wr):
                if cur_wr[j] is None:
                    cur_wr[j] = wr_addr(j)
                ctx.set(p.cmd.valid, cur_wr[j] is not None)
                if cur_wr[j] is not None:
                    ctx.set(p.cmd.payload.as_value(), cur_wr[j] | (rng.getrandbits(8 * cfg.cols) << aw))
            for i, p in enumerate(spad.rd):
                if cur_rd[i] is not None and ctx.get(p.cmd.ready):
                    counts["rd"][i] += 1
                    cur_rd[i] = None
            for j, p in enumerate(spad.wr):
                if cur_wr[j] is not None and ctx.get(p.cmd.ready):
                    counts["wr"][j] += 1
                    cur_wr[j] = None
            await ctx.tick()

    sim = Simulator(spad)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    rd = [c / CYCLES for c, a in zip(counts["rd"], active["rd"], strict=True) if a]
    wr = [c / CYCLES for c, a in zip(counts["wr"], active["wr"], strict=True) if a]
    return rd, wr


def run():
    name = os.environ.get("SPARROW_PRESET", "small")
    cfg = preset(name)
    metrics, rows = {}, []
    for pattern in ("conflict_free", "uniform", "same_bank"):
        rd, wr = _measure(cfg, pattern)
        metrics[f"{pattern}_read_per_port_cycle_min"] = round(min(rd), 4)
        metrics[f"{pattern}_read_per_port_cycle_mean"] = round(sum(rd) / len(rd), 4)
        metrics[f"{pattern}_reads_per_cycle_total"] = round(sum(rd), 4)
        if wr:
            metrics[f"{pattern}_write_per_port_cycle_mean"] = round(sum(wr) / len(wr), 4)
        line = (f"{pattern:14s} {len(rd):3d} readers  per-port min {min(rd):.3f} "
                f"mean {sum(rd) / len(rd):.3f}  total {sum(rd):.2f}/cycle")
        if wr:
            line += f"   {len(wr)} writers mean {sum(wr) / len(wr):.3f}"
        rows.append(line)
    return {"metrics": metrics,
            "config": {"preset": name, "act_banks": cfg.act_banks, "rows": cfg.rows, "cycles": CYCLES},
            "table": "\n".join(rows)}
