# amaranth: UnusedElaboratable=no
"""Membus arbiter (amaranth.sim) and AXI4 master adapter (cocotb + cocotbext-axi on Verilator).

References are independent: a Python byte-dict memory and the per-master command lists.
Seeded by ``SPARROW_SEED``.
"""

import random
from collections import deque

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from sparrow.sim.cocotb_run import default_seed
from sparrow.config import preset
from sparrow.hdl.axi4 import Axi4Master
from sparrow.hdl.membus import MemBusSignature
from sparrow.hdl.membus_arbiter import MembusArbiter
from sparrow.sim.cocotb_run import run_cocotb
from sparrow.sim.amsim import run_testbench

SEED = default_seed("test_axi4")


def _rng(salt):
    print(f"SPARROW_SEED={SEED}")
    return random.Random(f"{SEED}-{salt}")


# -- parameter validation ------------------------------------------------------------------------

@pytest.mark.parametrize("args, kwargs, arg", [
    ((0, 8, 2), {}, "addr_width"), ((32, 6, 2), {}, "data_bytes"), ((32, 8, 0), {}, "n_masters"),
    ((32, 8, 2), {"depth": 0}, "depth"),
])
def test_arbiter_rejects_bad_parameters(args, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        MembusArbiter(*args, **kwargs)


@pytest.mark.parametrize("args, kwargs, arg", [
    ((65, 8), {}, "addr_width"), ((32, 3), {}, "data_bytes"), ((32, 256), {}, "data_bytes"),
    ((32, 8), {"id_width": 0}, "id_width"),
])
def test_axi4_rejects_bad_parameters(args, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        Axi4Master(*args, **kwargs)


# -- membus arbiter in amaranth.sim ---------------------------------------------------------------

def make_commands(rng, master, data_bytes, n, *, err_base, p_err=0.0, max_len=8):
    """Random commands of one master: reads from its read page, writes to its write page.

    Returns dicts {write, addr, len, beats: [(data, strb)], err}. Pages are disjoint per master.
    """
    words = 4096 // data_bytes
    cmds = []
    for _ in range(n):
        write = rng.random() < 0.5
        length = rng.randrange(max_len)
        k = rng.randrange(words - length)
        base = 0x1000 * (2 * master + write)
        err = rng.random() < p_err
        if err:
            base = err_base + 0x1000 * master
        beats = [(rng.getrandbits(8 * data_bytes), rng.getrandbits(data_bytes) if rng.random() < 0.5
                  else (1 << data_bytes) - 1) for _ in range(length + 1)] if write else []
        cmds.append(dict(write=int(write), addr=base + k * data_bytes, len=length, beats=beats, err=int(err)))
    return cmds


def apply_write(mem, addr, beats, data_bytes):
    for j, (data, strb) in enumerate(beats):
        for b in range(data_bytes):
            if strb >> b & 1:
                mem[addr + j * data_bytes + b] = data >> (8 * b) & 0xFF


def read_word(mem, addr, data_bytes):
    return sum(mem.get(addr + b, 0) << (8 * b) for b in range(data_bytes))


class MembusSlaveModel:
    """Python membus slave (in order, random ready/latency); addresses >= err_base answer err."""

    def __init__(self, bus, mem, data_bytes, rng, err_base, stall=0.3):
        self.bus, self.mem, self.db, self.rng = bus, mem, data_bytes, rng
        self.err_base, self.stall = err_base, stall
        self.reads = deque()      # [due, addr, beats left]
        self.writes = deque()     # [addr, len, beats received]
        self.wbeats = deque()
        self.wresps = deque()     # err
        self.r_cur = None
        self.b_cur = None
        self.cycle = 0
        self.outstanding_max = 0

    def drive(self, ctx):
        b, rng = self.bus, self.rng
        ctx.set(b.cmd.ready, rng.random() >= self.stall)
        ctx.set(b.wdata.ready, rng.random() >= self.stall)
        if self.r_cur is None and self.reads and self.reads[0][0] <= self.cycle:
            due, addr, left, total = self.reads[0]
            err = addr >= self.err_base
            beat = total - left
            data = 0 if err else read_word(self.mem, addr + beat * self.db, self.db)
            self.r_cur = dict(data=data, last=int(left == 1), err=int(err))
            if rng.random() < self.stall:
                self.r_cur = None
        ctx.set(b.rdata.valid, self.r_cur is not None)
        if self.r_cur is not None:
            ctx.set(b.rdata.payload, self.r_cur)
        if self.b_cur is None and self.wresps and rng.random() >= self.stall:
            self.b_cur = self.wresps.popleft()
        ctx.set(b.wresp.valid, self.b_cur is not None)
        if self.b_cur is not None:
            ctx.set(b.wresp.payload, {"err": self.b_cur})

    def sample(self, ctx):
        b = self.bus
        if ctx.get(b.cmd.valid) and ctx.get(b.cmd.ready):
            c = ctx.get(b.cmd.payload)
            if c.write:
                self.writes.append([c.addr, c.len + 1, 0])
            else:
                self.reads.append([self.cycle + 1 + self.rng.randrange(4), c.addr, c.len + 1, c.len + 1])
        self.outstanding_max = max(self.outstanding_max, len(self.reads))
        if self.r_cur is not None and ctx.get(b.rdata.ready):
            self.r_cur = None
            self.reads[0][2] -= 1
            if self.reads[0][2] == 0:
                self.reads.popleft()
        if ctx.get(b.wdata.valid) and ctx.get(b.wdata.ready):
            w = ctx.get(b.wdata.payload)
            self.wbeats.append((w.data, w.strb, w.last))
        # retire write beats against write commands in order
        while self.writes and self.wbeats:
            w = self.writes[0]
            data, strb, last = self.wbeats.popleft()
            assert last == (w[2] == w[1] - 1), "wdata last flag does not match the command length"
            if w[0] < self.err_base:
                apply_write(self.mem, w[0] + w[2] * self.db, [(data, strb)], self.db)
            w[2] += 1
            if w[2] == w[1]:
                self.writes.popleft()
                self.wresps.append(int(w[0] >= self.err_base))
        if self.b_cur is not None and ctx.get(b.wresp.ready):
            self.b_cur = None
        self.cycle += 1


class MembusMasterModel:
    """Python membus master issuing ``cmds``; wdata offered independently of command acceptance."""

    def __init__(self, port, cmds, data_bytes, rng, idle=0.3):
        self.p, self.cmds, self.db, self.rng, self.idle = port, cmds, data_bytes, rng, idle
        self.to_issue = deque(cmds)
        self.wbeats = deque((d, s, int(j == len(c["beats"]) - 1)) for c in cmds if c["write"]
                            for j, (d, s) in enumerate(c["beats"]))
        self.exp_r = deque()
        for c in cmds:
            if not c["write"]:
                for j in range(c["len"] + 1):
                    self.exp_r.append((c["addr"] + j * data_bytes, int(j == c["len"]), c["err"]))
        self.exp_b = deque(c["err"] for c in cmds if c["write"])
        self.cmd_cur = self.w_cur = None
        self.grants = []
        self.cycle = 0
        self.mem = None

    def done(self):
        return not (self.to_issue or self.cmd_cur or self.wbeats or self.w_cur or self.exp_r or self.exp_b)

    def drive(self, ctx):
        p, rng = self.p, self.rng
        if self.cmd_cur is None and self.to_issue and rng.random() >= self.idle:
            self.cmd_cur = self.to_issue.popleft()
        ctx.set(p.cmd.valid, self.cmd_cur is not None)
        if self.cmd_cur is not None:
            ctx.set(p.cmd.payload, {k: self.cmd_cur[k] for k in ("addr", "write", "len")})
        if self.w_cur is None and self.wbeats and rng.random() >= self.idle:
            self.w_cur = self.wbeats.popleft()
        ctx.set(p.wdata.valid, self.w_cur is not None)
        if self.w_cur is not None:
            ctx.set(p.wdata.payload, dict(zip(("data", "strb", "last"), self.w_cur, strict=True)))
        ctx.set(p.rdata.ready, rng.random() >= self.idle)
        ctx.set(p.wresp.ready, rng.random() >= self.idle)

    def sample(self, ctx, mem_before):
        p = self.p
        if self.cmd_cur is not None and ctx.get(p.cmd.ready):
            self.cmd_cur = None
            self.grants.append(self.cycle)
        if self.w_cur is not None and ctx.get(p.wdata.ready):
            self.w_cur = None
        if ctx.get(p.rdata.valid) and ctx.get(p.rdata.ready):
            r = ctx.get(p.rdata.payload)
            assert self.exp_r, "read data beat nobody asked for"
            addr, last, err = self.exp_r.popleft()
            assert (r.last, r.err) == (last, err), f"beat @{addr:#x}: last/err {r.last, r.err} != {last, err}"
            if not err:
                assert r.data == read_word(mem_before, addr, self.db), f"read data @{addr:#x}"
        if ctx.get(p.wresp.valid) and ctx.get(p.wresp.ready):
            assert self.exp_b, "write response nobody asked for"
            assert ctx.get(p.wresp.payload).err == self.exp_b.popleft()
        self.cycle += 1


def _run_arbiter(n_masters, data_bytes, n_cmds, *, p_err, idle, stall, salt, depth=4, sliced=False):
    rng = _rng(salt)
    err_base = 0x100000
    dut = MembusArbiter(24, data_bytes, n_masters, depth=depth, sliced=sliced)
    mem = {}
    for i in range(n_masters):       # preload the read pages
        for a in range(0x1000 * 2 * i, 0x1000 * (2 * i + 1)):
            mem[a] = rng.getrandbits(8)
    initial = dict(mem)
    cmds = [make_commands(rng, i, data_bytes, n_cmds, err_base=err_base, p_err=p_err)
            for i in range(n_masters)]
    masters = [MembusMasterModel(dut.masters[i], cmds[i], data_bytes, rng, idle) for i in range(n_masters)]
    slave = MembusSlaveModel(dut.bus, mem, data_bytes, rng, err_base, stall)

    async def tb(ctx):
        for _ in range(40 * n_cmds * n_masters):
            for mm in masters:
                mm.drive(ctx)
            slave.drive(ctx)
            for mm in masters:
                mm.sample(ctx, initial)
            slave.sample(ctx)
            await ctx.tick()
            if all(mm.done() for mm in masters):
                break

    run_testbench(dut, tb)
    for i, mm in enumerate(masters):
        assert mm.done(), f"master {i} did not finish: {len(mm.to_issue)} cmds, {len(mm.exp_r)} beats left"
    expected = dict(initial)
    for i in range(n_masters):
        for c in cmds[i]:
            if c["write"] and not c["err"]:
                apply_write(expected, c["addr"], c["beats"], data_bytes)
    assert mem == expected, "memory after the writes differs from the per-master write model"
    return masters, slave


@pytest.mark.parametrize("sliced", [False, True])
@pytest.mark.parametrize("n_masters, data_bytes", [(3, 8), (1, 4), (2, 16)])
def test_arbiter_routes_random_traffic(n_masters, data_bytes, sliced):
    _run_arbiter(n_masters, data_bytes, 40, p_err=0.15, idle=0.3, stall=0.3, salt=f"arb{n_masters}",
                 sliced=sliced)


@pytest.mark.parametrize("sliced", [False, True])
def test_arbiter_keeps_several_reads_outstanding(sliced):
    _, slave = _run_arbiter(2, 8, 30, p_err=0.0, idle=0.0, stall=0.0, salt="outst", sliced=sliced)
    assert slave.outstanding_max >= 2


def test_arbiter_rejects_a_non_bool_sliced():
    with pytest.raises(TypeError, match="sliced"):
        MembusArbiter(24, 8, 2, sliced=1)


@pytest.mark.parametrize("sliced", [False, True])
@pytest.mark.parametrize("salt", ["flush-a", "flush-b", "flush-c"])
def test_arbiter_flush_orphans_outstanding_transactions(salt, sliced):
    """Masters are reset (``flush``) at random points with reads, writes and held commands
    outstanding; new masters start at once. Every orphaned transaction must still complete on
    the slave side (read beats drained, remaining write beats supplied with zero strobes,
    responses drained) and nothing of it may reach the new masters, whose traffic must be exact."""
    data_bytes, n_masters, n_cmds = 8, 3, 12
    rng = _rng(salt)
    err_base = 0x100000
    dut = MembusArbiter(24, data_bytes, n_masters, depth=4, sliced=sliced)
    mem = {}
    for i in range(n_masters):
        for a in range(0x1000 * 2 * i, 0x1000 * (2 * i + 1)):
            mem[a] = rng.getrandbits(8)
    initial = dict(mem)
    slave = MembusSlaveModel(dut.bus, mem, data_bytes, rng, err_base, stall=0.3)

    def generation():
        cmds = [make_commands(rng, i, data_bytes, n_cmds, err_base=err_base, p_err=0.1)
                for i in range(n_masters)]
        return cmds, [MembusMasterModel(dut.masters[i], cmds[i], data_bytes, rng, 0.2)
                      for i in range(n_masters)]
    flushes = []

    async def tb(ctx):
        nonlocal last_cmds
        for gen in range(4):
            cmds, masters = generation()
            last_cmds = cmds
            # the first three generations are cut off after a random number of cycles
            cut = rng.randrange(3, 60) if gen < 3 else 40 * n_cmds * n_masters
            for cycle in range(cut + 1):
                flush = gen < 3 and cycle == cut
                ctx.set(dut.flush, flush)
                for mm in masters:
                    mm.drive(ctx)
                slave.drive(ctx)
                for mm in masters:
                    mm.sample(ctx, initial)
                if flush:
                    flushes.append((len(slave.reads), len(slave.writes), len(slave.wresps)))
                slave.sample(ctx)
                await ctx.tick()
                if gen == 3 and all(mm.done() for mm in masters):
                    break
            ctx.set(dut.flush, 0)
        for i, mm in enumerate(masters):
            assert mm.done(), f"master {i} of the last generation did not finish"
        for _ in range(50):                    # let the slave's last responses go
            slave.drive(ctx)
            slave.sample(ctx)
            await ctx.tick()

    last_cmds = None
    run_testbench(dut, tb)
    assert not (slave.reads or slave.writes or slave.wbeats or slave.wresps or slave.b_cur), \
        "orphaned transactions left outstanding on the slave"
    assert any(sum(f) for f in flushes), f"no flush hit outstanding traffic ({salt}): {flushes}"
    expected = {}
    for i in range(n_masters):
        for c in last_cmds[i]:
            if c["write"] and not c["err"]:
                apply_write(expected, c["addr"], c["beats"], data_bytes)
    assert {a: mem.get(a) for a in expected} == expected, "the last generation's writes are not in memory"


def test_arbiter_grants_round_robin():
    """Three masters with endless single-beat reads and an always-ready slave: grants rotate."""
    dut = MembusArbiter(16, 4, 3, depth=8)

    async def tb(ctx):
        for i in range(3):
            ctx.set(dut.masters[i].cmd.valid, 1)
            ctx.set(dut.masters[i].cmd.payload, {"addr": 4 * i, "write": 0, "len": 0})
            ctx.set(dut.masters[i].rdata.ready, 1)
        ctx.set(dut.bus.cmd.ready, 1)
        order = []
        pending = deque()
        for _ in range(60):
            ctx.set(dut.bus.rdata.valid, bool(pending))
            if pending:
                ctx.set(dut.bus.rdata.payload, {"data": pending[0], "last": 1, "err": 0})
            got = [i for i in range(3) if ctx.get(dut.masters[i].rdata.valid)]
            if pending:
                assert got == [pending.popleft() // 4]
            else:
                assert got == []
            granted = [i for i in range(3) if ctx.get(dut.masters[i].cmd.ready)]
            assert len(granted) == 1
            order.append(granted[0])
            pending.append(ctx.get(dut.bus.cmd.payload).addr)
            await ctx.tick()
        assert order == [k % 3 for k in range(60)]

    run_testbench(dut, tb)


# -- Verilator + cocotb with cocotbext-axi ------------------------------------------------------

class ArbitratedAxi(wiring.Component):
    """Test-only: ``n`` membus masters -> MembusArbiter -> Axi4Master -> ``m_axi_*``."""

    def __init__(self, addr_width, data_bytes, n):
        self._axi = Axi4Master(addr_width, data_bytes)
        self._arb = MembusArbiter(addr_width, data_bytes, n)
        members = {"masters": In(MemBusSignature(addr_width, data_bytes)).array(n)}
        members |= {name: m for name, m in self._axi.signature.members.items() if name.startswith("m_axi_")}
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.axi, m.submodules.arb = self._axi, self._arb
        wiring.connect(m, self._arb.bus, self._axi.bus)
        for i, port in enumerate(self.masters):
            wiring.connect(m, wiring.flipped(port), self._arb.masters[i])
        for name, member in self.signature.members.items():
            if name.startswith("m_axi_"):
                ours, theirs = getattr(self, name), getattr(self._axi, name)
                m.d.comb += (theirs.eq(ours) if member.flow == In else ours.eq(theirs))
        return m


AXI_CASES = {
    "d8": (lambda: Axi4Master(20, 8), "axi4_d8"),
    "d4": (lambda: Axi4Master(20, 4), "axi4_d4"),
    "d64": (lambda: Axi4Master(20, 64), "axi4_d64"),
    "arb3_d8": (lambda: ArbitratedAxi(20, preset("small").mem_bytes, 3), "axi4_arb3_d8"),
}


@pytest.mark.verilator
@pytest.mark.parametrize("case", list(AXI_CASES))
def test_axi4_on_verilator(case):
    make, name = AXI_CASES[case]
    run_cocotb(make, name=name, test_module="tb_axi4", extra_env={"SPARROW_PRESET": "small"}, seed=SEED)
