"""SkidBuffer and CreditSlice: order and no loss under random back-pressure, full throughput,
registered outputs, at most their capacity in flight; a scratchpad with sliced and registered
read ports returns the right lines in order; a sliced write port lands its line a cycle after
accepting it."""

import random

import pytest

from sparrow.sim.amsim import run_testbench
from sparrow.hdl.scratchpad import BankedScratchpad, ReplicatedScratchpad
from sparrow.hdl.credit_slice import CreditSlice
from sparrow.hdl.skid_buffer import SkidBuffer
from sparrow.hdl.spad_port import act_line
from sparrow.sim.cocotb_run import default_seed

SEED = default_seed("test_skid_buffer")



def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match="shape"):
        SkidBuffer("x")
    with pytest.raises(TypeError, match="shape"):
        CreditSlice("x")
    for bad in (2, 3.0, True):
        with pytest.raises(ValueError, match="depth"):
            CreditSlice(8, depth=bad)


# the slice and the most items it holds
SLICES = {"skid": (lambda: SkidBuffer(16), 2), "credit": (lambda: CreditSlice(16), 3),
          "credit5": (lambda: CreditSlice(16, depth=5), 5)}


@pytest.mark.parametrize("kind", SLICES)
@pytest.mark.parametrize("p_in, p_out", [(1.0, 1.0), (0.7, 0.5), (0.9, 0.2), (1.0, 0.0)])
def test_random_backpressure_keeps_order(kind, p_in, p_out):
    print(f"SPARROW_SEED={SEED}")
    rng = random.Random(f"{SEED}-{kind}-{p_in}-{p_out}")
    make, capacity = SLICES[kind]
    dut = make()
    sent, got = [], []

    async def tb(ctx):
        nxt = 0
        cycles_full = 0
        for _ in range(2000):
            ready_before = ctx.get(dut.i.ready)
            valid_before, data_before = ctx.get(dut.o.valid), ctx.get(dut.o.payload)
            offer = rng.random() < p_in
            take = rng.random() < p_out
            ctx.set(dut.i.valid, offer)
            ctx.set(dut.i.payload, nxt)
            ctx.set(dut.o.ready, take)
            # registered: nothing on the far side changes within the cycle
            assert ctx.get(dut.i.ready) == ready_before
            assert (ctx.get(dut.o.valid), ctx.get(dut.o.payload)) == (valid_before, data_before)
            if offer and ctx.get(dut.i.ready):
                sent.append(nxt)
                nxt = (nxt + 1) & 0xFFFF
            if take and ctx.get(dut.o.valid):
                got.append(ctx.get(dut.o.payload))
                cycles_full += 1
            await ctx.tick()
        if p_in == p_out == 1.0:
            assert cycles_full >= 1998, "not one item per cycle without back-pressure"

    run_testbench(dut, tb)
    assert got == sent[:len(got)], "items lost, duplicated or reordered"
    if p_out == 0.0:
        # nothing leaves: the slice fills to its capacity exactly and then refuses
        assert (len(sent), len(got)) == (capacity, 0)
    else:
        assert len(sent) - len(got) <= capacity, (len(sent), len(got))
        assert len(got) > 300


def test_sliced_and_registered_read_ports_return_lines_in_order():
    """Lines written first, then read at random through sliced, plain, registered and sliced +
    registered ports: every response is the line asked for, in order; a plain port answers 1
    cycle after acceptance, a registered one 2, a sliced one 2 or more, both 3 or more."""
    print(f"SPARROW_SEED={SEED}")
    rng = random.Random(f"{SEED}-spad")
    depth = 32
    dut = BankedScratchpad(depth, 2, act_line(4), read_ports=["a", "b", "c", "d", "e"], write_ports=1,
                           sliced_reads=["a", "c", "e"], registered_reads=["d", "e"], sliced_writes=["w0"])
    # (least, exact?) latency per port
    lat = [(2, False), (1, True), (2, False), (2, True), (3, False)]
    mem = [rng.getrandbits(32) for _ in range(depth)]

    async def tb(ctx):
        wr = dut.wr[0]
        for a, line in enumerate(mem):
            ctx.set(wr.cmd.valid, 1)
            ctx.set(wr.cmd.payload.as_value(), a | (line << 5))
            await ctx.tick().until(wr.cmd.ready)
        ctx.set(wr.cmd.valid, 0)
        for _ in range(2):              # the sliced write port lands its last line a cycle later
            await ctx.tick()
        await _read_at_random(ctx, list(dut.rd), lat, mem, rng)

    run_testbench(dut, tb)


async def _read_at_random(ctx, ports, lat, mem, rng, cycles=1500):
    """Random reads on every port of ``ports`` at once: each response is the line asked for, in
    order, ``lat[i]`` = (least, exact?) cycles after its command was accepted."""
    n = len(ports)
    cur = [None] * n
    expect = [[] for _ in range(n)]
    served = 0
    for cycle in range(cycles):
        for i, p in enumerate(ports):
            if cur[i] is None and rng.random() < 0.8:
                cur[i] = rng.randrange(len(mem))
            ctx.set(p.cmd.valid, cur[i] is not None)
            if cur[i] is not None:
                ctx.set(p.cmd.payload, cur[i])
        for i, p in enumerate(ports):
            if ctx.get(p.rsp.valid):
                acc, line = expect[i].pop(0)
                assert ctx.get(p.rsp.payload.as_value()) == line, f"port {i} cycle {cycle}"
                least, exact = lat[i]
                assert cycle - acc == least if exact else cycle - acc >= least, f"port {i} cycle {cycle}"
                served += 1
        for i, p in enumerate(ports):
            if cur[i] is not None and ctx.get(p.cmd.ready):
                expect[i].append((cycle, mem[cur[i]]))
                cur[i] = None
        await ctx.tick()
    assert served > cycles * n // 3, f"only {served} reads served in {cycles} cycles"


@pytest.mark.parametrize("own, registered", [(False, False), (True, True)])
def test_sliced_shared_port_of_the_replicated_scratchpad(own, registered):
    """The weight scratchpad's shared port (STORE's) through a slice: lines in order, a cycle
    later than the lane port it is arbitrated against (on its own copy: exactly a cycle later),
    and with a registered response one more; the lane ports keep their latency of 1."""
    print(f"SPARROW_SEED={SEED}")
    rng = random.Random(f"{SEED}-repl-{own}-{registered}")
    depth = 32
    dut = ReplicatedScratchpad(depth, 2, act_line(4), sliced_shared=True, own_shared=own,
                               registered_shared=registered)
    mem = [rng.getrandbits(32) for _ in range(depth)]

    async def tb(ctx):
        for a, line in enumerate(mem):
            ctx.set(dut.wr.cmd.valid, 1)
            ctx.set(dut.wr.cmd.payload.as_value(), a | (line << 5))
            await ctx.tick()
        ctx.set(dut.wr.cmd.valid, 0)
        shared_lat = (2 + registered, own)
        await _read_at_random(ctx, [dut.rd[0], dut.rd[1], dut.shared], [(1, True), (1, True), shared_lat], mem, rng)

    run_testbench(dut, tb)
    for arg in ("sliced_shared", "own_shared", "registered_shared"):
        with pytest.raises(TypeError, match=arg):
            ReplicatedScratchpad(depth, 2, act_line(4), **{arg: 1})


def test_sliced_reads_name_existing_ports():
    with pytest.raises(ValueError, match="sliced_reads"):
        BankedScratchpad(32, 2, act_line(4), read_ports=["a"], write_ports=1, sliced_reads=["z"])
    with pytest.raises(ValueError, match="registered_reads"):
        BankedScratchpad(32, 2, act_line(4), read_ports=["a"], write_ports=1, registered_reads=["z"])
    with pytest.raises(ValueError, match="sliced_writes"):
        BankedScratchpad(32, 2, act_line(4), read_ports=["a"], write_ports=1, sliced_writes=["z"])


def test_sliced_write_lands_the_cycle_after_acceptance():
    dut = BankedScratchpad(32, 2, act_line(4), read_ports=["r"], write_ports=["w"], sliced_writes=["w"])

    async def tb(ctx):
        w, r = dut.wr[0], dut.rd[0]
        for line in (0x11223344, 0x55667788):
            ctx.set(w.cmd.valid, 1)
            ctx.set(w.cmd.payload.as_value(), 5 | (line << 5))
            assert ctx.get(w.cmd.ready)
            await ctx.tick()
            ctx.set(w.cmd.valid, 0)
            # a read accepted now is granted with the write: it returns the line before
            ctx.set(r.cmd.valid, 1)
            ctx.set(r.cmd.payload, 5)
            assert ctx.get(r.cmd.ready)
            await ctx.tick()
            ctx.set(r.cmd.valid, 0)
            before = ctx.get(r.rsp.payload.as_value())
            assert ctx.get(r.rsp.valid) and before != line
            ctx.set(r.cmd.valid, 1)
            await ctx.tick()
            ctx.set(r.cmd.valid, 0)
            assert ctx.get(r.rsp.valid) and ctx.get(r.rsp.payload.as_value()) == line

    run_testbench(dut, tb)
