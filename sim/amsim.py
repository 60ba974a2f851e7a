"""Helpers for ``amaranth.sim`` unit tests (the cocotb counterparts live in ``tbutil.py``)."""

from __future__ import annotations

import random
from collections import deque

__all__ = ["MembusModel", "run_testbench"]


def run_testbench(dut, *testbenches, period: float = 1e-6):
    """Simulate ``dut`` with one clock of ``period`` seconds until every async testbench
    (``async def tb(ctx)``) has returned."""
    from amaranth.sim import Simulator
    sim = Simulator(dut)
    sim.add_clock(period)
    for tb in testbenches:
        sim.add_testbench(tb)
    sim.run()


class MembusModel:
    """A byte-array memory serving a membus master port (``hdl/membus.py``) in amaranth.sim.

    ``sim.add_process(model.process)``. Commands are accepted with probability ``1 - stall``;
    read data beats are offered after ``latency`` cycles, each beat withheld with probability
    ``gap``; accesses outside ``mem`` answer ``err``. Writes honour ``strb``.
    """

    def __init__(self, bus, mem: bytearray, data_bytes: int, *, rng=None, stall=0.0, gap=0.0, latency=2):
        self.bus, self.mem, self.db = bus, mem, data_bytes
        self.rng = rng or random.Random(0)
        self.stall, self.gap, self.latency = stall, gap, latency
        self.reads = deque()     # (ready_cycle, data, err, last)
        self.writes = deque()    # [addr, beats_left, err]
        self.wresps = deque()
        self.cycle = 0
        self.read_beats = 0
        self.write_beats = 0
        self.commands = []

    def _beat(self, addr):
        if addr + self.db > len(self.mem):
            return 0, 1
        return int.from_bytes(self.mem[addr:addr + self.db], "little"), 0

    async def process(self, ctx):
        b = self.bus
        ctx.set(b.cmd.ready, 1)
        async for _, _, cv, cr, cp, rv, rr, wv, wr, wp, bv, br in ctx.tick().sample(
                b.cmd.valid, b.cmd.ready, b.cmd.payload, b.rdata.valid, b.rdata.ready,
                b.wdata.valid, b.wdata.ready, b.wdata.payload, b.wresp.valid, b.wresp.ready):
            self.cycle += 1
            if cv and cr:
                addr, n, write = cp.addr, cp.len + 1, cp.write
                self.commands.append((addr, n, write))
                if write:
                    self.writes.append([addr, n, 0])
                else:
                    for i in range(n):
                        d, e = self._beat(addr + i * self.db)
                        self.reads.append((self.cycle + self.latency, d, e, int(i == n - 1)))
            if rv and rr:
                self.reads.popleft()
                self.read_beats += 1
            if wv and wr:
                w = self.writes[0]
                a = w[0]
                if a + self.db > len(self.mem):
                    w[2] = 1
                else:
                    for j in range(self.db):
                        if (wp.strb >> j) & 1:
                            self.mem[a + j] = (wp.data >> (8 * j)) & 0xFF
                w[0] += self.db
                w[1] -= 1
                self.write_beats += 1
                if w[1] == 0:
                    self.writes.popleft()
                    self.wresps.append(w[2])
            if bv and br:
                self.wresps.popleft()
            # outputs for the next cycle
            ctx.set(b.cmd.ready, int(self.rng.random() >= self.stall))
            if self.reads and self.reads[0][0] <= self.cycle and self.rng.random() >= self.gap:
                _, d, e, last = self.reads[0]
                ctx.set(b.rdata.valid, 1)
                ctx.set(b.rdata.payload, {"data": d, "err": e, "last": last})
            else:
                ctx.set(b.rdata.valid, 0)
            ctx.set(b.wdata.ready, int(bool(self.writes) and self.rng.random() >= self.stall))
            ctx.set(b.wresp.valid, int(bool(self.wresps)))
            if self.wresps:
                ctx.set(b.wresp.payload, {"err": self.wresps[0]})
