"""cocotb: scratchpads on Verilator under many clients with random traffic and idling.

Works on a ``BankedScratchpad`` (ports ``rd__<i>``, ``wr__<j>``) or a ``ReplicatedScratchpad``
(``rd__<r>``, ``shared``, ``wr``); the port set and widths are discovered from the DUT, the
bank count comes from ``SPARROW_SPAD_BANKS`` (0 for a replicated scratchpad).

Every read response is checked against a flat Python list model with the documented semantics:
a read accepted in cycle *t* returns, in cycle *t + 1*, the data written by writes accepted
before cycle *t* (a same-cycle write to the line is not seen).
"""

import os
from collections import deque

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly

from sparrow.sim.tbutil import reset, seeded, sig, start_clock


_STATE = {}


def _discover(dut):
    rd, wr = [], []
    i = 0
    while hasattr(dut, f"rd__{i}__cmd__valid"):
        rd.append(f"rd__{i}")
        i += 1
    if hasattr(dut, "shared__cmd__valid"):
        rd.append("shared")
    j = 0
    while hasattr(dut, f"wr__{j}__cmd__valid"):
        wr.append(f"wr__{j}")
        j += 1
    if hasattr(dut, "wr__cmd__valid"):
        wr.append("wr")
    return rd, wr


class Harness:
    def __init__(self, dut):
        self.dut = dut
        self.rd_names, self.wr_names = _discover(dut)
        def cmd(n):
            return sig(dut, n + "__cmd__valid"), sig(dut, n + "__cmd__ready"), sig(dut, n + "__cmd__payload")
        self.rd = [cmd(n) + (sig(dut, n + "__rsp__valid"), sig(dut, n + "__rsp__payload"))
                   for n in self.rd_names]
        self.wr = [cmd(n) for n in self.wr_names]
        self.aw = len(self.rd[0][2])
        self.depth = 1 << self.aw
        self.lw = len(self.rd[0][4])
        # The memory keeps its contents from one cocotb test to the next, and the model (updated
        # as writes are accepted) with it.
        self.mem = _STATE.setdefault("mem", [0] * self.depth)
        self.cur_rd = [None] * len(self.rd)
        self.cur_wr = [None] * len(self.wr)
        self.expect = [deque() for _ in self.rd]
        self.cycle = 0
        self.responses = 0
        for v, *_ in self.rd + self.wr:
            v.value = 0

    async def run(self, cycles, next_read, next_write):
        """Run ``cycles`` cycles; returns (reads accepted per port, writes accepted per port)."""
        n_rd = [0] * len(self.rd)
        n_wr = [0] * len(self.wr)
        for _ in range(cycles):
            for i, (valid, _, payload, _, _) in enumerate(self.rd):
                if self.cur_rd[i] is None:
                    self.cur_rd[i] = next_read(i)
                valid.value = int(self.cur_rd[i] is not None)
                if self.cur_rd[i] is not None:
                    payload.value = self.cur_rd[i]
            for j, (valid, _, payload) in enumerate(self.wr):
                if self.cur_wr[j] is None:
                    self.cur_wr[j] = next_write(j)
                valid.value = int(self.cur_wr[j] is not None)
                if self.cur_wr[j] is not None:
                    a, line = self.cur_wr[j]
                    payload.value = a | (line << self.aw)
            await ReadOnly()
            for i, (_, _, _, rvalid, rpayload) in enumerate(self.rd):
                if int(rvalid.value):
                    assert self.expect[i], \
                        f"{self.rd_names[i]}: response without a request (cycle {self.cycle})"
                    due, addr, line = self.expect[i].popleft()
                    assert due == self.cycle, f"{self.rd_names[i]}: response at {self.cycle}, expected {due}"
                    got = int(rpayload.value)
                    assert got == line, (f"{self.rd_names[i]} line {addr} cycle {self.cycle}: "
                                         f"got {got:#x}, model {line:#x}")
                    self.responses += 1
                else:
                    assert not (self.expect[i] and self.expect[i][0][0] <= self.cycle), \
                        f"{self.rd_names[i]}: response missing at cycle {self.cycle}"
            for i, (_, ready, _, _, _) in enumerate(self.rd):
                if self.cur_rd[i] is not None and int(ready.value):
                    a = self.cur_rd[i]
                    self.expect[i].append((self.cycle + 1, a, self.mem[a]))
                    self.cur_rd[i] = None
                    n_rd[i] += 1
            for j, (_, ready, _) in enumerate(self.wr):
                if self.cur_wr[j] is not None and int(ready.value):
                    a, line = self.cur_wr[j]
                    self.mem[a] = line
                    self.cur_wr[j] = None
                    n_wr[j] += 1
            await FallingEdge(self.dut.clk)
            self.cycle += 1
        return n_rd, n_wr

    async def drain(self):
        """Let held commands be accepted and all responses arrive; leaves every port idle."""
        for _ in range(100):
            if not (any(c is not None for c in self.cur_rd + self.cur_wr) or any(self.expect)):
                break
            await self.run(1, lambda i: None, lambda j: None)
        assert not any(self.expect), "responses still outstanding after draining"
        assert all(c is None for c in self.cur_rd + self.cur_wr), "commands never accepted"


async def _setup(dut, salt):
    rng, _, seed = seeded(dut)
    rng.seed(f"{seed}-{salt}")
    start_clock(dut)
    h = Harness(dut)
    await reset(dut)
    banks = int(os.environ.get("SPARROW_SPAD_BANKS", "0"))
    dut._log.info(f"ports: read {h.rd_names}, write {h.wr_names}; depth {h.depth}, "
                  f"line {h.lw} bits, banks {banks}")
    return rng, h, banks


@cocotb.test()
async def random_clients_match_model(dut):
    """All clients at once: random reads/writes, a small hot set of lines, random idling."""
    rng, h, banks = await _setup(dut, "random_clients_match_model")
    hot = [rng.randrange(h.depth) for _ in range(4)]
    p_rd = [rng.uniform(0.3, 1.0) for _ in h.rd]
    p_wr = [rng.uniform(0.3, 0.9) for _ in h.wr]

    def addr():
        return rng.choice(hot) if rng.random() < 0.3 else rng.randrange(h.depth)

    n_rd, n_wr = await h.run(3000, lambda i: addr() if rng.random() < p_rd[i] else None,
                             lambda j: (addr(), rng.getrandbits(h.lw)) if rng.random() < p_wr[j] else None)
    await h.drain()
    dut._log.info(f"random: {h.responses} reads checked, reads/port {n_rd}, writes/port {n_wr}")
    assert h.responses > 3000 and sum(n_wr) > 500


@cocotb.test()
async def conflict_free_throughput(dut):
    """Clients on distinct banks (or private replicas): report accesses per port per cycle."""
    rng, h, banks = await _setup(dut, "conflict_free_throughput")
    cycles = 1000
    if banks:
        n_r, n_w = min(banks, len(h.rd)), min(banks, len(h.wr))

        def rd(i):
            return i + banks * rng.randrange(h.depth // banks) if i < n_r else None

        def wr(j):
            if j >= n_w:
                return None
            return (j + 1) % banks + banks * rng.randrange(h.depth // banks), rng.getrandbits(h.lw)
    else:
        n_r, n_w = len(h.rd) - 1, len(h.wr)          # private ports; shared idle

        def rd(i):
            return rng.randrange(h.depth) if i < n_r else None

        def wr(j):
            return (rng.randrange(h.depth), rng.getrandbits(h.lw))
    n_rd, n_wr = await h.run(cycles, rd, wr)
    await h.drain()
    figs = [n / cycles for n in n_rd[:n_r] + n_wr[:n_w]]
    dut._log.info(f"conflict-free: {n_r} readers + {n_w} writers, accesses/port/cycle min {min(figs):.3f} "
                  f"mean {sum(figs) / len(figs):.3f}")
    print(f"[tb_scratchpad] conflict-free accesses/port/cycle: min {min(figs):.3f} over {len(figs)} ports")


@cocotb.test()
async def full_contention_is_shared_evenly(dut):
    """Every reader on distinct lines of one bank (replica 0 for replicated): report shares."""
    rng, h, banks = await _setup(dut, "full_contention_is_shared_evenly")
    cycles = 1200
    if banks:
        ports = list(range(len(h.rd)))
        n = len(ports)

        def rd(i):     # distinct lines per port, so no read merging
            return banks * (i + n * rng.randrange(h.depth // banks // n))
    else:
        ports = [0, len(h.rd) - 1]

        def rd(i):
            return rng.randrange(h.depth) if i in ports else None
    n_rd, _ = await h.run(cycles, rd, lambda j: None)
    await h.drain()
    shares = [n_rd[i] for i in ports]
    dut._log.info(f"contention: reads per port over {cycles} cycles: {shares}")
    # functional fairness property of round-robin: every contender served, none starved
    assert sum(shares) >= cycles - 1 and max(shares) - min(shares) <= 1, shares
