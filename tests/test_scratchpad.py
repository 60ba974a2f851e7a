# amaranth: UnusedElaboratable=no
"""Scratchpads: arbitration fairness, ordering, same-cycle read/write semantics, random traffic.

Every read result is compared with a flat Python list model of the memory (reads accepted in a
cycle see the writes accepted in earlier cycles only). Seeded by ``SPARROW_SEED``.
"""

import random
from collections import deque

import pytest
from amaranth.hdl import Fragment, Shape

from sparrow.sim.cocotb_run import default_seed
from sparrow.sim.amsim import run_testbench
from sparrow.config import preset
from sparrow.hdl.round_robin import RoundRobin
from sparrow.hdl.scratchpad import (BankedScratchpad, ReplicatedScratchpad, acc_scratchpad,
                                    act_scratchpad, wgt_scratchpad)
from sparrow.hdl.spad_port import act_line
from sparrow.sim.cocotb_run import run_cocotb

SEED = default_seed("test_scratchpad")


def _rng(salt):
    print(f"SPARROW_SEED={SEED}")
    return random.Random(f"{SEED}-{salt}")


def verilog_skipping_consts(component, name):
    from sparrow.sim.cocotb_run import verilog_of
    return verilog_of(component, name)

class SpadHarness:
    """Drive the read/write ports of a scratchpad each cycle and check every response.

    ``rd`` / ``wr``: lists of port interfaces. ``next_read(i, cycle)`` / ``next_write(i, cycle)``
    return an address (or ``(addr, raw_line)``) to issue on an idle port, or None to stay idle.
    """

    def __init__(self, dut, rd, wr, depth, line_width):
        self.dut, self.rd, self.wr = dut, rd, wr
        self.mem = [0] * depth
        self.line_width = line_width
        self.cur_rd = [None] * len(rd)
        self.cur_wr = [None] * len(wr)
        self.expect = [deque() for _ in rd]        # (due cycle, raw line)
        self.grants_rd = [[] for _ in rd]          # cycles of accepted reads per port
        self.grants_wr = [[] for _ in wr]
        self.read_addr = [[] for _ in rd]          # line of each accepted read
        self.wait_max = 0
        self.wait_max_port = [0] * len(rd)
        self.waiting_since_rd = [None] * len(rd)
        self.responses = 0
        self.collided = False                      # a line read and written in one cycle

    async def run(self, ctx, cycles, next_read, next_write):
        aw = len(self.rd[0].cmd.payload) if self.rd else len(self.wr[0].cmd.payload.addr)
        for cycle in range(cycles):
            for i, p in enumerate(self.rd):
                if self.cur_rd[i] is None:
                    self.cur_rd[i] = next_read(i, cycle)
                    if self.cur_rd[i] is not None:
                        self.waiting_since_rd[i] = cycle
                ctx.set(p.cmd.valid, self.cur_rd[i] is not None)
                if self.cur_rd[i] is not None:
                    ctx.set(p.cmd.payload, self.cur_rd[i])
            for i, p in enumerate(self.wr):
                if self.cur_wr[i] is None:
                    self.cur_wr[i] = next_write(i, cycle)
                ctx.set(p.cmd.valid, self.cur_wr[i] is not None)
                if self.cur_wr[i] is not None:
                    a, line = self.cur_wr[i]
                    ctx.set(p.cmd.payload.as_value(), a | (line << aw))
            # responses registered at the last edge
            for i, p in enumerate(self.rd):
                if ctx.get(p.rsp.valid):
                    assert self.expect[i], f"read port {i}: response without request (cycle {cycle})"
                    due, line = self.expect[i].popleft()
                    assert due == cycle, f"read port {i}: response at cycle {cycle}, expected {due}"
                    got = ctx.get(p.rsp.payload.as_value())
                    assert got == line, f"read port {i} cycle {cycle}: got {got:#x}, expected {line:#x}"
                    self.responses += 1
                else:
                    assert not (self.expect[i] and self.expect[i][0][0] <= cycle), \
                        f"read port {i}: missing response at cycle {cycle}"
            # transfers at the coming edge: reads see memory before this cycle's writes
            for i, p in enumerate(self.rd):
                if self.cur_rd[i] is not None and ctx.get(p.cmd.ready):
                    self.expect[i].append((cycle + 1, self.mem[self.cur_rd[i]]))
                    self.grants_rd[i].append(cycle)
                    self.read_addr[i].append(self.cur_rd[i])
                    wait = cycle - self.waiting_since_rd[i]
                    self.wait_max = max(self.wait_max, wait)
                    self.wait_max_port[i] = max(self.wait_max_port[i], wait)
                    self.cur_rd[i] = None
            written = set()
            for i, p in enumerate(self.wr):
                if self.cur_wr[i] is not None and ctx.get(p.cmd.ready):
                    a, line = self.cur_wr[i]
                    assert a not in written, "two writes to one line granted in the same cycle"
                    written.add(a)
                    self.mem[a] = line
                    self.grants_wr[i].append(cycle)
                    self.cur_wr[i] = None
            self.collided |= any(g and g[-1] == cycle and self.read_addr[i][-1] in written
                                 for i, g in enumerate(self.grants_rd))
            await ctx.tick()

    async def check_collision_flag(self, ctx):
        """The sticky ``collision`` output (three cycles behind) agrees with the model."""
        await ctx.tick().repeat(3)
        assert ctx.get(self.dut.collision) == self.collided, \
            f"collision flag {ctx.get(self.dut.collision)}, model {self.collided}"

    def finish_check(self):
        for i, q in enumerate(self.expect):
            assert len(q) <= 1, f"read port {i}: {len(q)} responses outstanding at the end"



def _line_width(spad):
    return Shape.cast(spad.line_shape).width


# -- parameter validation --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, arg", [
    (dict(depth=100, banks=4), "depth"), (dict(depth=1, banks=1), "depth"),
    (dict(depth=64, banks=3), "banks"), (dict(depth=64, banks=128), "banks"),
    (dict(depth=64, banks=4, read_ports=0), "read_ports"),
    (dict(depth=64, banks=4, read_ports=["a", "a"]), "read_ports"),
    (dict(depth=64, banks=4, write_ports=[]), "write_ports"),
    (dict(depth=64, banks=4, line_shape="x"), "line_shape"),
])
def test_banked_rejects_bad_parameters(kwargs, arg):
    args = dict(line_shape=act_line(4), read_ports=2, write_ports=1) | kwargs
    with pytest.raises(ValueError, match=arg):
        BankedScratchpad(args.pop("depth"), args.pop("banks"), args.pop("line_shape"), **args)


def test_replicated_rejects_bad_parameters():
    with pytest.raises(ValueError, match="replicas"):
        ReplicatedScratchpad(64, 0, act_line(4))
    with pytest.raises(ValueError, match="depth"):
        ReplicatedScratchpad(48, 2, act_line(4))
    with pytest.raises(TypeError, match="own_shared"):
        ReplicatedScratchpad(64, 2, act_line(4), own_shared=1)
    with pytest.raises(ValueError, match="^n "):
        RoundRobin(0)


def test_named_ports_and_config_helpers():
    cfg = preset("small")
    names = [f"mx{i}" for i in range(cfg.rows)] + ["vec_a", "vec_b", "dma"]
    act = act_scratchpad(cfg, names, ["vec", "dma"])
    assert act.read_port("dma") is act.rd[len(names) - 1]
    assert act.write_port("vec") is act.wr[0]
    assert act.depth == cfg.act_depth and act.banks == cfg.act_banks
    with pytest.raises(ValueError, match="no read port 'nope'"):
        act.read_port("nope")
    acc = acc_scratchpad(cfg, 2, 2)
    assert Shape.cast(acc.line_shape).width == 32 * cfg.cols and acc.read_names == ["r0", "r1"]
    wgt = wgt_scratchpad(cfg)
    assert wgt.replicas == cfg.rows and wgt.depth == cfg.wgt_depth and len(wgt.rd) == cfg.rows
    for spad in (act, acc, wgt):
        Fragment.get(spad, None)          # elaborates (and marks as used)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 11])
def test_round_robin_matches_a_pointer_search(n):
    """Random requests and advances: the grant is the first requester after the last granted one
    (searching cyclically, from 0 after reset), as one-hot ``grant``, ``index`` and ``valid``."""
    dut = RoundRobin(n)
    rng = _rng(f"rr-ref-{n}")

    async def tb(ctx):
        last = n - 1
        for step in range(300):
            req, adv = rng.getrandbits(n), rng.random() < 0.7
            ctx.set(dut.requests, req)
            ctx.set(dut.advance, adv)
            expect = next((i for i in ((last + 1 + k) % n for k in range(n)) if req >> i & 1), None)
            got = (ctx.get(dut.grant), ctx.get(dut.valid), ctx.get(dut.index))
            want = (0, 0) if expect is None else (1 << expect, 1, expect)
            assert got[:len(want)] == want, f"step {step}: requests {req:0{n}b}, last {last}: got {got}"
            await (ctx.tick() if n > 1 else ctx.delay(1e-6))
            if adv and expect is not None:
                last = expect

    if n > 1:
        run_testbench(dut, tb)
    else:                                  # no state, so no clock domain to simulate
        from amaranth.sim import Simulator
        sim = Simulator(dut)
        sim.add_testbench(tb)
        sim.run()


# -- banked scratchpad -------------------------------------------------------------------------

def test_round_robin_is_cyclic_and_starvation_free():
    """All readers hammer distinct lines of one bank: grants rotate 0,1,..,n-1, waits <= n-1."""
    n_rd, banks = 5, 4
    dut = BankedScratchpad(128, banks, act_line(4), read_ports=n_rd, write_ports=1)
    h = SpadHarness(dut, list(dut.rd), list(dut.wr), 128, 32)
    rng = _rng("rr")

    async def tb(ctx):
        await h.run(ctx, 200, lambda i, c: banks * (i + n_rd * rng.randrange(6)), lambda i, c: None)

    run_testbench(dut, tb)
    order = sorted((c, i) for i, cs in enumerate(h.grants_rd) for c in cs)
    cycles = [c for c, _ in order]
    assert cycles == list(range(len(cycles))), "bank 0 was idle while requested, or granted twice"
    assert [i for _, i in order] == [k % n_rd for k in range(len(order))]
    assert h.wait_max == n_rd - 1
    assert h.responses >= 199


def test_readers_of_one_line_are_served_together():
    """Reads of the same line merge: all readers granted every cycle; a different line waits."""
    dut = BankedScratchpad(64, 2, act_line(4), read_ports=4, write_ports=1)
    h = SpadHarness(dut, list(dut.rd), list(dut.wr), 64, 32)
    rng = _rng("merge")

    async def tb(ctx):
        # ports 0-2 read the same line each cycle; port 3 another line of the same bank
        await h.run(ctx, 60, lambda i, c: 2 * (c % 8) if i < 3 else 2 * (8 + c % 8),
                    lambda i, c: (2 * rng.randrange(32), rng.getrandbits(32)))

    run_testbench(dut, tb)
    h.finish_check()
    assert h.grants_rd[0] == h.grants_rd[1] == h.grants_rd[2]
    assert sorted(h.grants_rd[0] + h.grants_rd[3]) == list(range(60)), "bank 0 idle or double-granted"
    # round-robin is per port: the merged group holds 3 of every 4 turns, port 3 the 4th
    assert h.wait_max_port[3] <= 3 and len(h.grants_rd[3]) >= 60 // 4 - 1


def test_no_conflicts_gives_one_access_per_port_per_cycle():
    """Readers and writers on distinct banks: every command accepted at once, rsp after 1 cycle."""
    banks = 4
    dut = BankedScratchpad(64, banks, act_line(4), read_ports=4, write_ports=4)
    h = SpadHarness(dut, list(dut.rd), list(dut.wr), 64, 32)
    rng = _rng("noconf")

    async def tb(ctx):
        await h.run(ctx, 100, lambda i, c: i + banks * rng.randrange(16),
                    lambda i, c: ((i + 1) % banks + banks * rng.randrange(16), rng.getrandbits(32)))

    run_testbench(dut, tb)
    for g in h.grants_rd + h.grants_wr:
        assert g == list(range(100))


def test_same_cycle_read_and_write_of_a_line_returns_old_data():
    dut = BankedScratchpad(32, 2, act_line(4), read_ports=1, write_ports=1)

    async def tb(ctx):
        rd, wr = dut.rd[0], dut.wr[0]
        ctx.set(wr.cmd.valid, 1)
        ctx.set(wr.cmd.payload.as_value(), 7 | (0x11223344 << 5))
        await ctx.tick()
        ctx.set(wr.cmd.payload.as_value(), 7 | (0x55667788 << 5))   # write and read line 7 together
        ctx.set(rd.cmd.valid, 1)
        ctx.set(rd.cmd.payload, 7)
        assert ctx.get(rd.cmd.ready) and ctx.get(wr.cmd.ready)
        await ctx.tick()
        ctx.set(wr.cmd.valid, 0)
        assert ctx.get(rd.rsp.valid)
        assert ctx.get(rd.rsp.payload.as_value()) == 0x11223344      # old data
        await ctx.tick()
        assert ctx.get(rd.rsp.valid)
        assert ctx.get(rd.rsp.payload.as_value()) == 0x55667788      # next read: new data
        assert not ctx.get(dut.collision)          # three cycles behind: the write alone did not collide
        ctx.set(rd.cmd.valid, 0)
        await ctx.tick()
        assert not ctx.get(rd.rsp.valid)
        assert ctx.get(dut.collision)              # the same-cycle pair is flagged, and it sticks
        await ctx.tick().repeat(3)
        assert ctx.get(dut.collision)

    run_testbench(dut, tb)


@pytest.mark.parametrize("banks, n_rd, n_wr", [(1, 2, 1), (4, 7, 2), (2, 3, 3)])
def test_banked_random_traffic_matches_model(banks, n_rd, n_wr):
    depth = 32
    dut = BankedScratchpad(depth, banks, act_line(4), read_ports=n_rd, write_ports=n_wr)
    h = SpadHarness(dut, list(dut.rd), list(dut.wr), depth, 32)
    rng = _rng(f"rand{banks}{n_rd}{n_wr}")
    hot = [rng.randrange(depth) for _ in range(3)]

    def addr():
        return rng.choice(hot) if rng.random() < 0.4 else rng.randrange(depth)

    async def tb(ctx):
        await h.run(ctx, 1500, lambda i, c: addr() if rng.random() < 0.7 else None,
                    lambda i, c: (addr(), rng.getrandbits(32)) if rng.random() < 0.5 else None)
        await h.check_collision_flag(ctx)

    run_testbench(dut, tb)
    h.finish_check()
    assert h.responses > 500 and sum(map(len, h.grants_wr)) > 300


# -- replicated scratchpad ---------------------------------------------------------------------

@pytest.mark.parametrize("own_shared", [False, True])
def test_replicated_random_traffic_and_shared_port(own_shared):
    depth, reps = 32, 3
    dut = ReplicatedScratchpad(depth, reps, act_line(4), own_shared=own_shared)
    rd = list(dut.rd) + [dut.shared]
    h = SpadHarness(dut, rd, [dut.wr], depth, 32)
    rng = _rng("repl")

    async def tb(ctx):
        await h.run(ctx, 1500, lambda i, c: rng.randrange(depth) if rng.random() < 0.8 else None,
                    lambda i, c: (rng.randrange(depth), rng.getrandbits(32)) if rng.random() < 0.6 else None)
        await h.check_collision_flag(ctx)

    run_testbench(dut, tb)
    h.finish_check()
    # private ports 1.. never wait; the write port never waits
    for i in range(1, reps):
        assert h.wait_max_port[i] == 0 and len(h.grants_rd[i]) > 1000
    if own_shared:
        # the shared port reads a copy of its own: neither it nor rd[0] ever waits
        assert h.grants_wr[0] and h.wait_max_port[0] == h.wait_max_port[reps] == 0
        assert set(h.grants_rd[0]) & set(h.grants_rd[reps]), "never read together"
    else:
        assert h.grants_wr[0] and max(h.wait_max_port[0], h.wait_max_port[reps]) == 1
        both = set(h.grants_rd[0]) & set(h.grants_rd[reps])
        assert not both, "rd[0] and shared granted replica 0 in the same cycle"


def test_replicated_shared_port_alternates_with_lane0():
    dut = ReplicatedScratchpad(16, 2, act_line(4))
    h = SpadHarness(dut, [dut.rd[0], dut.rd[1], dut.shared], [dut.wr], 16, 32)

    async def tb(ctx):
        await h.run(ctx, 40, lambda i, c: c % 16, lambda i, c: None)

    run_testbench(dut, tb)
    assert h.grants_rd[1] == list(range(40))
    assert sorted(h.grants_rd[0] + h.grants_rd[2]) == list(range(40))
    assert h.grants_rd[0] == list(range(0, 40, 2)) and h.grants_rd[2] == list(range(1, 40, 2))


# -- Verilator + cocotb ------------------------------------------------------------------------

def _spad_cases():
    cfg = preset("small")
    names = [f"mx{i}" for i in range(cfg.rows)] + ["vec_a", "vec_b", "dma"]
    return {
        "act": (lambda: act_scratchpad(cfg, names, ["vec", "dma"]), cfg.act_banks),
        "acc": (lambda: acc_scratchpad(cfg, ["mx", "vec", "dma"], ["mx", "vec", "dma"]), cfg.acc_banks),
        "wgt": (lambda: wgt_scratchpad(cfg), 0),
    }


@pytest.mark.verilator
@pytest.mark.parametrize("kind", ["act", "acc", "wgt"])
def test_scratchpad_on_verilator(kind):
    make, banks = _spad_cases()[kind]
    name = f"spad_{kind}_small"
    run_cocotb(None, name=name, test_module="tb_scratchpad",
               verilog_text=verilog_skipping_consts(make(), name),
               extra_env={"SPARROW_PRESET": "small", "SPARROW_SPAD_BANKS": str(banks)}, seed=SEED)
